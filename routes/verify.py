"""Verification jobs and runs: the seed's checks stored, run in the background, kept as history.

The checks and the parallel runner live in routes/verify_checks.py and the HTTP seam in
routes/probes.py (the only code that sends HTTP to deployments); this module turns them into
VerificationRun and CheckResult rows, enqueues runs on the task worker, probes single keys, and
feeds the admin.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from routes import audit, destinations
from routes import keys as keyring
from routes import validators as v
from routes.models import CheckResult, Deployment, Key, VerificationJob, VerificationRun
from routes.verify_checks import (  # noqa: F401 - re-exported: the contract names them here
    CHECKS,
    NEGATIVE_CHECKS,
    SEED_CHECKS,
    Check,
    CheckOutcome,
    Redactor,
    build_context,
    plan_checks,
    run_budget,
    run_check,
    run_checks,
)

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


def load_keys(deployment: Deployment, *, prefer: Key | None = None) -> StoredKeys:
    """Return the deployment's secrets (never logged); prefer wins its role."""
    by_role: dict[str, str] = {}
    secrets: list[str] = []
    unreadable: list[str] = []
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
    return StoredKeys(by_role=by_role, secrets=secrets, unreadable=unreadable)


def job_for(deployment: Deployment) -> VerificationJob:
    """Return the deployment's verification job, created with defaults on first use."""
    job, _created = VerificationJob.objects.get_or_create(deployment=deployment)
    return job


def planned_checks(job: VerificationJob) -> list[Check]:
    """Return the checks a run of job performs (no network, no decryption)."""
    roles = Key.objects.filter(deployment=job.deployment).values_list("role", flat=True)
    return plan_checks(job.deployment, roles=set(roles), enabled=job.enabled_checks or ())


def run_deadline(job: VerificationJob, *, started_at: dt.datetime) -> dt.datetime:
    """Return when a run of job started at started_at has ended its checks, at the latest."""
    budget = run_budget(planned_checks(job), timeout=float(job.timeout_seconds or 10.0))
    return started_at + dt.timedelta(seconds=budget)


def mark_stale_runs(*, now: dt.datetime | None = None) -> int:
    """Mark runs still running past their deadline and a grace period as error; return how many.

    The deadline stored at claim time is when run_checks gives up, so a live worker is done by
    then; CONSOLE_RUN_STALE_AFTER is the grace for storing its results. A run claimed without a
    stored deadline (before there was one) counts from its start.
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


def create_run(
    *,
    deployment: Deployment,
    trigger: str,
    actor=None,
    base_url: str | None = None,
) -> VerificationRun:
    """Create a queued run of deployment's job (the job is created if missing)."""
    job = job_for(deployment)
    return VerificationRun.objects.create(
        job=job,
        trigger=trigger,
        triggered_by=actor if getattr(actor, "is_authenticated", False) else None,
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


def _enqueue(run_id: int, insecure: bool) -> None:
    from routes.tasks import run_verification

    try:
        result = run_verification.enqueue(run_id, insecure)
    except Exception as exc:  # the queue itself failed: the run must not stay queued forever
        logger.exception("could not enqueue verification run %s", run_id)
        VerificationRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
            status=Status.ERROR,
            finished_at=timezone.now(),
            error=_("Could not queue the run: %(error)s") % {"error": type(exc).__name__},
        )
        return
    VerificationRun.objects.filter(pk=run_id).update(task_id=str(result.id)[:64])


def start_run(
    *,
    deployment: Deployment,
    trigger: str,
    actor=None,
    base_url: str | None = None,
    insecure: bool = False,
) -> VerificationRun:
    """Create a queued run and enqueue it on the task worker once the transaction commits."""
    mark_stale_runs()
    run = create_run(deployment=deployment, trigger=trigger, actor=actor, base_url=base_url)
    transaction.on_commit(partial(_enqueue, run.pk, insecure))
    return run


