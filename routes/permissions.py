"""The one permission layer: what a user may do with a team's deployments.

Roles rank viewer < operator < owner. Superusers may do everything. Every admin page, custom
view, action, download, task trigger and JSON endpoint asks ``can(user, action, team)`` (or
``can_somewhere(user, action)`` where no team is chosen yet) or filters with
``Deployment.objects.visible_to(user)``; nothing decides roles with its own ``if``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, TypeAlias

from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet

from routes.models import ROLE_RANK, Deployment, Membership, Role, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    AnyUser: TypeAlias = User | AnonymousUser


class Action(StrEnum):
    """What a user wants to do, with the lowest role that may."""

    VIEW = "view"  # read deployments, overrides, configs, runs (never secrets)
    EDIT = "edit"  # change deployments and overrides
    EXPORT = "export"  # export or download configs
    VERIFY = "verify"  # run verification, test keys, test a config with nginx
    MANAGE_KEYS = "manage_keys"  # add, rotate, delete keys; reveal first-setup values
    # set or change a URL keys are sent to; confirm where checks with keys go
    SET_KEY_DESTINATION = "set_key_destination"
    MANAGE_MEMBERS = "manage_members"  # add, change, remove memberships
    CREATE = "create"  # create a deployment in the team
    # delete teams, prune the audit trail and the export history: no team role reaches it
    ADMINISTER = "administer"


# None: no role of a team is enough, only superusers may.
REQUIRED_ROLE: dict[Action, Role | None] = {
    Action.VIEW: Role.VIEWER,
    Action.EDIT: Role.OPERATOR,
    Action.EXPORT: Role.OPERATOR,
    Action.VERIFY: Role.OPERATOR,
    Action.CREATE: Role.OPERATOR,
    Action.MANAGE_KEYS: Role.OWNER,
    Action.SET_KEY_DESTINATION: Role.OWNER,
    Action.MANAGE_MEMBERS: Role.OWNER,
    Action.ADMINISTER: None,
}


def _team_id(team: Team | int | None) -> int | None:
    if team is None:
        return None
    return team if isinstance(team, int) else team.pk


def _roles(user: AnyUser) -> dict[int, str]:
    """Return {team id: role} of user's memberships, loaded once per user object."""
    if not user.is_authenticated:
        return {}
    cache: dict[int, str] | None = getattr(user, "_console_roles", None)
    if cache is None:
        rows = list(
            Membership.objects.filter(user=user).values_list(
                "team_id", "role", "team__require_owner_2fa"
            )
        )
        cache = {tid: role for tid, role, _ in rows}
        # Kept on the user object: it lives as long as the request.
        user._console_roles = cache  # type: ignore[attr-defined]
        # Teams where user is an owner and the team requires two-factor of its owners.
        user._console_otp_teams = {  # type: ignore[attr-defined]
            tid for tid, role, req in rows if req and role == Role.OWNER
        }
    return cache


def role_in(user: AnyUser, team: Team | int | None) -> Role | None:
    """Return user's role in team, or None when user is not a member."""
    team_id = _team_id(team)
    if team_id is None or not user.is_authenticated:
        return None
    role = _roles(user).get(team_id)
    return Role(role) if role else None


def _otp_verified(user: AnyUser) -> bool:
    # django-otp's middleware installs is_verified(); a user loaded elsewhere is unverified.
    check = getattr(user, "is_verified", None)
    return bool(callable(check) and check())


