"""Issue 11 in the browser's pages: a run's causes come first, each with the link to its fix for a
role that may make it, then one compact row per check; the dashboard shows causes; the short-key
warning reaches whoever saves a key; the README lists every check and cause code."""

from __future__ import annotations

import io
import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse
from django.utils import translation
from django.utils.http import urlencode

from routes.models import (
    AuditEvent,
    CheckResult,
    Key,
    RouteOverride,
    VerificationJob,
    VerificationRun,
)
from routes.verification import causes as cz
from routes.verification import diagnoses as dx
from routes.verification.checks import CHECKS
from routes.verification.runs import job_for
from tests.fakes.stack import API_KEY, store_key
from tests.test_admin import _rows, deployment_data

README = Path(__file__).resolve().parent.parent / "README.md"
INDEX = "/admin/"
SHORT = "sk-short-9"  # 10 characters: accepted, with a warning


# (check id, passed, diagnosis code, its parameters, warning code, its parameters)
Row = tuple[str, bool, str, dict[str, Any], str, dict[str, Any]]


def make_run(deployment, rows: list[Row], *, status: str = "failed") -> VerificationRun:
    """Store a finished run of rows with its causes grouped as the worker groups them."""
    run = VerificationRun.objects.create(
        job=job_for(deployment),
        trigger="manual",
        status=status,
        base_url="https://api.example.com",
        duration_ms=90,
    )
    with translation.override("en"):
        for position, (check_id, passed, code, params, warning, wparams) in enumerate(rows):
            check = CHECKS[check_id]
            CheckResult.objects.create(
                run=run,
                position=position,
                check_id=check_id,
                method=check.method,
                url=f"https://api.example.com{check.path}",
                expected=check.expected_text(),
                status_code=200 if passed else 502,
                latency_ms=10 + position,
                expected_upstream=check.expected_upstream,
                observed_upstream=check.expected_upstream,
                passed=passed,
                diagnosis=dx.render(code, params) if code else "",
                diagnosis_code=code,
                diagnosis_params=params,
                warning_code=warning,
                warning_params=wparams,
            )
    run.causes = cz.group(run.results.all(), deployment=deployment)
    run.save(update_fields=["causes"])
    return run


def failing(check_id: str, code: str, **params: Any) -> Row:
    return (check_id, False, code, params, "", {})


def passing(check_id: str, warning: str = "", **params: Any) -> Row:
    return (check_id, True, "", {}, warning, params)


CPA_DOWN = {"status": 502, "upstream": "cpa", "address": "127.0.0.1:8317", "topology": "host"}


def cpa_down_run(deployment) -> VerificationRun:
    """CPA down: three checks routed to it fail with one cause; two others pass with warnings."""
    return make_run(
        deployment,
        [
            passing("panel"),
            failing("cpa_health", "upstream_down", **CPA_DOWN),
            failing("api_models", "upstream_down", **CPA_DOWN),
            failing("cpa_fallback", "upstream_down", **CPA_DOWN),
            passing("plugin_resources", "not_found_is_fine"),
            passing("certificate", "certificate_not_verified", reason="self_signed"),
        ],
    )


def verify_page(client, deployment, run=None) -> str:
    url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    response = client.get(f"{url}?run={run.pk}" if run else url)
    assert response.status_code == 200
    return response.content.decode()


