"""The README's tour in a real browser, at 1280x900 and 390x844, in English and in 简体中文, as a
viewer, an operator and an owner (and, in Chinese, the superuser of `make run`, who also sees the
third-party sections): no page scrolls sideways, and no Chinese page shows an English UI string.
Then a run started from the verification page: its flash message follows the run, and the live
table is the table a reload draws; and the forms' scripts (slug, presets, key cards).

The data is made once (``manage.py shell`` and ``verify``); one browser, one context per role and
language. Screenshots of every page at both sizes (with CONSOLE_TOUR_SHOTS=0, of the pages that
fail only) go to tests/artifacts/tour/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import (
    ADMIN_KEY,
    API_KEY,
    MANAGEMENT_KEY,
    PASSWORD,
    REPO,
    USERNAME,
    Console,
    free_port,
)
from tests.test_i18n import PO, english_left, parse_po, visible_text

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.tour]

WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}
LANGUAGES = ("en", "zh-hans")
ROLES = ("viewer", "operator", "owner", "superuser")
# Test-only password of the tour's members in a throwaway database.
MEMBER_PASSWORD = "Tour-Member-Passw0rd!"
RUN_TIMEOUT_MS = 60_000
# A screenshot of every page at both sizes, to look at; CONSOLE_TOUR_SHOTS=0 keeps only those of
# pages that fail (CI's second pass, on PostgreSQL, after the first has shot the same pages).
ALL_SHOTS = os.environ.get("CONSOLE_TOUR_SHOTS", "1") != "0"

SEED = """
import json
from django.contrib.auth import get_user_model
from django.urls import reverse
from routes.models import Deployment, Membership, RouteOverride, Team
from routes.workflows.deployments import save_deployment
from routes.workflows.keys import set_key
from routes.workflows.overrides import save_override

team = Team.objects.create(name="Tour ops", slug="tour-ops")
User = get_user_model()
for role in ("viewer", "operator", "owner"):
    user = User.objects.create_user(f"tour-{{role}}", password={password!r}, is_staff=True)
    Membership.objects.create(user=user, team=team, role=role)
deployment = Deployment(
    slug="tour", name="Tour gateway", team=team,
    server_name="gateway.tour-operations-with-a-long-name.example.test",
    listen_address="127.0.0.1", http_port={port}, cpa_upstream={cpa!r},
    cpamp_upstream={cpamp!r}, cpamp_cpa_url={cpa_url!r},
    verification_base_url="http://127.0.0.1:{port}",
)
save_deployment(deployment=deployment)
save_override(override=RouteOverride(
    deployment=deployment, match="prefix", path="/v0/resource/plugins/custom-long-plugin-path/",
    target="cpamp", note="plugin assets of the team's own panel build",
))
set_key(deployment=deployment, role="cpamp_admin", secret={admin_key!r})
set_key(deployment=deployment, role="cpa_management", secret={management_key!r})
set_key(deployment=deployment, role="cpa_api", secret={api_key!r}, label="verification")
pk = deployment.pk
print(json.dumps({{
    "deployment": pk,
    "pages": {{
        "dashboard": reverse("admin:index"),
        "teams": reverse("admin:routes_team_changelist"),
        "memberships": reverse("admin:routes_membership_changelist"),
        "deployments": reverse("admin:routes_deployment_changelist"),
        "deployment": reverse("admin:routes_deployment_change", args=[pk]),
        "wizard-deployment": reverse("admin:routes_deployment_wizard"),
        "wizard-keys": reverse("admin:routes_deployment_wizard_keys", args=[pk]),
        "wizard-finish": reverse("admin:routes_deployment_wizard_finish", args=[pk]),
        "nginx-config": reverse("admin:routes_deployment_config", args=[pk]),
        "routes": reverse("admin:routes_deployment_routes", args=[pk]),
        "verification": reverse("admin:routes_deployment_verify", args=[pk]),
        "runs": reverse("admin:routes_verificationrun_changelist"),
        "audit": reverse("admin:routes_auditevent_changelist"),
        "keys": reverse("admin:routes_key_changelist"),
        "devices": reverse("admin:otp_totp_totpdevice_changelist"),
    }},
    "third_party": {{
        "users": reverse("admin:auth_user_changelist"),
        "groups": reverse("admin:auth_group_changelist"),
        "access-attempts": reverse("admin:axes_accessattempt_changelist"),
        "access-failures": reverse("admin:axes_accessfailurelog_changelist"),
        "access-logs": reverse("admin:axes_accesslog_changelist"),
        "task-results": reverse("admin:django_tasks_database_dbtaskresult_changelist"),
    }},
}}))
"""

LAST_RUN = """
from django.urls import reverse
from routes.models import VerificationRun
run = VerificationRun.objects.filter(job__deployment__slug="tour").latest("id")
print(reverse("admin:routes_verificationrun_change", args=[run.pk]))
"""

# Changelist results and console tables that scroll sideways inside the page.
HIDDEN_COLUMNS = """() => [
  ...document.querySelectorAll("#changelist .results, .console-table-wrap")
]
  .filter((e) => e.scrollWidth > e.clientWidth + 1)
  .map((e) => (e.closest("[id]") || e).id + " " + e.scrollWidth + ">" + e.clientWidth)"""

# Pages a viewer may not open: the first wizard step creates a deployment (operators).
OPERATOR_PAGES = {"wizard-deployment"}


@dataclass
class Visit:
    """One page as one user saw it: its status, widths at both sizes and its final HTML."""

    role: str
    lang: str
    name: str
    url: str
    status: int
    scroll_widths: dict[int, int] = field(default_factory=dict)
    # Tables that hide columns behind a scroll of their own, at 1280 px.
    hidden_columns: list[str] = field(default_factory=list)
    html: str = ""


def shell(console: Console, code: str) -> str:
    """Run Python in the console's environment (its database); return its last printed line."""
    return console.manage("shell", "-c", textwrap.dedent(code)).stdout.strip().splitlines()[-1]


