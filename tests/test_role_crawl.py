"""The role crawl: every admin URL, as each role of team A and as a member of team B (issue 5).

The expectations are a table (URL name -> lowest role of team A that may use it); the crawl
discovers the URLs from the admin itself, so a page added without an entry here fails the test.
"""

import pytest
from django.contrib import admin
from django.urls import URLPattern, URLResolver, reverse

from routes.models import (
    AuditEvent,
    CheckResult,
    ConfigExport,
    Deployment,
    Key,
    Membership,
    NginxApply,
    NotificationChannel,
    NotificationDelivery,
    RouteOverride,
    Team,
    VerificationJob,
    VerificationRun,
)
from routes.workflows.keys import set_key
from tests.fakes.demo import controlled_emulators, demo_page

RANK = {"viewer": 1, "operator": 2, "owner": 3}
ALL = 0  # any staff user, team member or not
VIEW, EDIT, OWNER = 1, 2, 3
SECRETS = {
    "cpamp_admin": "cpamp_" + "Crawl9" * 5 + "Ab",
    "cpa_management": "crawl-management-key-7731",
    "cpa_api": "sk-crawl-api-key-55120",
}

# url name -> (lowest role in team A that may GET it, object it takes or None)
GET_TABLE = {
    "index": (ALL, None),
    "routes_deployment_changelist": (ALL, None),
    "routes_deployment_add": (EDIT, None),
    "routes_deployment_change": (VIEW, "deployment"),
    "routes_deployment_history": (VIEW, "deployment"),
    "routes_deployment_delete": (OWNER, "deployment"),
    "routes_deployment_config": (VIEW, "deployment"),
    # A viewer downloads what they may read (the config holds no secret).
    "routes_deployment_config_download": (VIEW, "deployment"),
    "routes_deployment_routes": (VIEW, "deployment"),
    "routes_deployment_first_setup": (OWNER, "deployment"),
    "routes_deployment_wizard": (EDIT, None),
    # Importing an nginx config creates (or replaces) a deployment: operators, in their teams.
    "routes_deployment_import_nginx": (EDIT, None),
    # The key step shows which keys exist (never a value); only owners may submit it.
    "routes_deployment_wizard_keys": (VIEW, "deployment"),
    "routes_deployment_wizard_finish": (VIEW, "deployment"),
    "routes_deployment_verify": (VIEW, "deployment"),
    # The status board's JSON (GET only): the dashboard's lists the user's own teams only.
    "routes_deployment_board": (ALL, None),
    "routes_deployment_board_detail": (VIEW, "deployment"),
    "routes_key_changelist": (ALL, None),
    "routes_key_add": (OWNER, None),
    "routes_key_change": (VIEW, "key"),
    "routes_key_history": (VIEW, "key"),
    "routes_key_delete": (OWNER, "key"),
    "routes_team_changelist": (ALL, None),
    "routes_team_change": (VIEW, "team"),
    "routes_team_history": (VIEW, "team"),
    "routes_membership_changelist": (ALL, None),
    "routes_membership_add": (OWNER, None),
    "routes_membership_change": (VIEW, "membership"),
    "routes_membership_history": (VIEW, "membership"),
    "routes_membership_delete": (OWNER, "membership"),
    "routes_auditevent_changelist": (ALL, None),
    "routes_auditevent_change": (VIEW, "audit"),
    "routes_auditevent_history": (VIEW, "audit"),
    "routes_configexport_changelist": (ALL, None),
    "routes_configexport_change": (VIEW, "export"),
    "routes_configexport_history": (VIEW, "export"),
    "routes_verificationrun_changelist": (ALL, None),
    "routes_verificationrun_change": (VIEW, "run"),
    "routes_verificationrun_history": (VIEW, "run"),
    "routes_verificationrun_progress": (VIEW, "run"),
    "routes_verificationjob_changelist": (ALL, None),
    "routes_verificationjob_change": (VIEW, "job"),
    "routes_verificationjob_history": (VIEW, "job"),
    "routes_verificationjob_add": (EDIT, None),
    "routes_verificationjob_delete": (EDIT, "job"),
    "routes_notificationchannel_changelist": (ALL, None),
    "routes_notificationchannel_add": (OWNER, None),
    "routes_notificationchannel_change": (VIEW, "channel"),
    "routes_notificationchannel_history": (VIEW, "channel"),
    "routes_notificationchannel_delete": (OWNER, "channel"),
    "routes_notificationdelivery_changelist": (ALL, None),
    "routes_notificationdelivery_change": (VIEW, "delivery"),
    "routes_notificationdelivery_history": (VIEW, "delivery"),
    # Apply history (issue 13): read-only, and the steps the config page polls.
    "routes_nginxapply_changelist": (ALL, None),
    "routes_nginxapply_change": (VIEW, "apply"),
    "routes_nginxapply_history": (VIEW, "apply"),
    "routes_nginxapply_progress": (VIEW, "apply"),
    "otp_totp_totpdevice_enrol": (ALL, None),
    "otp_totp_totpdevice_changelist": (ALL, None),
    "password_change": (ALL, None),
}
# Pages nobody but a superuser may open (no team role reaches them).
SUPERUSER_ONLY = {
    "routes_team_add",  # checked separately: owners may create teams
    "routes_auditevent_add",
    "routes_team_delete",  # deleting a team (and its history) is an administrator's call
    "routes_auditevent_delete",
    "routes_configexport_add",
    "routes_configexport_delete",
    "routes_verificationrun_add",
    "routes_verificationrun_delete",
    "routes_notificationdelivery_add",  # deliveries are the worker's record: nobody edits them
    "routes_notificationdelivery_delete",
    "routes_nginxapply_add",  # applies are the command's and the worker's record
    "routes_nginxapply_delete",
}
# url name -> lowest role in team A that may POST to it.
POST_TABLE = {
    # Exports of the audit trail are recorded, so they are POSTs; any member exports their own.
    "routes_auditevent_export_csv": ALL,
    "routes_auditevent_export_jsonl": ALL,
    "routes_deployment_config_test": EDIT,
    # Deploy: queues an apply to the live nginx (the worker writes, tests and reloads).
    "routes_deployment_apply": EDIT,
    "routes_deployment_test_key": EDIT,
    "routes_deployment_verify": EDIT,
    # Changes the job (an operator's) and queues a run.
    "routes_deployment_verify_tls_off": EDIT,
    "routes_deployment_first_setup": OWNER,
    "routes_deployment_confirm_destination": OWNER,
    "routes_deployment_delete": OWNER,
    "routes_key_delete": OWNER,
    "routes_membership_delete": OWNER,
}
# Only while `make demo` runs (settings.CONSOLE_DEMO_CONTROL_URL, tests/fakes/demo.py); absent (a
# 404) otherwise. url name -> lowest role, in any team, that may GET it and POST to it.
DEMO_ONLY = {"routes_demo": EDIT}
# changelist action name -> lowest role in team A that may run it on A's deployment.
ACTIONS = {
    "run_verification": EDIT,
    "download_archive": VIEW,
    "export_definitions": VIEW,
    "delete_selected": OWNER,
}
# Not crawled: they belong to Django or third-party apps that only superusers reach, or take
# no object of ours.
IGNORED_PREFIXES = ("auth_", "axes_", "django_tasks_database_", "otp_totp_totpdevice_")
IGNORED = {
    "login",
    "logout",
    "password_change_done",
    "autocomplete",
    "jsi18n",
    "view_on_site",
    "app_list",
}


