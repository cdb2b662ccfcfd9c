"""routes/verification/ as a package: each check judged by its own entry, queueing in the task
layer, the worker acting as the run's user, key destinations confirmed by whoever acts (issue 10,
items 1 and 2). No network: answers are built by hand, or go to 127.0.0.1's discard port."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied

from routes import tasks
from routes.context import acting, current_actor
from routes.models import Deployment, VerificationJob, VerificationRun
from routes.verification import checks, destinations, diagnoses, outcomes, runs
from routes.verification.checks import CHECKS, CPA_PANEL
from routes.verification.http import CPA, CPAMP, UNKNOWN, Probe
from routes.verification.runner import ManagementLane, build_context

ROUTES = Path(__file__).resolve().parent.parent / "routes"
# What the brief forbids: code that asks which check it holds instead of reading its fields.
ID_DISPATCH = re.compile(r"check\.id ==|check_id ==|\.id == \"")


def answer(status: int, body: Any = None, **headers: str) -> Probe:
    """Return a Probe as if the deployment had answered status with body (JSON when not bytes)."""
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return Probe(
        method="GET", url="http://127.0.0.1:9/", status_code=status, headers=headers, body=raw
    )


def judged(deployment: Deployment, check_id: str, probe: Probe) -> outcomes.CheckOutcome:
    ctx = build_context(
        deployment, base_url="http://127.0.0.1:9", verify_tls=False, timeout=1, keys={}
    )
    check = CHECKS[check_id]
    return outcomes.evaluate(check, probe, ctx, ctx.url(check))


def test_no_module_in_routes_asks_which_check_it_holds():
    found = [
        f"{path.relative_to(ROUTES)}:{number}: {line.strip()}"
        for path in sorted(ROUTES.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ID_DISPATCH.search(line)
    ]
    assert found == []


def test_every_check_of_the_diagnosis_tables_exists():
    probed = {check_id for ids in checks.KEY_PROBES.values() for check_id in ids}
    named = {*diagnoses.BY_CHECK, *diagnoses.BY_CHECK_BODY, *probed}
    assert named <= set(CHECKS), named - set(CHECKS)


@pytest.mark.django_db
def test_models_compat_refuses_a_setup_answer_but_takes_any_other_below_500(deployment):
    by_cpamp = {"x-console-upstream": CPAMP}
    setup = answer(428, {"error": "setup required", "code": "setup_required"}, **by_cpamp)
    refused = judged(deployment, "models_compat", setup)
    assert not refused.passed and refused.observed_upstream == CPAMP
    assert "first setup is not finished" in refused.diagnosis
    assert judged(deployment, "models_compat", answer(404, {"error": "x"}, **by_cpamp)).passed
    assert not judged(deployment, "models_compat", answer(502, {"error": "x"}, **by_cpamp)).passed


@pytest.mark.django_db
def test_cpamp_health_needs_cpamps_own_body(deployment):
    body = {"ok": True, "service": "cpa-manager-plus"}
    assert judged(deployment, "cpamp_health", answer(200, body)).passed
    other = judged(
        deployment, "cpamp_health", answer(200, {"ok": True}, **{"x-console-upstream": CPAMP})
    )
    assert not other.passed and other.diagnosis.startswith("/health answered, but not with CPAMP")


@pytest.mark.django_db
def test_a_200_to_the_admin_key_counts_as_cpamp_even_with_cpas_fingerprint(deployment):
    outcome = judged(deployment, "management_config", answer(200, {}, **{"x-cpa-version": "6"}))
    assert outcome.passed and outcome.observed_upstream == CPAMP
    assert "inferred" in outcome.details
    traced = judged(deployment, "management_config", answer(200, {}, **{"x-console-upstream": CPA}))
    assert not traced.passed and traced.observed_upstream == CPA
    assert "reached CPA directly" in traced.diagnosis


@pytest.mark.django_db
def test_cpa_direct_fails_an_unrecognisable_200_and_skips_an_unreachable_cpa(deployment):
    deployment.cpamp_cpa_url = "http://127.0.0.1:9"
    # Without route tracing an unattributed answer may pass others; not this one.
    deployment.route_tracing = False
    assert judged(deployment, "cpa_health", answer(200, b"ok")).passed
    unknown = judged(deployment, "cpa_direct", answer(200, b"<html>hello</html>"))
    assert not unknown.passed and unknown.observed_upstream == UNKNOWN
    refused = Probe(method="GET", url="http://127.0.0.1:9/", error="refused", error_detail="no")
    # Issue 11: on the host topology CPA refusing the connection is a failure, not a skip.
    on_host = judged(deployment, "cpa_direct", refused)
    assert not on_host.passed and on_host.diagnosis_code == "connection_refused"
    # On a Docker network CPA is often out of the console's reach: a skip with a warning.
    deployment.cpamp_cpa_url = "http://cli-proxy-api:8317"
    skipped = judged(deployment, "cpa_direct", refused)
    assert skipped.passed and skipped.details == {"skipped": True, "error": "refused"}
    assert skipped.warning_code == "cpa_not_reachable_from_console" and not skipped.diagnosis
    # Another check that cannot reach its target fails.
    assert not judged(deployment, "cpa_health", refused).passed


@pytest.mark.django_db
def test_the_redirect_check_wants_an_https_location_and_no_upstream(deployment):
    good = judged(deployment, "https_redirect", answer(301, None, location="https://a.example/"))
    assert good.passed and good.observed_upstream == ""
    bad = judged(deployment, "https_redirect", answer(301, None, location="http://a.example/"))
    assert not bad.passed and "should answer 301 to https://" in bad.diagnosis


@pytest.mark.django_db
def test_usage_service_info_keeps_cpamps_setup_flags(deployment):
    body = {"service": "cpa-manager-plus", "setupRequired": True, "configured": False}
    outcome = judged(deployment, "usage_service_info", answer(200, body))
    assert outcome.passed
    assert outcome.details["setupRequired"] is True and outcome.details["configured"] is False


@pytest.mark.django_db
def test_the_panel_of_a_cpa_panel_deployment_is_a_get_answered_by_cpa(deployment):
    deployment.mode = CPA_PANEL
    plan = {c.id: c for c in checks.plan_checks(deployment, roles=[])}
    assert (plan["panel"].method, plan["panel"].expected_upstream) == ("GET", CPA)
    assert (CHECKS["panel"].method, CHECKS["panel"].expected_upstream) == ("HEAD", CPAMP)
    assert "cpamp_health" not in plan


@pytest.mark.django_db
def test_cpa_direct_is_planned_only_with_a_cpa_url(deployment):
    roles = [c.key_role for c in CHECKS.values() if c.key_role]
    deployment.cpamp_cpa_url = ""
    assert "cpa_direct" not in {c.id for c in checks.plan_checks(deployment, roles=roles)}
    deployment.cpamp_cpa_url = "http://cli-proxy-api:8317"
    assert "cpa_direct" in {c.id for c in checks.plan_checks(deployment, roles=roles)}


def test_the_api_key_probe_is_safe_in_the_lane_once_cpamp_holds_the_management_route():
    lane_checks = [CHECKS["management_config"], CHECKS["management_refuses_api_key"]]
    lane = ManagementLane(lane_checks)
    start, skip = lane.ready()
    # Both risky at first: only one may be in flight.
    assert [(c.id, risky) for c, risky in start] == [("management_config", True)] and not skip
    seen = outcomes.CheckOutcome.failed(CHECKS["management_config"], url="u")
    seen.observed_upstream = CPAMP
    lane.done(CHECKS["management_config"], seen, True)
    start, skip = lane.ready()
    assert [(c.id, risky) for c, risky in start] == [("management_refuses_api_key", False)]
    # A check without safe_behind stays risky whoever answered.
    assert lane._risky(replace(CHECKS["management_refuses_api_key"], safe_behind=""))


@pytest.mark.django_db
def test_the_worker_performs_a_run_as_the_user_who_started_it(deployment, make_user, monkeypatch):
    user = make_user("olga", team=deployment.team, role="operator")
    with acting(user=user):
        run = runs.create_run(
            deployment=deployment, trigger="manual", base_url="http://127.0.0.1:9"
        )
    assert run.triggered_by == user
    seen: list[Any] = []

    def execute_run(*, run: VerificationRun, verify_tls: bool | None) -> VerificationRun:
        seen.append(current_actor())
        return run

    monkeypatch.setattr(runs, "execute_run", execute_run)
    assert tasks.run_verification.call(run.pk, False) == {"run": run.pk, "status": "queued"}
    assert seen == [user] and current_actor() is None


@pytest.mark.django_db
def test_a_queue_that_fails_leaves_the_run_in_error_not_queued(
    deployment, monkeypatch, django_capture_on_commit_callbacks
):
    class Broken:
        def enqueue(self, *args: Any) -> None:
            raise ConnectionError("the queue is down")

    monkeypatch.setattr(tasks, "run_verification", Broken())
    with django_capture_on_commit_callbacks(execute=True):
        run = tasks.start_run(deployment=deployment, trigger="manual")
        # Not before the commit: a worker must be able to find the row.
        assert VerificationRun.objects.get(pk=run.pk).status == VerificationRun.Status.QUEUED
    run.refresh_from_db()
    assert run.status == VerificationRun.Status.ERROR
    assert run.error == "Could not queue the run: ConnectionError" and not run.task_id


@pytest.mark.django_db
def test_scheduled_runs_are_triggered_by_nobody(deployment, make_user, monkeypatch):
    queued: list[int] = []
    monkeypatch.setattr(tasks, "queue_run", lambda run, insecure=False: queued.append(run.pk))
    VerificationJob.objects.create(deployment=deployment, interval_seconds=300)
    with acting(user=make_user("olga", team=deployment.team, role="operator")):
        started = tasks.enqueue_due()
    assert [r.pk for r in started] == queued and len(queued) == 1
    run = VerificationRun.objects.get()
    assert run.trigger == VerificationRun.Trigger.SCHEDULED and run.triggered_by is None


@pytest.mark.django_db
def test_a_request_without_a_signed_in_user_may_not_confirm_a_key_destination(deployment):
    with acting(user=AnonymousUser(), ip="127.0.0.1"), pytest.raises(PermissionDenied):
        destinations.confirm_destination(deployment=deployment)
    with acting(user=AnonymousUser()):
        left = destinations.confirm_own_change(deployment=deployment, before=[])
    assert left == destinations.key_origins(deployment) and left
    # A command (no acting user) holds the server and its keys: it counts as an owner.
    with acting(label="command"):
        assert destinations.confirm_destination(deployment=deployment) == left
    assert destinations.unconfirmed_origins(deployment) == []
