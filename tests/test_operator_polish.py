"""Issue 15, second pass: errors that explain, navigation without clutter, small finishes."""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from django.views.defaults import server_error
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from routes import audit
from routes.audit import ACTION_LABELS, action_label
from routes.errors import explain
from routes.models import AuditEvent, ConfigExport, Deployment, VerificationJob, VerificationRun
from routes.permissions import Action, refusal
from routes.templatetags.console_format import ago
from routes.workflows.keys import set_key

PASSWORD = "pw-Str0ng-enough!"
API_KEY = "sk-polish-api-key-99120"
THIRD_PARTY_SECTIONS = {
    "auth.group",
    "axes.accessattempt",
    "axes.accessfailurelog",
    "axes.accesslog",
    "django_tasks_database.dbtaskresult",
    "otp_totp.totpdevice",
}


def html(response) -> str:
    return response.content.decode()


def sidebar_models(response) -> set[str]:
    """Return the model labels the page's sidebar (available_apps) lists."""
    return {
        model["model"]._meta.label_lower
        for app in response.context["available_apps"]
        for model in app["models"]
    }


# --- errors that explain --------------------------------------------------------------------


def test_a_403_is_framed_and_says_which_role_the_page_needs(client, viewer, deployment):
    client.force_login(viewer)
    response = client.get(
        reverse("admin:routes_deployment_first_setup", args=[deployment.pk]),
        HTTP_REFERER="http://testserver" + reverse("admin:routes_deployment_changelist"),
    )
    assert response.status_code == 403
    page = html(response)
    assert 'id="header"' in page and 'id="console-language-select"' in page
    assert "This page needs the Owner role in team Ops." in page
    assert "Your role in team Ops is Viewer." in page
    assert f'href="{reverse("admin:index")}"' in page
    assert "Back to the previous page" in page
    assert reverse("admin:routes_deployment_changelist") in page


def test_a_403_of_a_django_admin_view_names_the_role_too(client, viewer):
    client.force_login(viewer)
    response = client.get(reverse("admin:routes_deployment_add"))
    assert response.status_code == 403
    page = html(response)
    assert "This page needs the Operator role in a team." in page
    assert "Your highest role in your teams is Viewer." in page


def test_a_read_only_admin_says_nobody_may_change_it(client, superuser):
    client.force_login(superuser)
    response = client.get(reverse("admin:routes_auditevent_add"))
    assert response.status_code == 403
    assert "Nobody may do this here" in html(response)
    assert "You are a superuser." in html(response)


def test_a_refusal_never_names_a_team_the_user_is_not_in(outsider, team):
    refused = refusal(outsider, Action.VIEW, team)
    assert refused.team is None and refused.actual is None
    needs, has = explain(refused)
    assert "Ops" not in needs + has + str(refused)
    assert has == "You have no role in a team that this page belongs to."


def test_a_refusal_for_want_of_two_factor_says_so(client, make_user, team):
    team.require_owner_2fa = True
    team.save()
    owner = make_user("olga", team=team, role="owner")
    refused = refusal(owner, Action.MANAGE_KEYS, team)
    assert refused.otp
    assert "requires owners to sign in with a two-factor code" in explain(refused)[0]
    assert (
        str(refused)
        == "manage_keys needs owner in team ops; user has owner, two-factor session needed"
    )


def test_a_back_link_never_points_to_another_site(client, viewer):
    client.force_login(viewer)
    response = client.get(
        reverse("admin:routes_deployment_add"), HTTP_REFERER="https://evil.example/phish"
    )
    assert "evil.example" not in html(response)
    assert "Back to the previous page" not in html(response)


def test_another_teams_object_is_the_same_framed_404_as_a_missing_one(client, outsider, deployment):
    client.force_login(outsider)
    theirs = client.get(reverse("admin:routes_deployment_config", args=[deployment.pk]))
    missing = client.get(reverse("admin:routes_deployment_config", args=[deployment.pk + 999]))
    assert theirs.status_code == missing.status_code == 404
    for response in (theirs, missing):
        page = html(response)
        assert 'id="header"' in page and "Back to the dashboard" in page
        assert "No such deployment in your teams." in page
        for leak in ("Ops", "api.example.com", "Production"):
            assert leak not in page


def test_an_unknown_url_is_a_framed_404_also_for_anonymous_users(client, db):
    response = client.get("/admin/routes/no-such-page/")
    assert response.status_code in (302, 404)  # the admin sends anonymous users to log in
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    page = html(response)
    assert 'id="console-language-select"' in page and "Page not found" in page


