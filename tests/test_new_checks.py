"""Issue 11's new checks and judgements: request monitoring's chain, CPA's safe mode and missing
panel, the OPTIONS fingerprint, warnings on passes, one wave and the management lane. Answers are
built by hand; the last tests use the emulators behind real nginx."""

from __future__ import annotations

import json
from typing import Any

import pytest

from routes import keys as keyring
from routes.models import Deployment
from routes.verification import checks, outcomes, runner
from routes.verification.checks import CHECKS, CPA_PANEL
from routes.verification.http import CPA, CPAMP, UNKNOWN, Probe, options_fingerprint
from routes.verification.runner import ManagementLane, build_context
from routes.verification.runs import verify_now
from tests.fakes.stack import API_KEY, running_stack

SAVED_KEY = "cpa-saved-in-cpamp-unknown-to-console-91"


def answer(status: int, body: Any = None, **headers: str) -> Probe:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return Probe(
        method="GET", url="http://127.0.0.1:9/", status_code=status, headers=headers, body=raw
    )


def judged(
    deployment: Deployment, check_id: str, probe: Probe, *, seen: dict[str, str] | None = None
) -> outcomes.CheckOutcome:
    ctx = build_context(
        deployment, base_url="http://127.0.0.1:9", verify_tls=False, timeout=1, keys={}
    )
    ctx.observed.update(seen or {})
    check = checks.check_for_mode(CHECKS[check_id], deployment.mode)
    return outcomes.evaluate(check, probe, ctx, ctx.url(check))


def usage_config(
    *, url: str = "http://cli-proxy-api:8317", collector: bool = True, usage: Any = True
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "config": {
            "cpaConnection": {"cpaBaseUrl": url, "managementKey": SAVED_KEY},
            "collector": {"enabled": collector, "pollIntervalMs": 500},
        },
        "source": "db",
    }
    if usage is not None:
        body["cpaUsage"] = {"usageStatisticsEnabled": usage, "redisUsageQueueRetentionSeconds": 60}
    return body


BY_CPAMP = {"x_console_upstream": CPAMP}
NEW_CPA = {"cpa_version": "v7.1.39"}


# --- request monitoring -----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "seen", "link"),
    [
        (usage_config(url=""), NEW_CPA, "setup_incomplete"),
        (usage_config(usage=None), NEW_CPA, "cpa_usage_unreadable"),
        (usage_config(collector=False), NEW_CPA, "request_monitoring_off"),
        (usage_config(usage=False), NEW_CPA, "usage_publishing_off"),
        (usage_config(), {"cpa_version": "v6.10.7"}, "cpa_too_old_for_usage_queue"),
        # The first broken link is named, in the seed's order.
        (
            usage_config(collector=False, usage=False),
            {"cpa_version": "v6.9.0"},
            "request_monitoring_off",
        ),
    ],
)
def test_request_monitoring_names_the_first_broken_link(deployment, body, seen, link):
    outcome = judged(deployment, "request_monitoring", answer(200, body, **BY_CPAMP), seen=seen)
    assert not outcome.passed
    assert outcome.details["link"] == link and outcome.diagnosis_code == link
    assert outcome.diagnosis.startswith(("Request monitoring has no data", "CPAMP's first setup"))


@pytest.mark.django_db
def test_request_monitoring_passes_on_a_whole_chain_and_warns_without_a_version(deployment):
    body = usage_config()
    good = judged(deployment, "request_monitoring", answer(200, body, **BY_CPAMP), seen=NEW_CPA)
    assert good.passed and good.warning_code == ""
    unknown = judged(deployment, "request_monitoring", answer(200, body, **BY_CPAMP))
    assert unknown.passed and unknown.warning_code == "cpa_version_unknown"
    # The deployment's own CPA version stands in when the run saw none.
    deployment.cpa_version = "v6.10.0"
    old = judged(deployment, "request_monitoring", answer(200, body, **BY_CPAMP))
    assert old.details["link"] == "cpa_too_old_for_usage_queue"


@pytest.mark.django_db
def test_the_saved_management_key_cpamp_returns_in_clear_is_masked_before_anything_reads_it(
    deployment,
):
    outcome = judged(deployment, "request_monitoring", answer(200, usage_config(), **BY_CPAMP))
    kept = outcome.excerpt + json.dumps(outcome.details) + json.dumps(outcome.diagnosis_params)
    assert SAVED_KEY not in kept and "[redacted]" in outcome.excerpt
    assert outcome.details["saved_cpa_url"] == "http://cli-proxy-api:8317"


