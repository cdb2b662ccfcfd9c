"""Stored verification: jobs and runs as rows, claimed and executed by a worker, kept as history.

A run is created queued (create_run; routes/tasks.py queues it), claimed by one worker with a
conditional update (execute_run), and its results are stored as they arrive. Runs whose worker
died are swept (sweep_stale_runs) by the worker and the scheduler, never by a page view. This
module also answers the scheduling queries, prunes old runs, probes single keys and feeds the
admin its data (never its HTML).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from routes import audit
from routes import keys as keyring
from routes import validators as v
from routes.context import current_actor
from routes.models import CheckResult, Deployment, Key, Team, VerificationJob, VerificationRun
from routes.verification import causes, destinations
from routes.verification import diagnoses as dx
from routes.verification.checks import (
    Check,
    check_label,
    expected_label,
    key_probes,
    plan_checks,
)
from routes.verification.http import Redactor
from routes.verification.outcomes import CheckOutcome, StoredKey
from routes.verification.runner import STORED_LANGUAGE, build_context, run_budget, run_checks

logger = logging.getLogger(__name__)

Status = VerificationRun.Status
Trigger = VerificationRun.Trigger
FINISHED = (Status.PASSED, Status.FAILED, Status.ERROR)


@dataclass(frozen=True)
class StoredKeys:
    """The deployment's keys in clear for one run: the first of each role, and every secret."""

    by_role: dict[str, str]
    secrets: list[str]
    unreadable: list[str] = field(default_factory=list)
    # Every readable key by role, in order, named as a run shows it ("label ••••1234").
    sets: dict[str, list[StoredKey]] = field(default_factory=dict)


def key_display(key: Key) -> str:
    """Return how a run names a key: "label ••••1234" (just the mask without a label)."""
    return f"{key.label} {key.masked}" if key.label else key.masked


def load_keys(deployment: Deployment, *, prefer: Key | None = None) -> StoredKeys:
    """Return the deployment's secrets (never logged); prefer wins its role."""
    by_role: dict[str, str] = {}
    secrets: list[str] = []
    unreadable: list[str] = []
    sets: dict[str, list[StoredKey]] = {}
    keys = list(Key.objects.filter(deployment=deployment).order_by("role", "id"))
    if prefer is not None:
        keys.sort(key=lambda k: k.pk != prefer.pk)
    for key in keys:
        try:
            secret = key.reveal()
        except keyring.DecryptionError:
            unreadable.append(key.role)
            continue
        secrets.append(secret)
        by_role.setdefault(key.role, secret)
        sets.setdefault(key.role, []).append(StoredKey(display=key_display(key), secret=secret))
    return StoredKeys(by_role=by_role, secrets=secrets, unreadable=unreadable, sets=sets)


def job_for(deployment: Deployment) -> VerificationJob:
    """Return the deployment's verification job, created with defaults on first use."""
    job, _created = VerificationJob.objects.get_or_create(deployment=deployment)
    return job


def planned_checks(job: VerificationJob) -> list[Check]:
    """Return the checks a run of job performs (no network, no decryption)."""
    roles = Key.objects.filter(deployment=job.deployment).values_list("role", flat=True)
    return plan_checks(job.deployment, roles=set(roles), enabled=job.enabled_checks or ())


def _timeout(job: VerificationJob) -> float:
    return float(job.timeout_seconds or 10.0)


def _key_counts(deployment: Deployment) -> dict[str, int]:
    counts: dict[str, int] = {}
    for role in Key.objects.filter(deployment=deployment).values_list("role", flat=True):
        counts[role] = counts.get(role, 0) + 1
    return counts


def run_deadline(job: VerificationJob, *, started_at: dt.datetime) -> dt.datetime:
    """Return when a run of job started at started_at has ended its checks, at the latest."""
    budget = run_budget(
        planned_checks(job), timeout=_timeout(job), key_counts=_key_counts(job.deployment)
    )
    return started_at + dt.timedelta(seconds=budget)


# --- stale runs -----------------------------------------------------------------------------