def can(user: AnyUser, action: Action, team: Team | int | None) -> bool:
    """Return True when user may perform action on team's deployments."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    required = REQUIRED_ROLE[action]
    role = role_in(user, team)
    if required is None or role is None:
        return False
    if ROLE_RANK[role] < ROLE_RANK[required]:
        return False
    # Team.require_owner_2fa: owner-level actions need a session verified by an OTP device.
    otp_teams = getattr(user, "_console_otp_teams", ())
    if required == Role.OWNER and _team_id(team) in otp_teams:
        return _otp_verified(user)
    return True


def can_somewhere(user: AnyUser, action: Action) -> bool:
    """Return True when user may perform action in at least one team (superusers: always).

    Answered from the memberships loaded once per request: the admin asks this for every
    model, inline and action on a page, before any object is chosen.
    """
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return any(can(user, action, team_id) for team_id in _roles(user))


class RoleRequired(PermissionDenied):
    """A refusal that says which role the action needs and which role the user has.

    ``team`` is named only when the user is a member of it (or a superuser), so a refusal never
    tells anyone about another team. ``required`` None: no team role is enough (superusers only).
    """

    def __init__(
        self,
        *,
        action: Action | None,
        required: Role | None,
        actual: Role | None,
        team: Team | None = None,
        otp: bool = False,
    ) -> None:
        self.action = action
        self.required = required
        self.actual = actual
        self.team = team
        # The role is enough, but the team wants a session verified with two-factor.
        self.otp = otp
        super().__init__(self.summary())

    def summary(self) -> str:
        """Return the refusal as one plain line (for the log): action, needed and held role."""
        held = self.actual.value if self.actual else "none"
        where = f" in team {self.team.slug}" if self.team is not None else ""
        otp = ", two-factor session needed" if self.otp else ""
        if self.action is None:
            return f"no role may do this here; user has {held}"
        needed = self.required.value if self.required else "superuser"
        return f"{self.action} needs {needed}{where}; user has {held}{otp}"


def refusal(user: AnyUser, action: Action | None, team: Team | int | None) -> RoleRequired:
    """Return the RoleRequired that explains why user may not do action in team.

    Without a team (a page that acts in no chosen team), ``actual`` is user's highest role in any
    team. ``action`` None: the operation is refused to every role (read-only admins).
    """
    required = REQUIRED_ROLE[action] if action is not None else None
    team_id = _team_id(team)
    if team_id is None:
        ranks = [Role(role) for role in _roles(user).values()]
        actual = max(ranks, key=ROLE_RANK.__getitem__) if ranks else None
        return RoleRequired(action=action, required=required, actual=actual)
    actual = role_in(user, team_id)
    named: Team | None = None
    if actual is not None:
        named = team if isinstance(team, Team) else Team.objects.filter(pk=team_id).first()
    otp = (
        action is not None
        and actual is not None
        and required is not None
        and ROLE_RANK[actual] >= ROLE_RANK[required]
        and not can(user, action, team_id)
    )
    return RoleRequired(action=action, required=required, actual=actual, team=named, otp=otp)


def require(user: AnyUser, action: Action, team: Team | int | None) -> None:
    """Raise RoleRequired (a PermissionDenied) unless can(user, action, team)."""
    if not can(user, action, team):
        raise refusal(user, action, team)


def teams_where(user: AnyUser, action: Action) -> QuerySet[Team]:
    """Return the teams in which user may perform action."""
    if user.is_superuser:
        return Team.objects.all()
    required = REQUIRED_ROLE[action]
    if not user.is_authenticated or required is None:
        return Team.objects.none()
    roles = [r for r, rank in ROLE_RANK.items() if rank >= ROLE_RANK[required]]
    # EXISTS: one row per team however it is joined later (a membership is unique per team).
    member = Membership.objects.filter(team_id=OuterRef("pk"), user_id=user.pk, role__in=roles)
    teams = Team.objects.filter(Exists(member))
    if required == Role.OWNER and not _otp_verified(user):
        teams = teams.exclude(require_owner_2fa=True)
    return teams


def has_any_membership(user: AnyUser) -> bool:
    """Return True when user belongs to at least one team (or is a superuser)."""
    if user.is_superuser:
        return True
    if not user.is_authenticated:
        return False
    return bool(_roles(user))


def clear_cache(user: AnyUser) -> None:
    """Forget user's cached roles (after membership changes)."""
    if hasattr(user, "_console_roles"):
        del user._console_roles
    if hasattr(user, "_console_otp_teams"):
        del user._console_otp_teams


def refused_slugs(user: AnyUser, action: Action, deployments: Iterable[Deployment]) -> list[str]:
    """Return the slugs of deployments on which user may not perform action (for bulk actions)."""
    return [d.slug for d in deployments if not can(user, action, d.team_id)]
