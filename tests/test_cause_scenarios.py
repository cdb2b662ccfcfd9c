"""Issue 11: each broken deployment yields exactly one root cause with the right code.

Against the CPA/CPAMP emulators behind real nginx serving the exported config
(tests/fakes/stack.py), the way operators break things. Every stored diagnosis is also searched
for library exception text.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from routes import keys as keyring
from routes.models import CheckResult, RouteOverride, VerificationRun
from routes.verification.runs import job_for, verify_now
from tests.fakes.stack import (
    ADMIN_KEY,
    API_KEY,
    MANAGEMENT_KEY,
    free_port,
    running_stack,
    store_key,
)

pytestmark = [pytest.mark.nginx, pytest.mark.django_db(transaction=True)]

# What a library's exception says when it leaks into a diagnosis.
LIBRARY_TEXT = re.compile(
    r"HTTPConnectionPool|HTTPSConnectionPool|Max retries|_ssl\.c|Errno|Traceback|"
    r"[A-Z][A-Za-z]+(?:Error|Exception)\b|SSL:|CERTIFICATE_VERIFY_FAILED|errno|"
    r"RemoteDisconnected|BadStatusLine|gaierror|urllib3|http\.client"
)
STALE = "stale-in-cpamp-1"

# name: (running_stack options, deployment changes, expected code, expected upstream)
SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
    "cpa_down": ({"cpa_down": True}, {}, "upstream_down", "cpa"),
    "cpamp_down": ({"cpamp_down": True}, {}, "upstream_down", "cpamp"),
    "setup_not_finished": ({"setup_done": False}, {}, "setup_incomplete", ""),
    "wrong_api_key": ({"cpa_api_keys": ["sk-some-other-key-000"]}, {}, "unknown_api_key", ""),
    # The Admin Key kept in the API key's place (one secret is stored under one role only).
    "admin_key_as_api_key": (
        {"keys": {keyring.CPA_API: ADMIN_KEY, keyring.CPA_MANAGEMENT: MANAGEMENT_KEY}},
        {},
        "wrong_key_type",
        "",
    ),
    "admin_and_api_keys_swapped": (
        {
            "keys": {
                keyring.CPAMP_ADMIN: API_KEY,
                keyring.CPA_API: ADMIN_KEY,
                keyring.CPA_MANAGEMENT: MANAGEMENT_KEY,
            }
        },
        {},
        "wrong_key_type",
        "",
    ),
    "stale_saved_key_traced": (
        {"cpamp_management_key": STALE},
        {},
        "saved_management_key_refused",
        "",
    ),
    "stale_saved_key_untraced": (
        {"cpamp_management_key": STALE},
        {"route_tracing": False},
        "saved_management_key_refused",
        "",
    ),
    "cpamp_cannot_reach_cpa": (
        {"cpamp_cpa_url": "dead"},
        {},
        "cpamp_cannot_reach_cpa",
        "",
    ),
    "plugin_rule_to_cpa": (
        {"overrides": (("prefix", "/v0/resource/plugins/", "cpa"),)},
        {},
        "plugin_rule_missing",
        "",
    ),
    "fallback_missing": (
        {"overrides": (("prefix", "/", "cpamp"),)},
        {},
        "fallback_missing",
        "",
    ),
    "usage_publishing_off": ({"usage_statistics_enabled": False}, {}, "usage_publishing_off", ""),
    "cpa_too_old": ({"cpa_version": "v6.10.7"}, {}, "cpa_too_old_for_usage_queue", ""),
    "untrusted_certificate": ({"tls": True}, {}, "tls_untrusted", ""),
    "cpa_panel_missing": (
        {"cpa_panel_available": False},
        {"mode": "cpa_panel"},
        "cpa_panel_missing",
        "",
    ),
}


def run_scenario(deployment, name: str) -> VerificationRun:
    options, changes, _code, _upstream = SCENARIOS[name]
    options = dict(options)
    if options.get("cpamp_cpa_url") == "dead":
        options["cpamp_cpa_url"] = f"http://127.0.0.1:{free_port()}"
    for field, value in changes.items():
        setattr(deployment, field, value)
    deployment.save()
    with running_stack(deployment, **options) as stack:
        return verify_now(deployment=stack.deployment)


def summary(run: VerificationRun) -> dict[str, Any]:
    return {
        "causes": [(c["code"], c["upstream"], c["checks"]) for c in run.causes],
        "failed": {
            r.check_id: (r.status_code, r.observed_upstream, r.diagnosis_code)
            for r in run.results.all()
            if not r.passed
        },
    }


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_broken_deployment_yields_exactly_one_cause_with_the_right_code(deployment, name):
    _options, _changes, code, upstream = SCENARIOS[name]
    run = run_scenario(deployment, name)
    assert run.status == VerificationRun.Status.FAILED, summary(run)
    assert [c["code"] for c in run.causes] == [code], summary(run)
    cause = run.causes[0]
    assert cause["upstream"] == upstream
    failed = set(run.results.filter(passed=False).values_list("check_id", flat=True))
    # The one cause explains every failed check, and names only failed checks.
    assert set(cause["checks"]) == failed, summary(run)
    for result in run.results.all():
        assert not LIBRARY_TEXT.search(result.diagnosis), (result.check_id, result.diagnosis)
        assert not LIBRARY_TEXT.search(json.dumps(result.diagnosis_params)), result.check_id
        assert not LIBRARY_TEXT.search(json.dumps(result.warning_params)), result.check_id


def test_the_offending_override_is_the_fix_of_a_plugin_rule_sent_to_cpa(deployment):
    run = run_scenario(deployment, "plugin_rule_to_cpa")
    override = RouteOverride.objects.get(deployment=deployment, path="/v0/resource/plugins/")
    assert run.causes[0]["fix"] == {"kind": "override", "override_id": override.pk}


def test_an_untrusted_certificate_is_fixed_by_turning_verification_off(deployment):
    run = run_scenario(deployment, "untrusted_certificate")
    cause = run.causes[0]
    assert cause["fix"]["kind"] == "tls_verify"
    # Every HTTPS check, the certificate check included; the plain-HTTP redirect passed.
    assert "certificate" in cause["checks"] and "panel" in cause["checks"]
    assert "https_redirect" not in cause["checks"]


def test_a_stale_saved_key_without_tracing_is_never_called_a_missing_rule(deployment):
    run = run_scenario(deployment, "stale_saved_key_untraced")
    check = run.results.get(check_id="management_config")
    assert check.observed_upstream == "cpamp"
    assert check.details["identified_by"] == "options"
    assert check.diagnosis_code == "saved_management_key_refused"
    assert "reached CPA directly" not in check.diagnosis


def test_cpa_down_costs_no_refused_management_key(deployment):
    with running_stack(deployment, cpamp_management_key=STALE) as stack:
        verify_now(deployment=stack.deployment)
        refused = stack.cpa.management_refusals()
    # The lane sends one probe that can be refused, and holds back request_monitoring, whose
    # read through CPAMP would be a second refusal of the stale key.
    assert len(refused) == 1


def test_with_two_api_keys_one_wrong_api_models_fails_with_401_and_names_that_key(deployment):
    with running_stack(deployment) as stack:
        store_key(stack.deployment, keyring.CPA_API, "sk-console-wrong-7f3a", label="ci")
        run = verify_now(deployment=stack.deployment)
    check = run.results.get(check_id="api_models")
    assert not check.passed and check.status_code == 401
    assert check.details["keys"] == [
        {"key": "••••" + API_KEY[-4:], "status_code": 200, "passed": True},
        {"key": "ci ••••7f3a", "status_code": 401, "passed": False},
    ]
    assert "ci ••••7f3a" in check.diagnosis
    assert [c["code"] for c in run.causes] == ["unknown_api_key"]


def test_verify_json_names_each_api_key_and_the_cause(deployment, capsys):
    from django.core.management import call_command

    with running_stack(deployment, cpa_api_keys=["sk-some-other-key-000"]):
        with pytest.raises(SystemExit):
            call_command("verify", "prod", "--json")
    data = json.loads(capsys.readouterr().out)
    assert [{k: c[k] for k in ("code", "upstream", "checks")} for c in data["causes"]] == [
        {"code": "unknown_api_key", "upstream": "", "checks": ["api_models"]}
    ]
    assert data["causes"][0]["diagnosis"].startswith("401 on /v1/models")
    models = next(c for c in data["checks"] if c["id"] == "api_models")
    assert models["label"] == "CPA API with the API key"
    assert models["keys"] == [{"key": "••••" + API_KEY[-4:], "status_code": 401, "passed": False}]
    fallback = next(c for c in data["checks"] if c["id"] == "cpa_fallback")
    assert fallback["passed"] and fallback["warning"].startswith("A 404 is fine here")


def test_verify_lang_prints_the_stored_run_in_chinese(deployment, capsys):
    from django.core.management import call_command

    overrides = (("prefix", "/v0/resource/plugins/", "cpa"),)
    with running_stack(deployment, overrides=overrides):
        with pytest.raises(SystemExit):
            call_command("verify", "prod", "--json", "--lang", "zh-hans")
        with pytest.raises(SystemExit):
            call_command("verify", "prod", "--json")
    chinese, english = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    run = VerificationRun.objects.get(pk=chinese["run"])
    # The stored column stays English; what is printed follows --lang (English without it).
    stored = CheckResult.objects.get(run=run, check_id="plugin_resources").diagnosis
    assert stored.startswith("/v0/resource/plugins/ was answered by CPA")
    printed = next(c for c in chinese["checks"] if c["id"] == "plugin_resources")
    assert "由 CPA 应答" in printed["diagnosis"] and printed["label"] == "插件资源"
    assert "由 CPA 应答" in chinese["causes"][0]["diagnosis"]
    assert (
        next(c for c in english["checks"] if c["id"] == "plugin_resources")["diagnosis"] == stored
    )


def test_verify_refuses_an_unknown_language(deployment, capsys):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError) as caught:
        call_command("verify", "prod", "--lang", "xx")
    assert caught.value.returncode == 2 and "--lang" in str(caught.value)


def test_a_healthy_run_has_no_cause_and_passes_request_monitoring(deployment):
    with running_stack(deployment) as stack:
        run = verify_now(deployment=stack.deployment)
    assert run.status == VerificationRun.Status.PASSED, summary(run)
    assert run.causes == []
    monitoring = run.results.get(check_id="request_monitoring")
    assert monitoring.details["cpa_version"] == "v7.1.39"
    assert monitoring.details["usage_statistics_enabled"] is True


def test_the_clear_management_key_cpamp_returns_is_never_stored(deployment):
    # CPAMP's saved key is right but the console does not hold it: only masking can hide it.
    keys = {keyring.CPAMP_ADMIN: ADMIN_KEY, keyring.CPA_API: API_KEY}
    with running_stack(deployment, keys=keys) as stack:
        run = verify_now(deployment=stack.deployment)
    monitoring = run.results.get(check_id="request_monitoring")
    assert monitoring.passed, monitoring.diagnosis
    stored = repr(list(run.results.values())) + repr(
        VerificationRun.objects.filter(pk=run.pk).values().get()
    )
    assert MANAGEMENT_KEY not in stored
    assert "[redacted]" in monitoring.excerpt


def test_a_cpa_panel_deployment_with_its_panel_keeps_passing(deployment):
    deployment.mode = "cpa_panel"
    deployment.save()
    with running_stack(deployment) as stack:
        job = job_for(stack.deployment)
        run = verify_now(deployment=stack.deployment)
    assert job.pk and run.status == VerificationRun.Status.PASSED, summary(run)