def sweep_stale_runs(*, now: dt.datetime | None = None) -> int:
    """Mark runs still running past their deadline and a grace period as error; return how many.

    The deadline stored at claim time is when run_checks gives up, so a live worker is done by
    then; CONSOLE_RUN_STALE_AFTER is the grace for storing its results. A run claimed without a
    stored deadline (before there was one) counts from its start. Called by the worker before
    each run and by the scheduler (``verify --due``), never by a page view.
    """
    now = now or timezone.now()
    grace = settings.CONSOLE_RUN_STALE_AFTER
    cutoff = now - dt.timedelta(seconds=grace)
    overdue = Q(deadline_at__lt=cutoff) | Q(deadline_at__isnull=True, started_at__lt=cutoff)
    stale = list(
        VerificationRun.objects.filter(overdue, status=Status.RUNNING)
        .select_related("job__deployment")
        .only("pk", "started_at", "job__deployment__team_id", "job__deployment__slug", "trigger")
    )
    marked = 0
    for run in stale:
        waited = int((now - run.started_at).total_seconds()) if run.started_at else grace
        # Conditional: a worker finishing right now keeps its own result.
        updated = VerificationRun.objects.filter(overdue, pk=run.pk, status=Status.RUNNING).update(
            status=Status.ERROR,
            finished_at=now,
            error=_("The worker stopped before the run finished (no result after %(s)d s).")
            % {"s": waited},
        )
        if not updated:
            continue
        marked += updated
        audit.record(
            action="verification.run",
            team=run.job.deployment.team_id,
            obj=run,
            changes={"status": Status.ERROR, "reason": "stale", "trigger": run.trigger},
        )
    return marked


# --- creating and executing runs ------------------------------------------------------------


def create_run(
    *, deployment: Deployment, trigger: str, base_url: str | None = None
) -> VerificationRun:
    """Create a queued run of deployment's job for the acting user (the job is created if missing).

    Queue it with routes.tasks.queue_run, or perform it here with execute_run.
    """
    job = job_for(deployment)
    return VerificationRun.objects.create(
        job=job,
        trigger=trigger,
        triggered_by=current_actor(),
        base_url=(base_url or job.effective_base_url).rstrip("/"),
    )


class _RefusedBaseURL(Exception):
    """The run's base URL is not an origin checks may be sent to (message names why)."""


def _origin_problem(base_url: str) -> str:
    """Return why checks may not go to base_url (not an origin, link-local), or ""."""
    try:
        v.validate_origin(base_url)
    except ValidationError as exc:
        return _("Base URL %(url)s: %(reason)s") % {
            "url": base_url,
            "reason": " ".join(exc.messages),
        }
    return ""


# The fields a stored CheckResult shares with a CheckOutcome, and the column widths they fit.
STORED_FIELDS = {
    "position": 0,
    "check_id": 0,
    "method": 8,
    "url": 500,
    "expected": 200,
    "status_code": 0,
    "latency_ms": 0,
    "expected_upstream": 10,
    "observed_upstream": 10,
    "passed": 0,
    "diagnosis_code": 40,
    "diagnosis_params": 0,
    "warning_code": 40,
    "warning_params": 0,
    "excerpt": 0,
    "details": 0,
}


def _columns(outcome: CheckOutcome) -> dict[str, Any]:
    """Return the outcome's stored fields, texts cut to their columns."""
    columns = {}
    for name, width in STORED_FIELDS.items():
        value = getattr(outcome, name)
        columns[name] = value[:width] if width and isinstance(value, str) else value
    return columns


def _store(run: VerificationRun, outcomes: list[CheckOutcome]) -> None:
    # The diagnosis column keeps the English words (old rows, grep); pages render the code.
    with translation.override(STORED_LANGUAGE):
        rows = [(outcome, outcome.diagnosis) for outcome in outcomes]
    CheckResult.objects.bulk_create(
        CheckResult(run=run, diagnosis=english, **_columns(outcome)) for outcome, english in rows
    )


def _notes(stored: StoredKeys, outcomes: list[CheckOutcome]) -> str:
    """Return the run's remarks: keys left out, and destinations keys were held back from."""
    notes = []
    if stored.unreadable:
        notes.append(
            _("Keys that cannot be decrypted were left out: %(roles)s.")
            % {"roles": ", ".join(sorted(set(stored.unreadable)))}
        )
    withheld = sorted({o.details["origin"] for o in outcomes if o.details.get("keys_withheld")})
    if withheld:
        notes.append(destinations.pending_message(withheld))
    return " ".join(notes)


