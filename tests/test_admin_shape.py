"""One shape for the admin (issue 10): roles as a table, one 404, pages as methods, one trail.

- Every team admin answers has_*_permission() from its roles table; routes.permissions decides.
- Every custom deployment page is a method of the registered DeploymentAdmin, wired in its
  get_urls(), and answers the same 404 for another team's deployment and for a missing one.
- Django's LogEntry is neither written nor read: "History" shows the audit trail.
- The config page never runs nginx on GET: it shows the stored test of the config as it is now,
  and "Test with nginx" (a POST, operators and up) runs, stores and audits a new one.
"""

from __future__ import annotations

import importlib
import subprocess

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import RequestFactory
from django.urls import resolve, reverse

from routes import audit
from routes.admin.base import DeploymentAdmin, KeyRotationInline, RouteOverrideInline
from routes.admin.options import RoleTable
from routes.models import (
    AuditEvent,
    ConfigExport,
    Deployment,
    Key,
    Membership,
    NginxTest,
    Team,
    VerificationJob,
    VerificationRun,
)
from routes.nginx import tested
from routes.nginx.sandbox import NginxCheck
from routes.permissions import Action, can, can_somewhere, teams_where
from routes.workflows.keys import set_key

API_KEY = "sk-admin-shape-api-key-77102"


@pytest.fixture(autouse=True)
def _fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def users(make_user, team, other_team):
    return {
        "viewer": make_user("vic", team=team, role="viewer"),
        "operator": make_user("oli", team=team, role="operator"),
        "owner": make_user("olga", team=team, role="owner"),
        "outsider": make_user("bob", team=other_team, role="owner"),
        "superuser": make_user("root", superuser=True),
    }


def asking(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def model_admin(model):
    return admin.site.get_model_admin(model)


def config_url(deployment) -> str:
    return reverse("admin:routes_deployment_config", args=[deployment.pk])


def nginx_test_url(deployment) -> str:
    return reverse("admin:routes_deployment_config_test", args=[deployment.pk])


# --- the roles table --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "view", "change", "delete"),
    [
        ("viewer", True, False, False),
        ("operator", True, True, False),
        # Deleting a deployment destroys its keys: it takes the role that manages them.
        ("owner", True, True, True),
        ("outsider", False, False, False),
        ("superuser", True, True, True),
    ],
)
def test_the_deployment_admin_answers_from_its_roles_table(
    users, deployment, who, view, change, delete
):
    request = asking(users[who])
    deployments = model_admin(Deployment)
    assert deployments.has_view_permission(request, deployment) is view
    assert deployments.has_change_permission(request, deployment) is change
    assert deployments.has_delete_permission(request, deployment) is delete


def test_custom_operations_of_the_table_are_the_permissions_actions_ask_for(users, deployment):
    deployments = model_admin(Deployment)
    viewer, operator = asking(users["viewer"]), asking(users["operator"])
    assert not deployments.has_export_permission(viewer)
    assert not deployments.has_verify_permission(viewer)
    assert deployments.has_export_permission(operator)
    assert deployments.has_verify_permission(operator)
    actions = deployments.get_actions(viewer)
    # A viewer downloads what they may read; running checks stays an operator's.
    assert "run_verification" not in actions
    assert {"download_archive", "export_definitions"} <= set(actions)
    assert {"download_archive", "run_verification", "export_definitions"} <= set(
        deployments.get_actions(operator)
    )


def test_an_operation_missing_from_the_table_is_refused_even_to_superusers(users, deployment):
    root = asking(users["superuser"])
    export = ConfigExport.objects.create(
        deployment=deployment, content_hash="0" * 64, text="# config\n", source="admin"
    )
    exports = model_admin(ConfigExport)
    assert exports.has_view_permission(root, export)
    assert not exports.has_add_permission(root)
    assert not exports.has_change_permission(root, export)
    run = VerificationRun.objects.create(
        job=VerificationJob.objects.create(deployment=deployment), trigger="manual"
    )
    assert not model_admin(VerificationRun).has_delete_permission(root, run)


def test_administering_is_for_superusers_whatever_the_team_role(users, team):
    owner = users["owner"]
    assert not can(owner, Action.ADMINISTER, team)
    assert not can_somewhere(owner, Action.ADMINISTER)
    assert not teams_where(owner, Action.ADMINISTER).exists()
    assert can(users["superuser"], Action.ADMINISTER, team)
    assert not model_admin(Team).has_delete_permission(asking(owner), team)
    assert model_admin(Team).has_delete_permission(asking(users["superuser"]), team)


