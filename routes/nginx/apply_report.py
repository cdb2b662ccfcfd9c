"""What an apply tells: its JSON (a contract), its steps for the page, its notifications, and
each deployment's live config against its rendered one for the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import OuterRef, Subquery, prefetch_related_objects
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from routes.alerts.channels import channels_for
from routes.alerts.events import EXCERPT, absolute_url
from routes.alerts.models import NotificationDelivery
from routes.models import Deployment, VerificationRun
from routes.nginx.records import NginxApply
from routes.nginx.render import InvalidDeployment, config_hash, render_site
from routes.verification import runs
from routes.verification.http import Redactor

Result = NginxApply.Result
# The phases of an apply's steps: its own, the rollback's, and recovering an earlier apply.
APPLY = "apply"
ROLLBACK = "rollback"
RECOVERY = "recovery"
# Steps people see, in the order an apply takes them (a rollback repeats the middle ones).
STEP_LABELS = {
    "recovered": gettext_lazy("recovered an interrupted apply"),
    "locked": gettext_lazy("locked"),
    "kept": gettext_lazy("previous generation kept"),
    "written": gettext_lazy("written"),
    "tested": gettext_lazy("tested"),
    "reloaded": gettext_lazy("reloaded"),
    "confirmed": gettext_lazy("confirmed"),
    "verified": gettext_lazy("verified"),
    "restored": gettext_lazy("previous generation restored"),
    "rolled_back": gettext_lazy("rolled back"),
}
# The apply's end results (the command's JSON contract) and what the dashboard calls them.
END_RESULTS = (Result.APPLIED, Result.TEST_FAILED, Result.ROLLED_BACK, Result.ROLLBACK_FAILED)
LIVE_LABELS = {
    "live": gettext_lazy("live"),
    "not_applied": gettext_lazy("not applied yet"),
    "rolled_back": gettext_lazy("rolled back"),
    "rollback_failed": gettext_lazy("rollback failed"),
}


def _payload(
    record: NginxApply, deployment: Deployment, run: VerificationRun | None
) -> dict[str, Any]:
    """Return the webhook body of an apply rolled back (or not), in the keys of a run's."""
    redact = Redactor(runs.load_keys(deployment).secrets)
    causes = []
    if run is not None:
        for result in run.results.filter(check_id__in=record.regressions).order_by(
            "position", "id"
        ):
            causes.append(
                {"code": result.check_id, "diagnosis": redact.cut(result.diagnosis, EXCERPT)}
            )
    if not causes:
        causes.append(
            {"code": f"apply_{record.result}", "diagnosis": redact.cut(record.reason, EXCERPT)}
        )
    return {
        "event": record.result,
        "deployment": deployment.slug,
        "team": deployment.team.slug,
        "run": run.pk if run is not None else None,
        "status": record.result,
        "causes": causes,
        "url": absolute_url(record.get_absolute_url()),
        "apply": record.pk,
        "config_hash": record.config_hashes.get(deployment.slug),
        "previous_hash": record.previous_hashes.get(deployment.slug),
    }


def create_notifications(record: NginxApply) -> list[int]:
    """Create the pending deliveries a rolled_back or rollback_failed apply calls for.

    One per channel of each deployment's team that covers it, with the apply's first run of
    that deployment (the one that regressed). Returns their ids for routes.tasks to queue.
    """
    if record.result not in (Result.ROLLED_BACK, Result.ROLLBACK_FAILED):
        return []
    ids = []
    applied_runs = VerificationRun.objects.filter(pk__in=record.runs).order_by("created_at", "id")
    first_run: dict[int, VerificationRun] = {}
    for applied in applied_runs.select_related("job"):
        first_run.setdefault(applied.job.deployment_id, applied)
    for deployment in record.deployments.select_related("team").order_by("slug"):
        run = first_run.get(deployment.pk)
        payload = _payload(record, deployment, run)
        for channel in channels_for(deployment):
            delivery = NotificationDelivery.objects.create(
                channel=channel,
                deployment=deployment,
                run=run,
                event=record.result,
                payload=payload,
            )
            ids.append(delivery.pk)
    return ids


