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
from dataclasses import dataclass, field
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from routes import audit
from routes import keys as keyring
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


def mark_stale_runs(*, now: dt.datetime | None = None) -> int:
    """Mark runs left running longer than CONSOLE_RUN_STALE_AFTER as error; return how many."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=settings.CONSOLE_RUN_STALE_AFTER)
    stale = list(
        VerificationRun.objects.filter(status=Status.RUNNING, started_at__lt=cutoff)
        .select_related("job__deployment")
        .only("pk", "job__deployment__team_id", "job__deployment__slug", "trigger")
    )
    marked = 0
    for run in stale:
        # Conditional: a worker finishing right now keeps its own result.
        marked += VerificationRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
            status=Status.ERROR,
            finished_at=now,
            error=_("The worker stopped before the run finished (no result after %(s)d s).")
            % {"s": settings.CONSOLE_RUN_STALE_AFTER},
        )
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


def execute_run(*, run: VerificationRun, verify_tls: bool | None = None) -> VerificationRun:
    """Claim a queued run, perform its checks, store each result as it arrives; return the run.

    A run that is no longer queued (another worker took it, or it was marked stale) is returned
    untouched. verify_tls=False overrides the job's TLS verification (``--insecure``).
    """
    now = timezone.now()
    claimed = VerificationRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=now
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
        stored = load_keys(deployment)
        ctx = build_context(
            deployment,
            base_url=run.base_url or job.effective_base_url,
            verify_tls=job.verify_tls if verify_tls is None else verify_tls,
            timeout=float(job.timeout_seconds or 10.0),
            keys=stored.by_role,
            secrets=stored.secrets,
        )
        redact = ctx.redact
        plan = plan_checks(deployment, roles=stored.by_role, enabled=job.enabled_checks or ())
        outcomes = run_checks(ctx, plan, on_results=partial(_store, run))
        failed = [o.check_id for o in outcomes if not o.passed]
        status = Status.FAILED if failed else Status.PASSED
        error = ""
        if stored.unreadable:
            error = _("Keys that cannot be decrypted were left out: %(roles)s.") % {
                "roles": ", ".join(sorted(set(stored.unreadable)))
            }
    except Exception as exc:
        logger.exception("verification run %s failed", run.pk)
        status = Status.ERROR
        error = redact(f"{type(exc).__name__}: {exc}")[:500]
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
) -> VerificationRun:
    """Create a run and perform it in this process (``manage.py verify``); return it finished."""
    mark_stale_runs()
    run = create_run(deployment=deployment, trigger=trigger, actor=actor, base_url=base_url)
    return execute_run(run=run, verify_tls=False if insecure else None)


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
    """Run the role's positive and negative probes with this key; record the outcome on it."""
    deployment = key.deployment
    job = job_for(deployment)
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
