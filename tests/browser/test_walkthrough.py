"""A real browser walks an operator from an empty console to a verified deployment, twice:
in English, then in Simplified Chinese. Screenshots of each step go to tests/artifacts/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from routes.nginx.sandbox import running_nginx
from tests.browser.conftest import (
    ADMIN_KEY,
    API_KEY,
    MANAGEMENT_KEY,
    PASSWORD,
    USERNAME,
    Console,
    free_port,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
# How long a verification run may take end to end (queue, worker, seven checks).
RUN_TIMEOUT_MS = 60_000


class Shooter:
    """Screenshots of every step at 1280x800 and 390x844, numbered in walk order."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.count = 0

    def __call__(self, name: str) -> None:
        self.count += 1
        stem = f"{self.count:02d}-{name}"
        for size in (WIDE, NARROW):
            self.page.set_viewport_size(size)
            self.page.screenshot(
                path=self.folder / f"{stem}-{size['width']}x{size['height']}.png",
                full_page=True,
            )
        self.page.set_viewport_size(WIDE)


def log_in(page: Page, console: Console, shoot: Shooter) -> None:
    page.goto(f"{console.url}/admin/")
    expect(page.locator("#id_username")).to_be_visible()
    shoot("login")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.locator("#login-form [type=submit]").click()
    expect(page.locator("#user-tools")).to_be_visible()


def create_team(page: Page, console: Console, shoot: Shooter, *, name: str, slug: str) -> None:
    page.goto(f"{console.url}/admin/routes/team/add/")
    page.fill("#id_name", name)
    # Leave the name field first: the admin prepopulates the slug when the name changes.
    page.locator("#id_name").press("Tab")
    page.fill("#id_slug", slug)
    expect(page.locator("#id_slug")).to_have_value(slug)
    shoot(slug)
    page.locator("input[name=_save]").click()
    expect(page.locator(".messagelist .success")).to_be_visible()


def create_deployment(
    page: Page, console: Console, shoot: Shooter, *, team: str, slug: str, port: int
) -> str:
    """Fill the wizard's first step for a deployment on 127.0.0.1:port; return the keys URL."""
    page.goto(f"{console.url}/admin/")
    shoot(f"{slug}-dashboard-before")
    page.locator(".console-dashboard-head a.console-button").click()
    expect(page.locator("ol.console-steps li.current")).to_contain_text("1.")
    page.select_option("#id_team", label=team)
    page.fill("#id_name", f"Gateway {slug}")
    page.fill("#id_slug", slug)
    page.check("input[name=mode][value=manager_server]")
    page.check("input[name=topology][value=host]")
    expect(page.locator("#id_cpa_upstream")).to_have_value("127.0.0.1:8317")
    # The emulators listen on ephemeral ports: typing an address switches to Custom.
    page.fill("#id_cpa_upstream", console.cpa.address)
    expect(page.locator("input[name=topology][value=custom]")).to_be_checked()
    page.fill("#id_cpamp_upstream", console.cpamp.address)
    page.fill("#id_cpamp_cpa_url", console.cpa.url)
    page.fill("#id_server_name", f"{slug}.example.test")
    expect(page.locator("#wizard-certificates")).to_be_hidden()
    page.locator("details.console-more summary").click()
    page.fill("#id_listen_address", "127.0.0.1")
    page.fill("#id_http_port", str(port))
    page.fill("#id_verification_base_url", f"http://127.0.0.1:{port}")
    shoot(f"{slug}-wizard-deployment")
    page.locator(".console-submit-row [type=submit]").click()
    expect(page.locator("ol.console-steps li.current")).to_contain_text("2.")
    return page.url


def add_keys(page: Page, shoot: Shooter, *, slug: str) -> None:
    """Try a mixed key first (refused; the two others are stored), then store the third."""
    shoot(f"{slug}-wizard-keys")
    page.fill("#id_cpamp_admin", ADMIN_KEY)
    page.fill("#id_cpa_management", ADMIN_KEY)  # the admin key where the management key goes
    page.fill("#id_cpa_api", API_KEY)
    page.locator(".console-submit-row [type=submit]").click()
    refusal = page.locator("#key-cpa_management .errorlist")
    expect(refusal).to_be_visible()
    expect(refusal).to_contain_text("cpamp_")
    # Secrets are never rendered back, not even after a refusal.
    expect(page.locator("#id_cpa_management")).to_have_value("")
    assert ADMIN_KEY not in page.content()
    expect(page.locator("#keys-partly-stored")).to_be_visible()
    assert page.locator(".console-stored").count() == 2
    shoot(f"{slug}-wizard-keys-refused")
    page.fill("#id_cpa_management", MANAGEMENT_KEY)
    page.locator(".console-submit-row [type=submit]").click()
    expect(page.locator("ol.console-steps li.current")).to_contain_text("3.")