def _store(run: VerificationRun, outcomes: list[CheckOutcome]) -> None:
    CheckResult.objects.bulk_create(
        CheckResult(
            run=run,
            position=outcome.position,
            check_id=outcome.check_id,
            method=outcome.method[:8],
            url=outcome.url[:500],
            expected=outcome.expected[:200],
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            expected_upstream=outcome.expected_upstream[:10],
            observed_upstream=outcome.observed_upstream[:10],
            passed=outcome.passed,
            diagnosis=outcome.diagnosis,
            excerpt=outcome.excerpt,
            details=outcome.details,
        )
        for outcome in outcomes
    )


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
            timeout=float(job.timeout_seconds or 10.0),
            keys=stored.by_role,
            secrets=stored.secrets,
            key_origins=[*destinations.confirmed_origins(deployment), *extra_key_origins],
        )
        redact = ctx.redact
        plan = plan_checks(deployment, roles=stored.by_role, enabled=job.enabled_checks or ())
        outcomes = run_checks(ctx, plan, on_results=partial(_store, run))
        failed = [o.check_id for o in outcomes if not o.passed]
        status = Status.FAILED if failed else Status.PASSED
        notes = []
        if stored.unreadable:
            notes.append(
                _("Keys that cannot be decrypted were left out: %(roles)s.")
                % {"roles": ", ".join(sorted(set(stored.unreadable)))}
            )
        withheld = sorted({o.details["origin"] for o in outcomes if o.details.get("keys_withheld")})
        if withheld:
            notes.append(destinations.pending_message(withheld))
        error = " ".join(notes)
    except _RefusedBaseURL as exc:
        status = Status.ERROR
        error = str(exc)[:500]
    except Exception as exc:
        logger.exception("verification run %s failed", run.pk)
        status = Status.ERROR
        error = redact.cut(f"{type(exc).__name__}: {exc}", 500)
    duration = int((time.monotonic() - started) * 1000)
    VerificationRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
        status=status, finished_at=timezone.now(), duration_ms=duration, error=error
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
            "duration_ms": run.duration_ms,
        },
    )
    return run


def verify_now(
    *,
    deployment: Deployment,
    trigger: str = Trigger.COMMAND,
    actor=None,
    base_url: str | None = None,
    insecure: bool = False,
    trust_base_url: bool = False,
) -> VerificationRun:
    """Create a run and perform it in this process (``manage.py verify``); return it finished.

    trust_base_url: base_url was chosen by someone who counts as an owner (the server
    administrator running the command), so keys may go there for this run.
    """
    mark_stale_runs()
    run = create_run(deployment=deployment, trigger=trigger, actor=actor, base_url=base_url)
    extra = []
    if base_url and trust_base_url:
        base_url = base_url.rstrip("/")
        host = destinations.host_header(base_url, deployment.server_name)
        extra.append(destinations.destination_of(base_url, host))
    return execute_run(run=run, verify_tls=False if insecure else None, extra_key_origins=extra)


def due_jobs(*, now: dt.datetime | None = None, team=None) -> list[VerificationJob]:
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
        if last is None or last + dt.timedelta(minutes=job.interval_minutes) <= now:
            due.append(job)
    return due


def enqueue_due(*, now: dt.datetime | None = None, team=None) -> list[VerificationRun]:
    """Enqueue a scheduled run for every due job (``verify --due``); return the runs."""
    now = now or timezone.now()
    mark_stale_runs(now=now)
    runs = []
    for job in due_jobs(now=now, team=team):
        # Claim with a conditional update, so two overlapping cron calls enqueue once.
        claimed = VerificationJob.objects.filter(
            pk=job.pk, last_enqueued_at=job.last_enqueued_at
        ).update(last_enqueued_at=now)
        if not claimed:
            continue
        with transaction.atomic():
            runs.append(start_run(deployment=job.deployment, trigger=Trigger.SCHEDULED))
    return runs


def prune_runs(*, keep: int | None = None, team=None) -> int:
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


def run_as_json(run: VerificationRun) -> dict:
    """Return the run as `manage.py verify --json` prints it (a contract)."""
    checks = [
        CheckOutcome(
            check_id=r.check_id,
            method=r.method,
            url=r.url,
            expected=r.expected,
            expected_upstream=r.expected_upstream,
            passed=r.passed,
            status_code=r.status_code,
            latency_ms=r.latency_ms,
            observed_upstream=r.observed_upstream,
            diagnosis=r.diagnosis,
        ).as_json()
        for r in run.results.all()
    ]
    return {
        "deployment": run.job.deployment.slug,
        "run": run.pk,
        "status": run.status,
        "duration_ms": run.duration_ms,
        "checks": checks,
    }


def progress(run: VerificationRun) -> dict:
    """Return the small JSON the verify page polls: status, checks done and their results."""
    if run.status in (Status.QUEUED, Status.RUNNING):
        mark_stale_runs()
        run.refresh_from_db()
    results = list(run.results.all())
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
        "results": [
            {
                "id": r.check_id,
                "label": str(CHECKS[r.check_id].label) if r.check_id in CHECKS else r.check_id,
                "method": r.method,
                "url": r.url,
                "expected": r.expected,
                "status_code": r.status_code,
                "expected_upstream": r.expected_upstream,
                "observed_upstream": r.observed_upstream,
                "latency_ms": r.latency_ms,
                "passed": r.passed,
                "skipped": bool((r.details or {}).get("skipped")),
                "diagnosis": r.diagnosis,
            }
            for r in results
        ],
    }


