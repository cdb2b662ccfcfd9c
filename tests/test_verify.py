"""Verification through real nginx and the CPA/CPAMP emulators: checks, diagnoses, runs."""

from __future__ import annotations

import logging

import pytest

from routes import keys as keyring
from routes.models import AuditEvent, CheckResult, VerificationRun
from routes.verification.checks import SEED_CHECKS
from routes.verification.runs import execute_run, probe_key, verify_now
from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY, running_stack

pytestmark = [pytest.mark.nginx, pytest.mark.django_db(transaction=True)]

SECRETS = (ADMIN_KEY, API_KEY, MANAGEMENT_KEY)


def results(run: VerificationRun) -> dict[str, CheckResult]:
    return {r.check_id: r for r in run.results.all()}


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def stored_text(run: VerificationRun) -> str:
    rows = list(run.results.values())
    run_row = VerificationRun.objects.filter(pk=run.pk).values().get()
    audit_rows = list(AuditEvent.objects.values())
    return repr(rows) + repr(run_row) + repr(audit_rows)


def test_a_healthy_deployment_passes_all_seven_seed_checks(deployment):
    with running_stack(deployment) as stack:
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    assert run.status == VerificationRun.Status.PASSED, {
        k: (r.status_code, r.observed_upstream, r.diagnosis) for k, r in by_id.items()
    }
    for check_id in SEED_CHECKS:
        assert by_id[check_id].passed, check_id
    assert by_id["panel"].method == "HEAD"
    assert by_id["panel"].observed_upstream == "cpamp"
    assert by_id["cpa_health"].observed_upstream == "cpa"
    assert by_id["api_models"].observed_upstream == "cpa"
    assert by_id["management_config"].observed_upstream == "cpamp"
    assert by_id["plugin_resources"].status_code == 404
    assert by_id["usage_service_info"].details["setupRequired"] is False
    assert by_id["usage_service_info"].details["configured"] is True
    # The extra checks that apply to this deployment ran and passed too.
    for extra in (
        "models_compat",
        "cpa_fallback",
        "management_refuses_api_key",
        "api_refuses_admin_key",
        "cpa_direct",
    ):
        assert by_id[extra].passed, (extra, by_id[extra].diagnosis)
    assert run.duration_ms is not None and run.finished_at is not None


def test_it_passes_without_route_tracing_by_fingerprints(deployment):
    deployment.route_tracing = False
    deployment.save()
    with running_stack(deployment) as stack:
        assert "X-Console-Upstream" not in stack.files["prod.conf"]
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    assert run.status == VerificationRun.Status.PASSED, {
        k: (r.status_code, r.observed_upstream, r.diagnosis) for k, r in by_id.items()
    }
    assert by_id["cpamp_health"].observed_upstream == "cpamp"
    assert by_id["usage_service_info"].observed_upstream == "cpamp"
    assert by_id["panel"].observed_upstream == "unknown"
    assert by_id["management_config"].observed_upstream == "cpamp"


def test_it_diagnoses_setup_not_finished(deployment):
    with running_stack(deployment, setup_done=False) as stack:
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    assert run.status == VerificationRun.Status.FAILED
    for check_id in ("management_config", "models_compat"):
        assert not by_id[check_id].passed
        assert by_id[check_id].status_code == 428
        assert "first setup is not finished" in by_id[check_id].diagnosis
        assert f"{stack.base_url}/management.html" in by_id[check_id].diagnosis
    assert by_id["usage_service_info"].passed
    assert by_id["usage_service_info"].details["setupRequired"] is True


def test_it_diagnoses_an_admin_key_of_the_wrong_type(deployment):
    # The operator stored the CPA Management Key where the CPAMP Admin Key belongs.
    keys = {keyring.CPAMP_ADMIN: MANAGEMENT_KEY, keyring.CPA_API: API_KEY}
    with running_stack(deployment, keys=keys) as stack:
        run = verify_now(deployment=stack.deployment)
        refused_at_cpa = stack.cpa.management_refusals()
    check = results(run)["management_config"]
    assert not check.passed and check.status_code == 401
    assert check.observed_upstream == "cpamp"
    assert "use the CPAMP Admin Key" in check.diagnosis
    assert refused_at_cpa == []


