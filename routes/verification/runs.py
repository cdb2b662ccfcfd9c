"""Stored verification: jobs and runs as rows, claimed and executed by a worker, kept as history.

A run is created queued (create_run; routes/tasks.py queues it), claimed by one worker with a
conditional update (execute_run), and its results are stored as they arrive. Runs whose worker
died are swept (sweep_stale_runs) by the worker and the scheduler, never by a page view. This
module also schedules (due jobs claimed with a conditional update, and the scheduler's loop,
run_schedule), prunes old runs, probes single keys and feeds the admin and the commands their
data (never HTML).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from routes import audit
from routes import keys as keyring
from routes.context import current_actor
from routes.models import (
    MIN_INTERVAL_SECONDS,
    STORED_LANGUAGE,
    CheckResult,
    Deployment,
    Key,
    Team,
    VerificationJob,
    VerificationRun,
)
from routes.verification import causes, destinations
from routes.verification import diagnoses as dx
from routes.verification import remarks as rm
from routes.verification.checks import (
    Check,
    check_label,
    expected_label,
    key_probes,
    plan_checks,
)
from routes.verification.http import Redactor
from routes.verification.outcomes import CheckOutcome, StoredKey
from routes.verification.runner import build_context, run_budget, run_checks

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
    """Mark runs still running past their deadline and a grace period, and runs queued but never
    handed to the task queue, as error; return how many.

    The deadline stored at claim time is when run_checks gives up, so a live worker is done by
    then; CONSOLE_RUN_STALE_AFTER is the grace for storing its results. A run claimed without a
    stored deadline (before there was one) counts from its start. Called by the worker before
    each run and by the scheduler (``run_scheduler``, ``verify --due``), never by a page view.
    """
    now = now or timezone.now()
    grace = settings.CONSOLE_RUN_STALE_AFTER
    cutoff = now - dt.timedelta(seconds=grace)
    overdue = Q(status=Status.RUNNING) & (
        Q(deadline_at__lt=cutoff) | Q(deadline_at__isnull=True, started_at__lt=cutoff)
    )
    # Queued on commit, the task id follows at once: without one after the grace, the process
    # that queued the run stopped in between, and the run would keep its job busy for ever.
    orphaned = Q(status=Status.QUEUED, task_id="", created_at__lt=cutoff)
    stale = list(
        VerificationRun.objects.filter(overdue | orphaned)
        .select_related("job__deployment")
        .only(
            "pk",
            "status",
            "started_at",
            "job__deployment__team_id",
            "job__deployment__slug",
            "trigger",
        )
    )
    marked = 0
    for run in stale:
        if run.status == Status.RUNNING:
            condition = overdue
            waited = int((now - run.started_at).total_seconds()) if run.started_at else grace
            said = [rm.remark(rm.WORKER_STOPPED, seconds=waited)]
        else:
            condition = orphaned
            said = [rm.remark(rm.NEVER_QUEUED)]
        # Conditional: a worker finishing (or a task id arriving) right now keeps its own result.
        updated = VerificationRun.objects.filter(condition, pk=run.pk).update(
            status=Status.ERROR,
            finished_at=now,
            **stored_counts(),
            remarks=said,
            error=rm.english(said),
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
    """The run's base URL is not an origin checks may be sent to (its args: the URL)."""


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


def stored_counts() -> dict[str, Coalesce]:
    """Return update() values that count a run's stored results: check_count and failed_count.

    Counted in the UPDATE that finishes the run, from the rows themselves: every result is
    stored by then, whichever way the run ended.
    """
    results = CheckResult.objects.filter(run=OuterRef("pk")).order_by().values("run")

    def count(rows: QuerySet[CheckResult, Any]) -> Coalesce:
        return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n")), 0)

    return {"check_count": count(results), "failed_count": count(results.filter(passed=False))}