def execute_run(
    *,
    run: VerificationRun,
    verify_tls: bool | None = None,
    extra_key_origins: Iterable[str] = (),
) -> VerificationRun:
    """Claim a queued run, perform its checks, store each result as it arrives; return the run.

    A run that is no longer queued (another worker took it, or it was marked stale) is returned
    untouched. verify_tls=False overrides the job's TLS verification (``--insecure``). Keys go
    only to origins an owner confirmed, plus extra_key_origins (a command's own --base-url).
    """
    now = timezone.now()
    claimed = VerificationRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=now, deadline_at=run_deadline(run.job, started_at=now)
    )
    run.refresh_from_db()
    if not claimed:
        return run
    job = run.job
    deployment = job.deployment
    started = time.monotonic()
    redact = Redactor()
    failed: list[str] = []
    found: list[dict[str, Any]] = []
    try:
        base_url = run.base_url or job.effective_base_url
        refused = _origin_problem(base_url)
        if refused:
            raise _RefusedBaseURL(refused)
        stored = load_keys(deployment)
        ctx = build_context(
            deployment,
            base_url=base_url,
            verify_tls=job.verify_tls if verify_tls is None else verify_tls,
            timeout=_timeout(job),
            keys=stored.by_role,
            secrets=stored.secrets,
            key_origins=[*destinations.confirmed_origins(deployment), *extra_key_origins],
            key_sets=stored.sets,
        )
        redact = ctx.redact
        plan = plan_checks(deployment, roles=stored.by_role, enabled=job.enabled_checks or ())
        outcomes = run_checks(ctx, plan, on_results=partial(_store, run))
        failed = [o.check_id for o in outcomes if not o.passed]
        status = Status.FAILED if failed else Status.PASSED
        error = _notes(stored, outcomes)
        found = causes.group(outcomes, deployment=deployment)
    except _RefusedBaseURL as exc:
        status = Status.ERROR
        error = str(exc)[:500]
    except Exception as exc:
        logger.exception("verification run %s failed", run.pk)
        status = Status.ERROR
        error = redact.cut(f"{type(exc).__name__}: {exc}", 500)
    duration = int((time.monotonic() - started) * 1000)
    VerificationRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
        status=status, finished_at=timezone.now(), duration_ms=duration, error=error, causes=found
    )
    run.refresh_from_db()
    audit.record(
        action="verification.run",
        actor=run.triggered_by,
        team=deployment.team_id,
        obj=run,
        changes={
            "deployment": deployment.slug,
            "trigger": run.trigger,
            "status": run.status,
            "failed_checks": failed,
            "causes": [c["code"] for c in found],
            "duration_ms": run.duration_ms,
        },
    )
    return run


def verify_now(
    *,
    deployment: Deployment,
    trigger: str = Trigger.COMMAND,
    base_url: str | None = None,
    insecure: bool = False,
    trust_base_url: bool = False,
) -> VerificationRun:
    """Create a run and perform it in this process (``manage.py verify``); return it finished.

    trust_base_url: base_url was chosen by someone who counts as an owner (the server
    administrator running the command), so keys may go there for this run.
    """
    run = create_run(deployment=deployment, trigger=trigger, base_url=base_url)
    extra = []
    if base_url and trust_base_url:
        base_url = base_url.rstrip("/")
        host = destinations.host_header(base_url, deployment.server_name)
        extra.append(destinations.destination_of(base_url, host))
    return execute_run(run=run, verify_tls=False if insecure else None, extra_key_origins=extra)


# --- scheduling and pruning -----------------------------------------------------------------


def due_jobs(*, now: dt.datetime | None = None, team: Team | None = None) -> list[VerificationJob]:
    """Return scheduled jobs whose interval has passed and that have no run in progress."""
    now = now or timezone.now()
    jobs = VerificationJob.objects.filter(interval_minutes__isnull=False).select_related(
        "deployment"
    )
    if team is not None:
        jobs = jobs.filter(deployment__team=team)
    busy = VerificationRun.objects.filter(status__in=[Status.QUEUED, Status.RUNNING]).values(
        "job_id"
    )
    due = []
    for job in jobs.exclude(pk__in=busy):
        last = job.last_enqueued_at
        interval = job.interval_minutes or 0
        if last is None or last + dt.timedelta(minutes=interval) <= now:
            due.append(job)
    return due