def test_it_diagnoses_an_api_key_of_the_wrong_type(deployment):
    # The CPA Management Key stored as the API key: CPA does not take it on /v1/models.
    keys = {keyring.CPAMP_ADMIN: ADMIN_KEY, keyring.CPA_API: MANAGEMENT_KEY}
    with running_stack(deployment, keys=keys) as stack:
        run = verify_now(deployment=stack.deployment)
    check = results(run)["api_models"]
    assert not check.passed and check.status_code == 401
    assert "wrong key type" in check.diagnosis
    assert "CPA API Key" in check.diagnosis


def test_it_diagnoses_an_api_key_cpa_does_not_know(deployment):
    with running_stack(deployment, cpa_api_keys=["sk-some-other-key-000"]) as stack:
        run = verify_now(deployment=stack.deployment)
    check = results(run)["api_models"]
    assert not check.passed and check.status_code == 401
    assert check.observed_upstream == "cpa"
    assert "API key CPA does not know" in check.diagnosis
    assert "api-keys" in check.diagnosis


def test_it_diagnoses_a_missing_plugin_rule(deployment):
    overrides = (("prefix", "/v0/resource/plugins/", "cpa"),)
    with running_stack(deployment, overrides=overrides) as stack:
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    check = by_id["plugin_resources"]
    assert not check.passed
    assert check.observed_upstream == "cpa"
    assert "/v0/resource/plugins/" in check.diagnosis and "missing" in check.diagnosis
    assert by_id["management_config"].passed


def test_it_diagnoses_cpa_down(deployment):
    with running_stack(deployment, cpa_down=True) as stack:
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    for check_id in ("cpa_health", "api_models"):
        assert not by_id[check_id].passed
        assert by_id[check_id].status_code == 502
        assert by_id[check_id].observed_upstream == "cpa"
        assert "CPA (:8317)" in by_id[check_id].diagnosis
        # The emulators run on loopback: the host topology's advice, never Docker's (issue 11).
        address = stack.deployment.cpa_upstream
        assert f"Is CPA running and listening on {address}?" in by_id[check_id].diagnosis
        assert "same Docker network" not in by_id[check_id].diagnosis
    # Through CPAMP: CPAMP itself cannot reach CPA.
    assert by_id["management_config"].status_code == 502
    assert "CPAMP could not reach CPA" in by_id["management_config"].diagnosis
    # CPAMP's own answers are fine.
    assert by_id["cpamp_health"].passed and by_id["panel"].passed
    # cpa_direct cannot reach CPA either: on the host topology that fails (issue 11), and the
    # run names one cause for all of it.
    assert not by_id["cpa_direct"].passed
    assert by_id["cpa_direct"].diagnosis.startswith("Connection refused")
    assert [c["code"] for c in run.causes] == ["upstream_down"]


def test_it_diagnoses_cpamp_down(deployment):
    with running_stack(deployment, cpamp_down=True) as stack:
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    for check_id in ("panel", "cpamp_health", "usage_service_info", "management_config"):
        assert not by_id[check_id].passed, check_id
        assert by_id[check_id].status_code == 502
        assert by_id[check_id].observed_upstream == "cpamp"
        assert "CPAMP (:18317)" in by_id[check_id].diagnosis
        address = stack.deployment.cpamp_upstream
        assert f"Is CPAMP running and listening on {address}?" in by_id[check_id].diagnosis
        assert "listening on 0.0.0.0" not in by_id[check_id].diagnosis
    assert by_id["cpa_health"].passed and by_id["api_models"].passed


def test_it_diagnoses_a_missing_fallback(deployment):
    # The shape of a config whose new CPA paths reach CPAMP: the fallback sends "/" to CPAMP.
    with running_stack(deployment, overrides=(("prefix", "/", "cpamp"),)) as stack:
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    check = by_id["cpa_fallback"]
    assert not check.passed
    assert check.status_code == 404 and check.observed_upstream == "cpamp"
    assert "fallback rule" in check.diagnosis
    assert by_id["cpa_health"].passed


def test_it_names_a_refused_connection(deployment):
    with running_stack(deployment) as stack:
        deployment = stack.deployment
    # nginx is gone now: nothing listens on the port.
    run = verify_now(deployment=deployment)
    check = results(run)["panel"]
    assert not check.passed and check.status_code is None
    assert check.diagnosis.startswith("Connection refused")


