"""Notifications: channels, changes of state, deliveries, add_channel and the admin pages.

Everything talks to loopback: a local SMTP server (aiosmtpd), local HTTP receivers for webhooks
and for Apprise's json:// service, and CPA/CPAMP emulators behind real nginx.
"""

from __future__ import annotations

import datetime as dt
import email
import io
import json
import logging
import re
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiosmtpd.controller import Controller
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from routes import tasks
from routes.alerts import channels, deliver, events
from routes.models import (
    AuditEvent,
    CheckResult,
    Deployment,
    DeploymentAlertState,
    NotificationChannel,
    NotificationDelivery,
    Team,
    VerificationRun,
)
from routes.verification import runs
from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY, free_port, running_stack

Event = NotificationDelivery.Event
Result = NotificationDelivery.Result
KEYS = (ADMIN_KEY, API_KEY, MANAGEMENT_KEY)
# Tokens of the channels' URLs: as secret as the keys.
HOOK_TOKEN = "whk-Tok3n-9f8e7d6c5b4a"
APPRISE_TOKEN = "apr-Tok3n-1a2b3c4d5e6f"
BASE_URL = "https://console.example.com"
IMMEDIATE = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
CONTRACT_KEYS = {"event", "deployment", "team", "run", "status", "causes", "url"}


# --- loopback receivers -------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with ``status``.

    ``echo``: the answer's body repeats the request path, as careless receivers do.
    """

    def __init__(self, *, status: int = 204, echo: bool = False) -> None:
        self.status = status
        self.echo = echo
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers), body, time.monotonic())
                    )
                answer = f"no hook at {self.path}".encode() if receiver.echo else b""
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class MailSink:
    """aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.raw: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted for delivery"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def apprise_receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def mail(settings: Any) -> Iterator[MailSink]:
    sink = MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield sink
    controller.stop()


@pytest.fixture(autouse=True)
def _alert_settings(settings: Any) -> None:
    settings.CONSOLE_BASE_URL = BASE_URL
    settings.CONSOLE_NOTIFY_RETRY_DELAYS = [0.3, 0.3]
    settings.CONSOLE_NOTIFY_TIMEOUT = 5.0


def drain(timeout: float = 60.0) -> None:
    """Run the database worker until no task is ready and no delivery waits for its turn."""
    deadline = time.monotonic() + timeout
    while True:
        call_command("db_worker", batch=True, startup_delay=False, stdout=io.StringIO())
        waiting = (
            NotificationDelivery.objects.filter(
                result__in=[Result.PENDING, Result.SENDING]
            ).exists()
            or DBTaskResult.objects.filter(status="READY").exists()
        )
        if not waiting:
            return
        assert time.monotonic() < deadline, "the worker left work behind"
        time.sleep(0.05)


def stored_rows() -> str:
    """Return every stored row a secret could leak into, as text."""
    return "".join(
        repr(list(model.objects.values()))
        for model in (
            NotificationDelivery,
            NotificationChannel,
            DeploymentAlertState,
            AuditEvent,
            DBTaskResult,
        )
    )


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (*KEYS, HOOK_TOKEN, APPRISE_TOKEN):
            assert secret not in text


def finished_run(deployment: Deployment, status: str, *, at: dt.datetime | None = None) -> Any:
    """Store a finished run of deployment with one check that passed or failed."""
    run = runs.create_run(deployment=deployment, trigger="manual", base_url="http://127.0.0.1:9")
    run.status = status
    run.finished_at = at or timezone.now()
    run.save()
    CheckResult.objects.create(
        run=run,
        check_id="cpamp_health",
        method="GET",
        url="http://127.0.0.1:9/health",
        expected="200",
        passed=status == VerificationRun.Status.PASSED,
        diagnosis="" if status == "passed" else "CPAMP does not answer: is it running?",
    )
    return run


def webhook(team: Team, url: str, **extra: Any) -> NotificationChannel:
    return channels.create_channel(team=team, kind="webhook", target=url, **extra)