def test_the_500_page_renders_without_a_database_or_a_request_context():
    # No db fixture: any query would fail this test.
    response = server_error(RequestFactory().get("/"))
    page = html(response)
    assert response.status_code == 500
    assert "CPA gateway console" in page and 'href="/"' in page
    assert "{%" not in page and "style=" not in page


def test_a_permission_denied_is_logged_as_one_line_with_its_reason(client, viewer, caplog):
    client.force_login(viewer)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        client.get(reverse("admin:routes_deployment_add"))
    records = [r for r in caplog.records if r.name == "django.request"]
    assert len(records) == 1
    record = records[0]
    assert record.exc_info is None and record.exc_text is None
    message = record.getMessage()
    assert "\n" not in message and "Traceback" not in caplog.text
    assert "create needs operator; user has viewer" in message


def test_the_logging_config_strips_tracebacks_of_refusals_only():
    config = settings.LOGGING["loggers"]["django.request"]
    assert config["filters"] == ["one_line_permission_denied"]
    logger = logging.getLogger("django.request")
    (one_line,) = logger.filters
    try:
        raise ValueError("boom")
    except ValueError as exc:
        crash = logging.LogRecord(
            "django.request", 40, "", 0, "Error: %s", ("/x",), (ValueError, exc, exc.__traceback__)
        )
    assert one_line.filter(crash) and crash.exc_info is not None


# --- navigation and clutter -----------------------------------------------------------------


def test_the_deployment_list_offers_the_guided_wizard_to_whoever_may_create(
    client, operator, viewer, deployment
):
    client.force_login(operator)
    page = html(client.get(reverse("admin:routes_deployment_changelist")))
    assert re.search(
        r'<a href="{}" class="addlink" id="guided-deployment">New deployment \(guided\)</a>'.format(
            re.escape(reverse("admin:routes_deployment_wizard"))
        ),
        page,
    )
    client.force_login(viewer)
    assert "guided-deployment" not in html(
        client.get(reverse("admin:routes_deployment_changelist"))
    )


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_the_sidebar_and_index_hide_third_party_sections_from_members(client, users, role):
    client.force_login(users[role])
    for url in (reverse("admin:index"), reverse("admin:routes_deployment_changelist")):
        listed = sidebar_models(client.get(url))
        assert "routes.deployment" in listed
        assert not listed & (THIRD_PARTY_SECTIONS | {"auth.user"})
    index = client.get(reverse("admin:index"))
    assert (
        not {m["model"]._meta.label_lower for a in index.context["app_list"] for m in a["models"]}
        & THIRD_PARTY_SECTIONS
    )
    # Their own two-factor devices stay one click away, in the header.
    assert reverse("admin:otp_totp_totpdevice_changelist") in html(index)
    assert client.get(reverse("admin:otp_totp_totpdevice_changelist")).status_code == 200


def test_the_sidebar_shows_every_section_to_superusers(client, superuser):
    client.force_login(superuser)
    listed = sidebar_models(client.get(reverse("admin:index")))
    assert THIRD_PARTY_SECTIONS | {"auth.user"} <= listed


def test_users_stay_listed_only_for_owners(client, owner, operator):
    view_user = Permission.objects.get(codename="view_user", content_type__app_label="auth")
    for user in (owner, operator):
        user.user_permissions.add(view_user)
    client.force_login(owner)
    assert "auth.user" in sidebar_models(client.get(reverse("admin:index")))
    client.force_login(operator)
    assert "auth.user" not in sidebar_models(client.get(reverse("admin:index")))


def test_an_apps_own_page_keeps_what_its_permissions_allow(client, viewer):
    # The breadcrumb of the device list leads to its app's page.
    client.force_login(viewer)
    assert client.get(reverse("admin:app_list", args=["otp_totp"])).status_code == 200


def test_third_party_sections_get_translatable_names(superuser, client):
    from django.apps import apps
    from django.utils.functional import Promise

    assert isinstance(apps.get_app_config("axes").verbose_name, Promise)
    assert isinstance(apps.get_app_config("django_tasks_database").verbose_name, Promise)
    assert isinstance(TOTPDevice._meta.verbose_name_plural, Promise)
    assert isinstance(TOTPDevice._meta.get_field("last_used_at").verbose_name, Promise)


def test_the_label_overrides_leave_third_party_migrations_alone(db):
    from django.core.management import call_command

    out = io.StringIO()
    call_command(
        "makemigrations",
        "axes",
        "otp_totp",
        "django_tasks_database",
        check=True,
        dry_run=True,
        stdout=out,
    )
    assert "No changes detected" in out.getvalue()