@pytest.mark.django_db
def test_request_monitoring_refused_by_cpamp_is_the_admin_keys_problem(deployment):
    refused = {"error": "invalid admin key", "code": "invalid_admin_key"}
    outcome = judged(deployment, "request_monitoring", answer(401, refused, **BY_CPAMP))
    assert outcome.diagnosis_code == "keys_missing"  # judged() stores no key


def test_request_monitoring_is_planned_with_the_admin_key_in_manager_server_mode_only():
    deployment = Deployment(mode="manager_server", server_name="a.example", cpamp_cpa_url="")
    ids = {c.id for c in checks.plan_checks(deployment, roles=[keyring.CPAMP_ADMIN])}
    assert "request_monitoring" in ids
    assert "request_monitoring" not in {c.id for c in checks.plan_checks(deployment, roles=[])}
    deployment.mode = CPA_PANEL
    ids = {c.id for c in checks.plan_checks(deployment, roles=[keyring.CPAMP_ADMIN])}
    assert "request_monitoring" not in ids


# --- CPA's own refusals -----------------------------------------------------------------------


@pytest.mark.django_db
def test_cpas_safe_mode_is_named_from_its_header(deployment):
    body = {"error": "unsafe_example_api_key", "message": "Proxy API endpoints are disabled"}
    probe = answer(403, body, x_console_upstream=CPA, x_cpa_safe_mode="example-api-key")
    outcome = judged(deployment, "api_models", probe)
    assert not outcome.passed and outcome.diagnosis_code == "cpa_safe_mode"
    assert "your-api-key-1" in outcome.diagnosis


@pytest.mark.django_db
def test_a_cpa_panel_answering_404_is_a_missing_panel(deployment):
    deployment.mode = CPA_PANEL
    outcome = judged(deployment, "panel", answer(404, b"", x_console_upstream=CPA))
    assert outcome.diagnosis_code == "cpa_panel_missing"
    assert "disable-control-panel" in outcome.diagnosis


# --- who answered without the trace header ----------------------------------------------------


def test_the_options_fingerprint_tells_cpa_from_cpamp():
    def options(status: int, allowed: str | None) -> Probe:
        headers = {"access-control-allow-headers": allowed} if allowed is not None else {}
        return Probe(method="OPTIONS", url="http://x/", status_code=status, headers=headers)

    assert options_fingerprint(options(204, "*")) == CPA
    assert options_fingerprint(options(204, "Authorization, Content-Type")) == CPAMP
    # CPAMP's /management.html answers OPTIONS with its page and no CORS headers.
    assert options_fingerprint(options(200, None)) == UNKNOWN
    assert options_fingerprint(options(204, "X-Other")) == UNKNOWN


@pytest.mark.django_db
def test_an_options_fingerprint_is_sent_only_without_tracing_and_only_when_it_can_tell(deployment):
    check = CHECKS["management_config"]
    refusal = answer(401, {"error": "invalid management key"}, x_cpa_version="v7.1.39")

    def needs(probe: Probe, *, tracing: bool, check=check) -> bool:
        deployment.route_tracing = tracing
        ctx = build_context(
            deployment, base_url="http://127.0.0.1:9", verify_tls=False, timeout=1, keys={}
        )
        return outcomes.needs_fingerprint(check, probe, ctx)

    assert needs(refusal, tracing=False)
    assert not needs(refusal, tracing=True)
    assert needs(answer(200, {"data": []}), tracing=False, check=CHECKS["api_models"])
    # nginx's own 502 would answer the OPTIONS too; a CPAMP answer already says who it is.
    assert not needs(answer(502, b"<html>Bad Gateway</html>"), tracing=False)
    assert not needs(answer(401, {"error": "x", "code": "invalid_admin_key"}), tracing=False)


@pytest.mark.django_db
def test_a_cpa_refusal_identified_as_passed_through_cpamp_is_the_saved_key(deployment):
    deployment.route_tracing = False
    ctx = build_context(
        deployment, base_url="http://127.0.0.1:9", verify_tls=False, timeout=1, keys={}
    )
    check = CHECKS["management_config"]
    refusal = answer(401, {"error": "invalid management key"}, x_cpa_version="v7.1.39")
    through = outcomes.evaluate(check, refusal, ctx, ctx.url(check), identified=CPAMP)
    assert through.observed_upstream == CPAMP and through.cpa_refused
    assert through.diagnosis_code == "saved_management_key_refused"
    direct = outcomes.evaluate(check, refusal, ctx, ctx.url(check))
    assert direct.diagnosis_code == "management_rule_missing"


# --- warnings on passes -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_pass_with_a_404_says_why_it_is_fine(deployment):
    outcome = judged(
        deployment, "cpa_fallback", answer(404, b"404 page not found", x_console_upstream=CPA)
    )
    assert outcome.passed and outcome.warning_code == "not_found_is_fine"
    assert outcome.warning == "A 404 is fine here: the check proves which upstream answered."
    assert (
        judged(
            deployment, "cpa_health", answer(200, {"status": "ok"}, x_console_upstream=CPA)
        ).warning
        == ""
    )