# --- the whole loop, through real nginx ---------------------------------------------------------


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_down_and_up_again_is_told_once_per_channel_with_the_contract_body_and_no_secret(
    deployment, receiver, apprise_receiver, mail, caplog
):
    caplog.set_level(logging.DEBUG)
    hook = webhook(deployment.team, receiver.url(f"/hook/{HOOK_TOKEN}"), name="hook")
    channels.create_channel(
        team=deployment.team,
        kind="apprise",
        target=f"json://127.0.0.1:{apprise_receiver.port}/{APPRISE_TOKEN}",
        name="apprise",
    )
    channels.create_channel(
        team=deployment.team, kind="email", target="oncall@example.com", name="mail"
    )
    with running_stack(deployment) as stack:
        # 1. passing, from `manage.py verify`: never run -> up is no change to tell.
        call_command("verify", "prod", stdout=io.StringIO())
        drain()
        assert NotificationDelivery.objects.count() == 0
        # 2. CPAMP stopped; the run is the admin button's, performed by the worker.
        stack.cpamp.stop()
        down = tasks.start_run(deployment=stack.deployment, trigger="manual")
        drain()
        # 3. still down, from `manage.py verify` again: the same state tells nothing.
        with pytest.raises(SystemExit):
            call_command("verify", "prod", stdout=io.StringIO())
        drain()
        # 4. CPAMP back, a scheduled run.
        stack.cpamp.start()
        up = tasks.start_run(deployment=stack.deployment, trigger="scheduled")
        drain()
    down.refresh_from_db()
    up.refresh_from_db()
    assert (down.status, up.status) == ("failed", "passed")

    bodies = [r.json() for r in receiver.requests]
    assert [b["event"] for b in bodies] == ["failed", "recovered"]
    for request, body, run in zip(receiver.requests, bodies, (down, up), strict=True):
        assert request.headers["Content-Type"] == "application/json"
        assert request.path == f"/hook/{HOOK_TOKEN}"
        assert set(body) == CONTRACT_KEYS
        assert body["deployment"] == "prod" and body["team"] == "ops"
        assert body["run"] == run.pk and body["status"] == run.status
        assert body["url"] == f"{BASE_URL}/admin/routes/verificationrun/{run.pk}/change/"
    failed_causes = bodies[0]["causes"]
    assert failed_causes and all(set(c) == {"code", "diagnosis"} for c in failed_causes)
    assert bodies[1]["causes"] == []

    titles = [r.json()["title"] for r in apprise_receiver.requests]
    assert len(titles) == 2
    assert "prod is down" in titles[0] and "prod recovered" in titles[1]
    assert f"/verificationrun/{down.pk}/" in apprise_receiver.requests[0].json()["message"]

    subjects = [m["Subject"] for m in mail.messages]
    assert len(subjects) == 2
    assert f"prod is down (run #{down.pk} failed)" in subjects[0]
    assert f"prod recovered (run #{up.pk} passed)" in subjects[1]
    text = mail.messages[0].get_content()
    assert failed_causes[0]["code"] in text and bodies[0]["url"] in text
    assert mail.messages[0]["To"] == "oncall@example.com"

    deliveries = NotificationDelivery.objects.all()
    assert deliveries.count() == 6
    assert {d.result for d in deliveries} == {Result.SENT}
    for channel in NotificationChannel.objects.all():
        events_sent = sorted(channel.deliveries.values_list("event", flat=True))
        assert events_sent == ["failed", "recovered"], channel.name
    assert hook.deliveries.get(event="failed").response_code == 204

    assert_no_secret(
        *(r.body.decode() for r in receiver.requests + apprise_receiver.requests),
        *(raw.decode() for raw in mail.raw),
        stored_rows(),
        caplog.text,
    )