# --- small things ---------------------------------------------------------------------------


def test_the_favicon_is_linked_served_and_answers_favicon_ico(client, viewer):
    assert finders.find("console/favicon.svg")
    assert Path(finders.find("console/favicon.svg")).read_text().startswith("<svg")
    client.force_login(viewer)
    assert 'rel="icon" href="/static/console/favicon.svg"' in html(
        client.get(reverse("admin:index"))
    )
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"] == "/static/console/favicon.svg"


def test_it_says_just_now_under_a_minute_and_minutes_ago_after():
    now = timezone.now()
    assert ago(now) == "just now"
    assert ago(now - timedelta(seconds=59)) == "just now"
    assert ago(now + timedelta(seconds=5)) == "just now"  # a clock a little ahead
    assert ago(now - timedelta(minutes=5, seconds=3)) == "5\xa0minutes ago"
    assert ago(None) == ""


def test_the_dashboard_says_just_now_for_a_fresh_run(client, viewer, deployment):
    job = VerificationJob.objects.create(deployment=deployment)
    VerificationRun.objects.create(job=job, trigger="manual", status="passed")
    client.force_login(viewer)
    page = html(client.get(reverse("admin:index")))
    assert "just now" in page and "0 minutes" not in page


def test_plain_http_gets_a_neutral_label_not_a_red_icon(client, viewer, deployment, team):
    Deployment.objects.create(
        slug="secure",
        name="Secure",
        team=team,
        server_name="secure.example.com",
        tls=True,
        ssl_certificate="/etc/ssl/a.pem",
        ssl_certificate_key="/etc/ssl/a.key",
    )
    client.force_login(viewer)
    page = html(client.get(reverse("admin:routes_deployment_changelist")))
    assert "icon-no.svg" not in page and "icon-yes.svg" not in page
    assert '<span class="console-muted console-http">HTTP only</span>' in page
    assert '<span class="console-badge console-https">HTTPS</span>' in page


def test_every_recorded_audit_action_has_a_human_name():
    code = "\n".join(p.read_text() for p in Path(settings.BASE_DIR, "routes").rglob("*.py"))
    dotted = r'"([a-z_]+(?:\.[a-z_]+)+)"'
    recorded = set(re.findall(r"action\s*=\s*" + dotted, code))
    for pair in re.findall(dotted + r" if [^\n]* else " + dotted, code):
        recorded |= set(pair)
    recorded |= {"login", "logout"}
    assert {"deployment.create", "key.rotate", "login.failed"} <= recorded
    missing = {name for name in recorded if name not in ACTION_LABELS}
    assert not missing, f"give these audit actions a label in routes.audit: {sorted(missing)}"
    assert action_label("deployment.change") == "Deployment changed"
    assert action_label("something.new") == "something.new"


def test_the_audit_list_filters_and_detail_show_action_names(client, owner, team, deployment):
    event = audit.record(action="deployment.change", team=team, obj=deployment)
    client.force_login(owner)
    listing = client.get(reverse("admin:routes_auditevent_changelist"))
    page = html(listing)
    assert "Deployment changed" in page
    assert '<td class="field-action_name">Deployment changed</td>' in page
    assert "?action=deployment.change" in page  # the filter keeps the code in its link
    detail = html(client.get(reverse("admin:routes_auditevent_change", args=[event.pk])))
    assert 'Deployment changed <code class="console-muted">deployment.change</code>' in detail


def test_the_audit_list_offers_no_delete_action(client, superuser, rf):
    from django.contrib import admin

    client.force_login(superuser)
    request = rf.get("/")
    request.user = superuser
    actions = admin.site.get_model_admin(AuditEvent).get_actions(request)
    assert "delete_selected" not in actions
    assert {"export_csv", "export_jsonl"} <= set(actions)


def test_the_config_diff_colours_each_line_by_class(client, viewer, deployment):
    ConfigExport.objects.create(
        deployment=deployment, content_hash="0" * 64, text="# old line\nserver {}\n", source="admin"
    )
    client.force_login(viewer)
    page = html(client.get(reverse("admin:routes_deployment_config", args=[deployment.pk])))
    diff = page[page.index('id="config-diff"') :]
    diff = diff[: diff.index("</pre>")]
    assert '<del class="console-diff-line removed">-# old line</del>' in diff
    assert '<ins class="console-diff-line added">+' in diff
    assert '<span class="console-diff-line hunk">@@' in diff
    assert "style=" not in diff
    css = Path(finders.find("console/console.css")).read_text()
    for kind in ("added", "removed", "hunk"):
        assert f".console-diff .console-diff-line.{kind}" in css