def admin_url_names() -> set[str]:
    def walk(patterns):
        for p in patterns:
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns)
            elif isinstance(p, URLPattern) and p.name:
                yield p.name

    return set(walk(admin.site.get_urls()))


@pytest.fixture
def world(db, make_user):
    team_a = Team.objects.create(name="Alpha", slug="alpha")
    team_b = Team.objects.create(name="Bravo", slug="bravo")
    users = {role: make_user(f"a_{role}", team=team_a, role=role) for role in RANK}
    users["b_owner"] = make_user("b_owner", team=team_b, role="owner")
    deployment = Deployment.objects.create(
        slug="alpha-prod",
        name="Alpha production",
        team=team_a,
        server_name="alpha-secret-domain.example",
        # Probes from "Test this key" and verification stay on a closed loopback port.
        verification_base_url="http://127.0.0.1:9",
        cpamp_cpa_url="http://127.0.0.1:9",
    )
    RouteOverride.objects.create(
        deployment=deployment, match="prefix", path="/config", target="cpamp"
    )
    for role, secret in SECRETS.items():
        set_key(deployment=deployment, role=role, secret=secret)
    job = VerificationJob.objects.create(deployment=deployment)
    run = VerificationRun.objects.create(job=job, trigger="manual", status="failed")
    CheckResult.objects.create(
        run=run, check_id="panel", method="HEAD", url="http://x/", expected="200", passed=False
    )
    export = ConfigExport.objects.create(
        deployment=deployment, content_hash="0" * 64, text="# config", source="admin"
    )
    channel = NotificationChannel.objects.create(
        team=team_a, name="alpha hook", kind="webhook", target_masked="https://hooks.example.com/"
    )
    delivery = NotificationDelivery.objects.create(
        channel=channel, deployment=deployment, run=run, event="failed"
    )
    nginx_apply = NginxApply.objects.create(
        team=team_a, slugs=["alpha-prod"], directory="/tmp/nowhere", source="command"
    )
    nginx_apply.deployments.set([deployment])
    objects = {
        "apply": nginx_apply,
        "channel": channel,
        "delivery": delivery,
        "deployment": deployment,
        "key": Key.objects.filter(deployment=deployment).first(),
        "team": team_a,
        "membership": Membership.objects.get(user=users["viewer"]),
        "export": export,
        "run": run,
        "job": job,
        "audit": AuditEvent.objects.filter(team=team_a).first(),
    }
    return users, objects