# --- retries ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_receiver_answering_500_sees_three_attempts_and_the_run_is_unaffected(deployment, caplog):
    refusing = Receiver(status=500, echo=True)
    try:
        webhook(deployment.team, refusing.url(f"/hook/{HOOK_TOKEN}"))
        # Nothing listens on port 9: the run fails quickly, which is a change of state.
        run = tasks.start_run(
            deployment=deployment, trigger="manual", base_url="http://127.0.0.1:9"
        )
        drain()
    finally:
        refusing.close()
    run.refresh_from_db()
    assert run.status == VerificationRun.Status.FAILED and run.error == ""
    task = DBTaskResult.objects.get(task_path="routes.tasks.run_verification")
    assert task.status == "SUCCESSFUL"
    assert task.return_value == {"run": run.pk, "status": "failed"}

    assert len(refusing.requests) == 3
    gaps = [b.at - a.at for a, b in zip(refusing.requests, refusing.requests[1:], strict=False)]
    assert all(gap >= 0.3 for gap in gaps), gaps
    attempts = list(NotificationDelivery.objects.order_by("attempt"))
    assert [d.attempt for d in attempts] == [1, 2, 3]
    assert [d.result for d in attempts] == [Result.RETRIED, Result.RETRIED, Result.FAILED]
    assert {d.response_code for d in attempts} == {500}
    assert {d.run_id for d in attempts} == {run.pk}
    # The receiver echoed the URL's token: the stored error keeps the status, not the token.
    assert attempts[0].error.startswith("HTTP 500")
    assert "[redacted]" in attempts[0].error
    assert_no_secret(stored_rows(), caplog.text)