# --- reading ----------------------------------------------------------------------------------


def apply_as_json(record: NginxApply) -> dict[str, Any]:
    """Return the apply as `manage.py apply_nginx --json` prints it (a contract)."""
    return {
        "result": record.result,
        "deployments": list(record.slugs),
        "config_hash": record.config_hash,
        "previous_hash": record.previous_hash,
        "test_output": record.test_output,
        "runs": list(record.runs),
        "regressions": list(record.regressions),
        "apply": record.pk,
        "config_hashes": dict(record.config_hashes),
        "previous_hashes": dict(record.previous_hashes),
        "reason": record.reason,
        "steps": [dict(step) for step in record.steps],
    }


def step_label(step: dict[str, Any]) -> str:
    """Return a stored step as people read it, e.g. "rollback: tested"."""
    label = str(STEP_LABELS.get(step.get("step", ""), step.get("step", "")))
    if step.get("phase") == ROLLBACK and step.get("step") != "rolled_back":
        return _("rollback: %(step)s") % {"step": label}
    return label


def progress(record: NginxApply) -> dict[str, Any]:
    """Return the small JSON the config page polls while an apply runs."""
    return {
        "id": record.pk,
        "result": record.result,
        "result_label": str(record.get_result_display()),
        "finished": record.finished,
        "reason": record.reason,
        "regressions": list(record.regressions),
        "runs": list(record.runs),
        "steps": [
            {
                "step": step.get("step"),
                "phase": step.get("phase"),
                "ok": step.get("ok"),
                "label": step_label(step),
                "detail": step.get("detail", ""),
            }
            for step in record.steps
        ],
    }


@dataclass(frozen=True)
class LiveState:
    """A deployment's config as the last apply left nginx, against what renders now."""

    state: str  # live | not_applied | rolled_back | rollback_failed
    live_hash: str | None
    rendered_hash: str | None
    apply_id: int | None = None

    @property
    def label(self) -> str:
        return str(LIVE_LABELS[self.state])


def live_states(deployments: list[Deployment]) -> dict[int, LiveState]:
    """Return {deployment id: LiveState} in a fixed number of queries.

    The live hash is the one the deployment's last finished apply left answering (the new one
    when applied, the old one when rolled back or when nginx refused the new one).
    """
    if not deployments:
        return {}
    prefetch_related_objects(deployments, "overrides")
    latest = (
        NginxApply.objects.filter(deployments=OuterRef("pk"), result__in=END_RESULTS)
        .order_by("-created_at", "-id")
        .values("pk")[:1]
    )
    found = dict(
        Deployment.objects.filter(pk__in=[d.pk for d in deployments])
        .annotate(latest_apply=Subquery(latest))
        .values_list("pk", "latest_apply")
    )
    applies = NginxApply.objects.in_bulk([pk for pk in found.values() if pk])
    states = {}
    for d in deployments:
        try:
            rendered: str | None = config_hash(render_site(d))
        except InvalidDeployment:
            rendered = None
        record = applies.get(found.get(d.pk) or 0)
        if record is None:
            states[d.pk] = LiveState("not_applied", None, rendered)
            continue
        if record.result == Result.APPLIED:
            live_hash = record.config_hashes.get(d.slug)
        else:
            live_hash = record.previous_hashes.get(d.slug)
        if record.result == Result.ROLLBACK_FAILED:
            state = "rollback_failed"
        elif live_hash is not None and live_hash == rendered:
            state = "live"
        elif record.result == Result.ROLLED_BACK:
            state = "rolled_back"
        else:
            state = "not_applied"
        states[d.pk] = LiveState(state, live_hash, rendered, record.pk)
    return states