def url_for(name: str, obj) -> str:
    if obj is None:
        return reverse(f"admin:{name}")
    return reverse(f"admin:{name}", args=[obj.pk])


def refused(response) -> bool:
    """Refused: 403, 404, or the admin's redirect away from an object it will not show."""
    if response.status_code in (403, 404):
        return True
    if response.status_code == 302:
        location = response.headers["Location"]
        return location.rstrip("/").endswith("/admin") or "/login/" in location
    return False


def body(response) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def allowed(response) -> bool:
    return response.status_code == 200 or (response.status_code == 302 and not refused(response))


def test_every_admin_url_is_in_the_crawl_table():
    names = admin_url_names()
    known = set(GET_TABLE) | SUPERUSER_ONLY | set(POST_TABLE) | IGNORED
    missing = {
        n for n in names - known if not n.startswith(IGNORED_PREFIXES) and n != "routes_team_add"
    }
    assert not missing, f"add these admin URLs to the role crawl: {sorted(missing)}"


@pytest.mark.parametrize("who", ["viewer", "operator", "owner", "b_owner"])
def test_get_pages_are_allowed_or_refused_by_role(client, world, who):
    users, objects = world
    client.force_login(users[who])
    rank = RANK.get(who, 0)
    problems = []
    for name, (needed, kind) in sorted(GET_TABLE.items()):
        obj = objects[kind] if kind else None
        response = client.get(url_for(name, obj))
        if who == "b_owner" and obj is not None:
            expect_allowed = False
        elif who == "b_owner":
            # Team B's owner may use list and create pages, but only for team B.
            expect_allowed = True
        else:
            expect_allowed = needed == ALL or rank >= needed
        if expect_allowed and not allowed(response):
            problems.append(f"{name}: expected allowed, got {response.status_code}")
        if not expect_allowed and not refused(response):
            problems.append(f"{name}: expected refused, got {response.status_code}")
        content = body(response)
        if who == "b_owner" and response.status_code == 200:
            for leak in (b"alpha-prod", b"alpha-secret-domain", b"Alpha production"):
                if leak in content:
                    problems.append(f"{name}: team B sees {leak!r}")
        for secret in SECRETS.values():
            if secret.encode() in content and name != "routes_deployment_first_setup":
                problems.append(f"{name}: renders a secret")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("who", ["viewer", "operator", "owner", "b_owner"])
