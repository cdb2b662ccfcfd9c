"""The audit events of imports and exports: one per team and run, never one per deployment.

Each team's members read their own part of the trail and never another team's slugs, so a file
that reaches several teams is recorded once in each.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from routes import audit
from routes.models import Deployment


def record_for_team(
    *,
    action: str,
    team_id: int | None,
    deployments: list[Deployment],
    one: dict[str, Any],
    several: dict[str, Any],
) -> None:
    """Record one event of action in the team: about the deployment itself when it is one.

    One deployment's event reads as before bulk writes (its History page and the changes a
    stale form lists read it); several are named in the event instead.
    """
    if len(deployments) == 1:
        audit.record(action=action, team=team_id, obj=deployments[0], changes=one)
        return
    slugs = ", ".join(d.slug for d in deployments)
    audit.record(
        action=action,
        team=team_id,
        object_repr=_("%(n)d deployments: %(slugs)s") % {"n": len(deployments), "slugs": slugs},
        changes=several,
    )
