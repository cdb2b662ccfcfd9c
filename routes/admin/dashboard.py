"""The admin index as a dashboard: deployments per team, their last verification, failing checks,
recent exports and recent changes, all limited to what the user may see.

The index template asks for it through the ``console_dashboard`` template tag, the way Django's
own index asks for its recent actions with ``get_admin_log``; that keeps the stock ``admin.site``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db.models import OuterRef, Subquery
from django.urls import NoReverseMatch, reverse

from routes.admin.run_display import CauseView, cause_views
from routes.models import (
    AuditEvent,
    CheckResult,
    ConfigExport,
    Deployment,
    Team,
    VerificationRun,
)
from routes.nginx.apply_report import LiveState, live_states
from routes.permissions import Action, can, teams_where
from routes.verification import remarks

if TYPE_CHECKING:
    from routes.permissions import AnyUser

# Bounds that keep the page (and its queries) small however many deployments exist.
MAX_DEPLOYMENTS = 100
MAX_FAILING_RUNS = 10
MAX_CAUSES_PER_RUN = 5
MAX_FEED = 8


def optional_url(name: str, *args: Any) -> str:
    """Return the URL of name, or "" when no page of that name is installed."""
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return ""


@dataclass
class DeploymentRow:
    """One deployment with its latest run and the pages the user may open from the dashboard."""

    deployment: Deployment
    last_run: VerificationRun | None
    change_url: str
    config_url: str = ""
    verify_url: str = ""
    run_url: str = ""
    # The config the last apply left live, against the rendered one (routes.nginx.apply_report).
    live: LiveState | None = None


@dataclass
class TeamGroup:
    """The visible deployments of one team."""

    team: Team
    rows: list[DeploymentRow] = field(default_factory=list)
    can_create: bool = False


@dataclass
class FailingRun:
    """The latest run of a deployment that did not pass, with its root causes."""

    run: VerificationRun
    deployment: Deployment
    causes: list[CauseView]
    run_url: str
    more: int = 0
    # What the run says beyond its checks, in the viewer's language (routes.verification.remarks).
    error: str = ""


@dataclass
class Dashboard:
    """Everything the index page shows; built with a fixed number of queries."""

    groups: list[TeamGroup]
    failing: list[FailingRun]
    exports: list[ConfigExport]
    changes: list[AuditEvent]
    wizard_url: str
    team_add_url: str
    truncated: bool
    deployment_count: int


def build_dashboard(*, user: AnyUser) -> Dashboard:
    """Return the dashboard of user: only deployments, runs, exports and events they may see."""
    visible = Deployment.objects.visible_to(user)
    latest_run = (
        VerificationRun.objects.filter(job__deployment=OuterRef("pk"))
        .order_by("-created_at", "-id")
        .values("id")[:1]
    )
    deployments = list(
        visible.select_related("team")
        .annotate(last_run_id=Subquery(latest_run))
        .order_by("team__name", "team_id", "name", "slug")[: MAX_DEPLOYMENTS + 1]
    )
    truncated = len(deployments) > MAX_DEPLOYMENTS
    deployments = deployments[:MAX_DEPLOYMENTS]
    run_ids = [d.last_run_id for d in deployments if d.last_run_id]
    runs = VerificationRun.objects.in_bulk(run_ids) if run_ids else {}

    live = live_states(deployments)
    creatable = {team.pk: team for team in teams_where(user, Action.CREATE)}
    wizard_url = optional_url("admin:routes_deployment_wizard") if creatable else ""

    groups: dict[int, TeamGroup] = {}
    for deployment in deployments:
        group = groups.get(deployment.team_id)
        if group is None:
            group = groups[deployment.team_id] = TeamGroup(
                team=deployment.team, can_create=deployment.team_id in creatable
            )
        run = runs.get(deployment.last_run_id)
        may_verify = can(user, Action.VERIFY, deployment.team_id)
        group.rows.append(
            DeploymentRow(
                deployment=deployment,
                last_run=run,
                change_url=optional_url("admin:routes_deployment_change", deployment.pk),
                config_url=optional_url("admin:routes_deployment_config", deployment.pk),
                verify_url=(
                    optional_url("admin:routes_deployment_verify", deployment.pk)
                    if may_verify
                    else ""
                ),
                run_url=(
                    optional_url("admin:routes_verificationrun_change", run.pk) if run else ""
                ),
                live=live.get(deployment.pk),
            )
        )
    # Teams where the user may create but that have no deployment yet still get a heading,
    # so the "new deployment" button has a place to live.
    for team in sorted(creatable.values(), key=lambda t: (t.name, t.pk)):
        if team.pk not in groups and not truncated:
            groups[team.pk] = TeamGroup(team=team, can_create=True)
    ordered = sorted(groups.values(), key=lambda g: (g.team.name, g.team.pk))

    failed_runs = sorted(
        (
            runs[d.last_run_id]
            for d in deployments
            if d.last_run_id
            and runs[d.last_run_id].status
            in (VerificationRun.Status.FAILED, VerificationRun.Status.ERROR)
        ),
        key=lambda r: (r.created_at, r.pk),
        reverse=True,
    )[:MAX_FAILING_RUNS]
    deployment_of_run = {runs[d.last_run_id].pk: d for d in deployments if d.last_run_id}
    # Causes are stored on the run; only runs from before they were need their failed checks,
    # all loaded in one query, so the panel costs the same for any number of runs.
    failed_checks: dict[int, list[CheckResult]] = {r.pk: [] for r in failed_runs}
    older = [r for r in failed_runs if not r.causes]
    if older:
        for result in CheckResult.objects.filter(run__in=older, passed=False).order_by(
            "run_id", "position", "id"
        ):
            failed_checks[result.run_id].append(result)
    failing = []
    for run in failed_runs:
        found = cause_views(
            run, user=None, deployment=deployment_of_run[run.pk], failed=failed_checks[run.pk]
        )
        failing.append(
            FailingRun(
                run=run,
                deployment=deployment_of_run[run.pk],
                causes=found[:MAX_CAUSES_PER_RUN],
                more=max(0, len(found) - MAX_CAUSES_PER_RUN),
                run_url=optional_url("admin:routes_verificationrun_change", run.pk),
                error=remarks.run_text(run),
            )
        )

    exports = list(
        ConfigExport.objects.filter(deployment__in=visible)
        .select_related("deployment", "created_by")
        .defer("text")
        .order_by("-created_at", "-id")[:MAX_FEED]
    )
    events = AuditEvent.objects.select_related("team").order_by("-created_at", "-id")
    if user.is_superuser:
        # Team-less events (sign-ins and the like) are the audit trail's business, not changes.
        events = events.filter(team__isnull=False)
    else:
        events = events.filter(team__in=teams_where(user, Action.VIEW))
    changes = list(events[:MAX_FEED])

    # Nobody can create a deployment before a team exists; point whoever may add teams there.
    team_add_url = (
        optional_url("admin:routes_team_add")
        if not creatable and user.has_perm("routes.add_team")
        else ""
    )
    return Dashboard(
        groups=ordered,
        team_add_url=team_add_url,
        failing=failing,
        exports=exports,
        changes=changes,
        wizard_url=wizard_url,
        truncated=truncated,
        deployment_count=len(deployments),
    )
