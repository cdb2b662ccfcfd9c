"""Background tasks (django-tasks, run by `manage.py db_worker`) and queueing them.

A task takes ids, loads, and calls one function of the domain. Callers queue verification runs
through start_run / queue_run / enqueue_due here, never by enqueueing a task themselves: a run is
enqueued once its row is committed, and a queue that fails leaves the run in error, not queued.
The domain (routes/verification/) never imports this module.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django_tasks import task

from routes.alerts import deliver, events
from routes.context import acting
from routes.models import Deployment, NginxApply, NotificationDelivery, Team, VerificationRun
from routes.nginx import apply as applying
from routes.nginx import apply_report
from routes.verification import runs

logger = logging.getLogger(__name__)


@task()
def run_verification(run_id: int, insecure: bool = False) -> dict[str, Any]:
    """Perform the queued verification run; return its id and status (never a secret).

    Runs whose worker died are swept first: the worker, not a page view, keeps the history true.
    """
    runs.sweep_stale_runs()
    run = VerificationRun.objects.filter(pk=run_id).select_related("triggered_by").first()
    if run is None:
        # Pruned or deleted while queued: nothing to do.
        return {"run": run_id, "status": "missing"}
    with acting(user=run.triggered_by):
        run = runs.execute_run(run=run, verify_tls=False if insecure else None)
    queue_notifications(run)
    return {"run": run.pk, "status": run.status}


def _hand_over(
    work: Any,
    args: tuple[Any, ...],
    *,
    rows: QuerySet[Any],
    waiting: dict[str, str],
    failed: Callable[[Exception], dict[str, Any]],
) -> None:
    """Enqueue work(*args) and store its task id on rows; when the queue itself fails, store
    failed(exc) on the rows still waiting, so nothing stays queued forever behind it."""
    try:
        result = work.enqueue(*args)
    except Exception as exc:
        logger.exception("could not enqueue %s%r", getattr(work, "name", "task"), args)
        rows.filter(**waiting).update(finished_at=timezone.now(), **failed(exc))
        return
    rows.update(task_id=str(result.id)[:64])


def _enqueue(run_id: int, insecure: bool) -> None:
    _hand_over(
        run_verification,
        (run_id, insecure),
        rows=VerificationRun.objects.filter(pk=run_id),
        waiting={"status": VerificationRun.Status.QUEUED},
        failed=lambda exc: {
            "status": VerificationRun.Status.ERROR,
            "error": _("Could not queue the run: %(error)s") % {"error": type(exc).__name__},
        },
    )


def queue_run(run: VerificationRun, *, insecure: bool = False) -> None:
    """Enqueue run on the task worker once the current transaction commits."""
    transaction.on_commit(partial(_enqueue, run.pk, insecure))


def start_run(
    *,
    deployment: Deployment,
    trigger: str,
    base_url: str | None = None,
    insecure: bool = False,
) -> VerificationRun:
    """Create a queued run for the acting user and queue it; return the run."""
    run = runs.create_run(deployment=deployment, trigger=trigger, base_url=base_url)
    queue_run(run, insecure=insecure)
    return run


def enqueue_due(
    *, now: dt.datetime | None = None, team: Team | None = None
) -> list[VerificationRun]:
    """Queue a scheduled run for every due job this caller claims; return the runs.

    One pass of ``run_scheduler`` (and all of ``run_scheduler --once`` / ``verify --due``):
    stale runs are swept, due jobs claimed (runs.claim_due_runs), and each new run queued.
    """
    due = runs.claim_due_runs(now=now, team=team)
    for run in due:
        queue_run(run)
    return due


# --- notifications (routes/alerts/) -----------------------------------------------------------


@task()
def deliver_notification(delivery_id: int) -> dict[str, Any]:
    """Make one attempt of the delivery; queue the next one when it failed and one is due."""
    retry = deliver.deliver(delivery_id=delivery_id)
    if retry is not None:
        queue_delivery(retry.delivery_id, delay=retry.delay)
    return {"delivery": delivery_id, "retry": retry.delivery_id if retry else None}


def _enqueue_delivery(delivery_id: int, delay: float) -> None:
    job = deliver_notification
    # A backend that cannot defer (the immediate one, for tests) retries at once.
    if delay > 0 and job.get_backend().supports_defer:
        job = job.using(run_after=timezone.now() + dt.timedelta(seconds=delay))
    try:
        job.enqueue(delivery_id)
    except Exception as exc:  # the queue itself failed: the delivery must not stay pending
        logger.exception("could not enqueue notification %s", delivery_id)
        NotificationDelivery.objects.filter(
            pk=delivery_id, result=NotificationDelivery.Result.PENDING
        ).update(
            result=NotificationDelivery.Result.FAILED,
            finished_at=timezone.now(),
            error=_("Could not queue the notification: %(error)s") % {"error": type(exc).__name__},
        )


def queue_delivery(delivery_id: int, *, delay: float = 0.0) -> None:
    """Enqueue the delivery on the task worker once the current transaction commits."""
    transaction.on_commit(partial(_enqueue_delivery, delivery_id, delay))


def queue_notifications(run: VerificationRun) -> list[int]:
    """Queue the notifications the finished run's change of state calls for; return their ids.

    Never raises: notifying comes after the run, and its failure leaves the run as it is.
    """
    try:
        ids = events.on_run_finished(run)
    except Exception:
        logger.exception("notifications of run %s could not be prepared", run.pk)
        return []
    for delivery_id in ids:
        queue_delivery(delivery_id)
    return ids


# --- applies to nginx (routes/nginx/apply.py) -------------------------------------------------


@task()
def run_apply(apply_id: int) -> dict[str, Any]:
    """Perform the queued apply; queue the notifications its runs and its result call for."""
    record = NginxApply.objects.filter(pk=apply_id).select_related("started_by").first()
    if record is None:
        return {"apply": apply_id, "result": "missing"}
    with acting(user=record.started_by):
        record = applying.perform_apply(apply=record)
    queue_apply_notifications(record)
    return {"apply": record.pk, "result": record.result}


def queue_apply_notifications(record: NginxApply) -> list[int]:
    """Queue what the apply's verification runs and its result call for; return the ids.

    Never raises: notifying comes after the apply, and its failure leaves the apply as it is.
    """
    ids: list[int] = []
    for run in VerificationRun.objects.filter(pk__in=record.runs).order_by("created_at", "id"):
        ids += queue_notifications(run)
    try:
        own = apply_report.create_notifications(record)
    except Exception:
        logger.exception("notifications of apply %s could not be prepared", record.pk)
        own = []
    for delivery_id in own:
        queue_delivery(delivery_id)
    return ids + own


def _enqueue_apply(apply_id: int) -> None:
    _hand_over(
        run_apply,
        (apply_id,),
        rows=NginxApply.objects.filter(pk=apply_id),
        waiting={"result": NginxApply.Result.QUEUED},
        failed=lambda exc: {
            "result": NginxApply.Result.REFUSED,
            "reason": _("Could not queue the apply: %(error)s") % {"error": type(exc).__name__},
        },
    )


def start_apply(*, deployment: Deployment) -> NginxApply:
    """Create a queued apply of deployment for the acting user, run by the worker; return it.

    Raises routes.nginx.apply.ApplyRefused when the deployment cannot be rendered.
    """
    record = applying.queue_apply(deployments=[deployment], source=NginxApply.Source.ADMIN)
    transaction.on_commit(partial(_enqueue_apply, record.pk))
    return record