def log_in(page: Page, console: Console, username: str, password: str) -> None:
    page.goto(f"{console.url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.locator("#login-form [type=submit]").click()
    expect(page.locator("#user-tools")).to_be_visible()


def new_context(browser: Browser, console: Console, args: dict, *, lang: str) -> BrowserContext:
    context = browser.new_context(**{**args, "viewport": WIDE})
    context.add_cookies([{"name": "django_language", "value": lang, "url": console.url}])
    return context


def credentials(role: str) -> tuple[str, str]:
    return (USERNAME, PASSWORD) if role == "superuser" else (f"tour-{role}", MEMBER_PASSWORD)


@pytest.fixture(scope="module")
def tour(console: Console) -> dict:
    """Make the tour's team, members, deployment (keys, an override) and a finished run."""
    port = free_port()
    seeded = json.loads(
        shell(
            console,
            SEED.format(
                password=MEMBER_PASSWORD,
                port=port,
                cpa=console.cpa.address,
                cpamp=console.cpamp.address,
                cpa_url=console.cpa.url,
                admin_key=ADMIN_KEY,
                management_key=MANAGEMENT_KEY,
                api_key=API_KEY,
            ),
        )
    )
    # Nothing listens on the port: a finished run with failures, causes and notes to lay out.
    subprocess.run(
        [sys.executable, "manage.py", "verify", "tour"],
        cwd=REPO,
        env=console.env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    seeded["pages"]["run"] = shell(console, LAST_RUN)
    return seeded


@pytest.fixture(scope="module")
def visits(
    browser: Browser, console: Console, tour: dict, browser_context_args: dict
) -> list[Visit]:
    """Open every tour page once per role and language, measured and shot at both sizes."""
    folder = REPO / "tests" / "artifacts" / "tour"
    folder.mkdir(parents=True, exist_ok=True)
    seen: list[Visit] = []
    for lang in LANGUAGES:
        for role in ROLES:
            if role == "superuser" and lang == "en":
                continue  # the superuser is here for the third-party sections, in Chinese
            pages = dict(tour["pages"])
            if role == "superuser":
                pages.update(tour["third_party"])
            if role == "viewer":
                pages = {k: v for k, v in pages.items() if k not in OPERATOR_PAGES}
            context = new_context(browser, console, browser_context_args, lang=lang)
            page = context.new_page()
            log_in(page, console, *credentials(role))
            for number, (name, url) in enumerate(pages.items(), start=1):
                response = page.goto(f"{console.url}{url}")
                visit = Visit(role, lang, name, url, response.status if response else 0)
                visit.hidden_columns = page.evaluate(HIDDEN_COLUMNS)
                for size in (WIDE, NARROW):
                    page.set_viewport_size(size)
                    width = page.evaluate("document.documentElement.scrollWidth")
                    visit.scroll_widths[size["width"]] = width
                    # A full-page shot costs about as much as the rest of a visit.
                    if ALL_SHOTS or width > size["width"] or visit.hidden_columns:
                        shot = f"{lang}-{role}-{number:02d}-{name}-{size['width']}x{size['height']}"
                        page.screenshot(path=folder / f"{shot}.png", full_page=True)
                page.set_viewport_size(WIDE)
                visit.html = page.content()
                seen.append(visit)
            context.close()
    return seen


def test_every_tour_page_opens_for_each_role(visits):
    failed = [(v.lang, v.role, v.name, v.status) for v in visits if v.status != 200]
    assert not failed, failed
    assert {v.role for v in visits} == set(ROLES)


def test_no_tour_page_scrolls_sideways_at_1280_or_390_px(visits):
    wide = [
        (v.lang, v.role, v.name, width, v.scroll_widths[width])
        for v in visits
        for width in (WIDE["width"], NARROW["width"])
        if v.scroll_widths[width] > width
    ]
    assert not wide, "\n".join(map(str, wide))


def test_no_table_of_the_tour_hides_columns_behind_a_scroll_at_1280_px(visits):
    hidden = [(v.lang, v.role, v.name, v.hidden_columns) for v in visits if v.hidden_columns]
    assert not hidden, "\n".join(map(str, hidden))


def test_no_tour_page_in_chinese_shows_an_english_ui_string(visits):
    catalogue = parse_po(PO.read_text(encoding="utf-8"))
    left = {}
    for visit in visits:
        if visit.lang != "zh-hans":
            continue
        assert '<html lang="zh-hans"' in visit.html, visit.url
        found = english_left(visible_text(visit.html), catalogue)
        if found:
            left[(visit.role, visit.name)] = found
    assert not left, "\n".join(f"{k}: {v}" for k, v in left.items())


# --- The verification page while a run is live -------------------------------------------------

# Serialise a subtree for comparison: tags, sorted attributes (not the CSRF token's masked value,
# which changes with every page) and whitespace-collapsed text.
SERIALISE = """(selector) => {
  function walk(node) {
    if (node.nodeType === Node.TEXT_NODE) {
      const text = node.textContent.replace(/\\s+/g, " ").trim();
      return text ? JSON.stringify(text) : null;
    }
    if (node.nodeType !== Node.ELEMENT_NODE) return null;
    const attrs = [...node.attributes]
      .filter((a) => !(a.name === "value" && node.getAttribute("name") === "csrfmiddlewaretoken"))
      .map((a) => a.name + "=" + a.value).sort();
    const kids = [...node.childNodes].map(walk).filter((k) => k !== null);
    return node.tagName + "[" + attrs.join(" ") + "](" + kids.join(",") + ")";
  }
  return [...document.querySelectorAll(selector)].map(walk);
}"""
LIVE_PARTS = (
    "#verify-run [data-check-rows], #verify-run [data-cause-items], #verify-run [data-run-error]"
)


def test_the_run_message_turns_into_the_outcome_and_the_live_table_is_the_reloaded_one(
    browser: Browser, console: Console, tour: dict, browser_context_args: dict
):
    context = new_context(browser, console, browser_context_args, lang="en")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, console, *credentials("operator"))
    page.goto(f"{console.url}{tour['pages']['verification']}")
    with page.expect_navigation() as navigation:
        page.locator("#content-main form[method=post] button[type=submit]").first.click()
    served = navigation.value.text()
    run = re.search(r"Verification run #(\d+) queued\.", served)
    assert run, "the page does not say the run was queued"
    flash = page.locator(f".messagelist li.console-run-flash-{run.group(1)}")
    # Nothing listens at the deployment's base URL: the run fails, and the message says how.
    expect(flash).to_have_text(
        re.compile(rf"Verification run #{run.group(1)} failed: \d+ of \d+ checks failed\."),
        timeout=RUN_TIMEOUT_MS,
    )
    expect(flash).to_have_class(re.compile(r"\berror\b"))
    expect(flash).to_have_attribute("role", "status")
    expect(page.locator("#verify-run [data-run-status]")).to_have_class(
        re.compile("console-badge failed")
    )
    live = page.evaluate(SERIALISE, LIVE_PARTS)
    page.reload()
    expect(page.locator(".messagelist li.console-run-flash")).to_have_count(0)
    reloaded = page.evaluate(SERIALISE, LIVE_PARTS)
    # The causes and the rows at least (document order), and the run's error when it has one.
    assert len(live) >= 2
    assert "id=cause-1" in live[-2] and "console-check-failed" in live[-1]
    assert live == reloaded
    assert not errors, errors
    context.close()


# --- Forms in the browser: slug, presets, key cards ---------------------------------------------


def test_the_wizard_slug_follows_the_name_until_the_user_writes_one(
    browser: Browser, console: Console, tour: dict, browser_context_args: dict
):
    context = new_context(browser, console, browser_context_args, lang="en")
    page = context.new_page()
    log_in(page, console, *credentials("operator"))
    page.goto(f"{console.url}{tour['pages']['wizard-deployment']}")
    page.locator("#id_name").press_sequentially("Edge Gateway Zürich 2")
    expect(page.locator("#id_slug")).to_have_value("edge-gateway-zurich-2")
    page.fill("#id_slug", "edge")
    page.locator("#id_name").press_sequentially(" EU")
    expect(page.locator("#id_slug")).to_have_value("edge")
    context.close()


def test_the_plain_add_form_fills_the_upstreams_from_the_preset_on_the_page(
    browser: Browser, console: Console, tour: dict, browser_context_args: dict
):
    context = new_context(browser, console, browser_context_args, lang="en")
    page = context.new_page()
    log_in(page, console, *credentials("operator"))
    page.goto(f"{console.url}/admin/routes/deployment/add/")
    expect(page.locator("#id_cpa_upstream")).to_have_value("cli-proxy-api:8317")
    page.check("input[name=topology][value=host]")
    expect(page.locator("#id_cpa_upstream")).to_have_value("127.0.0.1:8317")
    expect(page.locator("#id_cpamp_cpa_url")).to_have_value("http://127.0.0.1:8317")
    page.fill("#id_cpamp_upstream", "10.0.0.6:18317")
    expect(page.locator("input[name=topology][value=custom]")).to_be_checked()
    context.close()


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["1280", "390"])
def test_each_key_is_a_card_with_test_and_rotate_in_sight(
    browser: Browser, console: Console, tour: dict, browser_context_args: dict, size: dict
):
    context = new_context(browser, console, browser_context_args, lang="en")
    page = context.new_page()
    page.set_viewport_size(size)
    log_in(page, console, *credentials("owner"))
    page.goto(f"{console.url}{tour['pages']['deployment']}")
    cards = page.locator("#keys-group .console-key-card.has_original")
    expect(cards).to_have_count(3)
    for index in range(3):
        card = cards.nth(index)
        for control in (
            card.get_by_role("button", name="Test this key"),
            card.get_by_text("Rotate", exact=True),
        ):
            expect(control).to_be_visible()
            box = control.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= size["width"]
            # One line each: the label is not squeezed.
            assert box["height"] < 40
    cards.first.get_by_text("Rotate", exact=True).click()
    expect(cards.first.locator("input[type=password]")).to_be_focused()
    context.close()