def test_superuser_only_pages_are_refused_to_every_team_role(client, world, who):
    users, objects = world
    client.force_login(users[who])
    kinds = {
        "team": "team",
        "auditevent": None,
        "configexport": "export",
        "verificationrun": "run",
        "verificationjob": "job",
        "notificationdelivery": "delivery",
        "nginxapply": "apply",
    }
    problems = []
    for name in sorted(SUPERUSER_ONLY - {"routes_team_add"}):
        model = name.split("_")[1]
        obj = objects.get(kinds.get(model) or "") if not name.endswith("_add") else None
        if name.startswith("routes_auditevent") and not name.endswith("_add"):
            obj = objects["audit"]
        response = client.get(url_for(name, obj))
        if not refused(response):
            problems.append(f"{name}: expected refused, got {response.status_code}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("who", ["viewer", "operator", "owner", "b_owner"])
def test_state_changing_posts_are_allowed_or_refused_by_role(client, world, who):
    users, objects = world
    client.force_login(users[who])
    rank = RANK.get(who, 0)
    deployment, key = objects["deployment"], objects["key"]
    posts = {
        "routes_deployment_test_key": reverse(
            "admin:routes_deployment_test_key", args=[deployment.pk, key.pk]
        ),
        "routes_deployment_verify": url_for("routes_deployment_verify", deployment),
        "routes_deployment_verify_tls_off": url_for("routes_deployment_verify_tls_off", deployment),
        "routes_deployment_first_setup": url_for("routes_deployment_first_setup", deployment),
        "routes_deployment_confirm_destination": url_for(
            "routes_deployment_confirm_destination", deployment
        ),
        "routes_deployment_config_test": url_for("routes_deployment_config_test", deployment),
        "routes_deployment_apply": url_for("routes_deployment_apply", deployment),
        "routes_auditevent_export_csv": url_for("routes_auditevent_export_csv", None),
        "routes_auditevent_export_jsonl": url_for("routes_auditevent_export_jsonl", None),
    }
    problems = []
    for name, url in posts.items():
        response = client.post(url, {"post": "yes"})
        needed = POST_TABLE[name]
        expect_allowed = needed == ALL or (who != "b_owner" and rank >= needed)
        if expect_allowed and not allowed(response):
            problems.append(f"{name}: expected allowed, got {response.status_code}")
        if not expect_allowed and not refused(response):
            problems.append(f"{name}: expected refused, got {response.status_code}")
        content = body(response)
        if who == "b_owner" and response.status_code == 200:
            for leak in (b"alpha-prod", b"alpha-secret-domain", b"Alpha production"):
                if leak in content:
                    problems.append(f"{name}: team B sees {leak!r}")
        for secret in SECRETS.values():
            # Revealing the first-setup values to an owner is that page's purpose.
            if secret.encode() in content and name != "routes_deployment_first_setup":
                problems.append(f"{name}: renders a secret")
    # Deletes last: an allowed one removes the objects.
    for name, kind in (("routes_key_delete", "key"), ("routes_membership_delete", "membership")):
        response = client.post(url_for(name, objects[kind]), {"post": "yes"})
        expect_allowed = who != "b_owner" and rank >= POST_TABLE[name]
        gone = not type(objects[kind]).objects.filter(pk=objects[kind].pk).exists()
        if expect_allowed != gone:
            problems.append(f"{name}: allowed={expect_allowed} but deleted={gone}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("who", ["viewer", "operator", "owner", "b_owner"])
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_changelist_actions_are_allowed_or_refused_by_role(client, world, who, action):
    users, objects = world
    client.force_login(users[who])
    deployment = objects["deployment"]
    response = client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": action, "_selected_action": [deployment.pk], "post": "yes"},
    )
    expect_allowed = who != "b_owner" and RANK[who] >= ACTIONS[action]
    if action == "delete_selected":
        still_there = Deployment.objects.filter(pk=deployment.pk).exists()
        assert still_there != expect_allowed, response.status_code
        return
    if action == "run_verification":
        started = VerificationRun.objects.filter(job__deployment=deployment).count() > 1
        assert started == expect_allowed
        return
    is_download = response.headers.get("Content-Disposition", "").startswith("attachment")
    assert is_download == expect_allowed, (response.status_code, response.headers)
    if is_download:
        for secret in SECRETS.values():
            assert secret.encode() not in body(response)


def test_owners_may_create_teams_but_viewers_may_not(client, world):
    users, _objects = world
    client.force_login(users["owner"])
    assert client.get(reverse("admin:routes_team_add")).status_code == 200
    client.force_login(users["viewer"])
    assert refused(client.get(reverse("admin:routes_team_add")))


def test_the_demo_pages_exist_only_while_make_demo_runs(client, world):
    users, _objects = world
    assert not set(DEMO_ONLY) & admin_url_names()
    client.force_login(users["owner"])
    assert client.get("/admin/demo/").status_code == 404
    with controlled_emulators("alpha-prod") as control, demo_page(control.url):
        names = admin_url_names()
        assert set(DEMO_ONLY) <= names
        known = set(GET_TABLE) | SUPERUSER_ONLY | set(POST_TABLE) | IGNORED | set(DEMO_ONLY)
        unknown = {n for n in names - known if not n.startswith(IGNORED_PREFIXES)}
        assert unknown <= {"routes_team_add"}, f"add to the role crawl: {sorted(unknown)}"


@pytest.mark.parametrize("who", ["viewer", "operator", "owner", "b_owner"])
def test_demo_pages_are_allowed_or_refused_by_role(client, world, who):
    users, _objects = world
    client.force_login(users[who])
    # The demo acts in no chosen team: team B's owner is an owner somewhere, too.
    rank = RANK["owner"] if who == "b_owner" else RANK[who]
    problems = []
    with controlled_emulators("alpha-prod") as control, demo_page(control.url):
        for name, needed in DEMO_ONLY.items():
            url = reverse(f"admin:{name}")
            expect_allowed = rank >= needed
            for method, response in (
                ("GET", client.get(url)),
                ("POST", client.post(url, {"service": "cpamp", "action": "stop"})),
            ):
                if expect_allowed and not allowed(response):
                    problems.append(
                        f"{method} {name}: expected allowed, got {response.status_code}"
                    )
                if not expect_allowed and not refused(response):
                    problems.append(
                        f"{method} {name}: expected refused, got {response.status_code}"
                    )
                content = body(response)
                if who == "b_owner":
                    for leak in (b"alpha-prod", b"alpha-secret-domain", b"Alpha production"):
                        if leak in content:
                            problems.append(f"{method} {name}: team B sees {leak!r}")
            stopped = control.services["cpamp"].down
            if stopped != expect_allowed:
                problems.append(f"{name}: allowed={expect_allowed} but CPAMP stopped={stopped}")
            control.act("cpamp", "start")
    assert not problems, "\n".join(problems)
