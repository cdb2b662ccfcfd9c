"""Teams: create, change and delete, each recorded in the audit trail."""

from __future__ import annotations

from django.db import transaction

from routes import audit
from routes.context import current_actor
from routes.models import Role, Team
from routes.workflows.memberships import add_membership

_UNTRACKED = ("created_at",)


def create_team(
    *, name: str, slug: str, require_owner_2fa: bool = False, creator_becomes_owner: bool = True
) -> Team:
    """Create a team; a signed-in creator becomes its owner unless told otherwise."""
    with transaction.atomic():
        team = Team(name=name, slug=slug, require_owner_2fa=require_owner_2fa)
        team.full_clean()
        team.save()
        audit.record(
            action="team.create",
            team=team,
            obj=team,
            changes={"name": [None, team.name], "slug": [None, team.slug]},
        )
        creator = current_actor()
        if creator is not None and creator_becomes_owner:
            add_membership(team=team, user=creator, role=Role.OWNER)
    return team


def save_team(*, team: Team) -> Team:
    """Save changes to an existing team and record the field diff."""
    with transaction.atomic():
        before = audit.snapshot(Team.objects.get(pk=team.pk), exclude=_UNTRACKED)
        team.full_clean()
        team.save()
        diff = audit.field_diff(before, audit.snapshot(team, exclude=_UNTRACKED))
        if diff:
            audit.record(action="team.change", team=team, obj=team, changes=diff)
    return team


def delete_team(*, team: Team) -> None:
    """Delete a team without deployments (they are protected), recording it."""
    with transaction.atomic():
        audit.record(
            action="team.delete",
            obj=team,
            changes={"name": [team.name, None], "slug": [team.slug, None]},
        )
        team.delete()