def test_each_check_is_a_card_with_its_status_first_on_a_phone(
    browser: Browser, console: Console, tour: dict, browser_context_args: dict
):
    context = new_context(browser, console, browser_context_args, lang="en")
    page = context.new_page()
    page.set_viewport_size(NARROW)
    log_in(page, console, *credentials("viewer"))
    for url in (tour["pages"]["verification"], tour["pages"]["run"]):
        page.goto(f"{console.url}{url}")
        rows = page.locator("table.console-check-table tbody tr[data-check]")
        assert rows.count() >= 7
        for index in range(rows.count()):
            row = rows.nth(index)
            assert row.evaluate("(tr) => getComputedStyle(tr).display") == "grid"
            badge = row.locator(".console-check-result .console-badge").bounding_box()
            name = row.locator(".console-check-name").bounding_box()
            request = row.locator(".console-check-request").bounding_box()
            assert badge and name and request
            # Status first: the badge opens the card, the request, status and note follow.
            assert badge["x"] < name["x"] and badge["y"] < request["y"]
            card = row.bounding_box()
            assert card and card["x"] + card["width"] <= NARROW["width"]
        expect(rows.first.locator(".console-check-request")).to_be_visible()
    context.close()


def test_the_chart_of_one_run_spans_an_hour_with_its_legend_in_the_pages_language(
    browser: Browser, console: Console, tour: dict, browser_context_args: dict
):
    # The tour's deployment has one finished run (the tour fixture's), and another when the run
    # test above ran first: either way runs within an hour.
    context = new_context(browser, console, browser_context_args, lang="zh-hans")
    page = context.new_page()
    log_in(page, console, *credentials("viewer"))
    page.goto(f"{console.url}{tour['pages']['verification']}")
    chart = page.locator("#status-board [data-chart]")
    expect(chart.locator(".uplot canvas")).to_have_count(1)
    # uPlot would spread one instant over years of axis: runs within an hour show on an hour.
    expect(chart).to_have_attribute("data-chart-span", "3600")
    legend = chart.locator(".u-legend .u-series").first
    expect(legend).to_contain_text("时间")
    expect(legend).not_to_contain_text("Time")
    chart.screenshot(path=REPO / "tests" / "artifacts" / "tour" / "zh-hans-chart-one-run.png")
    context.close()