def read_end_page(page: Page, shoot: Shooter, *, slug: str, port: int) -> None:
    config = page.locator("#wizard-site-config")
    expect(config).to_contain_text(f"listen 127.0.0.1:{port}")
    expect(config).to_contain_text("location ^~ /v0/management/")
    expect(page.locator("#wizard-cpa-snippet")).to_contain_text("allow-remote: true")
    values = page.locator("#wizard-first-setup")
    expect(values).to_contain_text("••••" + ADMIN_KEY[-4:])
    expect(values).to_contain_text("••••" + MANAGEMENT_KEY[-4:])
    assert MANAGEMENT_KEY not in page.content()
    copy = page.locator("button[data-copy-target='#wizard-cpa-snippet']")
    label = copy.inner_text()
    copy.click()
    expect(copy).not_to_have_text(label)
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "allow-remote: true" in copied
    shoot(f"{slug}-wizard-finish")


def preview_and_download(page: Page, shoot: Shooter, folder: Path, *, slug: str, port: int):
    """Open the config page from the end page and download both files into folder."""
    page.locator("#wizard-nginx a.console-button.secondary").click()
    expect(page.locator("#content-main")).to_contain_text(f"listen 127.0.0.1:{port}")
    shoot(f"{slug}-config")
    names = []
    for link in ("a[href$='/nginx/download/']", "a[href$='/nginx/download/?file=common']"):
        with page.expect_download() as info:
            page.locator(link).first.click()
        download = info.value
        download.save_as(folder / download.suggested_filename)
        names.append(download.suggested_filename)
    assert names == [f"{slug}.conf", "00-console-common.conf"]
    assert f"listen 127.0.0.1:{port}" in (folder / f"{slug}.conf").read_text()


def verify_and_watch(page: Page, shoot: Shooter, *, slug: str) -> None:
    """Start a run on the verification page and watch it finish without reloading."""
    page.locator("#content-main form[method=post] button[type=submit]").first.click()
    badge = page.locator("#verify-run [data-run-status]")
    expect(badge).to_be_visible()
    # The page polls the progress endpoint; the badge changes in place when the run ends.
    page.evaluate("window.__console_marker = 1")
    expect(badge).to_have_class(
        re.compile(r"console-badge (passed|failed|error)"), timeout=RUN_TIMEOUT_MS
    )
    assert page.evaluate("window.__console_marker") == 1, "the page reloaded"
    shoot(f"{slug}-verification-finished")
    expect(badge).to_have_class(re.compile(r"console-badge passed"))


def read_history(page: Page, console: Console, shoot: Shooter, *, slug: str) -> None:
    page.goto(f"{console.url}/admin/routes/verificationrun/")
    expect(page.locator("#result_list")).to_contain_text(slug)
    shoot(f"{slug}-history")
    page.locator("#result_list tbody tr").first.locator("th a, td a").first.click()
    expect(page.locator("body")).to_contain_text("api_models")
    expect(page.locator("body")).to_contain_text("management_config")
    shoot(f"{slug}-run-detail")
    page.goto(f"{console.url}/admin/")
    shoot(f"{slug}-dashboard-after")
    expect(page.locator(f"#team-{slug}-team .console-badge.passed")).to_be_visible()


def walk(page, console, shoot, folder, *, team, slug):
    port = free_port()
    create_team(page, console, shoot, name=team, slug=f"{slug}-team")
    create_deployment(page, console, shoot, team=team, slug=slug, port=port)
    add_keys(page, shoot, slug=slug)
    read_end_page(page, shoot, slug=slug, port=port)
    finish_url = page.url
    conf = folder / slug
    conf.mkdir()
    preview_and_download(page, shoot, conf, slug=slug, port=port)
    with running_nginx(conf, wait_for=[("127.0.0.1", port)]):
        page.goto(finish_url)
        page.locator("#wizard-next a.console-button").first.click()
        verify_and_watch(page, shoot, slug=slug)
    read_history(page, console, shoot, slug=slug)


def test_an_operator_reaches_a_verified_deployment_in_english_and_in_chinese(
    page: Page, console: Console, artifacts: Path, tmp_path: Path
):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    shoot = Shooter(page, artifacts)
    log_in(page, console, shoot)
    walk(page, console, shoot, tmp_path, team="Platform ops", slug="prod")

    page.goto(f"{console.url}/admin/")
    page.select_option("#console-language-select", "zh-hans")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.locator(".console-dashboard-head h1")).to_have_text("部署")
    walk(page, console, shoot, tmp_path, team="运维团队", slug="prodcn")