def claim_due_runs(
    *, now: dt.datetime | None = None, team: Team | None = None
) -> list[VerificationRun]:
    """Create a queued scheduled run for every due job; return them, for the caller to queue.

    Stale runs are swept first, so a dead worker's run does not keep its job busy forever.
    """
    now = now or timezone.now()
    sweep_stale_runs(now=now)
    runs = []
    for job in due_jobs(now=now, team=team):
        # Claim with a conditional update, so two overlapping cron calls create one run.
        claimed = VerificationJob.objects.filter(
            pk=job.pk, last_enqueued_at=job.last_enqueued_at
        ).update(last_enqueued_at=now)
        if claimed:
            runs.append(
                VerificationRun.objects.create(
                    job=job, trigger=Trigger.SCHEDULED, base_url=job.effective_base_url.rstrip("/")
                )
            )
    return runs


def prune_runs(*, keep: int | None = None, team: Team | None = None) -> int:
    """Delete finished runs beyond the newest `keep` of each job; return how many were deleted."""
    keep = settings.CONSOLE_RUNS_KEPT if keep is None else keep
    jobs = VerificationJob.objects.all()
    if team is not None:
        jobs = jobs.filter(deployment__team=team)
    deleted = 0
    for job in jobs.only("pk"):
        kept = VerificationRun.objects.filter(job=job).order_by("-created_at", "-id")[:keep]
        old = VerificationRun.objects.filter(job=job, status__in=FINISHED).exclude(
            pk__in=list(kept.values_list("pk", flat=True))
        )
        _total, by_model = old.delete()
        deleted += by_model.get(VerificationRun._meta.label, 0)
    return deleted


# --- reading runs ---------------------------------------------------------------------------


def _outcome(result: CheckResult) -> CheckOutcome:
    """Return a stored result as the outcome it was (for its JSON and its words)."""
    values = {name: getattr(result, name) for name in STORED_FIELDS}
    for name in ("diagnosis_params", "warning_params", "details"):
        values[name] = values[name] or {}
    return CheckOutcome(**values)


def _check_json(result: CheckResult) -> dict[str, Any]:
    data = _outcome(result).as_json()
    # A row stored before diagnoses were codes keeps its own words.
    data["diagnosis"] = dx.render_result_diagnosis(result)
    return data


def run_as_json(run: VerificationRun) -> dict[str, Any]:
    """Return the run as `manage.py verify --json` prints it (a contract), words translated."""
    return {
        "deployment": run.job.deployment.slug,
        "run": run.pk,
        "status": run.status,
        "duration_ms": run.duration_ms,
        "causes": [
            {k: c[k] for k in ("code", "upstream", "checks", "diagnosis")}
            for c in causes.render_causes(run)
        ],
        "checks": [_check_json(r) for r in run.results.all()],
    }


def progress(run: VerificationRun) -> dict[str, Any]:
    """Return the small JSON the verify page polls: status, checks done, results and causes."""
    results = list(run.results.all())
    mode = run.job.deployment.mode
    total = len(planned_checks(run.job)) if run.status not in FINISHED else len(results)
    return {
        "id": run.pk,
        "status": run.status,
        "status_label": str(run.get_status_display()),
        "finished": run.status in FINISHED,
        "done": len(results),
        "total": max(total, len(results)),
        "duration_ms": run.duration_ms,
        "error": run.error,
        "causes": causes.render_causes(run) if run.status in FINISHED else [],
        "results": [
            {
                "id": r.check_id,
                "label": check_label(r.check_id),
                "method": r.method,
                "url": r.url,
                "expected": expected_label(r.check_id, mode, stored=r.expected),
                "status_code": r.status_code,
                "expected_upstream": r.expected_upstream,
                "observed_upstream": r.observed_upstream,
                "latency_ms": r.latency_ms,
                "passed": r.passed,
                "skipped": bool((r.details or {}).get("skipped")),
                "diagnosis": dx.render_result_diagnosis(r),
                "warning": dx.render_result_warning(r),
            }
            for r in results
        ],
    }


def annotate_last_run(queryset: QuerySet[Deployment]) -> QuerySet[Deployment]:
    """Annotate deployments with last_run_status and last_run_at (for the changelist)."""
    latest = VerificationRun.objects.filter(job__deployment=OuterRef("pk")).order_by(
        "-created_at", "-id"
    )
    return queryset.annotate(
        last_run_status=Subquery(latest.values("status")[:1]),
        last_run_at=Subquery(
            latest.annotate(at=Coalesce("finished_at", "started_at", "created_at")).values("at")[:1]
        ),
    )