# --- single-key probes ----------------------------------------------------------------------

# Each role's probes: the positive one first, then the negative one (reference 1.3, 1.4, 2.2).
KEY_PROBES = {
    keyring.CPA_API: ("api_models", "management_refuses_api_key"),
    keyring.CPAMP_ADMIN: ("management_config", "api_refuses_admin_key"),
    keyring.CPA_MANAGEMENT: ("cpa_direct",),
}


@dataclass
class KeyProbe:
    """The outcome of "Test this key": ok is None when the key could not be tried."""

    key_id: int
    ok: bool | None
    detail: str
    outcomes: list[CheckOutcome] = field(default_factory=list)


def probe_key(*, key: Key, actor=None) -> KeyProbe:
    """Run the role's positive and negative probes with this key; record the outcome on it.

    The key is sent only to an origin an owner confirmed; otherwise nothing is sent.
    """
    deployment = key.deployment
    job = job_for(deployment)
    refused = _origin_problem(job.effective_base_url)
    if refused:
        return _finish_probe(key, actor, None, refused, [])
    confirmed = destinations.confirmed_origins(deployment)
    base = job.effective_base_url
    for check_id in KEY_PROBES.get(key.role, ()):
        if check_id == "cpa_direct":
            url, host = deployment.cpamp_cpa_url, ""
        else:
            url, host = base, destinations.host_header(base, deployment.server_name)
        origin = destinations.destination_of(url, host)
        if url and origin not in confirmed:
            return _finish_probe(key, actor, None, destinations.withheld_message(origin), [])
    try:
        secret = key.reveal()
    except keyring.DecryptionError:
        return _finish_probe(
            key, actor, None, _("The key cannot be decrypted with the configured keys."), []
        )
    stored = load_keys(deployment, prefer=key)
    keys = {key.role: secret}
    # The other role of a pair is needed for nothing else: each probe sends only this key.
    ctx = build_context(
        deployment,
        base_url=job.effective_base_url,
        verify_tls=job.verify_tls,
        timeout=float(job.timeout_seconds or 10.0),
        keys=keys,
        secrets=[secret, *stored.secrets],
        key_origins=confirmed,
    )
    plan = [
        CHECKS[check_id]
        for check_id in KEY_PROBES.get(key.role, ())
        if not (check_id == "cpa_direct" and not deployment.cpamp_cpa_url)
    ]
    outcomes = run_checks(ctx, plan)
    skipped = [o for o in outcomes if o.details.get("skipped")]
    if not outcomes or len(skipped) == len(outcomes):
        ok = None
        detail = (
            skipped[0].diagnosis
            if skipped
            else _("No probe applies to this key (set the deployment's CPA URL).")
        )
    else:
        ok = all(o.passed for o in outcomes if not o.details.get("skipped"))
        lines = []
        for o in outcomes:
            mark = _("passed") if o.passed else _("failed")
            lines.append(f"{o.check_id}: {mark} ({o.status_code or '-'})")
            if o.diagnosis and not o.passed:
                lines.append(o.diagnosis)
        detail = "\n".join(lines)
    return _finish_probe(key, actor, ok, ctx.redact(detail), outcomes)


def _finish_probe(key: Key, actor, ok: bool | None, detail: str, outcomes) -> KeyProbe:
    now = timezone.now()
    Key.objects.filter(pk=key.pk).update(
        last_validated_at=now, last_validation_ok=ok, last_validation_detail=detail[:2000]
    )
    key.last_validated_at, key.last_validation_ok, key.last_validation_detail = now, ok, detail
    audit.record(
        action="key.test",
        actor=actor,
        team=key.deployment.team_id,
        obj=key,
        object_repr=f"{key.deployment.slug} {key.get_role_display()} {key.masked}",
        changes={
            "result": {True: "passed", False: "failed", None: "not tried"}[ok],
            "checks": {o.check_id: o.passed for o in outcomes},
        },
    )
    return KeyProbe(key_id=key.pk, ok=ok, detail=detail, outcomes=outcomes)


# --- admin helpers --------------------------------------------------------------------------


def annotate_last_run(queryset: QuerySet) -> QuerySet:
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


def recent_runs_html(deployment: Deployment, *, limit: int = 10) -> SafeString:
    """Return the deployment page's strip of recent runs (autoescaped template)."""
    return render_to_string(
        "admin/routes/verification/recent_runs.html",
        {"deployment": deployment, "runs": recent_runs(deployment, limit=limit)},
    )