def test_it_names_a_dns_error(deployment):
    run = verify_now(deployment=deployment, base_url="http://does-not-exist.invalid")
    check = results(run)["cpamp_health"]
    assert not check.passed
    assert check.diagnosis.startswith("DNS error")


def test_it_never_sends_more_than_one_failing_management_key_probe(deployment):
    # /v0/management/ misrouted to CPA and every stored key wrong for CPA's management API:
    # management_config, the API-key negative probe and cpa_direct could each be refused.
    keys = {
        keyring.CPAMP_ADMIN: ADMIN_KEY,
        keyring.CPA_API: API_KEY,
        keyring.CPA_MANAGEMENT: "cpa-mgmt-stale-0000000",
    }
    overrides = (("prefix", "/v0/management/", "cpa"),)
    with running_stack(deployment, keys=keys, overrides=overrides) as stack:
        run = verify_now(deployment=stack.deployment)
        refused = stack.cpa.management_refusals()
        second = verify_now(deployment=stack.deployment)
        refused_after_two = stack.cpa.management_refusals()
    assert len(refused) == 1
    assert len(refused_after_two) == 2
    by_id = results(run)
    assert "reached CPA directly" in by_id["management_config"].diagnosis
    for check_id in ("management_refuses_api_key", "cpa_direct"):
        assert not by_id[check_id].passed
        assert by_id[check_id].details["skipped"]
        assert "at most one" in by_id[check_id].diagnosis
    assert second.status == VerificationRun.Status.FAILED


def test_a_wrong_saved_management_key_costs_one_refusal_per_run(deployment):
    keys = {
        keyring.CPAMP_ADMIN: ADMIN_KEY,
        keyring.CPA_API: API_KEY,
        keyring.CPA_MANAGEMENT: "cpa-mgmt-stale-0000000",
    }
    with running_stack(deployment, keys=keys, cpamp_management_key="stale-in-cpamp-1") as stack:
        run = verify_now(deployment=stack.deployment)
        refused = stack.cpa.management_refusals()
    by_id = results(run)
    assert len(refused) == 1
    assert "saved in CPAMP's setup" in by_id["management_config"].diagnosis
    # The negative probe is safe (CPAMP refuses it itself), cpa_direct is held back.
    assert by_id["management_refuses_api_key"].passed
    assert by_id["cpa_direct"].details["skipped"]


def test_no_secret_is_stored_logged_or_returned(deployment, caplog):
    caplog.set_level(logging.DEBUG)
    with running_stack(deployment) as stack:
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    # CPA's /v0/management/config lists its api-keys in clear; the excerpt must not.
    assert by_id["cpa_direct"].excerpt and "[redacted]" in by_id["cpa_direct"].excerpt
    assert "AIza-provider-secret" not in stored_text(run)
    assert_no_secret(stored_text(run), caplog.text)


def test_it_redacts_secrets_echoed_back_in_failures(deployment, caplog):
    caplog.set_level(logging.DEBUG)
    with running_stack(deployment, cpa_api_keys=[]) as stack:
        # CPA with no api-keys lets everything through, so the Admin Key is accepted as an API
        # key: a failing negative probe whose excerpt would otherwise carry data.
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    assert not by_id["api_refuses_admin_key"].passed
    assert "mixed" in by_id["api_refuses_admin_key"].diagnosis
    assert_no_secret(stored_text(run), caplog.text)


def test_a_run_claimed_twice_is_performed_once(deployment):
    from routes.verification.runs import create_run

    with running_stack(deployment) as stack:
        run = create_run(deployment=stack.deployment, trigger="manual")
        execute_run(run=run)
        again = execute_run(run=VerificationRun.objects.get(pk=run.pk))
    assert again.status == VerificationRun.Status.PASSED
    assert CheckResult.objects.filter(run=run).count() == len(results(run))
    assert len({r.check_id for r in run.results.all()}) == run.results.count()