def test_a_viewer_downloads_what_they_may_read_but_never_a_secret(client, viewer, deployment):
    set_key(deployment=deployment, role="cpa_api", secret=API_KEY)
    client.force_login(viewer)
    page = html(client.get(reverse("admin:routes_deployment_config", args=[deployment.pk])))
    download_url = reverse("admin:routes_deployment_config_download", args=[deployment.pk])
    assert f'href="{download_url}"' in page
    assert "Export to" not in page  # writing the export directory stays an operator's
    config = client.get(download_url)
    assert config.status_code == 200 and config["Content-Disposition"].startswith("attachment")
    changelist = reverse("admin:routes_deployment_changelist")
    definitions = client.post(
        changelist, {"action": "export_definitions", "_selected_action": [deployment.pk]}
    )
    assert definitions["Content-Disposition"] == 'attachment; filename="deployments.json"'
    payload = json.loads(definitions.content)
    assert payload["deployments"][0]["slug"] == "prod"
    assert API_KEY not in definitions.content.decode()
    archive = client.post(
        changelist, {"action": "download_archive", "_selected_action": [deployment.pk]}
    )
    assert archive["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert any(name.endswith(".conf") for name in tar.getnames())
    assert (
        client.post(reverse("admin:routes_deployment_config", args=[deployment.pk])).status_code
        == 403
    )


# --- the login form asks for a code only when it is needed ----------------------------------


def code_for(device: TOTPDevice, *, offset: int = 0) -> str:
    device.refresh_from_db()
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, drift=offset):06d}"


def password_step(client, username, password=PASSWORD):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": reverse("admin:index")},
    )


def code_step(client, token, **extra):
    data = {"step": "otp", "otp_token": token, "next": reverse("admin:index"), **extra}
    return client.post(reverse("admin:login"), data)


def test_the_login_page_has_no_code_field_until_a_device_needs_it(client, make_user):
    make_user("olga")
    page = html(client.get(reverse("admin:login")))
    assert 'name="password"' in page and 'name="otp_token"' not in page
    assert password_step(client, "olga").status_code == 302
    assert "_auth_user_id" in client.session


def test_a_user_with_a_device_gives_the_code_in_a_second_step(client, make_user):
    user = make_user("olga")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    first = password_step(client, "olga")
    assert first.status_code == 200
    page = html(first)
    assert 'name="otp_token"' in page and 'name="password"' not in page
    assert "Password accepted for <strong>olga</strong>" in page
    assert PASSWORD not in page
    assert "errornote" not in page
    assert "_auth_user_id" not in client.session
    done = code_step(client, code_for(device))
    assert done.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)
    assert "otp_device_id" in client.session


def test_a_wrong_password_never_reveals_whether_a_device_exists(client, make_user):
    user = make_user("olga")
    TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    page = html(password_step(client, "olga", "wrong-password"))
    assert 'name="otp_token"' not in page


def test_the_code_step_alone_signs_nobody_in(client, make_user):
    user = make_user("olga")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    response = code_step(client, code_for(device), username="olga")
    assert response.status_code == 200
    assert "took too long" in html(response) and 'name="password"' in html(response)
    assert "_auth_user_id" not in client.session


def test_the_code_step_expires(client, make_user):
    user = make_user("olga")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    password_step(client, "olga")
    session = client.session
    session["console_login_2fa"]["at"] -= 301
    session.save()
    assert "took too long" in html(code_step(client, code_for(device)))
    assert "_auth_user_id" not in client.session


def test_a_wrong_code_stays_on_the_code_step_and_counts_as_a_failure(client, make_user):
    user = make_user("olga")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    password_step(client, "olga")
    response = code_step(client, f"{(int(code_for(device)) + 1) % 1000000:06d}")
    assert response.status_code == 200
    assert 'name="otp_token"' in html(response) and "wrong or has expired" in html(response)
    event = AuditEvent.objects.get(action="login.failed")
    assert event.changes["reason"] == "otp"


def test_a_lockout_also_stops_the_code_step(client, make_user, settings):
    settings.AXES_FAILURE_LIMIT = 2
    user = make_user("olga")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    password_step(client, "olga")
    for n in range(2):
        device.throttling_failure_count = 0  # django-otp's own back-off aside
        device.save()
        code_step(client, f"{(int(code_for(device)) + 1 + n) % 1000000:06d}")
    device.throttling_failure_count = 0
    device.save()
    response = code_step(client, code_for(device))
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