def test_asking_without_an_object_costs_no_query_once_the_roles_are_loaded(
    users, django_assert_num_queries
):
    operator, outsider = users["operator"], users["outsider"]
    assert can_somewhere(operator, Action.EDIT)
    assert can_somewhere(outsider, Action.VIEW)
    with django_assert_num_queries(0):
        assert can_somewhere(operator, Action.CREATE)
        assert not can_somewhere(operator, Action.MANAGE_KEYS)
        assert not can_somewhere(outsider, Action.ADMINISTER)


def test_an_inline_is_asked_about_its_parent(users, deployment):
    key = set_key(deployment=deployment, role="cpa_api", secret=API_KEY)
    rotations = KeyRotationInline(Key, admin.site)
    overrides = RouteOverrideInline(Deployment, admin.site)
    assert rotations.has_view_permission(asking(users["viewer"]), key)
    assert not rotations.has_view_permission(asking(users["outsider"]), key)
    assert not rotations.has_add_permission(asking(users["superuser"]), key)
    assert not overrides.has_add_permission(asking(users["viewer"]), deployment)
    assert overrides.has_add_permission(asking(users["operator"]), deployment)


def test_no_team_admin_writes_its_own_permission_rule():
    """Only the table's methods and the commented exceptions answer has_*_permission."""
    exceptions = {
        # team-less events (sign-ins) are readable by the user they are about
        ("AuditEventAdmin", "has_view_permission"),
        # devices belong to a user, not to a team
        ("TwoFactorDeviceAdmin", "has_module_permission"),
        ("TwoFactorDeviceAdmin", "has_view_permission"),
        ("TwoFactorDeviceAdmin", "has_delete_permission"),
    }
    found = set()
    for instance in admin.site._registry.values():
        for cls in type(instance).__mro__:
            if not issubclass(cls, RoleTable) or cls is RoleTable:
                continue
            for name, value in vars(cls).items():
                generated = getattr(value, "__qualname__", "").startswith("_table_check")
                if name.startswith("has_") and name.endswith("_permission") and not generated:
                    found.add((cls.__name__, name))
    assert found <= exceptions, sorted(found - exceptions)


# --- custom pages -------------------------------------------------------------------------


DEPLOYMENT_PAGES = {
    # url name -> method answering a GET ("get") or only a POST ("post")
    "routes_deployment_config": "get",
    "routes_deployment_config_test": "post",
    "routes_deployment_config_download": "get",
    "routes_deployment_routes": "get",
    "routes_deployment_verify": "get",
    "routes_deployment_first_setup": "get",
    "routes_deployment_wizard_keys": "get",
    "routes_deployment_wizard_finish": "get",
    "routes_deployment_confirm_destination": "post",
}


def test_every_custom_deployment_page_is_a_method_of_the_registered_admin(deployment):
    registered = model_admin(Deployment)
    assert isinstance(registered, DeploymentAdmin)
    names = [*DEPLOYMENT_PAGES, "routes_deployment_wizard", "routes_deployment_test_key"]
    for name in names:
        args = [deployment.pk] if name != "routes_deployment_wizard" else []
        if name == "routes_deployment_test_key":
            args = [deployment.pk, 1]
        view = resolve(reverse(f"admin:{name}", args=args)).func
        method = view.__wrapped__  # admin_site.admin_view keeps the wrapped view
        assert getattr(method, "__self__", None) is registered, name
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("routes.admin.registry")


@pytest.mark.parametrize("name", sorted(DEPLOYMENT_PAGES))
def test_another_teams_deployment_and_a_missing_one_are_the_same_404(
    client, users, other_team, name
):
    theirs = Deployment.objects.create(
        slug="theirs", name="Theirs", team=other_team, server_name="theirs.example.com"
    )
    client.force_login(users["owner"])
    send = client.post if DEPLOYMENT_PAGES[name] == "post" else client.get
    for pk in (theirs.pk, theirs.pk + 1000):
        response = send(reverse(f"admin:{name}", args=[pk]))
        assert response.status_code == 404, (name, pk, response.status_code)
        assert "theirs" not in response.content.decode()


