"""Memberships: who is in a team with which role; a team never loses its last owner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext_lazy as _

from routes import audit
from routes.models import Membership, Role, Team
from routes.permissions import clear_cache

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def check_keeps_an_owner(*, membership: Membership) -> None:
    """Raise ValidationError on ``role`` when membership is its team's last owner."""
    others = Membership.objects.filter(team_id=membership.team_id, role=Role.OWNER).exclude(
        pk=membership.pk
    )
    if membership.role == Role.OWNER and not others.exists():
        raise ValidationError(
            _("Team %(team)s needs at least one owner; make someone else owner first."),
            code="last_owner",
            params={"team": membership.team.slug},
        )


def add_membership(*, team: Team, user: User, role: str) -> Membership:
    """Add user to team with role; the user becomes staff so they can sign in to the console."""
    with transaction.atomic():
        if Membership.objects.filter(team=team, user=user).exists():
            raise ValidationError(
                {
                    "user": ValidationError(
                        _("%(user)s is already a member of %(team)s."),
                        code="unique",
                        params={"user": user.get_username(), "team": team.slug},
                    )
                }
            )
        membership = Membership(team=team, user=user, role=role)
        membership.full_clean()
        membership.save()
        if not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        clear_cache(user)
        audit.record(
            action="membership.add",
            team=team,
            obj=membership,
            changes={"user": user.get_username(), "role": [None, role]},
        )
    return membership


def change_membership(*, membership: Membership, role: str) -> Membership:
    """Change a member's role; a team never loses its last owner."""
    with transaction.atomic():
        stored = Membership.objects.select_for_update().get(pk=membership.pk)
        if stored.role == role:
            return stored
        if role != Role.OWNER:
            check_keeps_an_owner(membership=stored)
        old = stored.role
        stored.role = role
        stored.full_clean()
        stored.save(update_fields=["role"])
        clear_cache(stored.user)
        audit.record(
            action="membership.change",
            team=stored.team_id,
            obj=stored,
            changes={"user": stored.user.get_username(), "role": [old, role]},
        )
    membership.role = role
    return stored


def remove_membership(*, membership: Membership) -> None:
    """Remove a member; a team never loses its last owner."""
    with transaction.atomic():
        stored = Membership.objects.select_for_update().get(pk=membership.pk)
        check_keeps_an_owner(membership=stored)
        user = stored.user
        audit.record(
            action="membership.remove",
            team=stored.team_id,
            obj=stored,
            changes={"user": user.get_username(), "role": [stored.role, None]},
        )
        stored.delete()
        # Staff status only exists to let members sign in; without a team there is nothing to see.
        if not user.is_superuser and user.is_staff and not user.memberships.exists():
            user.is_staff = False
            user.save(update_fields=["is_staff"])
        clear_cache(user)


def find_user(*, username: str) -> User:
    """Return the user called username, or raise ValidationError naming the field."""
    user_model = get_user_model()
    try:
        return user_model.objects.get(**{user_model.USERNAME_FIELD: username})
    except user_model.DoesNotExist:
        raise ValidationError(
            {
                "username": ValidationError(
                    _("No account is called %(name)s; ask a console administrator to create it."),
                    code="invalid",
                    params={"name": username},
                )
            }
        ) from None