def _notes(stored: StoredKeys, outcomes: list[CheckOutcome]) -> list[rm.Remark]:
    """Return the run's remarks: keys left out, and destinations keys were held back from."""
    notes = []
    if stored.unreadable:
        notes.append(rm.remark(rm.KEYS_UNREADABLE, roles=sorted(set(stored.unreadable))))
    withheld = sorted({o.details["origin"] for o in outcomes if o.details.get("keys_withheld")})
    if withheld:
        notes.append(rm.remark(rm.KEYS_WITHHELD, origins=withheld))
    return notes


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
    said: list[rm.Remark] = []
    try:
        base_url = run.base_url or job.effective_base_url
        if rm.origin_problem(base_url):
            raise _RefusedBaseURL(base_url)
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
            slow_threshold_ms=job.slow_threshold_ms,
        )
        redact = ctx.redact
        plan = plan_checks(deployment, roles=stored.by_role, enabled=job.enabled_checks or ())
        outcomes = run_checks(ctx, plan, on_results=partial(_store, run))
        failed = [o.check_id for o in outcomes if not o.passed]
        status = Status.FAILED if failed else Status.PASSED
        said = _notes(stored, outcomes)
        error = rm.english(said)
        found = causes.group(outcomes, deployment=deployment)
    except _RefusedBaseURL as exc:
        status = Status.ERROR
        said = [rm.remark(rm.BASE_URL_REFUSED, url=exc.args[0])]
        error = rm.english(said)[:500]
    except Exception as exc:
        logger.exception("verification run %s failed", run.pk)
        status = Status.ERROR
        said = []  # the exception's text is what the run says
        error = redact.cut(f"{type(exc).__name__}: {exc}", 500)
    duration = int((time.monotonic() - started) * 1000)
    VerificationRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
        status=status,
        finished_at=timezone.now(),
        duration_ms=duration,
        error=error,
        remarks=said,
        causes=found,
        **stored_counts(),
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

# The longest schedule a job may have: a week.
MAX_INTERVAL_SECONDS = 7 * 24 * 3600
# Due jobs one scheduler pass claims at most, so a pass stays short even when thousands fall due
# together (after an import); the rest are claimed by the next passes, a second apart.
CLAIMS_PER_PASS = 200
# Milliseconds one statement of a scheduler pass may take on PostgreSQL, a wait for a row lock
# included: a pass never hangs behind a stuck transaction.
PASS_STATEMENT_TIMEOUT_MS = 10_000


def interval_allowed(value: int | None) -> bool:
    """Return True when value is a schedule a job may have: none, or 20 s to a week."""
    return value is None or MIN_INTERVAL_SECONDS <= value <= MAX_INTERVAL_SECONDS


def reschedule(
    job: VerificationJob, *, previous_interval: int | None, now: dt.datetime | None = None
) -> None:
    """Set job.next_run_at (not saved) for an interval that is new or changed; else keep it.

    A job given an interval is due one interval after its last scheduled run, or at once when
    it has none (or that is past); a job without one has no next run.
    """
    if job.interval_seconds == previous_interval and (
        job.interval_seconds is None or job.next_run_at is not None
    ):
        return
    if job.interval_seconds is None:
        job.next_run_at = None
        return
    now = now or timezone.now()
    last = job.last_enqueued_at
    job.next_run_at = max(now, last + dt.timedelta(seconds=job.interval_seconds)) if last else now


def due_jobs(
    *, now: dt.datetime | None = None, team: Team | None = None, limit: int | None = None
) -> list[VerificationJob]:
    """Return scheduled jobs whose next run is due and that have no run in progress.

    Oldest due first (never run first); at most limit of them.
    """
    now = now or timezone.now()
    # Two equalities, not IN: SQLite reads the partial index of these statuses only so.
    busy = VerificationRun.objects.filter(
        Q(status=Status.QUEUED) | Q(status=Status.RUNNING)
    ).values("job_id")
    jobs = (
        VerificationJob.objects.filter(interval_seconds__isnull=False)
        .filter(Q(next_run_at__isnull=True) | Q(next_run_at__lte=now))
        .exclude(pk__in=busy)
        .select_related("deployment")
        .order_by(F("next_run_at").asc(nulls_first=True), "pk")
    )
    if team is not None:
        jobs = jobs.filter(deployment__team=team)
    return list(jobs[:limit] if limit is not None else jobs)


def _following_slot(job: VerificationJob, *, now: dt.datetime) -> dt.datetime:
    """Return the next run after the one job is claimed for now.

    On the job's own grid (claimed slot + interval) while the scheduler keeps up, so runs do not
    drift by a pass each time; one interval from now when it fell behind, so a job that was busy
    or stopped does not get a burst of catch-up runs.
    """
    interval = dt.timedelta(seconds=job.interval_seconds or MIN_INTERVAL_SECONDS)
    if job.next_run_at is not None and job.next_run_at + interval > now:
        return job.next_run_at + interval
    return now + interval


def claim_slot(job: VerificationJob, *, now: dt.datetime | None = None) -> bool:
    """Move job's next run on if it is still what was read into job; return True for the winner.

    The conditional UPDATE (next_run_at IS NOT DISTINCT FROM the value read) is the claim: of
    several schedulers that read the same due job, on PostgreSQL as on SQLite, exactly one
    updates the row and only it creates the run. The interval is part of the condition, so a job
    whose schedule was just removed or changed is not claimed on its old one.
    """
    now = now or timezone.now()
    # filter(next_run_at=None) is IS NULL: the condition holds for a never-run job as well.
    claimed = VerificationJob.objects.filter(
        pk=job.pk, next_run_at=job.next_run_at, interval_seconds=job.interval_seconds
    ).update(next_run_at=_following_slot(job, now=now), last_enqueued_at=now)
    return claimed == 1


