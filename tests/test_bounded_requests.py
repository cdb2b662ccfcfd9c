"""Every request is bounded in total, runs end by their own deadline, and stored text is redacted
before it is cut (issue 9, items 3 and 7). Servers bind 127.0.0.1 only."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from django.utils import timezone

from routes.models import VerificationRun
from routes.nginx.export import self_signed_certificate
from routes.verification import http, runner, runs
from routes.verification.checks import CHECKS
from routes.verification.http import MAX_BODY, MIN_PREFIX, REDACTED, Redactor, send
from routes.verification.outcomes import EXCERPT_CHARS, CheckOutcome, excerpt
from routes.verification.runner import build_context
from tests.fakes.stack import store_key

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-echoed-secret-9f8e7d6c5b4a3210"
# Generous slack over a timeout: the machine may be busy with other test processes.
SLACK = 1.5


class Loopback:
    """A TCP server on 127.0.0.1 that hands each connection to handler(conn, stop) in a thread."""

    def __init__(self, handler: Callable[[socket.socket, threading.Event], None], *, tls=None):
        self.handler = handler
        self.tls = tls
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handler(conn, self.stop)
        except OSError:
            pass  # the client gave up, as it should
        finally:
            conn.close()

    def __enter__(self) -> Loopback:
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        self.threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)


def read_request(conn: socket.socket) -> bytes:
    """Return the request head the client sent (up to the blank line)."""
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def drip(conn: socket.socket, stop: threading.Event, data: bytes, *, every: float = 0.5) -> None:
    """Send data one byte at a time, one byte every `every` seconds, until stopped."""
    for i in range(len(data)):
        if stop.wait(every):
            return
        conn.sendall(data[i : i + 1])


def drip_body(conn: socket.socket, stop: threading.Event) -> None:
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n")
    drip(conn, stop, b"x" * 100000)


def drip_headers(conn: socket.socket, stop: threading.Event) -> None:
    read_request(conn)
    drip(conn, stop, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 100000)


def answer(body: bytes, *, status: str = "200 OK", headers: str = "") -> Callable:
    """Return a handler that answers every request at once with body."""

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        conn.sendall(head.encode("latin-1") + body)

    return handler


def timed_send(url: str, *, timeout: float, **kwargs) -> tuple[http.Probe, float]:
    started = time.monotonic()
    probe = send(
        method="GET", url=url, timeout=timeout, verify=kwargs.pop("verify", True), **kwargs
    )
    return probe, time.monotonic() - started


# --- one deadline per check -------------------------------------------------------------------


def test_a_body_dripping_one_byte_at_a_time_cannot_hold_a_check_past_its_timeout():
    with Loopback(drip_body) as server:
        probe, elapsed = timed_send(server.url + "/health", timeout=2)
    assert elapsed < 2 + SLACK
    # It did wait for the drip (each byte arrived well inside a per-read timeout).
    assert elapsed >= 1.8
    assert probe.error == "timeout"
    # Half a body is never judged: the answer counts as not arrived.
    assert probe.status_code is None and probe.body == b""
    assert "status 200" in probe.error_detail


def test_headers_dripping_one_byte_at_a_time_cannot_hold_a_check_past_its_timeout():
    with Loopback(drip_headers) as server:
        probe, elapsed = timed_send(server.url + "/health", timeout=2)
    assert 1.8 <= elapsed < 2 + SLACK
    assert probe.error == "timeout" and probe.status_code is None


def test_a_tls_body_dripping_one_byte_at_a_time_cannot_hold_a_check_past_its_timeout(tmp_path):
    cert, key = self_signed_certificate(tmp_path, "drip.example.com", days=2)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with Loopback(drip_body, tls=context) as server:
        probe, elapsed = timed_send(server.url + "/health", timeout=2, verify=False)
    assert 1.8 <= elapsed < 2 + SLACK
    assert probe.error == "timeout" and probe.status_code is None


def test_a_slow_dns_lookup_counts_against_the_same_deadline(monkeypatch):
    release = threading.Event()
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if host == "slow-dns.invalid":
            release.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    try:
        probe, elapsed = timed_send("http://slow-dns.invalid:8080/health", timeout=1)
    finally:
        release.set()
    assert elapsed < 1 + SLACK
    assert probe.error == "timeout"


def test_a_quick_answer_is_read_whole_within_the_deadline():
    body = json.dumps({"ok": True, "service": "cpa-manager-plus"}).encode()
    with Loopback(answer(body, headers="X-Console-Upstream: cpamp\r\n")) as server:
        probe, _elapsed = timed_send(server.url + "/health", timeout=2)
    assert probe.error == "" and probe.status_code == 200
    assert probe.json() == {"ok": True, "service": "cpa-manager-plus"}
    assert probe.headers["x-console-upstream"] == "cpamp"


def test_a_body_larger_than_the_bound_is_cut_not_read_whole():
    with Loopback(answer(b"z" * (MAX_BODY * 3))) as server:
        probe, _elapsed = timed_send(server.url + "/", timeout=2)
    assert probe.status_code == 200 and len(probe.body) == MAX_BODY


@pytest.mark.django_db
def test_a_check_against_a_dripping_server_is_a_timeout_of_its_own_length(deployment):
    with Loopback(drip_body) as server:
        ctx = build_context(deployment, base_url=server.url, verify_tls=True, timeout=2, keys={})
        started = time.monotonic()
        outcome = runner.run_check(CHECKS["cpamp_health"], ctx)
        elapsed = time.monotonic() - started
    assert elapsed < 2 + SLACK
    assert outcome.timed_out and not outcome.passed
    assert outcome.diagnosis.startswith("Timed out after 2 s")


# --- one deadline per run ---------------------------------------------------------------------


def passing(check) -> CheckOutcome:
    return CheckOutcome(
        check_id=check.id,
        method=check.method,
        url="http://127.0.0.1/",
        expected="",
        expected_upstream=check.expected_upstream,
        passed=True,
    )


@pytest.mark.django_db
def test_a_run_stops_waiting_at_its_deadline_and_reports_unfinished_checks_as_timed_out(
    deployment, monkeypatch
):
    # A check that ignores its own deadline (a bug, a hung library) cannot hold the run.
    release = threading.Event()
    hung = {"cpa_health", "management_config"}

    def fake(check, ctx):
        if check.id in hung:
            release.wait(30)
        return passing(check)

    monkeypatch.setattr(runner, "run_check", fake)
    plan = [
        CHECKS[i]
        for i in ("panel", "cpa_health", "management_config", "management_refuses_api_key")
    ]
    ctx = build_context(
        deployment, base_url="http://127.0.0.1:9", verify_tls=True, timeout=0.5, keys={}
    )
    budget = runner.run_budget(plan, timeout=0.5)
    stored: list[str] = []
    started = time.monotonic()
    try:
        outcomes = runner.run_checks(
            ctx, plan, on_results=lambda batch: stored.extend(o.check_id for o in batch)
        )
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < budget + SLACK
    by_id = {o.check_id: o for o in outcomes}
    assert [o.check_id for o in outcomes] == [c.id for c in plan]
    assert sorted(stored) == sorted(by_id)
    assert by_id["panel"].passed
    # The hung checks, and the lane probe that waited behind the hung one, timed out.
    for check_id in ("cpa_health", "management_config", "management_refuses_api_key"):
        assert not by_id[check_id].passed
        assert by_id[check_id].timed_out
        assert by_id[check_id].details == {"error": "timeout", "run_deadline": True}
        assert "deadline" in by_id[check_id].diagnosis


@pytest.mark.django_db
def test_checks_that_each_use_their_whole_timeout_all_finish_inside_the_run_deadline(
    deployment, monkeypatch, settings
):
    # The worst case the budget is made for: a small pool, every request taking its full timeout
    # (the certificate check two of them) and the lane's probes one after another.
    settings.CONSOLE_VERIFY_POOL = 2
    timeout = 0.2

    def slow(check, ctx):
        time.sleep(timeout * check.requests)
        return passing(check)

    monkeypatch.setattr(runner, "run_check", slow)
    deployment.tls = True
    plan = list(CHECKS.values())
    ctx = build_context(
        deployment, base_url="http://127.0.0.1:9", verify_tls=True, timeout=timeout, keys={}
    )
    outcomes = runner.run_checks(ctx, plan)
    assert len(outcomes) == len(plan)
    assert all(o.passed for o in outcomes), [o.check_id for o in outcomes if not o.passed]


@pytest.mark.django_db
def test_a_run_stores_its_deadline_when_a_worker_claims_it(deployment):
    job = runs.job_for(deployment)
    job.timeout_seconds = 0.5
    job.save()
    run = runs.verify_now(deployment=deployment, base_url="http://127.0.0.1:9")
    budget = runner.run_budget(runs.planned_checks(job), timeout=0.5)
    assert run.deadline_at - run.started_at == dt.timedelta(seconds=budget)
    assert run.finished_at <= run.deadline_at


@pytest.mark.django_db
def test_a_live_run_inside_its_own_deadline_is_never_marked_as_stopped(deployment, settings):
    # A slow job: its deadline lies beyond the old fixed 300 s, which swept it while it ran.
    settings.CONSOLE_RUN_STALE_AFTER = 60
    job = runs.job_for(deployment)
    job.timeout_seconds = 120
    job.save()
    started = timezone.now() - dt.timedelta(seconds=301)
    deadline = runs.run_deadline(job, started_at=started)
    assert deadline > started + dt.timedelta(seconds=241)
    run = VerificationRun.objects.create(
        job=job, trigger="manual", status="running", started_at=started, deadline_at=deadline
    )
    assert runs.sweep_stale_runs() == 0
    assert runs.sweep_stale_runs(now=deadline + dt.timedelta(seconds=59)) == 0
    run.refresh_from_db()
    assert run.status == VerificationRun.Status.RUNNING
    later = deadline + dt.timedelta(seconds=61)
    assert runs.sweep_stale_runs(now=later) == 1
    run.refresh_from_db()
    assert run.status == VerificationRun.Status.ERROR
    waited = int((later - started).total_seconds())
    assert "worker stopped" in run.error and f"{waited} s" in run.error


@pytest.mark.django_db
def test_a_run_in_progress_survives_a_sweep_even_with_no_grace_at_all(
    deployment, settings, monkeypatch
):
    settings.CONSOLE_RUN_STALE_AFTER = 0
    job = runs.job_for(deployment)
    job.timeout_seconds = 0.5
    job.save()
    sweeps: list[int] = []
    real = runs.run_checks

    def sweeping(ctx, plan, **kwargs):
        # Another request sweeps while this worker is busy with the checks.
        sweeps.append(runs.sweep_stale_runs())
        return real(ctx, plan, **kwargs)

    monkeypatch.setattr(runs, "run_checks", sweeping)
    run = runs.verify_now(deployment=deployment, base_url="http://127.0.0.1:9")
    assert sweeps == [0]
    assert run.status == VerificationRun.Status.FAILED and not run.error


@pytest.mark.slow
def test_one_teams_slow_upstream_does_not_hold_back_another_teams_run(tmp_path):
    # `make run` starts several db_worker processes; two are enough to show that a run queued
    # behind a slow one starts at once instead of waiting for it.
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'console.sqlite3'}",
        "CONSOLE_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SETTINGS_MODULE": "console.settings",
    }

    def manage(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    manage("migrate", "--no-input", "-v0")
    with Loopback(drip_body) as slow, Loopback(answer(b"not here", status="404 Not Found")) as fast:
        setup = f"""