def test_an_id_that_is_no_number_is_a_404_not_a_500(client, users):
    client.force_login(users["owner"])
    for name in ("routes_deployment_verify", "routes_deployment_confirm_destination"):
        url = reverse(f"admin:{name}", args=["abc"])
        send = client.post if DEPLOYMENT_PAGES[name] == "post" else client.get
        assert send(url).status_code == 404


def test_the_verify_page_of_a_deployment_without_a_job_stores_none(client, users, deployment):
    client.force_login(users["viewer"])
    response = client.get(reverse("admin:routes_deployment_verify", args=[deployment.pk]))
    assert response.status_code == 200
    assert not VerificationJob.objects.exists()


# --- one audit trail ------------------------------------------------------------------------


def test_admin_changes_write_no_log_entry_and_reach_the_audit_trail(client, users, team):
    client.force_login(users["owner"])
    response = client.post(
        reverse("admin:routes_team_change", args=[team.pk]),
        {"name": "Ops renamed", "slug": team.slug},
    )
    assert response.status_code == 302
    membership = Membership.objects.get(user=users["viewer"])
    response = client.post(
        reverse("admin:routes_membership_delete", args=[membership.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    assert not LogEntry.objects.exists()
    assert AuditEvent.objects.filter(action="team.change", actor=users["owner"]).exists()
    assert AuditEvent.objects.filter(action="membership.remove", actor=users["owner"]).exists()


def test_djangos_user_admin_records_in_the_trail_not_in_log_entry(client, users):
    User = get_user_model()
    victor = users["viewer"]
    client.force_login(users["superuser"])
    response = client.post(
        reverse("admin:auth_user_password_change", args=[victor.pk]),
        {"password1": "An0ther-str0ng-pw!", "password2": "An0ther-str0ng-pw!"},
    )
    assert response.status_code == 302
    assert not LogEntry.objects.exists()
    event = AuditEvent.objects.get(action="user.change", object_id=str(victor.pk))
    assert event.actor == users["superuser"]
    assert "An0ther-str0ng-pw!" not in str(event.changes)
    assert event.changes["fields"]  # the field labels, never the values
    response = client.post(reverse("admin:auth_user_delete", args=[victor.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=victor.pk).exists()
    assert AuditEvent.objects.filter(action="user.delete", object_id=str(victor.pk)).exists()
    assert not LogEntry.objects.exists()


def test_the_history_page_shows_the_objects_audit_events(client, users, deployment):
    audit.record(
        action="deployment.change",
        actor=users["operator"],
        team=deployment.team,
        obj=deployment,
        changes={"client_max_body_size": ["64m", "128m"]},
    )
    client.force_login(users["viewer"])
    page = client.get(reverse("admin:routes_deployment_history", args=[deployment.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "deployment.change" in html
    assert "oli" in html
    assert "<code>client_max_body_size</code>" in html
    client.force_login(users["outsider"])
    other = client.get(reverse("admin:routes_deployment_history", args=[deployment.pk]))
    assert other.status_code == 404


def test_the_dashboard_shows_no_recent_actions_of_log_entry(client, users):
    client.force_login(users["superuser"])
    html = client.get(reverse("admin:index")).content.decode()
    assert "recent-actions-module" not in html


# --- the nginx test of the config page ------------------------------------------------------


@pytest.fixture
def no_processes(monkeypatch):
    """Fail the test if anything starts a process."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_opening_the_config_page_runs_no_nginx(client, users, deployment, settings, no_processes):
    settings.CONSOLE_NGINX_BIN = "true"  # present wherever the tests run
    client.force_login(users["operator"])
    response = client.get(config_url(deployment))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Not tested with nginx yet for this config." in page
    assert f'action="{nginx_test_url(deployment)}"' in page
    assert not NginxTest.objects.exists()


@pytest.mark.nginx
def test_an_operators_test_is_stored_for_this_config_audited_and_shown(client, users, deployment):
    client.force_login(users["operator"])
    response = client.post(nginx_test_url(deployment), follow=True)
    assert response.status_code == 200
    assert "Tested with nginx: nginx -t accepts this config." in response.content.decode()
    stored = NginxTest.objects.get()
    files = tested.render_files([deployment])
    assert (stored.deployment, stored.config_hash, stored.ok) == (
        deployment,
        tested.config_hash(files),
        True,
    )
    assert stored.tested_by == users["operator"]
    event = AuditEvent.objects.get(action="config.test")
    assert event.actor == users["operator"]
    assert event.changes == {"config_hash": stored.config_hash, "ok": True, "timed_out": False}
    client.force_login(users["viewer"])
    page = client.get(config_url(deployment)).content.decode()
    assert "nginx -t accepts this config (with the shared file, in a sandbox)." in page
    assert "by oli, for this exact config" in page


def test_a_changed_config_is_not_tested_until_someone_tests_it(
    client, users, deployment, monkeypatch
):
    monkeypatch.setattr(tested, "check_files", lambda files: NginxCheck(True, "syntax is ok"))
    client.force_login(users["operator"])
    client.post(nginx_test_url(deployment))
    assert "nginx -t accepts" in client.get(config_url(deployment)).content.decode()
    deployment.client_max_body_size = "128m"
    deployment.save()
    page = client.get(config_url(deployment)).content.decode()
    assert "Not tested with nginx yet for this config." in page
    client.post(nginx_test_url(deployment))
    assert NginxTest.objects.filter(deployment=deployment).count() == 2


def test_a_retest_of_the_same_config_replaces_its_result(client, users, deployment, monkeypatch):
    outcomes = iter(
        [
            NginxCheck(True, "syntax is ok"),
            NginxCheck(False, 'nginx: [emerg] unknown directive "bogus"'),
        ]
    )
    monkeypatch.setattr(tested, "check_files", lambda files: next(outcomes))
    client.force_login(users["operator"])
    client.post(nginx_test_url(deployment))
    response = client.post(nginx_test_url(deployment), follow=True)
    assert "Tested with nginx: nginx -t refuses this config." in response.content.decode()
    stored = NginxTest.objects.get()
    assert not stored.ok
    page = client.get(config_url(deployment)).content.decode()
    assert "nginx -t refuses this config:" in page
    assert "unknown directive &quot;bogus&quot;" in page


def test_a_test_that_timed_out_says_so(client, users, deployment, monkeypatch):
    monkeypatch.setattr(
        tested,
        "check_files",
        lambda files: NginxCheck(False, "nginx -t did not finish", timed_out=True),
    )
    client.force_login(users["operator"])
    response = client.post(nginx_test_url(deployment), follow=True)
    page = response.content.decode()
    assert "Tested with nginx: nginx -t did not finish in time." in page
    assert "nginx -t refuses this config" not in page
    assert "Tested with nginx: nginx -t did not finish in time." in page
    assert NginxTest.objects.get().timed_out


def test_a_viewer_may_not_test_and_a_get_tests_nothing(client, users, deployment, no_processes):
    client.force_login(users["viewer"])
    assert client.post(nginx_test_url(deployment)).status_code == 403
    assert "Test with nginx" not in client.get(config_url(deployment)).content.decode()
    client.force_login(users["operator"])
    assert client.get(nginx_test_url(deployment)).status_code == 405
    assert not NginxTest.objects.exists()
    assert not AuditEvent.objects.filter(action="config.test").exists()


def test_without_nginx_nothing_is_tested_or_stored(client, users, deployment, settings):
    settings.CONSOLE_NGINX_BIN = ""
    client.force_login(users["operator"])
    response = client.post(nginx_test_url(deployment), follow=True)
    assert "Nothing was tested: nginx is not installed on the console host." in (
        response.content.decode()
    )
    assert not NginxTest.objects.exists()
    assert not AuditEvent.objects.filter(action="config.test").exists()
    assert "Test with nginx" not in response.content.decode()


def test_an_unrenderable_deployment_is_refused_with_its_reason(client, users, deployment):
    Deployment.objects.filter(pk=deployment.pk).update(resolver="not-an-ip")
    client.force_login(users["operator"])
    response = client.post(nginx_test_url(deployment), follow=True)
    assert "resolver" in response.content.decode()
    assert not NginxTest.objects.exists()


def test_the_config_hash_covers_every_file_and_its_name():
    one = {"00-console-common.conf": "map {}\n", "prod.conf": "server {}\n"}
    assert tested.config_hash(one) == tested.config_hash(dict(reversed(one.items())))
    assert tested.config_hash(one) != tested.config_hash({**one, "prod.conf": "server { }\n"})
    assert tested.config_hash(one) != tested.config_hash(
        {"00-console-common.conf": "map {}\n", "staging.conf": "server {}\n"}
    )
    # Moving text from one file to the next is a different set of files.
    assert tested.config_hash({"a.conf": "ab", "b.conf": ""}) != tested.config_hash(
        {"a.conf": "a", "b.conf": "b"}
    )