def claim_due_runs(
    *, now: dt.datetime | None = None, team: Team | None = None, limit: int = CLAIMS_PER_PASS
) -> list[VerificationRun]:
    """Create a queued scheduled run for every due job this caller claims; return them to queue.

    Stale runs are swept first, so a dead worker's run does not keep its job busy forever. At
    most limit jobs per call; the others stay due for the next call.
    """
    now = now or timezone.now()
    sweep_stale_runs(now=now)
    created = []
    for job in due_jobs(now=now, team=team, limit=limit):
        # The claim and its run commit together: no claimed slot without a run, nor the reverse.
        with transaction.atomic():
            if not claim_slot(job, now=now):
                continue
            created.append(
                VerificationRun.objects.create(
                    job=job, trigger=Trigger.SCHEDULED, base_url=job.effective_base_url.rstrip("/")
                )
            )
    return created


def _error_summary(exc: BaseException) -> str:
    """Return exc's class and first line, cut short, without the database password."""
    password = str(settings.DATABASES.get("default", {}).get("PASSWORD") or "")
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return Redactor([password]).cut(text, 300, marker="…")


def _bound_statements() -> None:
    """On PostgreSQL, bound each statement of this connection, lock waits included."""
    if connection.vendor != "postgresql":
        # SQLite waits for a lock at most its "timeout" option (console/settings.py).
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, "
            "false)",
            [str(PASS_STATEMENT_TIMEOUT_MS), str(PASS_STATEMENT_TIMEOUT_MS // 2)],
        )


def run_schedule(
    enqueue: Callable[[], Sized],
    *,
    stop: threading.Event,
    every: float = 1.0,
    pause_after_error: float = 5.0,
) -> int:
    """Call enqueue about every `every` seconds until stop is set; return the runs it queued.

    enqueue queues what is due and returns it (routes.tasks.enqueue_due: sweep, claim, queue).
    Every pass is bounded (PASS_STATEMENT_TIMEOUT_MS per statement on PostgreSQL, CLAIMS_PER_PASS
    claims); one that fails, say the database is down, is logged without secrets and the loop
    goes on after pause_after_error. stop.set() (a signal handler) ends it between passes.
    """
    queued = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            _bound_statements()
            count = len(enqueue())
        except Exception as exc:  # the loop outlives any one pass
            logger.error(
                "scheduler pass failed (%s); next try in %g s",
                _error_summary(exc),
                pause_after_error,
            )
            # The next pass opens a new connection (not inside a test's atomic block, whose
            # connection is the test's own); closing a dead one may fail in turn.
            if not connection.in_atomic_block:
                with contextlib.suppress(Exception):
                    connection.close()
            stop.wait(pause_after_error)
            continue
        if count:
            logger.info("scheduler queued %d verification run(s)", count)
        queued += count
        stop.wait(max(0.0, every - (time.monotonic() - started)))
    return queued


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
        # In the reader's language, as the page shows it (the column keeps English).
        "error": rm.run_text(run),
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


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def history(
    *,
    deployments: Iterable[Deployment] | None = None,
    team: Team | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Return the newest runs first as `manage.py list_runs --json` prints them (a contract).

    Of the given deployments (default: all), of team when given; one query whatever the limit.
    """
    found = VerificationRun.objects.select_related("job__deployment").order_by("-created_at", "-id")
    if deployments is not None:
        found = found.filter(job__deployment__in=[d.pk for d in deployments])
    if team is not None:
        found = found.filter(job__deployment__team=team)
    return [
        {
            "run": run.pk,
            "deployment": run.job.deployment.slug,
            "status": run.status,
            "trigger": run.trigger,
            "queued_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "duration_ms": run.duration_ms,
        }
        for run in found[:limit]
    ]


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
    refused = rm.origin_problem(job.effective_base_url)
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
    # Stored in English; the trail shows the role's label in its reader's language.
    with translation.override(STORED_LANGUAGE):
        named = f"{key.deployment.slug} {key.get_role_display()} {key.masked}"
    audit.record(
        action="key.test",
        team=key.deployment.team_id,
        obj=key,
        object_repr=named,
        changes={
            "role": key.role,
            "result": {True: "passed", False: "failed", None: "not tried"}[ok],
            "checks": {o.check_id: o.passed for o in outcomes},
        },
    )
    return KeyProbe(key_id=key.pk, ok=ok, detail=detail, outcomes=outcomes)