def test_tls_deployments_check_the_redirect_and_the_certificate(deployment):
    with running_stack(deployment, tls=True) as stack:
        from routes.verification.runs import job_for

        job = job_for(stack.deployment)
        job.verify_tls = False  # self-signed
        job.save()
        run = verify_now(deployment=stack.deployment)
        job.verify_tls = True
        job.save()
        strict = verify_now(deployment=stack.deployment)
    by_id = results(run)
    assert run.status == VerificationRun.Status.PASSED, {
        k: (r.status_code, r.diagnosis) for k, r in by_id.items()
    }
    assert by_id["https_redirect"].status_code == 301
    assert by_id["certificate"].details["names"] == ["api.example.com"]
    assert 28 <= by_id["certificate"].details["days_left"] <= 30
    strict_cert = results(strict)["certificate"]
    assert not strict_cert.passed and "not trusted" in strict_cert.diagnosis
    assert results(strict)["panel"].diagnosis.startswith("TLS error")


@pytest.mark.parametrize(
    ("role", "secret", "ok"),
    [
        (keyring.CPA_API, API_KEY, True),
        (keyring.CPAMP_ADMIN, ADMIN_KEY, True),
        (keyring.CPA_MANAGEMENT, MANAGEMENT_KEY, True),
        (keyring.CPA_API, "sk-unknown-to-cpa-01", False),
        (keyring.CPA_MANAGEMENT, "cpa-mgmt-wrong-000001", False),
    ],
)
def test_test_this_key_records_the_outcome_on_the_key(deployment, role, secret, ok):
    with running_stack(deployment, keys={role: secret}) as stack:
        key = stack.deployment.keys.get(role=role)
        result = probe_key(key=key)
        refusals = stack.cpa.management_refusals()
    key.refresh_from_db()
    assert result.ok is ok
    assert key.last_validation_ok is ok
    assert key.last_validated_at is not None
    assert secret not in key.last_validation_detail
    assert len(refusals) <= 1
    event = AuditEvent.objects.get(action="key.test")
    assert event.changes["result"] == ("passed" if ok else "failed")
    assert secret not in repr(event.changes) + event.object_repr


def test_without_the_gate_the_lane_still_sends_one_refusable_key_at_a_time(deployment):
    # management_config is not enabled, so nothing tells where /v0/management/ goes: the
    # API-key probe goes first, is refused by CPA (misrouted), and cpa_direct is held back.
    from routes.verification.runs import job_for

    keys = {keyring.CPA_API: API_KEY, keyring.CPA_MANAGEMENT: "cpa-mgmt-stale-0000000"}
    overrides = (("prefix", "/v0/management/", "cpa"),)
    with running_stack(deployment, keys=keys, overrides=overrides) as stack:
        job = job_for(stack.deployment)
        job.enabled_checks = ["management_refuses_api_key", "cpa_direct"]
        job.save()
        run = verify_now(deployment=stack.deployment)
        refused = stack.cpa.management_refusals()
    by_id = results(run)
    assert set(by_id) == {"management_refuses_api_key", "cpa_direct"}
    assert len(refused) == 1
    assert by_id["management_refuses_api_key"].observed_upstream == "cpa"
    assert "reached CPA directly" in by_id["management_refuses_api_key"].diagnosis
    assert by_id["cpa_direct"].details["skipped"]


def test_it_names_a_timeout_and_holds_back_the_other_management_probes(deployment):
    from routes.verification.runs import job_for

    with running_stack(deployment, delay=0.6) as stack:
        job = job_for(stack.deployment)
        job.timeout_seconds = 0.2
        job.save()
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    assert by_id["cpamp_health"].diagnosis.startswith("Timed out after 0.2 s")
    assert by_id["management_config"].details["error"] == "timeout"
    # A timed-out management probe may have been refused: the others are not sent.
    assert by_id["cpa_direct"].details["skipped"]
    assert by_id["management_refuses_api_key"].details["skipped"]
    assert run.duration_ms < 2000


def test_a_cpa_panel_deployment_checks_what_cpa_serves(deployment):
    # CPA Panel mode: CPA serves /management.html itself and everything goes to CPA.
    deployment.mode = "cpa_panel"
    deployment.save()
    with running_stack(deployment) as stack:
        run = verify_now(deployment=stack.deployment)
    by_id = results(run)
    assert set(by_id) == {"panel", "cpa_health", "api_models", "cpa_direct"}
    assert by_id["panel"].method == "GET" and by_id["panel"].observed_upstream == "cpa"
    assert run.status == VerificationRun.Status.PASSED, {
        k: (r.status_code, r.diagnosis) for k, r in by_id.items()
    }