def recent_runs(deployment: Deployment, *, limit: int = 10) -> list[VerificationRun]:
    """Return the deployment's newest runs, newest first."""
    return list(
        VerificationRun.objects.filter(job__deployment=deployment)
        .select_related("triggered_by")
        .order_by("-created_at", "-id")[:limit]
    )


# --- single-key probes ----------------------------------------------------------------------


@dataclass
class KeyProbe:
    """The outcome of "Test this key": ok is None when the key could not be tried."""

    key_id: int
    ok: bool | None
    detail: str
    outcomes: list[CheckOutcome] = field(default_factory=list)


def _unsent_reason(key: Key, job: VerificationJob, plan: list[Check]) -> str:
    """Return why key may not be sent for its probes (base URL, unconfirmed origin), or ""."""
    refused = _origin_problem(job.effective_base_url)
    if refused:
        return refused
    confirmed = destinations.confirmed_origins(key.deployment)
    for check in plan:
        origin = check.target.destination(
            deployment=key.deployment, base_url=job.effective_base_url
        )
        if origin not in confirmed:
            return destinations.withheld_message(origin)
    return ""


def _summary(outcomes: list[CheckOutcome]) -> tuple[bool | None, str]:
    """Return (ok, detail) of a key's probes: ok is None when none was tried."""
    skipped = [o for o in outcomes if o.details.get("skipped")]
    if not outcomes or len(skipped) == len(outcomes):
        if skipped:
            return None, skipped[0].diagnosis or skipped[0].warning
        return None, _("No probe applies to this key (set the deployment's CPA URL).")
    lines = []
    for o in outcomes:
        mark = _("passed") if o.passed else _("failed")
        lines.append(f"{o.check_id}: {mark} ({o.status_code or '-'})")
        if o.diagnosis and not o.passed:
            lines.append(o.diagnosis)
    return all(o.passed for o in outcomes if not o.details.get("skipped")), "\n".join(lines)


def probe_key(*, key: Key) -> KeyProbe:
    """Run the role's positive and negative probes with this key; record the outcome on it.

    The key is sent only to an origin an owner confirmed; otherwise nothing is sent. The test
    is recorded as the acting user's.
    """
    deployment = key.deployment
    job = job_for(deployment)
    plan = key_probes(deployment, key.role)
    unsent = _unsent_reason(key, job, plan)
    if unsent:
        return _finish_probe(key, None, unsent, [])
    try:
        secret = key.reveal()
    except keyring.DecryptionError:
        return _finish_probe(
            key, None, _("The key cannot be decrypted with the configured keys."), []
        )
    stored = load_keys(deployment, prefer=key)
    # The other role of a pair is needed for nothing else: each probe sends only this key.
    ctx = build_context(
        deployment,
        base_url=job.effective_base_url,
        verify_tls=job.verify_tls,
        timeout=_timeout(job),
        keys={key.role: secret},
        secrets=[secret, *stored.secrets],
        key_origins=destinations.confirmed_origins(deployment),
        # The other roles' keys only tell a key of the wrong type; none of them is sent.
        key_sets={**stored.sets, key.role: [StoredKey(display=key_display(key), secret=secret)]},
    )
    outcomes = run_checks(ctx, plan)
    ok, detail = _summary(outcomes)
    return _finish_probe(key, ok, ctx.redact(detail), outcomes)


def _finish_probe(key: Key, ok: bool | None, detail: str, outcomes: list[CheckOutcome]) -> KeyProbe:
    now = timezone.now()
    Key.objects.filter(pk=key.pk).update(
        last_validated_at=now, last_validation_ok=ok, last_validation_detail=detail[:2000]
    )
    key.last_validated_at, key.last_validation_ok, key.last_validation_detail = now, ok, detail
    audit.record(
        action="key.test",
        team=key.deployment.team_id,
        obj=key,
        object_repr=f"{key.deployment.slug} {key.get_role_display()} {key.masked}",
        changes={
            "result": {True: "passed", False: "failed", None: "not tried"}[ok],
            "checks": {o.check_id: o.passed for o in outcomes},
        },
    )
    return KeyProbe(key_id=key.pk, ok=ok, detail=detail, outcomes=outcomes)
