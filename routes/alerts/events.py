"""Changes of state: a finished run moves its deployment up or down, and that is notified once.

A deployment is up when its last finished run passed and down when it failed or errored; with
no finished run it has no state yet. ``failed`` goes out when it goes down from up or from never
run, ``recovered`` when it comes back up, each once per channel, with the run that changed the
state. A run that keeps the state sends nothing, except a reminder to a channel that asks for one
every N hours while the deployment stays down (reminders ride on runs, so they come with the
job's schedule).

on_run_finished() is the hook the task layer calls after every finished run, whatever started
it; it creates the pending deliveries and returns their ids for routes.tasks to queue. What each
notification says (the webhook body, and an email's subject and text) is built here too.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from routes import audit
from routes.alerts.channels import channels_for
from routes.alerts.models import DeploymentAlertState, NotificationChannel, NotificationDelivery
from routes.models import Deployment, VerificationRun
from routes.verification.http import Redactor
from routes.verification.runs import load_keys

logger = logging.getLogger(__name__)

Event = NotificationDelivery.Event
State = DeploymentAlertState.State
Status = VerificationRun.Status
FINISHED = (Status.PASSED, Status.FAILED, Status.ERROR)
# Another finished run of the same deployment moved its state first this many times in a row:
# give up on this run rather than loop (the next run brings the state up to date).
MAX_RACES = 5
EXCERPT = 500


# --- what a notification says -----------------------------------------------------------------


def absolute_url(path: str) -> str:
    """Return path as a link from outside, under CONSOLE_BASE_URL."""
    return settings.CONSOLE_BASE_URL.rstrip("/") + path


def _cause(cause: Any) -> dict[str, str]:
    if isinstance(cause, Mapping):
        return {"code": str(cause["code"]), "diagnosis": str(cause["diagnosis"])}
    return {"code": str(cause.code), "diagnosis": str(cause.diagnosis)}


def run_causes(run: VerificationRun) -> list[dict[str, str]]:
    """Return the run's causes as [{"code", "diagnosis"}], most important first.

    From routes.verification.causes when it exists (issue 11's root causes), otherwise one
    entry per failed check (its id as the code), or the run's own error when no check failed.
    """
    try:
        causes_module = importlib.import_module("routes.verification.causes")
    except ImportError:
        causes_module = None
    of_run = getattr(causes_module, "run_causes", None)
    if of_run is not None:
        return [_cause(cause) for cause in of_run(run)]
    failed = run.results.filter(passed=False).order_by("position", "id")
    causes = [{"code": r.check_id, "diagnosis": r.diagnosis} for r in failed]
    if not causes and run.status == Status.ERROR and run.error:
        causes.append({"code": "run_error", "diagnosis": run.error})
    return causes


def run_payload(run: VerificationRun, *, event: str) -> dict[str, Any]:
    """Return the webhook body (a contract) of event for run, its texts redacted of every key."""
    deployment = run.job.deployment
    # Diagnoses are stored redacted already; the deployment's own keys are removed once more,
    # because this text leaves the console.
    redact = Redactor(load_keys(deployment).secrets)
    payload: dict[str, Any] = {
        "event": Event.FAILED.value if event == Event.REMINDER else str(event),
        "deployment": deployment.slug,
        "team": deployment.team.slug,
        "run": run.pk,
        "status": run.status,
        "causes": [
            {"code": c["code"], "diagnosis": redact.cut(c["diagnosis"], EXCERPT)}
            for c in run_causes(run)
        ],
        "url": absolute_url(run.get_absolute_url()),
    }
    if event == Event.REMINDER:
        payload["reminder"] = True
    return payload


def channel_test_payload(channel: NotificationChannel) -> dict[str, Any]:
    """Return the body of a test notification: the webhook's keys, no deployment and no run."""
    return {
        "event": Event.TEST.value,
        "deployment": None,
        "team": channel.team.slug,
        "run": None,
        "status": None,
        "causes": [],
        "url": absolute_url(channel.get_absolute_url()),
    }


@dataclass(frozen=True)
class Message:
    """A notification as text: an email's subject and body, an Apprise title and body."""

    subject: str
    text: str


def message_of(payload: Mapping[str, Any]) -> Message:
    """Return the subject and short text that say what payload says (in the console's language)."""
    with translation.override(settings.LANGUAGE_CODE):
        return _message_of(payload)


def _message_of(payload: Mapping[str, Any]) -> Message:
    values = {
        "deployment": payload.get("deployment"),
        "team": payload.get("team"),
        "run": payload.get("run"),
        "status": payload.get("status"),
    }
    if payload.get("event") == Event.TEST:
        subject = _("CPA console: test notification for team %(team)s") % values
        lines = [
            _("This is a test of a notification channel of team %(team)s.") % values,
            _("No deployment changed state."),
        ]
    else:
        # An apply to nginx (routes/nginx/apply.py) that was undone names its apply.
        values["apply"] = payload.get("apply")
        if payload.get("event") == Event.ROLLBACK_FAILED:
            subject = _(
                "CPA console: ROLLBACK FAILED for %(deployment)s (apply #%(apply)s): nginx may "
                "be serving a broken config"
            )
        elif payload.get("event") == Event.ROLLED_BACK:
            subject = _("CPA console: apply #%(apply)s to %(deployment)s was rolled back")
        elif payload.get("event") == Event.RECOVERED:
            subject = _("CPA console: %(deployment)s recovered (run #%(run)s %(status)s)")
        elif payload.get("reminder"):
            subject = _("CPA console: %(deployment)s is still down (run #%(run)s %(status)s)")
        else:
            subject = _("CPA console: %(deployment)s is down (run #%(run)s %(status)s)")
        subject %= values
        if values["apply"] is not None:
            line = _("Deployment %(deployment)s of team %(team)s: apply #%(apply)s %(status)s.")
        else:
            line = _("Deployment %(deployment)s of team %(team)s: run #%(run)s %(status)s.")
        lines = [line % values]
        causes = payload.get("causes") or []
        if causes:
            lines += ["", _("Causes:")]
            lines += [f"- {c['code']}: {c['diagnosis']}" for c in causes]
    lines += ["", _("Open: %(url)s") % {"url": payload.get("url", "")}]
    return Message(subject=subject, text="\n".join(lines) + "\n")


# --- state changes ----------------------------------------------------------------------------


def state_of(run: VerificationRun) -> str:
    """Return the state a finished run leaves its deployment in."""
    return State.UP if run.status == Status.PASSED else State.DOWN


def _reminder_due(
    channel: NotificationChannel, deployment: Deployment, *, since: dt.datetime, now: dt.datetime
) -> bool:
    """Return whether channel asks for a reminder now about deployment, down since since."""
    hours = channel.remind_every_hours
    if not hours:
        return False
    last = NotificationDelivery.objects.filter(
        channel=channel,
        deployment=deployment,
        attempt=1,
        event__in=[Event.FAILED, Event.REMINDER],
        created_at__gte=since,
    ).aggregate(last=Max("created_at"))["last"]
    return now - (last or since) >= dt.timedelta(hours=hours)


def _advance(run: VerificationRun, deployment: Deployment) -> list[int] | None:
    """Record run as the deployment's latest state; return the new delivery ids.

    None: another finished run of the deployment moved the state meanwhile (try again).
    """
    assert run.finished_at is not None
    new = state_of(run)
    now = timezone.now()
    state = DeploymentAlertState.objects.filter(deployment=deployment).first()
    if state is None:
        try:
            with transaction.atomic():
                DeploymentAlertState.objects.create(
                    deployment=deployment,
                    state=new,
                    since=run.finished_at,
                    last_run=run,
                    last_finished_at=run.finished_at,
                )
        except IntegrityError:
            return None
        event = Event.FAILED if new == State.DOWN else None
        down_since = run.finished_at
    else:
        # A run that finished before the one recorded (or is that one) says nothing new.
        if (run.finished_at, run.pk) <= (state.last_finished_at, state.last_run_id or 0):
            return []
        changed = new != state.state
        moved = DeploymentAlertState.objects.filter(
            pk=state.pk, last_run_id=state.last_run_id, last_finished_at=state.last_finished_at
        ).update(
            state=new,
            last_run=run,
            last_finished_at=run.finished_at,
            since=run.finished_at if changed else state.since,
        )
        if not moved:
            return None
        event = (Event.FAILED if new == State.DOWN else Event.RECOVERED) if changed else None
        down_since = run.finished_at if changed else state.since
    channels = list(channels_for(deployment))
    if event is not None:
        wanted = [(channel, event) for channel in channels]
    elif new == State.DOWN:
        wanted = [
            (channel, Event.REMINDER)
            for channel in channels
            if _reminder_due(channel, deployment, since=down_since, now=now)
        ]
    else:
        wanted = []
    if not wanted:
        return []
    payloads = {e: run_payload(run, event=e) for e in {e for _c, e in wanted}}
    created = [
        NotificationDelivery.objects.create(
            channel=channel, deployment=deployment, run=run, event=e, payload=payloads[e]
        )
        for channel, e in wanted
    ]
    return [d.pk for d in created]


def on_run_finished(run: VerificationRun) -> list[int]:
    """Move run's deployment up or down; return the ids of the pending deliveries that calls for.

    Called by the task layer after every finished run (worker, admin button, ``verify``);
    calling it again for the same run, or for a run older than the last one recorded, creates
    nothing. The deliveries are created with the state change, in one transaction, so a change
    is notified exactly once per channel even when several runs finish at the same moment.
    """
    if run.status not in FINISHED or run.finished_at is None:
        return []
    deployment = Deployment.objects.select_related("team").filter(pk=run.job.deployment_id).first()
    if deployment is None:
        return []
    for _race in range(MAX_RACES):
        with transaction.atomic():
            ids = _advance(run, deployment)
        if ids is not None:
            return ids
    logger.warning(
        "alert state of deployment %s kept moving; run %s left out", deployment.pk, run.pk
    )
    return []


def create_test_delivery(*, channel: NotificationChannel) -> NotificationDelivery:
    """Create a pending test notification for channel, recorded as the acting user's.

    routes.tasks queues it: a page never sends.
    """
    with transaction.atomic():
        delivery = NotificationDelivery.objects.create(
            channel=channel, event=Event.TEST, payload=channel_test_payload(channel)
        )
        audit.record(
            action="channel.test",
            team=channel.team_id,
            obj=channel,
            changes={"delivery": delivery.pk},
        )
    return delivery
