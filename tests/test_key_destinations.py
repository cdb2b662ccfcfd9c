"""Keys go only where an owner says: who may move a key destination, and what runs send where.

A recording HTTP server on 127.0.0.1 stands in for a host an operator controls: it answers every
request and keeps each one's headers, so a test can prove that no key reached it.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from routes import keys as keyring
from routes import validators as v
from routes.context import acting
from routes.models import (
    AuditEvent,
    CheckResult,
    Deployment,
    Key,
    Membership,
    RouteOverride,
    Team,
    VerificationJob,
    VerificationRun,
)
from routes.verification import destinations, runs
from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY, free_port, store_key
from tests.test_admin import deployment_data, messages_of, new_deployment_data
from tests.test_wizard import step1 as wizard_step1

SECRETS = (ADMIN_KEY, API_KEY, MANAGEMENT_KEY)
CHANGE = "admin:routes_deployment_change"
ONLY_OWNER = "only an owner of team ops may change where keys are sent"


# --- a host that records what it receives -----------------------------------------------------


class Recorder:
    """A threaded HTTP server on 127.0.0.1 that records the headers of every request."""

    def __init__(self, *, status: int = 200, location: str = "") -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.requests.append((self.command, self.path, dict(self.headers.items())))
                body = b'{"ok":true}'
                self.send_response(status)
                if location:
                    self.send_header("Location", location + self.path)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def authorizations(self) -> list[str]:
        """Return every Authorization header received."""
        return [h["Authorization"] for _m, _p, h in self.requests if "Authorization" in h]

    def received_a_secret(self) -> bool:
        """Return True when any stored secret arrived anywhere in any request."""
        seen = repr(self.requests)
        return any(secret in seen for secret in SECRETS)


@contextmanager
def recording(**kwargs):
    recorder = Recorder(**kwargs)
    recorder.thread.start()
    try:
        yield recorder
    finally:
        recorder.server.shutdown()
        recorder.server.server_close()


def localhost_is_loopback() -> bool:
    infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    return {info[4][0] for info in infos} == {"127.0.0.1"}


def keyed_deployment(team, owner, **fields) -> Deployment:
    """A deployment with the three keys whose current destinations an owner confirmed."""
    values = {
        "slug": "prod",
        "name": "Production",
        "team": team,
        "server_name": "localhost",
        "http_port": free_port(),
        "cpa_upstream": "127.0.0.1:8317",
        "cpamp_upstream": "127.0.0.1:18317",
        # Nothing listens on the discard port: cpa_direct's key goes nowhere.
        "cpamp_cpa_url": "http://127.0.0.1:9",
        **fields,
    }
    deployment = Deployment.objects.create(**values)
    store_key(deployment, keyring.CPAMP_ADMIN, ADMIN_KEY, custom_format=True)
    store_key(deployment, keyring.CPA_MANAGEMENT, MANAGEMENT_KEY, custom_format=True)
    store_key(deployment, keyring.CPA_API, API_KEY, custom_format=True)
    with acting(user=owner):
        destinations.confirm_destination(deployment=deployment)
    return deployment


def stored_text(deployment) -> str:
    rows = [
        list(AuditEvent.objects.values()),
        list(VerificationRun.objects.values()),
        list(CheckResult.objects.values()),
        list(Key.objects.filter(deployment=deployment).values("last_validation_detail")),
    ]
    return repr(rows)


# --- A base URL is an origin ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "https://api.example.com",
        "https://api.example.com/",
        "http://127.0.0.1:8080",
        "http://[::1]:8317",
        "http://cli-proxy-api:8317",
    ],
)
def test_it_accepts_an_origin(value):
    v.validate_origin(value)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("https://api.example.com/v0/", "path"),
        ("https://api.example.com//", "path"),
        ("http://10.0.0.5?", "query"),
        ("http://10.0.0.5/?", "query"),
        ("http://10.0.0.5/?next=/", "query"),
        ("http://10.0.0.5#", "fragment"),
        ("http://10.0.0.5/#x", "fragment"),
    ],
)
def test_it_refuses_a_base_url_with_a_path_query_or_fragment(value, code):
    with pytest.raises(ValidationError) as caught:
        v.validate_origin(value)
    assert caught.value.code == code
    assert "A base URL is an origin" in " ".join(caught.value.messages)


def test_it_refuses_user_info_in_a_base_url():
    with pytest.raises(ValidationError, match="credentials"):
        v.validate_origin("https://user:pw@api.example.com")


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "169.254.0.1",
        "[fe80::1]",
        "[fd00:ec2::254]",
        "[::ffff:169.254.169.254]",
        "2852039166",  # 169.254.169.254 as one number
        "0xa9fea9fe",
        "169.254.43518",
    ],
)
def test_it_refuses_link_local_and_cloud_metadata_addresses(host):
    with pytest.raises(ValidationError) as caught:
        v.validate_origin(f"http://{host}")
    assert caught.value.code == "link_local"
    assert "CONSOLE_ALLOW_LINK_LOCAL" in " ".join(caught.value.messages)


def test_a_setting_allows_link_local_addresses(settings):
    settings.CONSOLE_ALLOW_LINK_LOCAL = True
    v.validate_origin("http://169.254.169.254")
    v.validate_origin("http://[fe80::1]:8080")


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "10.0.0.5", "localhost", "169.253.1.1"])
def test_loopback_and_private_addresses_stay_allowed(host):
    v.validate_origin(f"http://{host}:8317")


@given(
    st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._~%-]{1,20}", fullmatch=True),
)
def test_it_refuses_any_path_after_the_origin(host, segment):
    with pytest.raises(ValidationError):
        v.validate_origin(f"https://{host}.example.com/{segment}")


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("HTTPS://API.Example.com:443/", "https://api.example.com"),
        ("http://api.example.com:80", "http://api.example.com"),
        ("http://127.0.0.1:8080/v1/models", "http://127.0.0.1:8080"),
        ("http://[::1]:8317", "http://[::1]:8317"),
        ("ftp://x", ""),
        ("http://x:99999", ""),
    ],
)
def test_origin_of_normalises_scheme_host_and_default_port(url, origin):
    assert destinations.origin_of(url) == origin


@pytest.mark.parametrize("field", ["verification_base_url", "cpamp_cpa_url"])
def test_the_deployment_fields_refuse_a_url_that_is_not_an_origin(deployment, field):
    setattr(deployment, field, "http://10.0.0.5:8317/?")
    with pytest.raises(ValidationError) as caught:
        deployment.full_clean()
    assert field in caught.value.message_dict


def test_the_job_base_url_refuses_a_url_that_is_not_an_origin(deployment):
    job = VerificationJob(deployment=deployment, base_url="http://169.254.169.254")
    with pytest.raises(ValidationError) as caught:
        job.full_clean()
    assert "base_url" in caught.value.message_dict


@pytest.mark.parametrize(
    ("url", "reason"),
    [("http://10.0.0.5/?", "query"), ("http://169.254.169.254", "link-local")],
)
def test_verify_refuses_a_base_url_that_is_not_an_origin(deployment, url, reason):
    with pytest.raises(CommandError) as caught:
        call_command("verify", "prod", "--base-url", url)
    assert caught.value.returncode == 2
    assert str(caught.value).startswith("--base-url:")
    assert reason in str(caught.value)
    assert not VerificationRun.objects.exists()


def test_a_run_whose_stored_base_url_is_not_an_origin_ends_in_a_clear_error(deployment):
    # Stored before this rule existed: the run refuses it instead of sending the checks.
    run = runs.create_run(deployment=deployment, trigger="manual", base_url="http://a.b/x?")
    run = runs.execute_run(run=run)
    assert run.status == runs.Status.ERROR
    assert "A base URL is an origin" in run.error
    assert not run.results.exists()


# --- Only an owner moves a key destination --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "label"),
    [
        ("verification_base_url", "http://127.0.0.1:9999", "Verification base URL"),
        ("cpamp_cpa_url", "http://127.0.0.1:9999", "CPA URL used by CPAMP"),
    ],
)
def test_an_operator_may_not_change_a_key_destination_on_the_deployment_form(
    client, users, team, field, value, label
):
    deployment = keyed_deployment(team, users["owner"])
    before = Deployment.objects.values().get(pk=deployment.pk)
    client.force_login(users["operator"])
    override = {"match": "prefix", "path": "/x/", "target": "cpa", "enabled": True}
    response = client.post(
        reverse(CHANGE, args=[deployment.pk]),
        deployment_data(deployment, overrides=[override], name="Renamed", **{field: value}),
    )
    assert response.status_code == 200
    errors = messages_of(response.context["adminform"].form.errors[field])
    assert label in errors and ONLY_OWNER in errors
    # Nothing half-saved: not the field, not the name, not the override in the same POST.
    assert Deployment.objects.values().get(pk=deployment.pk) == before
    assert not RouteOverride.objects.exists()
    assert not AuditEvent.objects.filter(action="deployment.change").exists()


@pytest.mark.parametrize("field", ["verification_base_url", "cpamp_cpa_url"])
def test_an_operator_may_not_give_a_new_deployment_its_own_key_destination(
    client, users, team, field
):
    client.force_login(users["operator"])
    response = client.post(
        "/admin/routes/deployment/add/",
        new_deployment_data(team, **{field: "http://127.0.0.1:9999"}),
    )
    assert response.status_code == 200
    assert ONLY_OWNER in messages_of(response.context["adminform"].form.errors[field])
    assert not Deployment.objects.exists()


def test_an_operator_adds_a_deployment_with_a_preset_and_its_destination_waits_for_an_owner(
    client, users, team
):
    client.force_login(users["operator"])
    response = client.post("/admin/routes/deployment/add/", new_deployment_data(team), follow=True)
    assert response.status_code == 200
    created = Deployment.objects.get(slug="staging")
    assert created.keys_confirmed_origins == []
    assert "Keys are held back from" in response.content.decode()


def test_an_owner_changes_a_key_destination_and_the_save_confirms_it(client, users, team):
    deployment = keyed_deployment(team, users["owner"])
    client.force_login(users["owner"])
    response = client.post(
        reverse(CHANGE, args=[deployment.pk]),
        deployment_data(deployment, cpamp_cpa_url="http://127.0.0.1:9999"),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    deployment.refresh_from_db()
    assert deployment.cpamp_cpa_url == "http://127.0.0.1:9999"
    assert "http://127.0.0.1:9999" in deployment.keys_confirmed_origins
    assert "http://127.0.0.1:9" not in deployment.keys_confirmed_origins
    assert deployment.keys_confirmed_by == users["owner"]
    event = AuditEvent.objects.filter(action="deployment.confirm_destination").latest("id")
    assert event.changes["how"] == "save" and event.actor == users["owner"]


def test_an_owner_of_a_two_factor_team_needs_a_verified_session(client, users, team):
    team.require_owner_2fa = True
    team.save()
    deployment = keyed_deployment(team, None)
    client.force_login(users["owner"])  # no OTP device: is_verified() is False
    response = client.post(
        reverse(CHANGE, args=[deployment.pk]),
        deployment_data(deployment, verification_base_url="http://127.0.0.1:9999"),
    )
    assert response.status_code == 200
    errors = messages_of(response.context["adminform"].form.errors["verification_base_url"])
    assert "two-factor" in errors
    url = reverse("admin:routes_deployment_confirm_destination", args=[deployment.pk])
    assert client.post(url, {"confirm_origins": "x"}).status_code == 403


def test_an_operator_may_not_move_a_deployment_with_keys_to_another_team(client, users, team):
    other = Team.objects.create(name="Lab", slug="lab")
    operator = users["operator"]
    Membership.objects.create(user=operator, team=other, role="owner")
    deployment = keyed_deployment(team, users["owner"])
    client.force_login(operator)
    response = client.post(
        reverse(CHANGE, args=[deployment.pk]), deployment_data(deployment, team=other.pk)
    )
    assert response.status_code == 200
    errors = messages_of(response.context["adminform"].form.errors["team"])
    assert "only an owner of team ops may move a deployment that holds keys" in errors
    assert Deployment.objects.get(pk=deployment.pk).team_id == team.pk


def job_data(**changes) -> dict:
    data = {"base_url": "", "verify_tls": "on", "timeout_seconds": "10", "interval_seconds": ""}
    data.update(changes)
    return data


def test_an_operator_may_not_change_the_job_base_url(client, users, team):
    deployment = keyed_deployment(team, users["owner"])
    job = runs.job_for(deployment)
    client.force_login(users["operator"])
    url = reverse("admin:routes_verificationjob_change", args=[job.pk])
    response = client.post(url, job_data(base_url="http://127.0.0.1:9999", timeout_seconds="5"))
    assert response.status_code == 200
    errors = messages_of(response.context["adminform"].form.errors["base_url"])
    assert "Base URL" in errors and ONLY_OWNER in errors
    job.refresh_from_db()
    assert job.base_url == "" and job.timeout_seconds == 10.0
    # Everything else about the job stays the operator's to change.
    assert client.post(url, job_data(timeout_seconds="5")).status_code == 302


def test_an_operator_may_not_add_a_job_with_its_own_base_url(client, users, team):
    deployment = keyed_deployment(team, users["owner"])
    client.force_login(users["operator"])
    response = client.post(
        reverse("admin:routes_verificationjob_add"),
        job_data(deployment=deployment.pk, base_url="http://127.0.0.1:9999"),
    )
    assert response.status_code == 200
    assert ONLY_OWNER in messages_of(response.context["adminform"].form.errors["base_url"])
    assert not VerificationJob.objects.exists()


def test_an_owner_sets_the_job_base_url_and_it_is_confirmed(client, users, team):
    deployment = keyed_deployment(team, users["owner"])
    job = runs.job_for(deployment)
    client.force_login(users["owner"])
    url = reverse("admin:routes_verificationjob_change", args=[job.pk])
    response = client.post(url, job_data(base_url="http://127.0.0.1:9999"))
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert "http://127.0.0.1:9999 (Host: localhost:9999)" in deployment.keys_confirmed_origins
    assert destinations.unconfirmed_origins(deployment) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"verification_base_url": "http://127.0.0.1:9999"},
        {
            "topology": "custom",
            "cpa_upstream": "10.0.0.5:8317",
            "cpamp_upstream": "10.0.0.6:18317",
            "cpamp_cpa_url": "http://127.0.0.1:9999",
        },
    ],
)
def test_an_operator_may_not_set_a_key_destination_in_the_wizard(client, users, team, changes):
    client.force_login(users["operator"])
    response = client.post(reverse("admin:routes_deployment_wizard"), wizard_step1(team, **changes))
    assert response.status_code == 200
    field = "verification_base_url" if "verification_base_url" in changes else "cpamp_cpa_url"
    assert ONLY_OWNER in messages_of(response.context["form"].errors[field])
    assert not Deployment.objects.exists()


def test_an_operator_creates_through_the_wizard_and_an_owner_must_confirm(client, users, team):
    client.force_login(users["operator"])
    response = client.post(reverse("admin:routes_deployment_wizard"), wizard_step1(team))
    assert response.status_code == 302
    created = Deployment.objects.get(slug="prod")
    assert created.keys_confirmed_origins == []
    client.force_login(users["owner"])
    response = client.post(
        reverse("admin:routes_deployment_wizard"),
        wizard_step1(team, slug="prod2", verification_base_url="http://127.0.0.1:9999"),
    )
    assert response.status_code == 302
    owned = Deployment.objects.get(slug="prod2")
    assert owned.keys_confirmed_origins == [
        "http://127.0.0.1:9999 (Host: api.example.com:9999)",
        "http://cli-proxy-api:8317",
    ]


def import_file(tmp_path, payload) -> str:
    path = tmp_path / "deployments.json"
    path.write_text(json.dumps(payload))
    return str(path)


def issue_example() -> dict:
    with open("tests/data/issue-example.json") as handle:
        return json.load(handle)


def test_import_as_an_operator_refuses_a_verification_base_url(db, users, team, tmp_path):
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command(
            "import_deployments", import_file(tmp_path, issue_example()), "--as", "oli", stderr=err
        )
    assert caught.value.returncode == 1
    assert f"prod: verification.base_url: {ONLY_OWNER}" in err.getvalue()
    assert not Deployment.objects.exists()


def test_import_as_an_operator_refuses_a_new_cpa_url_on_update(db, users, team, tmp_path):
    keyed_deployment(team, users["owner"])
    payload = issue_example()
    entry = payload["deployments"][0]
    entry.pop("verification")
    entry["cpamp_cpa_url"] = "http://127.0.0.1:9999"
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command(
            "import_deployments",
            import_file(tmp_path, payload),
            "--update",
            "--as",
            "oli",
            stderr=err,
        )
    assert f"prod: cpamp_cpa_url: {ONLY_OWNER}" in err.getvalue()
    assert Deployment.objects.get(slug="prod").cpamp_cpa_url == "http://127.0.0.1:9"


def test_import_as_an_operator_moving_the_derived_destination_leaves_it_unconfirmed(
    db, users, team, tmp_path
):
    deployment = keyed_deployment(team, users["owner"])
    payload = {"version": 1, "deployments": [portable_entry(deployment, http_port=8081)]}
    call_command("import_deployments", import_file(tmp_path, payload), "--update", "--as", "oli")
    deployment.refresh_from_db()
    assert deployment.http_port == 8081
    assert destinations.unconfirmed_origins(deployment) == ["http://localhost:8081"]
    event = AuditEvent.objects.filter(action="deployment.import").latest("id")
    assert event.actor == users["operator"]


def portable_entry(deployment, **changes) -> dict:
    from routes import portable

    entry = portable.export_payload(deployments=Deployment.objects.filter(pk=deployment.pk))
    entry = entry["deployments"][0]
    entry.pop("keys")
    entry.update(changes)
    return entry


def test_import_as_a_viewer_is_refused(db, make_user, team, tmp_path):
    make_user("vic", team=team, role="viewer")
    payload = issue_example()
    payload["deployments"][0].pop("verification")
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command(
            "import_deployments", import_file(tmp_path, payload), "--as", "vic", stderr=err
        )
    assert "prod: team: vic may not create deployments in team ops" in err.getvalue()


def test_import_as_an_unknown_user_is_a_clear_error(db, tmp_path):
    with pytest.raises(CommandError, match="--as: No account is called nobody"):
        call_command("import_deployments", import_file(tmp_path, issue_example()), "--as", "nobody")


@pytest.mark.parametrize("as_owner", [False, True])
def test_import_by_the_administrator_or_as_an_owner_confirms_the_destinations(
    db, users, team, tmp_path, as_owner
):
    extra = ["--as", "ona"] if as_owner else []
    call_command("import_deployments", import_file(tmp_path, issue_example()), *extra)
    prod = Deployment.objects.get(slug="prod")
    assert prod.keys_confirmed_origins == ["http://cli-proxy-api:8317", "https://api.example.com"]
    event = AuditEvent.objects.get(action="deployment.confirm_destination")
    assert event.changes["how"] == "import"
    assert event.actor_label == ("ona" if as_owner else "command")


# --- Runs, probes and the loopback listener --------------------------------------------------


def confirm_url(deployment) -> str:
    return reverse("admin:routes_deployment_confirm_destination", args=[deployment.pk])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("field", ["http_port", "server_name"])
def test_an_operators_edit_that_moves_the_checks_sends_no_key_until_an_owner_confirms(
    client, users, team, field
):
    if not localhost_is_loopback():
        pytest.skip("localhost does not resolve to 127.0.0.1 only here")
    with recording() as listener:
        # Owner-confirmed start: the checks went to a closed port on api.example.com or localhost.
        start = {"server_name": "api.example.invalid"} if field == "server_name" else {}
        if field == "server_name":
            start["http_port"] = listener.port
        deployment = keyed_deployment(team, users["owner"], **start)
        client.force_login(users["operator"])
        change = (
            {"http_port": listener.port} if field == "http_port" else {"server_name": "localhost"}
        )
        response = client.post(
            reverse(CHANGE, args=[deployment.pk]),
            deployment_data(deployment, **change),
            follow=True,
        )
        assert response.status_code == 200
        assert "Keys are held back from" in response.content.decode()
        deployment.refresh_from_db()
        assert destinations.unconfirmed_origins(deployment) == [
            listener.origin.replace("127.0.0.1", "localhost")
        ]

        run = runs.verify_now(deployment=deployment)
        assert listener.requests, "the checks should reach the new destination"
        assert listener.authorizations() == []
        assert not listener.received_a_secret()
        by_id = {r.check_id: r for r in run.results.all()}
        assert not by_id["api_models"].passed
        assert by_id["api_models"].details["keys_withheld"] is True
        assert "Keys held back" in by_id["api_models"].diagnosis
        # Probes that only make sense with their key are not sent at all.
        for check_id in (
            "management_config",
            "management_refuses_api_key",
            "api_refuses_admin_key",
        ):
            assert by_id[check_id].details.get("skipped") is True, check_id
            assert "Keys held back" in by_id[check_id].diagnosis
        assert "Keys are held back from" in run.error
        assert run.status == runs.Status.FAILED
        assert not any(secret in stored_text(deployment) for secret in SECRETS)

        # The owner confirms what the page shows; the same run now carries the keys.
        client.force_login(users["owner"])
        page = client.get(reverse(CHANGE, args=[deployment.pk])).content.decode()
        assert "Confirm key destination" in page
        origins = destinations.key_origins(deployment)
        response = client.post(confirm_url(deployment), {"confirm_origins": origins})
        assert response.status_code == 302
        listener.requests.clear()
        runs.verify_now(deployment=deployment)
        sent = listener.authorizations()
        assert f"Bearer {API_KEY}" in sent and f"Bearer {ADMIN_KEY}" in sent
        assert f"Bearer {MANAGEMENT_KEY}" not in sent  # that one only ever goes to the CPA URL


@pytest.mark.django_db(transaction=True)
def test_a_confirmation_is_an_audit_event_with_the_origins(client, users, team):
    deployment = keyed_deployment(team, users["owner"])
    client.force_login(users["operator"])
    client.post(reverse(CHANGE, args=[deployment.pk]), deployment_data(deployment, http_port=8088))
    deployment.refresh_from_db()
    shown = destinations.key_origins(deployment)
    page = client.get(reverse(CHANGE, args=[deployment.pk])).content.decode()
    assert "not confirmed, checks run without keys" in page
    assert "Confirm key destination" not in page  # the button is an owner's
    operator_try = client.post(confirm_url(deployment), {"confirm_origins": shown})
    assert operator_try.status_code == 403
    assert client.get(confirm_url(deployment)).status_code == 405
    client.force_login(users["owner"])
    response = client.post(
        confirm_url(deployment), {"confirm_origins": shown}, REMOTE_ADDR="10.9.8.7"
    )
    assert response.status_code == 302
    event = AuditEvent.objects.filter(action="deployment.confirm_destination").latest("id")
    assert event.actor == users["owner"]
    assert event.team_id == team.pk and event.object_id == str(deployment.pk)
    assert event.changes["origins"][1] == shown == ["http://127.0.0.1:9", "http://localhost:8088"]
    assert event.changes["how"] == "confirm"
    assert event.ip == "10.9.8.7"
    deployment.refresh_from_db()
    assert deployment.keys_confirmed_by == users["owner"]
    assert destinations.unconfirmed_origins(deployment) == []


@pytest.mark.django_db(transaction=True)
def test_a_stale_confirmation_is_refused_when_the_destination_moved_meanwhile(client, users, team):
    deployment = keyed_deployment(team, users["owner"])
    shown = destinations.key_origins(deployment)
    Deployment.objects.filter(pk=deployment.pk).update(http_port=8099)
    client.force_login(users["owner"])
    response = client.post(confirm_url(deployment), {"confirm_origins": shown}, follow=True)
    assert "changed while you were looking" in response.content.decode()
    deployment.refresh_from_db()
    assert destinations.unconfirmed_origins(deployment) == ["http://localhost:8099"]


@pytest.mark.django_db(transaction=True)
def test_an_owner_saving_another_field_does_not_confirm_an_operators_move(client, users, team):
    deployment = keyed_deployment(team, users["owner"])
    client.force_login(users["operator"])
    client.post(reverse(CHANGE, args=[deployment.pk]), deployment_data(deployment, http_port=8077))
    deployment.refresh_from_db()
    client.force_login(users["owner"])
    response = client.post(
        reverse(CHANGE, args=[deployment.pk]), deployment_data(deployment, notes="tidy")
    )
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert destinations.unconfirmed_origins(deployment) == ["http://localhost:8077"]


@pytest.mark.django_db(transaction=True)
def test_turning_https_on_moves_the_destination_and_holds_keys_back(users, team, tmp_path):
    deployment = keyed_deployment(team, users["owner"])
    deployment.tls = True
    deployment.https_port = 8443
    deployment.ssl_certificate = "/etc/ssl/a.pem"
    deployment.ssl_certificate_key = "/etc/ssl/a.key"
    from routes.workflows.deployments import save_deployment

    with acting(user=users["operator"]):
        save_deployment(deployment=deployment)
        destinations.confirm_own_change(deployment=deployment, before=[])
    assert destinations.unconfirmed_origins(deployment) == ["https://localhost:8443"]


@pytest.mark.django_db(transaction=True)
def test_a_new_server_name_behind_a_confirmed_address_holds_keys_back(client, users, team):
    # Through an IP address the server name goes out as Host and picks nginx's server block,
    # so on a shared nginx it picks the upstream that would get the key.
    with recording() as listener:
        deployment = keyed_deployment(
            team, users["owner"], server_name="api.example.com", verification_base_url=""
        )
        Deployment.objects.filter(pk=deployment.pk).update(verification_base_url=listener.origin)
        deployment.refresh_from_db()
        with acting(user=users["owner"]):
            destinations.confirm_destination(deployment=deployment)
        assert f"{listener.origin} (Host: api.example.com:{listener.port})" in (
            deployment.keys_confirmed_origins
        )
        client.force_login(users["operator"])
        response = client.post(
            reverse(CHANGE, args=[deployment.pk]),
            deployment_data(deployment, server_name="other.example.com"),
        )
        assert response.status_code == 302
        deployment.refresh_from_db()
        runs.verify_now(deployment=deployment)
        hosts = {headers.get("Host") for _m, _p, headers in listener.requests}
        assert hosts == {f"other.example.com:{listener.port}"}
        assert listener.authorizations() == [] and not listener.received_a_secret()


@pytest.mark.django_db(transaction=True)
def test_a_key_is_never_sent_after_a_redirect(users, team):
    with recording() as elsewhere:
        with recording(status=302, location=elsewhere.origin) as confirmed:
            deployment = keyed_deployment(team, users["owner"])
            deployment.verification_base_url = confirmed.origin
            deployment.save()
            with acting(user=users["owner"]):
                destinations.confirm_destination(deployment=deployment)
            runs.verify_now(deployment=deployment)
            # The confirmed origin got the keys and answered 302; nothing followed it.
            assert f"Bearer {API_KEY}" in confirmed.authorizations()
            assert elsewhere.requests == []


@pytest.mark.django_db(transaction=True)
def test_test_this_key_sends_nothing_to_an_unconfirmed_destination(client, users, team):
    with recording() as listener:
        deployment = keyed_deployment(team, users["owner"])
        client.force_login(users["operator"])
        client.post(
            reverse(CHANGE, args=[deployment.pk]),
            deployment_data(deployment, http_port=listener.port),
        )
        key = Key.objects.get(deployment=deployment, role=keyring.CPA_API)
        url = reverse("admin:routes_deployment_test_key", args=[deployment.pk, key.pk])
        page = client.post(url, follow=True).content.decode()
        assert "not tested" in page and "Keys held back" in page
        assert listener.requests == []
        key.refresh_from_db()
        assert key.last_validation_ok is None
        event = AuditEvent.objects.filter(action="key.test").latest("id")
        assert event.changes["result"] == "not tried"

        deployment.refresh_from_db()
        with acting(user=users["owner"]):
            destinations.confirm_destination(deployment=deployment)
        client.post(url)
        assert f"Bearer {API_KEY}" in listener.authorizations()


@pytest.mark.django_db(transaction=True)
def test_test_this_key_for_the_management_key_follows_the_cpa_url(users, team):
    with recording() as listener:
        deployment = keyed_deployment(team, users["owner"])
        # Written past the form, as by hand in a shell: not confirmed, so nothing goes there.
        Deployment.objects.filter(pk=deployment.pk).update(cpamp_cpa_url=listener.origin)
        deployment.refresh_from_db()
        key = Key.objects.get(deployment=deployment, role=keyring.CPA_MANAGEMENT)
        with acting(user=users["operator"]):
            result = runs.probe_key(key=key)
        assert result.ok is None and "Keys held back" in result.detail
        assert listener.requests == []


@pytest.mark.django_db(transaction=True)
def test_verify_with_a_base_url_sends_keys_to_the_origin_the_administrator_named(users, team):
    with recording() as listener:
        keyed_deployment(team, users["owner"])
        out = io.StringIO()
        with pytest.raises(SystemExit):
            call_command("verify", "prod", "--json", "--base-url", listener.origin, stdout=out)
        assert f"Bearer {API_KEY}" in listener.authorizations()
        assert not any(secret in out.getvalue() for secret in SECRETS)


@pytest.mark.django_db(transaction=True)
def test_a_queued_run_of_an_unconfirmed_destination_sends_no_key(users, team):
    with recording() as listener:
        deployment = keyed_deployment(team, users["owner"])
        Deployment.objects.filter(pk=deployment.pk).update(http_port=listener.port)
        deployment.refresh_from_db()
        run = runs.create_run(deployment=deployment, trigger="manual")
        runs.execute_run(run=run)
        assert listener.requests and listener.authorizations() == []


# --- The upgrade ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_confirms_the_destinations_existing_deployments_use():
    executor = MigrationExecutor(connection)
    before = [("routes", "0002_verbose_names")]
    after = [("routes", "0002_key_destinations")]
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps
        team = old.get_model("routes", "Team").objects.create(name="Ops", slug="ops")
        OldDeployment = old.get_model("routes", "Deployment")
        first = OldDeployment.objects.create(
            slug="a", name="A", team=team, server_name="a.example.com", http_port=8080
        )
        second = OldDeployment.objects.create(
            slug="b",
            name="B",
            team=team,
            server_name="b.example.com",
            tls=True,
            ssl_certificate="/c.pem",
            ssl_certificate_key="/k.pem",
            cpamp_cpa_url="http://10.0.0.5:8317",
        )
        old.get_model("routes", "VerificationJob").objects.create(
            deployment=second, base_url="https://10.0.0.9"
        )
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        NewDeployment = new.get_model("routes", "Deployment")
        assert NewDeployment.objects.get(pk=first.pk).keys_confirmed_origins == [
            "http://a.example.com:8080",
            "http://cli-proxy-api:8317",
        ]
        assert NewDeployment.objects.get(pk=second.pk).keys_confirmed_origins == [
            "http://10.0.0.5:8317",
            "https://10.0.0.9 (Host: b.example.com)",
        ]
        events = new.get_model("routes", "AuditEvent").objects.filter(
            action="deployment.confirm_destination"
        )
        assert {e.changes["how"] for e in events} == {"upgrade"} and events.count() == 2
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