@pytest.mark.django_db(transaction=True)
def test_a_webhook_nobody_listens_on_fails_without_quoting_its_url(deployment, settings):
    settings.CONSOLE_NOTIFY_RETRY_DELAYS = []
    channel = webhook(deployment.team, f"http://127.0.0.1:{free_port()}/hook/{HOOK_TOKEN}")
    delivery = events.create_test_delivery(channel=channel)
    assert deliver.deliver(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.result == Result.FAILED and delivery.response_code is None
    assert delivery.error == "The connection was refused or broken."
    # A delivery that is no longer pending is never sent twice.
    assert deliver.deliver(delivery_id=delivery.pk) is None


@pytest.mark.django_db(transaction=True)
def test_an_apprise_refusal_keeps_apprises_reason_and_status(deployment, settings, caplog):
    settings.CONSOLE_NOTIFY_RETRY_DELAYS = []
    refusing = Receiver(status=500)
    try:
        channel = channels.create_channel(
            team=deployment.team,
            kind="apprise",
            target=f"json://127.0.0.1:{refusing.port}/{APPRISE_TOKEN}",
        )
        delivery = events.create_test_delivery(channel=channel)
        deliver.deliver(delivery_id=delivery.pk)
    finally:
        refusing.close()
    delivery.refresh_from_db()
    assert len(refusing.requests) == 1
    assert (delivery.result, delivery.response_code) == (Result.FAILED, 500)
    assert "Failed to send JSON POST notification" in delivery.error
    assert_no_secret(stored_rows(), caplog.text)


@pytest.mark.django_db
def test_a_mail_server_nobody_runs_fails_with_a_plain_reason(deployment, settings):
    settings.CONSOLE_NOTIFY_RETRY_DELAYS = []
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    channel = channels.create_channel(team=deployment.team, kind="email", target="a@example.com")
    delivery = events.create_test_delivery(channel=channel)
    deliver.deliver(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.result == Result.FAILED
    assert delivery.error == (
        "The mail server (EMAIL_URL) could not be reached: ConnectionRefusedError."
    )


@pytest.mark.django_db(transaction=True)
def test_a_failure_to_prepare_notifications_leaves_the_run_as_it_is(deployment, receiver):
    webhook(deployment.team, receiver.url("/hook"))
    run = runs.create_run(deployment=deployment, trigger="manual", base_url="http://127.0.0.1:9")
    with (
        override_settings(TASKS=IMMEDIATE),
        mock.patch.object(events, "on_run_finished", side_effect=RuntimeError("boom")),
    ):
        result = tasks.run_verification.enqueue(run.pk, False)
    assert result.return_value == {"run": run.pk, "status": "failed"}
    assert receiver.requests == []


@pytest.mark.django_db
def test_an_undecryptable_target_fails_at_once_without_retries(deployment):
    channel = webhook(deployment.team, "https://hooks.example.com/x")
    NotificationChannel.objects.filter(pk=channel.pk).update(target_ciphertext="not-a-token")
    delivery = events.create_test_delivery(channel=channel)
    assert deliver.deliver(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.result == Result.FAILED
    assert "cannot be decrypted" in delivery.error
    assert NotificationDelivery.objects.count() == 1


# --- changes of state ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_change_of_state_is_one_delivery_per_channel(deployment):
    one = webhook(deployment.team, "https://hooks.example.com/one")
    two = webhook(deployment.team, "https://hooks.example.com/two")
    assert events.on_run_finished(finished_run(deployment, "passed")) == []
    down = finished_run(deployment, "failed")
    ids = events.on_run_finished(down)
    assert len(ids) == 2
    assert events.on_run_finished(down) == []  # told again: nothing new
    assert events.on_run_finished(finished_run(deployment, "error")) == []  # still down
    up = finished_run(deployment, "passed")
    assert len(events.on_run_finished(up)) == 2
    assert events.on_run_finished(finished_run(deployment, "passed")) == []
    for channel in (one, two):
        assert list(channel.deliveries.order_by("id").values_list("event", "run_id")) == [
            ("failed", down.pk),
            ("recovered", up.pk),
        ]
    assert NotificationDelivery.objects.filter(result=Result.PENDING).count() == 4


@pytest.mark.django_db
def test_a_deployment_that_fails_its_first_run_is_reported_down(deployment):
    webhook(deployment.team, "https://hooks.example.com/one")
    run = finished_run(deployment, "error")
    (delivery,) = NotificationDelivery.objects.filter(pk__in=events.on_run_finished(run))
    assert delivery.event == Event.FAILED
    assert DeploymentAlertState.objects.get(deployment=deployment).state == "down"


@pytest.mark.django_db
def test_a_run_that_finished_before_the_recorded_one_changes_nothing(deployment):
    webhook(deployment.team, "https://hooks.example.com/one")
    now = timezone.now()
    late = finished_run(deployment, "failed", at=now - dt.timedelta(minutes=5))
    events.on_run_finished(finished_run(deployment, "passed", at=now))
    assert events.on_run_finished(late) == []
    assert DeploymentAlertState.objects.get(deployment=deployment).state == "up"


@pytest.mark.django_db
def test_a_run_not_finished_yet_changes_nothing(deployment):
    webhook(deployment.team, "https://hooks.example.com/one")
    run = runs.create_run(deployment=deployment, trigger="manual")
    assert events.on_run_finished(run) == []
    assert not DeploymentAlertState.objects.exists()


@pytest.mark.django_db
def test_only_enabled_channels_of_the_team_that_cover_the_deployment_hear_of_it(
    deployment, team, other_team
):
    staging = Deployment.objects.create(
        slug="staging", name="Staging", team=team, server_name="staging.example.com"
    )
    everything = webhook(team, "https://hooks.example.com/all")
    prod_only = webhook(team, "https://hooks.example.com/prod", deployments=[deployment])
    staging_only = webhook(team, "https://hooks.example.com/staging", deployments=[staging])
    webhook(team, "https://hooks.example.com/off", enabled=False)
    webhook(other_team, "https://hooks.example.com/other")
    ids = events.on_run_finished(finished_run(deployment, "failed"))
    told = set(NotificationDelivery.objects.filter(pk__in=ids).values_list("channel", flat=True))
    assert told == {everything.pk, prod_only.pk}
    assert not staging_only.deliveries.exists()


@pytest.mark.django_db
def test_a_channel_asking_for_reminders_gets_one_every_n_hours_while_down(deployment):
    reminded = webhook(deployment.team, "https://hooks.example.com/r", remind_every_hours=2)
    quiet = webhook(deployment.team, "https://hooks.example.com/q")
    start = timezone.now()

    def run_at(hours: float, status: str = "failed") -> list[int]:
        at = start + dt.timedelta(hours=hours)
        with mock.patch("django.utils.timezone.now", return_value=at):
            return events.on_run_finished(finished_run(deployment, status, at=at))

    assert len(run_at(0)) == 2  # failed, to both
    assert run_at(1) == []
    (reminder,) = NotificationDelivery.objects.filter(pk__in=run_at(2.1))
    assert (reminder.channel_id, reminder.event) == (reminded.pk, Event.REMINDER)
    assert reminder.payload["event"] == "failed" and reminder.payload["reminder"] is True
    assert run_at(3) == []
    assert len(run_at(4.2)) == 1
    assert len(run_at(5, "passed")) == 2  # recovered, to both
    assert run_at(9, "passed") == []
    assert not quiet.deliveries.filter(event=Event.REMINDER).exists()


@pytest.mark.django_db
def test_the_causes_are_the_failed_checks_when_no_root_cause_is_known(deployment, settings):
    run = finished_run(deployment, "failed")
    assert events.run_causes(run) == [
        {"code": "cpamp_health", "diagnosis": "CPAMP does not answer: is it running?"}
    ]
    errored = runs.create_run(deployment=deployment, trigger="manual")
    VerificationRun.objects.filter(pk=errored.pk).update(status="error", error="Base URL refused")
    errored.refresh_from_db()
    assert events.run_causes(errored) == [{"code": "run_error", "diagnosis": "Base URL refused"}]


@pytest.mark.django_db
def test_a_notification_carries_no_key_even_when_a_diagnosis_quotes_one(deployment):
    from tests.fakes.stack import store_key

    store_key(deployment, "cpa_api", API_KEY)
    run = finished_run(deployment, "failed")
    CheckResult.objects.filter(run=run).update(diagnosis=f"CPA refused {API_KEY}")
    payload = events.run_payload(run, event=Event.FAILED)
    assert set(payload) == CONTRACT_KEYS
    assert API_KEY not in json.dumps(payload)
    assert "[redacted]" in payload["causes"][0]["diagnosis"]


@pytest.mark.django_db
def test_an_email_says_what_the_webhook_says(deployment):
    run = finished_run(deployment, "failed")
    message = events.message_of(events.run_payload(run, event=Event.FAILED))
    assert message.subject == f"CPA console: prod is down (run #{run.pk} failed)"
    assert "Deployment prod of team ops: run" in message.text
    assert "- cpamp_health: CPAMP does not answer: is it running?" in message.text
    assert f"{BASE_URL}/admin/routes/verificationrun/{run.pk}/change/" in message.text


# --- targets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "target", "masked"),
    [
        ("email", "oncall@example.com", "o•••@example.com"),
        (
            "webhook",
            f"https://hooks.example.com/services/{HOOK_TOKEN}",
            "https://hooks.example.com/••••5b4a",
        ),
        ("webhook", "http://user:pw@alertmanager:9093/hook", "http://alertmanager:9093/••••"),
        ("apprise", f"json://127.0.0.1:8080/{APPRISE_TOKEN}", "json://••••5e6f"),
        ("apprise", "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "slack://••••i7FQ"),
    ],
)
def test_a_target_is_shown_masked(kind, target, masked):
    channels.validate_target(kind, target)
    assert channels.mask_target(kind, target) == masked


@pytest.mark.parametrize(
    ("kind", "target", "reason"),
    [
        ("email", "not an address", "spaces"),
        ("email", "oncall@", "Give one email address"),
        ("webhook", "ftp://hooks.example.com/x", "starts with http:// or https://"),
        ("webhook", "http://169.254.169.254/latest/meta-data", "link-local"),
        ("webhook", "https://", "Give a URL such as"),
        ("apprise", "slackx://abc", "Apprise cannot use this slackx:// URL"),
        ("apprise", "just-words", "Give an Apprise URL"),
        ("apprise", "json://169.254.169.254/x", "link-local"),
        ("webhook", "https://hooks.example.com/" + "a" * 2000, "at most 2000 characters"),
    ],
)
def test_it_refuses_a_target_that_cannot_work(kind, target, reason):
    with pytest.raises(Exception) as refused:
        channels.validate_target(kind, target)
    assert reason in " ".join(refused.value.messages)


@pytest.mark.django_db
def test_a_target_is_stored_encrypted_and_audited_masked(team):
    target = f"https://hooks.example.com/{HOOK_TOKEN}"
    channel = webhook(team, target, name="ops hook")
    assert channel.reveal_target() == target
    assert HOOK_TOKEN not in channel.target_ciphertext
    event = AuditEvent.objects.get(action="channel.create")
    assert_no_secret(repr(event.changes), stored_rows())
    assert event.changes["target_masked"][1] == channel.target_masked


@pytest.mark.django_db
def test_a_rotated_encryption_key_re_encrypts_targets(team, settings):
    from cryptography.fernet import Fernet

    channel = webhook(team, f"https://hooks.example.com/{HOOK_TOKEN}")
    settings.CONSOLE_ENCRYPTION_KEYS = [
        Fernet.generate_key().decode(),
        *settings.CONSOLE_ENCRYPTION_KEYS,
    ]
    assert channels.reencrypt_targets() == 1
    assert channels.reencrypt_targets() == 0
    settings.CONSOLE_ENCRYPTION_KEYS = settings.CONSOLE_ENCRYPTION_KEYS[:1]
    channel.refresh_from_db()
    assert channel.reveal_target() == f"https://hooks.example.com/{HOOK_TOKEN}"


# --- add_channel ----------------------------------------------------------------------------------


def add_channel(monkeypatch: pytest.MonkeyPatch, stdin: str, *args: str) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command("add_channel", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_add_channel_reads_the_target_from_stdin_and_prints_the_id(monkeypatch, deployment):
    out = add_channel(
        monkeypatch,
        f"https://hooks.example.com/{HOOK_TOKEN}\n",
        "ops",
        "webhook",
        "--name",
        "On-call hook",
        "--deployment",
        "prod",
    )
    channel = NotificationChannel.objects.get()
    assert out.strip() == str(channel.pk)
    assert HOOK_TOKEN not in out
    assert channel.name == "On-call hook" and channel.kind == "webhook"
    assert channel.reveal_target() == f"https://hooks.example.com/{HOOK_TOKEN}"
    assert not channel.all_deployments
    assert list(channel.deployments.values_list("slug", flat=True)) == ["prod"]
    assert AuditEvent.objects.get(action="channel.create").actor_label == "command"


@pytest.mark.django_db
def test_add_channel_without_deployments_covers_all_and_names_itself(monkeypatch, team):
    out = add_channel(monkeypatch, "oncall@example.com", "ops", "email")
    channel = NotificationChannel.objects.get(pk=int(out))
    assert channel.all_deployments
    assert channel.name == "email o•••@example.com"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        ("oncall@example.com", ["nope", "email"], "TEAM_SLUG: no team with slug 'nope'."),
        ("oncall@", ["ops", "email"], "target: Give one email address, such as ops@example.com."),
        (
            f"http://169.254.169.254/{HOOK_TOKEN}",
            ["ops", "webhook"],
            "target: 169.254.169.254 is a link-local or cloud-metadata address",
        ),
        (f"slackx://{APPRISE_TOKEN}", ["ops", "apprise"], "target: Apprise cannot use this"),
        ("", ["ops", "email"], "target: nothing was read from stdin."),
        (
            "oncall@example.com",
            ["ops", "email", "--deployment", "prod", "ghost"],
            "--deployment: no deployment ghost in team ops.",
        ),
        (
            "oncall@example.com",
            ["ops", "email", "--remind-every-hours", "0"],
            "--remind-every-hours: Give 1 to 720 hours",
        ),
    ],
)
def test_add_channel_refuses_with_the_field_and_the_reason(
    monkeypatch, deployment, stdin, args, message
):
    with pytest.raises(CommandError) as refused:
        add_channel(monkeypatch, stdin, *args)
    assert message in str(refused.value)
    assert_no_secret(str(refused.value))
    assert not NotificationChannel.objects.exists()


@pytest.mark.django_db
def test_add_channel_refuses_a_name_the_team_has(monkeypatch, team):
    add_channel(monkeypatch, "a@example.com", "ops", "email", "--name", "mail")
    with pytest.raises(CommandError) as refused:
        add_channel(monkeypatch, "b@example.com", "ops", "email", "--name", "mail")
    assert "--name: This team already has a channel with this name." in str(refused.value)


@pytest.mark.django_db
def test_add_channel_takes_no_target_on_the_command_line(monkeypatch, team):
    with pytest.raises(CommandError, match="unrecognized arguments"):
        add_channel(monkeypatch, "", "ops", "email", "oncall@example.com")


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_channel_examples() -> list[tuple[str, list[str]]]:
    """Return (stdin, arguments) of each `echo ... | ... add_channel ...` line of the README."""
    found = []
    for line in README.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r'echo "([^"]+)" \| \S+ manage\.py add_channel (.+)', line.strip())
        if match:
            found.append((match[1], shlex.split(match[2])))
    return found


@pytest.mark.django_db
def test_the_readmes_add_channel_examples_work(monkeypatch, deployment):
    examples = readme_channel_examples()
    assert {args[1] for _stdin, args in examples} == {"email", "webhook", "apprise"}
    for stdin, args in examples:
        channel_id = add_channel(monkeypatch, stdin, *args).strip()
        assert NotificationChannel.objects.get(pk=int(channel_id)).kind == args[1]


@pytest.mark.django_db
def test_add_channel_refuses_a_deployment_of_another_team(monkeypatch, deployment, other_team):
    with pytest.raises(CommandError, match="--deployment: no deployment prod in team other"):
        add_channel(monkeypatch, "a@example.com", "other", "email", "--deployment", "prod")


# --- the admin ------------------------------------------------------------------------------------

CHANNELS = "admin:routes_notificationchannel_changelist"
DELIVERIES = "admin:routes_notificationdelivery_changelist"


def change_url(channel: NotificationChannel) -> str:
    return reverse("admin:routes_notificationchannel_change", args=[channel.pk])


def channel_form(team: Team, **fields: Any) -> dict[str, Any]:
    data = {
        "team": team.pk,
        "name": "hook",
        "kind": "webhook",
        "target": f"https://hooks.example.com/{HOOK_TOKEN}",
        "all_deployments": "on",
        "remind_every_hours": "",
        "enabled": "on",
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def hook(team: Team) -> NotificationChannel:
    return webhook(team, f"https://hooks.example.com/{HOOK_TOKEN}", name="hook")


@pytest.mark.django_db
def test_an_owner_adds_changes_and_deletes_a_channel(client, make_user, team, deployment):
    client.force_login(make_user("olive", team=team, role="owner"))
    add = reverse("admin:routes_notificationchannel_add")
    response = client.post(add, channel_form(team, all_deployments=None, deployments=deployment.pk))
    assert response.status_code == 302, response.context["adminform"].form.errors
    channel = NotificationChannel.objects.get()
    assert channel.reveal_target() == f"https://hooks.example.com/{HOOK_TOKEN}"
    assert list(channel.deployments.all()) == [deployment]

    page = client.get(change_url(channel)).content.decode()
    assert channel.target_masked in page and HOOK_TOKEN not in page
    # A blank target keeps the stored one.
    response = client.post(
        change_url(channel), channel_form(team, name="renamed", target="", deployments=None)
    )
    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.name == "renamed" and channel.all_deployments
    assert channel.reveal_target() == f"https://hooks.example.com/{HOOK_TOKEN}"

    delete = reverse("admin:routes_notificationchannel_delete", args=[channel.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert not NotificationChannel.objects.exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"channel.create", "channel.change", "channel.delete"} <= actions
    assert_no_secret(stored_rows())


@pytest.mark.django_db
def test_the_channel_form_names_the_field_and_never_echoes_the_target(client, make_user, team):
    client.force_login(make_user("olive", team=team, role="owner"))
    bad = f"http://169.254.169.254/{HOOK_TOKEN}"
    response = client.post(
        reverse("admin:routes_notificationchannel_add"), channel_form(team, target=bad)
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "link-local" in errors["target"][0]
    assert HOOK_TOKEN not in response.content.decode()
    response = client.post(
        reverse("admin:routes_notificationchannel_add"),
        channel_form(team, all_deployments=None),
    )
    assert (
        "List at least one deployment"
        in response.context["adminform"].form.errors["deployments"][0]
    )
    assert not NotificationChannel.objects.exists()


@pytest.mark.django_db
def test_an_owner_cannot_list_another_teams_deployment(client, make_user, team, other_team):
    elsewhere = Deployment.objects.create(
        slug="theirs", name="Theirs", team=other_team, server_name="theirs.example.com"
    )
    Membership = team.memberships.model
    owner = make_user("olive", team=team, role="owner")
    Membership.objects.create(user=owner, team=other_team, role="owner")
    client.force_login(owner)
    response = client.post(
        reverse("admin:routes_notificationchannel_add"),
        channel_form(team, all_deployments=None, deployments=elsewhere.pk),
    )
    assert (
        "Not deployments of this channel's team: theirs."
        in response.context["adminform"].form.errors["deployments"][0]
    )


@pytest.mark.django_db(transaction=True)
def test_an_operator_sees_channels_and_sends_a_test_the_worker_delivers(
    client, make_user, team, receiver
):
    channel = webhook(team, receiver.url(f"/hook/{HOOK_TOKEN}"), name="hook")
    client.force_login(make_user("otto", team=team, role="operator"))
    listing = client.get(reverse(CHANNELS)).content.decode()
    assert channel.target_masked in listing and HOOK_TOKEN not in listing
    assert client.get(reverse("admin:routes_notificationchannel_add")).status_code == 403
    page = client.get(change_url(channel)).content.decode()
    assert 'name="target"' not in page and HOOK_TOKEN not in page
    refused = client.post(change_url(channel), channel_form(team, name="mine"))
    assert refused.status_code == 403
    with override_settings(TASKS=IMMEDIATE):
        response = client.post(
            reverse(CHANNELS),
            {"action": "send_test_notification", "_selected_action": [channel.pk]},
        )
    assert response.status_code == 302
    (request,) = receiver.requests
    assert request.json()["event"] == "test" and request.json()["team"] == "ops"
    delivery = NotificationDelivery.objects.get()
    assert (delivery.event, delivery.result, delivery.response_code) == ("test", "sent", 204)
    assert AuditEvent.objects.get(action="channel.test").actor.username == "otto"


@pytest.mark.django_db
def test_a_viewer_sees_channels_masked_and_may_not_test_them(client, make_user, team, hook):
    client.force_login(make_user("vera", team=team, role="viewer"))
    listing = client.get(reverse(CHANNELS)).content.decode()
    assert hook.target_masked in listing and HOOK_TOKEN not in listing
    assert "send_test_notification" not in listing
    page = client.get(change_url(hook)).content.decode()
    assert hook.target_masked in page and 'name="target"' not in page
    client.post(
        reverse(CHANNELS), {"action": "send_test_notification", "_selected_action": [hook.pk]}
    )
    assert not NotificationDelivery.objects.exists()


@pytest.mark.django_db
def test_another_teams_channel_does_not_exist_for_a_user(client, make_user, other_team, hook):
    client.force_login(make_user("olive", team=other_team, role="owner"))
    assert client.get(change_url(hook)).status_code == 404
    assert hook.target_masked not in client.get(reverse(CHANNELS)).content.decode()
    assert client.get(reverse(DELIVERIES)).status_code == 200


@pytest.mark.django_db
def test_deliveries_are_listed_per_channel_and_per_run(client, make_user, deployment, hook):
    other = webhook(deployment.team, "https://hooks.example.com/other", name="other")
    down = finished_run(deployment, "failed")
    events.on_run_finished(down)
    up = finished_run(deployment, "passed")
    events.on_run_finished(up)
    NotificationDelivery.objects.filter(event="failed").update(
        result=Result.FAILED, response_code=500, error="HTTP 500 Internal Server Error"
    )
    client.force_login(make_user("vera", team=deployment.team, role="viewer"))

    def listed(**query: Any) -> list[NotificationDelivery]:
        response = client.get(reverse(DELIVERIES), query)
        assert response.status_code == 200
        return list(response.context["cl"].result_list)

    assert len(listed()) == 4
    assert {d.channel_id for d in listed(channel=other.pk)} == {other.pk}
    assert {(d.run_id, d.event) for d in listed(run=down.pk)} == {(down.pk, "failed")}
    page = client.get(reverse(DELIVERIES), {"run": down.pk}).content.decode()
    assert "HTTP 500 Internal Server Error" in page
    channel_page = client.get(change_url(hook)).content.decode()
    assert "recovered" in channel_page and f"?channel={hook.pk}" in channel_page