from django.db import transaction
from routes import tasks
from routes.models import Deployment, Team
from routes.verification import runs
for slug, url in (("slow", {slow.url!r}), ("fast", {fast.url!r})):
    team = Team.objects.create(name=slug, slug=slug)
    deployment = Deployment.objects.create(
        slug=slug, name=slug, team=team, server_name=slug + ".example.com"
    )
    job = runs.job_for(deployment)
    job.base_url, job.timeout_seconds = url, 2
    job.save()
    with transaction.atomic():
        tasks.start_run(deployment=deployment, trigger="manual")
"""
        manage("shell", "-c", setup)
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "db_worker",
                    "--batch",
                    "--max-tasks",
                    "1",
                    "--no-startup-delay",
                    "--no-reload",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        try:
            for worker in workers:
                worker.wait(timeout=120)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
        report = manage(
            "shell",
            "-c",
            "import json\nfrom routes.models import VerificationRun\n"
            "print(json.dumps({r.job.deployment.slug: [r.status, r.started_at.timestamp(), "
            "r.finished_at.timestamp()] for r in VerificationRun.objects.all()}))",
        )
    runs = json.loads(report.stdout.strip().splitlines()[-1])
    slow_status, slow_started, slow_finished = runs["slow"]
    fast_status, fast_started, fast_finished = runs["fast"]
    assert slow_status == fast_status == "failed"
    # The slow run held its worker for about one check timeout, and not the other run.
    assert fast_started < slow_finished
    assert fast_finished - fast_started < 2


# --- redaction before truncation --------------------------------------------------------------


def shown(text: str, secret: str = SECRET) -> list[str]:
    """Return every MIN_PREFIX-long piece of secret that text still shows."""
    pieces = (secret[i : i + MIN_PREFIX] for i in range(len(secret) - MIN_PREFIX + 1))
    return [piece for piece in pieces if piece in text]


def echo(conn: socket.socket, stop: threading.Event) -> None:
    """Answer GET /<mode>/<fill>/<pad> with the Authorization header echoed after pad fills."""
    head = read_request(conn).decode("latin-1")
    _method, path, _version = head.split("\r\n", 1)[0].split(" ")
    _empty, mode, fill, pad = path.split("/")
    value = ""
    for line in head.split("\r\n")[1:]:
        name, _sep, rest = line.partition(":")
        if name.lower() == "authorization":
            value = rest.strip()
    if mode == "token":
        value = value.removeprefix("Bearer ")
    text = {"dot": ".", "space": " "}[fill] * int(pad) + value
    body = json.dumps({"echo": text}) if mode == "json" else text
    data = body.encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(data), data))


@pytest.mark.parametrize("mode", ["header", "token", "json"])
@pytest.mark.parametrize(
    ("fill", "cut"),
    [
        ("dot", EXCERPT_CHARS),  # the excerpt's own cut
        ("space", MAX_BODY),  # the body bound; folded whitespace brings its end into view
    ],
)
def test_a_padded_echo_of_the_authorization_header_leaves_no_secret_prefix(mode, fill, cut):
    redact = Redactor([SECRET])
    sent = f"Bearer {SECRET}"
    # Pads that put the cut before, inside (at every offset) and after the echoed secret.
    pads = range(cut - len(sent) - len('{"echo": "') - 2, cut + 2)
    with Loopback(echo) as server:
        for pad in pads:
            probe = send(
                method="GET",
                url=f"{server.url}/{mode}/{fill}/{pad}",
                timeout=5,
                verify=True,
                headers={"Authorization": sent},
            )
            assert probe.status_code == 200, probe.error_detail
            # The server really echoed what it got (up to the body bound).
            echoed = {"dot": ".", "space": " "}[fill] * pad + (SECRET if mode == "token" else sent)
            body = json.dumps({"echo": echoed}) if mode == "json" else echoed
            assert probe.body == body.encode()[:MAX_BODY]
            text = excerpt(probe, redact)
            assert shown(text) == [], (mode, pad, text[-40:])
            assert len(text) <= EXCERPT_CHARS + len(REDACTED) + 1


def test_a_secret_cut_by_the_body_bound_leaves_no_prefix_in_the_excerpt():
    # Whitespace is folded in the excerpt, so the end of a 64 KiB body cut inside an echoed
    # secret is what the excerpt shows.
    redact = Redactor([SECRET])
    for size in range(MIN_PREFIX, len(SECRET)):
        body = (" " * (MAX_BODY - size) + SECRET + " tail").encode()
        with Loopback(answer(body)) as server:
            probe = send(method="GET", url=server.url + "/", timeout=5, verify=True)
        assert probe.body.endswith(SECRET[:size].encode())
        text = excerpt(probe, redact)
        assert shown(text) == [] and text.endswith(REDACTED), (size, text)


def test_cut_redacts_the_whole_text_before_cutting_at_every_offset():
    redact = Redactor([SECRET])
    limit = 120
    for start in range(limit - len(SECRET) - 1, limit + 1):
        cut = redact.cut("." * start + SECRET + " and more text after it", limit, marker="…")
        assert shown(cut) == [], (start, cut)
        assert len(cut) <= limit + 1


def test_cut_masks_a_secret_prefix_left_at_the_end_but_not_a_shorter_one():
    redact = Redactor([SECRET])
    for size in range(MIN_PREFIX, len(SECRET)):
        assert redact.cut("leak: " + SECRET[:size], 500) == "leak: " + REDACTED
    short = "leak: " + SECRET[: MIN_PREFIX - 1]
    assert redact.cut(short, 500) == short


def test_cut_masks_the_start_of_an_unknown_admin_key_left_at_the_end():
    key = "cpamp_" + "Ab3" * 10 + "Cd"  # a whole key shape, unknown to the console
    assert Redactor().cut(f"token {key}", 500) == "token " + REDACTED
    for size in range(len("cpamp_") + 2, len(key)):
        assert Redactor().cut(f"token {key[:size]}", 500) == "token " + REDACTED, size


def leaky(conn: socket.socket, stop: threading.Event) -> None:
    """Answer with the secret (known to the console) in a Location header and the body."""
    head = read_request(conn).decode("latin-1")
    pad = int(head.split(" ", 2)[1].rsplit("=", 1)[1])
    location = "https://elsewhere.example/?" + "p" * pad + SECRET
    body = ("." * pad + SECRET).encode()
    conn.sendall(
        b"HTTP/1.1 404 Not Found\r\nLocation: %b\r\nContent-Length: %d\r\n\r\n%b"
        % (location.encode(), len(body), body)
    )


@pytest.mark.django_db
def test_stored_headers_and_excerpts_show_no_secret_prefix_at_their_cuts(deployment):
    # cpa_fallback carries no key; the upstream leaks one the console knows on its own.
    with Loopback(leaky) as server:
        ctx = build_context(
            deployment, base_url=server.url, verify_tls=True, timeout=5, keys={}, secrets=[SECRET]
        )
        for pad in range(200 - len(SECRET) - 30, 200):
            check = replace(CHECKS["cpa_fallback"], path=f"/probe?pad={pad}")
            outcome = runner.run_check(check, ctx)
            assert outcome.status_code == 404, outcome.diagnosis
            assert shown(outcome.details["location"]) == [], pad
            assert shown(outcome.excerpt) == [], pad
            assert shown(json.dumps(outcome.details) + outcome.diagnosis) == []


@pytest.mark.django_db
def test_a_broken_status_line_echoing_a_secret_leaves_no_prefix_in_the_diagnosis(deployment):
    def broken(conn: socket.socket, stop: threading.Event) -> None:
        head = read_request(conn).decode("latin-1")
        pad = int(head.split(" ", 2)[1].rsplit("/", 1)[1])
        conn.sendall(b"XTTP/1.1 " + b"." * pad + SECRET.encode() + b"\r\n\r\n")

    with Loopback(broken) as server:
        ctx = build_context(
            deployment, base_url=server.url, verify_tls=True, timeout=5, keys={}, secrets=[SECRET]
        )
        for pad in range(300 - len(SECRET) - 20, 300):
            check = replace(CHECKS["cpa_health"], path=f"/{pad}")
            outcome = runner.run_check(check, ctx)
            assert outcome.details == {"error": "connection"}, outcome.diagnosis
            assert shown(outcome.diagnosis) == [], pad


@pytest.mark.django_db
def test_a_run_error_echoing_a_secret_leaves_no_prefix_at_its_cut(deployment, monkeypatch):
    store_key(deployment, "cpa_api", SECRET)
    messages: list[str] = []

    def failing(ctx, plan, **kwargs):
        raise RuntimeError(messages[-1])

    monkeypatch.setattr(runs, "run_checks", failing)
    cut = 500 - len("RuntimeError: ")
    for pad in range(cut - len(SECRET) - 1, cut + 1, 3):
        messages.append("." * pad + SECRET + " trailing words")
        run = runs.verify_now(deployment=deployment, base_url="http://127.0.0.1:9")
        assert run.status == VerificationRun.Status.ERROR
        assert run.error.startswith("RuntimeError: ...")
        assert shown(run.error) == [], pad
    messages.append("upstream said: " + SECRET[:20])
    run = runs.verify_now(deployment=deployment, base_url="http://127.0.0.1:9")
    assert run.error == "RuntimeError: upstream said: " + REDACTED