@pytest.mark.django_db
def test_an_unverified_certificate_passes_with_a_not_verified_warning(deployment):
    import datetime as dt

    ctx = build_context(
        deployment, base_url="https://127.0.0.1:9", verify_tls=False, timeout=1, keys={}
    )
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    outcome = outcomes.certificate(
        CHECKS["certificate"],
        ctx,
        url="https://127.0.0.1:9",
        names=[deployment.server_name],
        not_after=soon,
        issuer="CN=api.example.com",
        trusted_error="",
        latency_ms=1,
        self_signed=True,
    )
    assert outcome.passed and outcome.warning == "Not verified: self-signed."


# --- one wave and the lane --------------------------------------------------------------------


@pytest.mark.django_db
def test_the_pool_is_at_least_as_large_as_the_plan(deployment, settings):
    settings.CONSOLE_VERIFY_POOL = 2
    deployment.tls = True
    plan = checks.plan_checks(deployment, roles=list(keyring.ROLE_LABELS))
    assert runner.pool_size(plan) == len(plan) > 2


def test_request_monitoring_waits_for_management_config_and_is_safe_once_it_passed():
    lane_checks = [CHECKS[i] for i in ("management_config", "request_monitoring", "cpa_direct")]
    lane = ManagementLane(lane_checks)
    start, skip = lane.ready()
    assert [c.id for c, _risky in start] == ["management_config"] and skip == []
    ok = outcomes.CheckOutcome(
        check_id="management_config",
        method="GET",
        url="",
        expected="",
        expected_upstream=CPAMP,
        passed=True,
        observed_upstream=CPAMP,
    )
    lane.done(CHECKS["management_config"], ok, True)
    start, skip = lane.ready()
    # Both at once: the saved key is proven, only cpa_direct's stored key may be refused.
    assert [(c.id, risky) for c, risky in start] == [
        ("request_monitoring", False),
        ("cpa_direct", True),
    ]


def test_a_refusal_holds_back_request_monitoring_and_names_who_refused():
    lane = ManagementLane([CHECKS["management_config"], CHECKS["request_monitoring"]])
    lane.ready()
    refused = outcomes.CheckOutcome(
        check_id="management_config",
        method="GET",
        url="",
        expected="",
        expected_upstream=CPAMP,
        passed=False,
        observed_upstream=CPAMP,
        cpa_refused=True,
    )
    lane.done(CHECKS["management_config"], refused, True)
    start, skip = lane.ready()
    assert start == [] and [c.id for c in skip] == ["request_monitoring"]
    assert lane.refused_by == "management_config"


def test_the_run_budget_counts_one_request_per_api_key_and_the_fingerprint():
    check = CHECKS["api_models"]
    assert check.cost(3) == 4 and check.cost(0) == 2
    assert CHECKS["certificate"].cost() == 2
    one = runner.run_budget([check], timeout=1.0)
    three = runner.run_budget([check], timeout=1.0, key_counts={keyring.CPA_API: 3})
    assert three > one


# --- against the emulators behind real nginx --------------------------------------------------


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_cpa_v72_in_safe_mode_is_one_cause(deployment):
    with running_stack(
        deployment, cpa_version="v7.2.140", cpa_api_keys=[API_KEY, "your-api-key-1"]
    ) as stack:
        run = verify_now(deployment=stack.deployment)
    assert [c["code"] for c in run.causes] == ["cpa_safe_mode"], [
        (r.check_id, r.diagnosis_code) for r in run.results.filter(passed=False)
    ]


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_without_tracing_fingerprints_make_unknown_rare(deployment):
    deployment.route_tracing = False
    deployment.save()
    with running_stack(deployment) as stack:
        run = verify_now(deployment=stack.deployment)
    observed = {r.check_id: r.observed_upstream for r in run.results.all()}
    assert run.status == "passed"
    # Only the panel stays unknown: CPAMP's /management.html answers OPTIONS with its page.
    assert [c for c, who in observed.items() if who == "unknown"] == ["panel"]
    assert observed["cpa_health"] == CPA and observed["plugin_resources"] == CPAMP


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_a_plugin_rule_sent_to_cpa_is_found_without_tracing(deployment):
    deployment.route_tracing = False
    deployment.save()
    overrides = (("prefix", "/v0/resource/plugins/", "cpa"),)
    with running_stack(deployment, overrides=overrides) as stack:
        run = verify_now(deployment=stack.deployment)
    assert [c["code"] for c in run.causes] == ["plugin_rule_missing"]
