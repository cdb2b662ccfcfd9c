"""A real browser watches the status board: the dashboard's heartbeat bar, uptime figures and
latency chart, then a run made by the task worker shows up without a page reload.

The earlier runs are stored straight into the console's database (``manage.py shell``); the new
one is queued the way the "Run verification" button queues it (routes.tasks.start_run) and the
fixture's db_worker runs it against a closed loopback port, so it fails fast with real results.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, USERNAME, Console, free_port

pytestmark = pytest.mark.browser

# Queue, worker pick-up (0.2 s interval), a run against a closed port, then a 5 s poll.
UPDATE_TIMEOUT_MS = 60_000
SLUG = "boardwatch"

SEED = """
import datetime as dt, json
from django.utils import timezone
from routes.models import CheckResult, Deployment, Team, VerificationJob, VerificationRun
team, _ = Team.objects.get_or_create(slug="board-ops", defaults={{"name": "Board ops"}})
base = "http://127.0.0.1:{port}"
deployment = Deployment.objects.create(
    slug="{slug}", name="Board watch", team=team, server_name="{slug}.example.test",
    listen_address="127.0.0.1", cpa_upstream="127.0.0.1:{port}",
    cpamp_upstream="127.0.0.1:{port}", cpamp_cpa_url=base, verification_base_url=base,
)
job = VerificationJob.objects.create(deployment=deployment, timeout_seconds=2)
now = timezone.now()
ids = []
for n, status in enumerate(["passed", "passed", "failed", "passed", "passed"]):
    finished = now - dt.timedelta(minutes=10 - n)
    run = VerificationRun.objects.create(
        job=job, status=status, trigger="scheduled", base_url=base,
        started_at=finished - dt.timedelta(seconds=1), finished_at=finished, duration_ms=400 + n,
    )
    for position, check_id in enumerate(["panel", "api_models"]):
        CheckResult.objects.create(
            run=run, position=position, check_id=check_id, method="GET", url=base + "/",
            expected="200", latency_ms=100 * (position + 1) + n, passed=status == "passed",
        )
    ids.append(run.pk)
print(json.dumps({{"deployment": deployment.pk, "runs": ids}}))
"""

QUEUE = """
from routes import tasks
from routes.models import Deployment
run = tasks.start_run(deployment=Deployment.objects.get(slug="{slug}"), trigger="manual")
print(run.pk)
"""


def shell(console: Console, code: str) -> str:
    """Run Python in the console's own environment (its database); return what it printed."""
    return console.manage("shell", "-c", textwrap.dedent(code)).stdout.strip().splitlines()[-1]


def log_in(page: Page, console: Console) -> None:
    page.goto(f"{console.url}/admin/login/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.locator("#login-form [type=submit]").click()
    expect(page.locator("#user-tools")).to_be_visible()


def test_the_dashboard_board_shows_runs_and_updates_after_a_new_run_without_a_reload(
    page: Page, console: Console, artifacts: Path
):
    seeded = json.loads(shell(console, SEED.format(port=free_port(), slug=SLUG)))
    violations: list[str] = []
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            violations.append(msg.text)
            if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text
            else None
        ),
    )
    # Injected by the browser itself, before any page script: CSP does not apply to it.
    page.add_init_script(
        "window.__csp = [];"
        "document.addEventListener('securitypolicyviolation',"
        " function (e) { window.__csp.push(e.violatedDirective + ' ' + e.blockedURI); });"
    )
    log_in(page, console)
    page.goto(f"{console.url}/admin/")

    board = page.locator("#status-board")
    row = board.locator(f'[data-board-deployment="{seeded["deployment"]}"]')
    expect(row.locator("a.console-beat")).to_have_count(5)
    expect(row.locator(".console-beat.empty")).to_have_count(45)
    expect(row.locator("a.console-beat.failed")).to_have_count(1)
    last = row.locator("a.console-beat").last
    expect(last).to_have_attribute("data-run", str(seeded["runs"][-1]))
    expect(last).to_have_attribute("title", re.compile(rf"#{seeded['runs'][-1]} .* 404 ms"))
    expect(last).to_have_attribute("href", re.compile(rf"/verificationrun/{seeded['runs'][-1]}/"))
    expect(row.locator('[data-uptime="24h"]')).to_have_text("80%")
    expect(row.locator('[data-uptime="30d"]')).to_have_text("80%")
    expect(row.locator("[data-latency]")).to_have_text("154 ms")

    # The chart: pick this deployment (the walkthrough's may be on the board too).
    select = board.locator("[data-chart-select]")
    if select.count():
        select.select_option(str(seeded["deployment"]))
    chart = board.locator("[data-chart]")
    expect(chart).to_have_attribute("data-chart-runs", ",".join(map(str, seeded["runs"])))
    expect(chart.locator(".uplot canvas")).to_have_count(1)
    expect(chart.locator(".u-legend")).to_contain_text("api_models")
    page.screenshot(path=artifacts / "board-dashboard-before.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=artifacts / "board-dashboard-390.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    page.evaluate("window.__board_marker = 1")
    polls = int(board.get_attribute("data-board-polls") or "0")
    new_run = int(shell(console, QUEUE.format(slug=SLUG)))

    fresh = row.locator(f'a.console-beat[data-run="{new_run}"]')
    expect(fresh).to_have_count(1, timeout=UPDATE_TIMEOUT_MS)
    expect(fresh).to_have_class(re.compile(r"console-beat (failed|error)"))
    expect(row.locator("a.console-beat")).to_have_count(6)
    expect(row.locator(".console-beat.empty")).to_have_count(44)
    expect(row.locator('[data-uptime="24h"]')).to_have_text("66.67%")
    assert page.evaluate("window.__board_marker") == 1, "the page reloaded"
    assert int(board.get_attribute("data-board-polls") or "0") > polls
    page.screenshot(path=artifacts / "board-dashboard-after.png", full_page=True)

    assert page.evaluate("window.__csp") == [], "CSP violations"
    assert not violations, violations
    assert not errors, errors


def test_the_verification_page_charts_each_check_of_the_deployment(
    page: Page, console: Console, artifacts: Path
):
    seeded = json.loads(shell(console, SEED.format(port=free_port(), slug=f"{SLUG}2")))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, console)
    page.goto(f"{console.url}/admin/routes/deployment/{seeded['deployment']}/verify/")

    board = page.locator("#status-board")
    expect(board.locator("a.console-beat")).to_have_count(5)
    expect(board.locator('[data-uptime="7d"]')).to_have_text("80%")
    chart = board.locator("[data-chart]")
    expect(chart.locator(".uplot canvas")).to_have_count(1)
    expect(chart.locator(".u-legend")).to_contain_text("panel")
    expect(chart.locator(".u-legend")).to_contain_text("api_models")
    page.screenshot(path=artifacts / "board-verification-page.png", full_page=True)
    assert not errors, errors
