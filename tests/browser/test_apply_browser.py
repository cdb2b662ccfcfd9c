"""Deploy in a real browser: the worker applies to a live nginx and the page follows its steps,
through a healthy deploy and then one that regresses and is rolled back on its own.

The module starts a console of its own (gunicorn and the task worker, as in conftest) whose
CONSOLE_NGINX_* settings drive an nginx master started here; screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    ADMIN_KEY,
    API_KEY,
    CHROMIUM,
    MANAGEMENT_KEY,
    PASSWORD,
    USERNAME,
    Console,
    _serve,
    free_port,
    scratch_database,
)
from tests.test_apply import SET_PLUGINS, SETUP, live_nginx

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.nginx]

# How long an apply may take end to end (queue, worker, test, reload, confirm, two runs).
APPLY_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def nginx_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def console(tmp_path_factory, nginx_port) -> Iterator[Console]:
    """The console of conftest, its settings pointing at an nginx master of this module."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (make system-deps)")
    workdir = tmp_path_factory.mktemp("apply-console")
    data = workdir / "data"
    data.mkdir()
    with live_nginx(workdir) as live:
        settings = {
            "CONSOLE_NGINX_DIR": str(live.conf_dir),
            "CONSOLE_APPLY_CONFIRM_TIMEOUT": "15",
            **live.commands(),
        }
        # _serve hands os.environ on to gunicorn and the worker.
        with mock.patch.dict(os.environ, settings), scratch_database(workdir) as database_url:
            for started in _serve(workdir, data, database_url):
                started.manage(
                    "shell",
                    "-c",
                    SETUP.format(
                        port=nginx_port,
                        cpa=started.cpa.address,
                        cpamp=started.cpamp.address,
                        cpa_url=started.cpa.url,
                        admin=ADMIN_KEY,
                        mgmt=MANAGEMENT_KEY,
                        api=API_KEY,
                    ),
                )
                yield started


def deploy(page: Page, console: Console, *, expect_result: str) -> None:
    """Open prod's config page from the dashboard, press Deploy and wait (no reload) for the end."""
    page.goto(f"{console.url}/admin/")
    page.locator("#team-ops .console-links a", has_text="Config").click()
    page.locator("[data-apply-button]").click()
    run = page.locator("#apply-run")
    expect(run).to_be_visible()
    page.evaluate("window.__console_marker = 1")
    expect(run.locator("[data-apply-result]")).to_have_text(expect_result, timeout=APPLY_TIMEOUT_MS)
    assert page.evaluate("window.__console_marker") == 1, "the page reloaded"


def test_the_deploy_flow_shows_the_steps_of_a_rolled_back_deploy(
    page: Page, console: Console, artifacts: Path
):
    page.goto(f"{console.url}/admin/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.locator("#login-form [type=submit]").click()
    expect(page.locator("#user-tools")).to_be_visible()

    deploy(page, console, expect_result="applied")
    steps = page.locator("#apply-run [data-apply-steps] li")
    for step in ("written", "tested", "reloaded", "confirmed", "verified"):
        expect(page.locator(f'#apply-run li[data-step="{step}"]')).to_be_visible()
    page.screenshot(path=artifacts / "apply-01-applied.png", full_page=True)

    # An operator's override sends the plugin paths to CPA: verification regresses.
    console.manage("shell", "-c", SET_PLUGINS.format(on=True))
    deploy(page, console, expect_result="rolled back")
    run = page.locator("#apply-run")
    expect(run.locator('li[data-phase="rollback"][data-step="restored"]')).to_be_visible()
    expect(run.locator('li[data-phase="rollback"][data-step="confirmed"]')).to_be_visible()
    last = steps.last
    expect(last).to_have_attribute("data-step", "rolled_back")
    expect(last).to_contain_text("plugin_resources")
    expect(run.locator("[data-apply-reason]")).to_contain_text("plugin_resources")
    expect(run.locator("[data-apply-loud]")).to_have_count(0)
    page.screenshot(path=artifacts / "apply-02-rolled-back.png", full_page=True)
    for size in ({"width": 390, "height": 844},):
        page.set_viewport_size(size)
        page.screenshot(path=artifacts / "apply-02-rolled-back-390x844.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    # The history lists both applies; the dashboard says the config was rolled back.
    page.locator("a", has_text="Apply history of this deployment").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("#result_list")).to_contain_text("rolled back")
    page.goto(f"{console.url}/admin/")
    expect(page.locator('[data-live-state="rolled_back"]')).to_be_visible()
    page.screenshot(path=artifacts / "apply-03-dashboard.png", full_page=True)