def run_page(client, run) -> str:
    response = client.get(reverse("admin:routes_verificationrun_change", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


def causes_of(page: str) -> str:
    """Return the causes section of a page."""
    return page.split("data-run-causes", 1)[1].split("</section>", 1)[0]


def rows_of(page: str) -> list[str]:
    """Return the check table's rows (one <tr> per check)."""
    body = page.split("data-check-rows", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr class=\"console-check-.*?</tr>", body, flags=re.S)


def english(code: str, params: dict[str, Any]) -> str:
    with translation.override("en"):
        return dx.render(code, params)


# --- causes first, compact rows -------------------------------------------------------------


@pytest.mark.parametrize("page", [verify_page, run_page])
def test_the_causes_come_before_the_checks(client, users, deployment, page):
    run = cpa_down_run(deployment)
    client.force_login(users["viewer"])
    html = page(client, deployment, run) if page is verify_page else page(client, run)
    assert html.index("data-run-causes") < html.index("console-check-table")
    section = causes_of(html)
    assert section.count("<li ") == 1
    assert 'data-cause-code="upstream_down"' in section
    assert "CPA health, CPA API with the API key, Fallback to CPA for new paths" in section


@pytest.mark.parametrize("page", [verify_page, run_page])
def test_each_check_is_one_compact_row_and_the_diagnosis_is_said_once(
    client, users, deployment, page
):
    run = cpa_down_run(deployment)
    client.force_login(users["viewer"])
    html = page(client, deployment, run) if page is verify_page else page(client, run)
    rows = rows_of(html)
    assert len(rows) == run.results.count() == 6
    sentence = english("upstream_down", CPA_DOWN)
    # Said once, by the cause; the three checks it explains point at it instead.
    assert html.count(sentence) == 1
    explained = [row for row in rows if 'href="#cause-1"' in row]
    assert len(explained) == 3 and all("see cause 1" in row for row in explained)
    models = next(row for row in rows if 'data-check="api_models"' in row)
    assert "CPA API with the API key" in models and "GET /v1/models" in models
    assert "502" in models and "12 ms" in models and "https://api.example.com" not in models


def test_a_passing_row_shows_its_warning(client, users, deployment):
    run = cpa_down_run(deployment)
    client.force_login(users["viewer"])
    rows = rows_of(verify_page(client, deployment, run))
    plugins = next(row for row in rows if 'data-check="plugin_resources"' in row)
    certificate = next(row for row in rows if 'data-check="certificate"' in row)
    assert "console-badge passed" in plugins
    assert "A 404 is fine here: the check proves which upstream answered." in plugins
    assert "Not verified: self-signed." in certificate
    assert "console-check-warning" in certificate
    panel = next(row for row in rows if 'data-check="panel"' in row)
    assert "console-check-warning" not in panel


def test_a_page_reads_in_the_viewers_language_whatever_the_run_was_stored_in(
    client, users, deployment
):
    run = cpa_down_run(deployment)
    client.force_login(users["viewer"])
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    html = verify_page(client, deployment, run)
    with translation.override("zh-hans"):
        label = str(CHECKS["api_models"].label)
        words = dx.render("upstream_down", CPA_DOWN)
    assert label in html and words in html


def test_the_progress_json_carries_the_causes_and_the_compact_rows(client, users, deployment):
    run = cpa_down_run(deployment)
    client.force_login(users["operator"])
    data = client.get(reverse("admin:routes_verificationrun_progress", args=[run.pk])).json()
    assert [c["code"] for c in data["cause_views"]] == ["upstream_down"]
    cause = data["cause_views"][0]
    assert cause["anchor"] == "cause-1" and cause["number"] == 1
    assert cause["fixes"][0]["url"].endswith("#id_cpa_upstream")
    models = next(r for r in data["rows"] if r["id"] == "api_models")
    assert models["cause"] == 1 and models["note"] == "" and models["request"] == "GET /v1/models"
    plugins = next(r for r in data["rows"] if r["id"] == "plugin_resources")
    assert plugins["note"].startswith("A 404 is fine here")


def test_an_old_run_without_stored_causes_still_lists_one_per_failed_check(
    client, users, deployment
):
    run = VerificationRun.objects.create(job=job_for(deployment), trigger="manual", status="failed")
    CheckResult.objects.create(
        run=run,
        check_id="panel",
        method="HEAD",
        url="http://x/management.html",
        expected="200",
        passed=False,
        diagnosis="old words <b>",
    )
    client.force_login(users["viewer"])
    html = run_page(client, run)
    assert "old words &lt;b&gt;" in causes_of(html)
    assert html.count("old words &lt;b&gt;") == 1


# --- a link to each fix, for a role that may make it ----------------------------------------


def fix_links(html: str) -> list[str]:
    """Return the href/action of every fix link or button in the causes section."""
    section = causes_of(html).split("console-cause-fixes", 1)
    if len(section) == 1:
        return []
    return re.findall(r'(?:href|action)="([^"]+)"', section[1])


def plugin_override(deployment) -> RouteOverride:
    RouteOverride.objects.create(
        deployment=deployment, match="prefix", path="/config", target="cpamp", position=1
    )
    return RouteOverride.objects.create(
        deployment=deployment,
        match="prefix",
        path="/v0/resource/plugins/",
        target="cpa",
        position=2,
    )


def change(deployment, anchor: str) -> str:
    return reverse("admin:routes_deployment_change", args=[deployment.pk]) + f"#{anchor}"


# kind: (the failed row, the role that may act, the link it gets, given the deployment)
FIXES: dict[str, tuple[Any, str, Any]] = {
    "base_url": (
        failing("panel", "connection_refused", host="api.example.com:443", target=""),
        "owner",
        lambda d: (
            reverse("admin:routes_verificationjob_change", args=[d.verification_job.pk])
            + "#id_base_url"
        ),
    ),
    "override": (
        failing("plugin_resources", "plugin_rule_missing", path="/v0/resource/plugins/"),
        "operator",
        lambda d: change(d, "overrides-1"),
    ),
    "tls_verify": (
        failing("panel", "tls_untrusted", host="api.example.com", reason="self_signed"),
        "operator",
        lambda d: reverse("admin:routes_deployment_verify_tls_off", args=[d.pk]),
    ),
    "keys": (
        failing("api_models", "unknown_api_key", key="ci ••••7f3a"),
        "owner",
        lambda d: change(d, "keys-group"),
    ),
    "deployment": (
        failing("panel", "tls_error", host="api.example.com", reason="handshake"),
        "operator",
        lambda d: change(d, "id_ssl_certificate"),
    ),
    "upstreams": (
        failing("cpa_health", "upstream_down", **CPA_DOWN),
        "operator",
        lambda d: change(d, "id_cpa_upstream"),
    ),
    "cpamp_setup": (
        failing(
            "usage_service_info",
            "setup_incomplete",
            status=428,
            panel="https://api.example.com/management.html",
            cpa_url="http://127.0.0.1:8317",
        ),
        "operator",
        lambda d: "https://api.example.com/management.html",
    ),
}


# The kinds whose link opens an edit form; tls_verify is a POST button, cpamp_setup CPAMP's panel.
EDIT_FORM_FIXES = ("base_url", "override", "keys", "deployment", "upstreams")


@pytest.mark.parametrize("kind", list(FIXES))
def test_each_fix_kind_links_to_its_fix_for_a_role_that_may_and_not_for_a_viewer(
    client, users, deployment, kind
):
    row, role, link = FIXES[kind]
    if kind == "override":
        plugin_override(deployment)
    run = make_run(deployment, [row])
    assert run.causes[0]["fix"]["kind"] == kind
    client.force_login(users[role])
    verify_url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    shown = {
        f"{verify_url}?run={run.pk}": verify_page(client, deployment, run),
        reverse("admin:routes_verificationrun_change", args=[run.pk]): run_page(client, run),
    }
    for here, html in shown.items():
        first = unescape(fix_links(html)[0])
        # A link to an edit form carries the way back to this page (tests/test_fix_links.py).
        way_back = "?" + urlencode({"next": here})
        assert (way_back in first) == (kind in EDIT_FORM_FIXES)
        assert first.replace(way_back, "") == link(deployment)
    client.force_login(users["viewer"])
    for html in (verify_page(client, deployment, run), run_page(client, run)):
        assert fix_links(html) == []
        assert "can make this fix" in causes_of(html) or "Only an owner" in causes_of(html)


def test_the_fix_links_lead_to_fields_and_rows_that_exist(client, users, deployment):
    plugin_override(deployment)
    deployment.tls = True
    deployment.ssl_certificate = "/etc/ssl/a.pem"
    deployment.ssl_certificate_key = "/etc/ssl/a.key"
    deployment.save()
    store_key(deployment, "cpa_api", API_KEY, label="ci")
    job = job_for(deployment)
    client.force_login(users["owner"])
    page = client.get(reverse("admin:routes_deployment_change", args=[deployment.pk]))
    html = page.content.decode()
    for anchor in ("overrides-1", "keys-group", "id_ssl_certificate", "id_cpa_upstream"):
        assert f'id="{anchor}"' in html, anchor
    # overrides-1 is the plugin rule's row (the inline lists overrides by position).
    assert html.index('id="overrides-1"') < html.index("/v0/resource/plugins/")
    job_page = client.get(reverse("admin:routes_verificationjob_change", args=[job.pk]))
    assert 'id="id_base_url"' in job_page.content.decode()


def test_an_operator_is_told_who_may_change_the_base_url(client, users, deployment):
    row = FIXES["base_url"][0]
    run = make_run(deployment, [row])
    client.force_login(users["operator"])
    html = verify_page(client, deployment, run)
    assert fix_links(html) == []
    assert "Only an owner of team ops may change the base URL" in causes_of(html)


def test_an_owner_also_gets_the_first_setup_values_for_cpamp_setup(client, users, deployment):
    run = make_run(deployment, [FIXES["cpamp_setup"][0]])
    client.force_login(users["owner"])
    links = fix_links(verify_page(client, deployment, run))
    assert reverse("admin:routes_deployment_first_setup", args=[deployment.pk]) in links
    client.force_login(users["operator"])
    links = fix_links(verify_page(client, deployment, run))
    assert reverse("admin:routes_deployment_first_setup", args=[deployment.pk]) not in links


def test_a_rule_no_override_decides_sends_the_operator_to_export_the_config(
    client, users, deployment
):
    run = make_run(
        deployment,
        [failing("plugin_resources", "plugin_rule_missing", path="/v0/resource/plugins/")],
    )
    client.force_login(users["operator"])
    links = fix_links(verify_page(client, deployment, run))
    assert links == [reverse("admin:routes_deployment_config", args=[deployment.pk])]


# --- "Turn TLS verification off and run again" --------------------------------------------


def tls_off_url(deployment) -> str:
    return reverse("admin:routes_deployment_verify_tls_off", args=[deployment.pk])


def test_an_operator_turns_tls_verification_off_and_a_run_is_queued(
    client, users, deployment, django_capture_on_commit_callbacks
):
    make_run(deployment, [FIXES["tls_verify"][0]])
    client.force_login(users["operator"])
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(tls_off_url(deployment))
    job = VerificationJob.objects.get(deployment=deployment)
    assert job.verify_tls is False
    queued = VerificationRun.objects.filter(status="queued").get()
    assert queued.triggered_by == users["operator"] and len(callbacks) == 1
    assert response.status_code == 302 and response["Location"].endswith(f"?run={queued.pk}")
    event = AuditEvent.objects.get(action="verification_job.change")
    assert event.changes == {"verify_tls": [True, False]}
    assert event.actor == users["operator"] and event.team_id == deployment.team_id


def test_turning_tls_off_again_records_nothing_new_but_still_runs(client, users, deployment):
    job = job_for(deployment)
    job.verify_tls = False
    job.save()
    client.force_login(users["operator"])
    assert client.post(tls_off_url(deployment)).status_code == 302
    assert not AuditEvent.objects.filter(action="verification_job.change").exists()
    assert VerificationRun.objects.filter(status="queued").count() == 1


def test_a_viewer_is_refused_turning_tls_off_with_a_message(client, users, deployment):
    make_run(deployment, [FIXES["tls_verify"][0]])
    client.force_login(users["viewer"])
    response = client.post(tls_off_url(deployment))
    assert response.status_code == 403
    assert "may turn TLS verification off; nothing was changed" in response.content.decode()
    assert job_for(deployment).verify_tls is True
    assert VerificationRun.objects.count() == 1
    assert not AuditEvent.objects.filter(action="verification_job.change").exists()


def test_turning_tls_off_takes_a_post_and_another_team_gets_a_404(client, users, deployment):
    client.force_login(users["operator"])
    assert client.get(tls_off_url(deployment)).status_code == 405
    client.force_login(users["outsider"])
    assert client.post(tls_off_url(deployment)).status_code == 404
    assert job_for(deployment).verify_tls is True
    assert not VerificationRun.objects.exists()


def test_the_tls_button_is_a_csrf_protected_post_form(client, users, deployment):
    run = make_run(deployment, [FIXES["tls_verify"][0]])
    client.force_login(users["operator"])
    section = causes_of(verify_page(client, deployment, run))
    form = section.split("<form", 1)[1].split("</form>", 1)[0]
    assert 'method="post"' in form and 'name="csrfmiddlewaretoken"' in form
    assert "Turn TLS verification off and run again" in form


# --- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_failing_panel_shows_causes_not_check_rows(client, users, deployment):
    run = cpa_down_run(deployment)
    client.force_login(users["viewer"])
    page = client.get(INDEX).content.decode()
    panel = page.split('id="failing-checks"')[1].split('id="recent-exports"')[0]
    sentence = english("upstream_down", CPA_DOWN)
    assert panel.count(sentence) == 1
    assert panel.count('data-cause-code="upstream_down"') == 1
    assert "CPA health, CPA API with the API key, Fallback to CPA for new paths" in panel
    assert reverse("admin:routes_verificationrun_change", args=[run.pk]) in panel
    assert "/v1/models" not in panel


# --- the short-key warning --------------------------------------------------------------------


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_key_admin_stores_a_short_key_and_warns(client, users, deployment):
    client.force_login(users["owner"])
    response = client.post(
        "/admin/routes/key/add/",
        {"deployment": deployment.pk, "role": "cpa_api", "label": "ci", "secret": SHORT}
        | _rows("rotations", []),
        follow=True,
    )
    assert Key.objects.get().reveal() == SHORT
    assert any("short key" in m for m in messages_of(response))
    assert SHORT not in response.content.decode()


def test_the_deployment_key_inline_stores_a_short_key_and_warns(client, users, deployment):
    client.force_login(users["owner"])
    data = deployment_data(deployment, keys=[{"role": "cpa_management", "secret": SHORT}])
    response = client.post(
        reverse("admin:routes_deployment_change", args=[deployment.pk]), data, follow=True
    )
    assert Key.objects.get(deployment=deployment).reveal() == SHORT
    warnings = [m for m in messages_of(response) if "short key" in m]
    assert warnings == [
        "CPA Management Key: short key (fewer than 16 characters). CPA accepts it, but a short "
        "key is easy to guess; use a long random one."
    ]
    assert SHORT not in response.content.decode()


def test_a_long_key_gets_no_warning(client, users, deployment):
    client.force_login(users["owner"])
    data = deployment_data(
        deployment, keys=[{"role": "cpa_management", "secret": "a-long-enough-management-key"}]
    )
    response = client.post(
        reverse("admin:routes_deployment_change", args=[deployment.pk]), data, follow=True
    )
    assert Key.objects.filter(deployment=deployment).count() == 1
    assert not [m for m in messages_of(response) if "short key" in m]


def test_the_wizard_keys_step_stores_a_short_key_and_warns(client, users, deployment):
    client.force_login(users["owner"])
    url = reverse("admin:routes_deployment_wizard_keys", args=[deployment.pk])
    assert "is stored with a warning" in client.get(url).content.decode()
    response = client.post(url, {"cpa_api": SHORT, "api_label": "ci"}, follow=True)
    assert Key.objects.get(deployment=deployment).reveal() == SHORT
    assert any(m.startswith("CPA API Key: short key") for m in messages_of(response))
    assert SHORT not in response.content.decode()


def test_set_key_warns_on_stderr_and_still_stores_the_key(monkeypatch, deployment):
    monkeypatch.setattr("sys.stdin", io.StringIO(SHORT + "\n"))
    out, err = io.StringIO(), io.StringIO()
    call_command("set_key", "prod", "cpa_api", stdout=out, stderr=err)
    assert Key.objects.get().reveal() == SHORT
    assert "CPA API Key: short key (fewer than 16 characters)" in err.getvalue()
    assert "short key" not in out.getvalue()
    assert SHORT not in out.getvalue() + err.getvalue()


# --- translated check labels ------------------------------------------------------------------


def test_the_job_form_labels_its_checks_in_the_users_language(client, users, deployment):
    job = job_for(deployment)
    client.force_login(users["operator"])
    url = reverse("admin:routes_verificationjob_change", args=[job.pk])
    assert "api_models: CPA API with the API key" in client.get(url).content.decode()
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    with translation.override("zh-hans"):
        label = str(CHECKS["plugin_resources"].label)
    assert label != "Plugin resources"
    assert f"plugin_resources: {label}" in client.get(url).content.decode()


# --- the README cannot drift from the code ----------------------------------------------------


def readme_verification_section() -> str:
    text = README.read_text()
    return text.split("\n## Verification\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_lists_every_check_and_every_cause_code():
    section = readme_verification_section()
    missing_checks = [c for c in CHECKS if f"`{c}`" not in section]
    missing_causes = [c for c in cz.SPECS if f"`{c}`" not in section]
    assert missing_checks == [] and missing_causes == []
    for check in CHECKS.values():
        with translation.override("en"):
            assert str(check.label) in section, check.id


def test_the_failing_panel_reads_stored_causes_without_loading_checks(make_user, team):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from routes.admin.dashboard import build_dashboard
    from routes.models import Deployment

    for n in range(4):
        deployment = Deployment.objects.create(
            slug=f"d{n}", name=f"D{n}", team=team, server_name=f"d{n}.example.com"
        )
        cpa_down_run(deployment)
    with CaptureQueriesContext(connection) as queries:
        dashboard = build_dashboard(user=make_user("vera", team=team))
    assert [len(f.causes) for f in dashboard.failing] == [1, 1, 1, 1]
    assert not [q for q in queries.captured_queries if "routes_checkresult" in q["sql"]]
