"""The job's slow threshold: a check passing slower carries a "slow" warning and still passes."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.utils import translation

from routes.models import VerificationRun
from routes.verification import outcomes as out
from routes.verification import runs
from routes.verification.outcomes import CheckOutcome
from tests.fakes.stack import running_stack


def outcome(*, passed: bool = True, latency_ms: int | None = 2300, **fields) -> CheckOutcome:
    return CheckOutcome(
        check_id="panel",
        method="HEAD",
        url="http://127.0.0.1/management.html",
        expected="200",
        expected_upstream="cpamp",
        passed=passed,
        latency_ms=latency_ms,
        **fields,
    )


def flagged(result: CheckOutcome, threshold: int | None) -> CheckOutcome:
    # flag_slow reads nothing of the run's context but the job's threshold.
    out.flag_slow(result, SimpleNamespace(slow_threshold_ms=threshold))
    return result


def test_a_pass_above_the_threshold_carries_a_slow_warning_and_still_passes():
    result = flagged(outcome(), 1500)
    assert result.passed is True
    assert result.warning_code == "slow"
    with translation.override("en"):
        assert result.warning == "Slow: 2300 ms, above the job's 1500 ms threshold."


@pytest.mark.parametrize(
    ("result", "threshold"),
    [
        (outcome(), None),  # no threshold
        (outcome(latency_ms=1500), 1500),  # at the threshold is not above it
        (outcome(latency_ms=None), 1),  # no latency (nothing was sent)
        (outcome(passed=False), 1500),  # a failure says why it failed, not that it was slow
        (outcome(details={"skipped": True}), 1500),  # a skipped check was not measured
    ],
)
def test_no_slow_warning_without_a_slow_pass(result, threshold):
    assert flagged(result, threshold).warning_code == ""


def test_a_warning_the_check_had_is_kept_after_the_slow_one():
    result = outcome(warning_code="not_found_is_fine")
    flagged(result, 1000)
    with translation.override("en"):
        assert result.warning == (
            "Slow: 2300 ms, above the job's 1000 ms threshold. A 404 is fine here: the check "
            "proves which upstream answered."
        )


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_verify_json_shows_the_slow_warning_of_a_slow_deployment(deployment):
    job = runs.job_for(deployment)
    # Every answer of the emulators takes at least 50 ms; 10 ms is the job's threshold.
    job.slow_threshold_ms = 10
    job.save()
    with running_stack(deployment, delay=0.05):
        stdout = io.StringIO()
        call_command("verify", "prod", "--json", stdout=stdout)
    data = json.loads(stdout.getvalue())
    assert data["status"] == "passed"
    panel = next(c for c in data["checks"] if c["id"] == "panel")
    assert panel["passed"] is True and panel["latency_ms"] > 10
    assert panel["warning"] == (f"Slow: {panel['latency_ms']} ms, above the job's 10 ms threshold.")
    # Stored as a code: the run's page renders it in the reader's language.
    stored = VerificationRun.objects.get(pk=data["run"]).results.get(check_id="panel")
    assert stored.warning_code == "slow"
    assert stored.warning_params == {"latency_ms": panel["latency_ms"], "threshold_ms": 10}
