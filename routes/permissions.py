"""The one permission layer: what a user may do with a team's deployments.

Roles rank viewer < operator < owner. Superusers may do everything. Every admin page, custom
view, action, download, task trigger and JSON endpoint asks ``can(user, action, team)`` or filters
with ``Deployment.objects.visible_to(user)``; nothing decides roles with its own ``if``.
"""

from __future__ import annotations

from enum import StrEnum

from django.core.exceptions import PermissionDenied

from routes.models import ROLE_RANK, Deployment, Membership, Role, Team


class Action(StrEnum):
    """What a user wants to do, with the lowest role that may."""

    VIEW = "view"  # read deployments, overrides, configs, runs (never secrets)
    EDIT = "edit"  # change deployments and overrides
    EXPORT = "export"  # export or download configs
    VERIFY = "verify"  # run verification, test keys
    MANAGE_KEYS = "manage_keys"  # add, rotate, delete keys; reveal first-setup values
    # set or change a URL keys are sent to; confirm where checks with keys go
    SET_KEY_DESTINATION = "set_key_destination"
    MANAGE_MEMBERS = "manage_members"  # add, change, remove memberships
    CREATE = "create"  # create a deployment in the team


REQUIRED_ROLE: dict[Action, Role] = {
    Action.VIEW: Role.VIEWER,
    Action.EDIT: Role.OPERATOR,
    Action.EXPORT: Role.OPERATOR,
    Action.VERIFY: Role.OPERATOR,
    Action.CREATE: Role.OPERATOR,
    Action.MANAGE_KEYS: Role.OWNER,
    Action.SET_KEY_DESTINATION: Role.OWNER,
    Action.MANAGE_MEMBERS: Role.OWNER,
}


def _team_id(team: Team | int | None) -> int | None:
    if team is None:
        return None
    return team if isinstance(team, int) else team.pk


def role_in(user, team: Team | int | None) -> Role | None:
    """Return user's role in team, or None when user is not a member."""
    team_id = _team_id(team)
    if team_id is None or not user.is_authenticated:
        return None
    cache = getattr(user, "_console_roles", None)
    if cache is None:
        rows = list(
            Membership.objects.filter(user=user).values_list(
                "team_id", "role", "team__require_owner_2fa"
            )
        )
        cache = {tid: role for tid, role, _ in rows}
        user._console_roles = cache
        # Teams where user is an owner and the team requires two-factor of its owners.
        user._console_otp_teams = {tid for tid, role, req in rows if req and role == Role.OWNER}
    role = cache.get(team_id)
    return Role(role) if role else None


def _otp_verified(user) -> bool:
    # django-otp's middleware installs is_verified(); a user loaded elsewhere is unverified.
    check = getattr(user, "is_verified", None)
    return bool(callable(check) and check())


def can(user, action: Action, team: Team | int | None) -> bool:
    """Return True when user may perform action on team's deployments."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    role = role_in(user, team)
    if role is None:
        return False
    if ROLE_RANK[role] < ROLE_RANK[REQUIRED_ROLE[action]]:
        return False
    # Team.require_owner_2fa: owner-level actions need a session verified by an OTP device.
    otp_teams = getattr(user, "_console_otp_teams", ())
    if REQUIRED_ROLE[action] == Role.OWNER and _team_id(team) in otp_teams:
        return _otp_verified(user)
    return True


def require(user, action: Action, team: Team | int | None) -> None:
    """Raise PermissionDenied unless can(user, action, team)."""
    if not can(user, action, team):
        raise PermissionDenied


def teams_where(user, action: Action):
    """Return the teams in which user may perform action."""
    if user.is_superuser:
        return Team.objects.all()
    if not user.is_authenticated:
        return Team.objects.none()
    roles = [r for r, rank in ROLE_RANK.items() if rank >= ROLE_RANK[REQUIRED_ROLE[action]]]
    teams = Team.objects.filter(memberships__user=user, memberships__role__in=roles)
    if REQUIRED_ROLE[action] == Role.OWNER and not _otp_verified(user):
        teams = teams.exclude(require_owner_2fa=True)
    return teams.distinct()


def can_deployment(user, action: Action, deployment: Deployment) -> bool:
    """Return True when user may perform action on deployment."""
    return can(user, action, deployment.team_id)


def has_any_membership(user) -> bool:
    """Return True when user belongs to at least one team (or is a superuser)."""
    if user.is_superuser:
        return True
    if not user.is_authenticated:
        return False
    cache = getattr(user, "_console_roles", None)
    if cache is None:
        role_in(user, -1)
        cache = user._console_roles
    return bool(cache)


def clear_cache(user) -> None:
    """Forget user's cached roles (after membership changes)."""
    if hasattr(user, "_console_roles"):
        del user._console_roles
    if hasattr(user, "_console_otp_teams"):
        del user._console_otp_teams


def refused_slugs(user, action: Action, deployments) -> list[str]:
    """Return the slugs of deployments on which user may not perform action (for bulk actions)."""
    return [d.slug for d in deployments if not can(user, action, d.team_id)]
