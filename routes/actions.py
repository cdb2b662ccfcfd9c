"""Named mutations of teams, memberships, deployments, overrides and keys.

The admin, the commands and the importer all go through these functions, so validation, the
deployment's optimistic-locking version and the audit trail are handled in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from routes import audit
from routes import keys as keyring
from routes.models import (
    AuditEvent,
    Deployment,
    Key,
    KeyRotation,
    Membership,
    Role,
    RouteOverride,
    Team,
)
from routes.permissions import clear_cache

# Bookkeeping fields left out of field diffs: they change on every save.
_UNTRACKED = ("created_at", "updated_at", "version", "created_by", "updated_by")


def _actor(user):
    """Return user when it is a real signed-in user, else None (commands act as 'command')."""
    return user if user is not None and getattr(user, "is_authenticated", False) else None


# --- Optimistic locking -------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One recorded change of a deployment or its overrides and keys (no secret values)."""

    at: datetime
    actor: str
    action: str
    object_repr: str
    fields: dict[str, Any]


class StaleVersion(Exception):
    """The deployment was saved by someone else after the caller loaded it."""

    def __init__(self, *, deployment: Deployment, loaded_version: int | None) -> None:
        self.deployment = deployment
        self.loaded_version = loaded_version
        super().__init__(f"deployment {deployment.slug} moved on from version {loaded_version}")


def claim_version(
    *, deployment: Deployment, expected_version: int | None = None, actor=None
) -> int:
    """Move the stored version on by one and return it; raise StaleVersion if it is not expected.

    The conditional UPDATE is the lock: of two saves based on the same version, one matches.
    """
    rows = Deployment.objects.filter(pk=deployment.pk)
    if expected_version is not None:
        rows = rows.filter(version=expected_version)
    updated = rows.update(
        version=F("version") + 1, updated_at=timezone.now(), updated_by=_actor(actor)
    )
    if not updated:
        raise StaleVersion(deployment=deployment, loaded_version=expected_version)
    deployment.version = Deployment.objects.values_list("version", flat=True).get(pk=deployment.pk)
    return deployment.version


def changes_since(*, deployment: Deployment, version: int) -> list[Change]:
    """Return the recorded changes that moved deployment past version, oldest first."""
    found: list[Change] = []
    events = AuditEvent.objects.filter(
        object_type="deployment", object_id=str(deployment.pk)
    ).order_by("-created_at", "-id")[:200]
    for event in events:
        moved = event.changes.get("version") if isinstance(event.changes, dict) else None
        if not isinstance(moved, list) or len(moved) != 2 or not isinstance(moved[1], int):
            continue
        if moved[1] <= version:
            break
        fields = {k: val for k, val in event.changes.items() if k != "version"}
        found.append(
            Change(event.created_at, event.actor_label, event.action, event.object_repr, fields)
        )
    return list(reversed(found))


def _version_note(deployment: Deployment) -> list[int]:
    return [deployment.version - 1, deployment.version]


def _record_part_edit(
    *,
    deployment: Deployment,
    action: str,
    object_repr: str,
    changes: dict[str, Any],
    actor,
    ip: str | None,
    bump_version: bool,
) -> None:
    """Count a change to an override or key as an edit of its deployment, and audit it."""
    if bump_version:
        claim_version(deployment=deployment, actor=actor)
    changes["version"] = _version_note(deployment)
    audit.record(
        action=action,
        actor=actor,
        team=deployment.team_id,
        obj=deployment,
        object_repr=object_repr,
        changes=changes,
        ip=ip,
    )


# --- Teams and memberships ----------------------------------------------------------------------


def create_team(*, name: str, slug: str, actor=None, ip: str | None = None, **fields) -> Team:
    """Create a team; a signed-in creator becomes its owner."""
    with transaction.atomic():
        team = Team(name=name, slug=slug, **fields)
        team.full_clean()
        team.save()
        audit.record(
            action="team.create",
            actor=actor,
            team=team,
            obj=team,
            changes={"name": [None, team.name], "slug": [None, team.slug]},
            ip=ip,
        )
        if _actor(actor) is not None:
            add_membership(team=team, user=actor, role=Role.OWNER, actor=actor, ip=ip)
    return team


def save_team(*, team: Team, actor=None, ip: str | None = None) -> Team:
    """Save changes to an existing team and record the field diff."""
    with transaction.atomic():
        before = audit.snapshot(Team.objects.get(pk=team.pk), exclude=("created_at",))
        team.full_clean()
        team.save()
        diff = audit.field_diff(before, audit.snapshot(team, exclude=("created_at",)))
        if diff:
            audit.record(
                action="team.change", actor=actor, team=team, obj=team, changes=diff, ip=ip
            )
    return team


def delete_team(*, team: Team, actor=None, ip: str | None = None) -> None:
    """Delete a team without deployments (they are protected), recording it."""
    with transaction.atomic():
        audit.record(
            action="team.delete",
            actor=actor,
            obj=team,
            changes={"name": [team.name, None], "slug": [team.slug, None]},
            ip=ip,
        )
        team.delete()


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


def add_membership(*, team: Team, user, role: str, actor=None, ip: str | None = None) -> Membership:
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
            actor=actor,
            team=team,
            obj=membership,
            changes={"user": user.get_username(), "role": [None, role]},
            ip=ip,
        )
    return membership


def change_membership(
    *, membership: Membership, role: str, actor=None, ip: str | None = None
) -> Membership:
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
            actor=actor,
            team=stored.team_id,
            obj=stored,
            changes={"user": stored.user.get_username(), "role": [old, role]},
            ip=ip,
        )
    membership.role = role
    return stored


def remove_membership(*, membership: Membership, actor=None, ip: str | None = None) -> None:
    """Remove a member; a team never loses its last owner."""
    with transaction.atomic():
        stored = Membership.objects.select_for_update().get(pk=membership.pk)
        check_keeps_an_owner(membership=stored)
        user = stored.user
        audit.record(
            action="membership.remove",
            actor=actor,
            team=stored.team_id,
            obj=stored,
            changes={"user": user.get_username(), "role": [stored.role, None]},
            ip=ip,
        )
        stored.delete()
        # Staff status only exists to let members sign in; without a team there is nothing to see.
        if not user.is_superuser and user.is_staff and not user.memberships.exists():
            user.is_staff = False
            user.save(update_fields=["is_staff"])
        clear_cache(user)


def find_user(username: str):
    """Return the user called username, or raise ValidationError naming the field."""
    User = get_user_model()
    try:
        return User.objects.get(**{User.USERNAME_FIELD: username})
    except User.DoesNotExist:
        raise ValidationError(
            {
                "username": ValidationError(
                    _("No account is called %(name)s; ask a console administrator to create it."),
                    code="invalid",
                    params={"name": username},
                )
            }
        ) from None


# --- Deployments --------------------------------------------------------------------------------


def deployment_snapshot(deployment: Deployment) -> dict[str, Any]:
    """Return the tracked field values of deployment, with the team as its slug."""
    values = audit.snapshot(deployment, exclude=_UNTRACKED)
    if deployment.team_id is not None:
        values["team"] = Team.objects.values_list("slug", flat=True).get(pk=deployment.team_id)
    return values


def save_deployment(
    *,
    deployment: Deployment,
    actor=None,
    expected_version: int | None = None,
    action: str | None = None,
    ip: str | None = None,
) -> Deployment:
    """Validate and save deployment, moving its version on and recording the field diff.

    With expected_version, an update based on an older version raises StaleVersion and
    nothing is written.
    """
    deployment.full_clean()
    with transaction.atomic():
        if deployment.pk is None:
            deployment.created_by = deployment.updated_by = _actor(actor)
            deployment.version = 1
            deployment.save()
            after = deployment_snapshot(deployment)
            changes = {name: [None, value] for name, value in after.items()}
            changes["version"] = [None, 1]
            audit.record(
                action=action or "deployment.create",
                actor=actor,
                team=deployment.team_id,
                obj=deployment,
                changes=changes,
                ip=ip,
            )
            return deployment
        stored = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if expected_version is not None and stored.version != expected_version:
            raise StaleVersion(deployment=stored, loaded_version=expected_version)
        diff = audit.field_diff(deployment_snapshot(stored), deployment_snapshot(deployment))
        if not diff:
            # Nothing changed: the version stays, so nobody's open form goes stale for nothing.
            deployment.version = stored.version
            if action is not None:
                audit.record(
                    action=action, actor=actor, team=deployment.team_id, obj=deployment, ip=ip
                )
            return deployment
        claim_version(deployment=deployment, expected_version=stored.version, actor=actor)
        deployment.updated_by = _actor(actor)
        deployment.save()
        diff["version"] = _version_note(deployment)
        audit.record(
            action=action or "deployment.change",
            actor=actor,
            team=deployment.team_id,
            obj=deployment,
            changes=diff,
            ip=ip,
        )
    return deployment


def delete_deployment(*, deployment: Deployment, actor=None, ip: str | None = None) -> None:
    """Delete deployment with its overrides and keys, recording what it was."""
    with transaction.atomic():
        audit.record(
            action="deployment.delete",
            actor=actor,
            team=deployment.team_id,
            obj=deployment,
            changes={
                name: [value, None] for name, value in deployment_snapshot(deployment).items()
            },
            ip=ip,
        )
        deployment.delete()


# --- Route overrides ----------------------------------------------------------------------------


def _override_label(override: RouteOverride) -> str:
    return f"{override.deployment.slug}: {override.match} {override.path}"


def save_override(
    *, override: RouteOverride, actor=None, ip: str | None = None, bump_version: bool = True
) -> RouteOverride:
    """Validate and save a route override; counts as an edit of its deployment."""
    override.full_clean()
    with transaction.atomic():
        stored = RouteOverride.objects.filter(pk=override.pk).first() if override.pk else None
        before = audit.snapshot(stored, exclude=("deployment",)) if stored else {}
        override.save()
        diff = audit.field_diff(before, audit.snapshot(override, exclude=("deployment",)))
        diff.pop("id", None)
        if not diff:
            return override
        deployment = override.deployment
        _record_part_edit(
            deployment=deployment,
            action="override.change" if stored else "override.create",
            object_repr=_override_label(override),
            changes=diff,
            actor=actor,
            ip=ip,
            bump_version=bump_version,
        )
    return override


def delete_override(
    *, override: RouteOverride, actor=None, ip: str | None = None, bump_version: bool = True
) -> None:
    """Delete a route override; counts as an edit of its deployment."""
    with transaction.atomic():
        deployment = override.deployment
        label = _override_label(override)
        before = audit.snapshot(override, exclude=("deployment", "id"))
        override.delete()
        _record_part_edit(
            deployment=deployment,
            action="override.delete",
            object_repr=label,
            changes={name: [value, None] for name, value in before.items()},
            actor=actor,
            ip=ip,
            bump_version=bump_version,
        )


def replace_overrides(
    *, deployment: Deployment, overrides: Iterable[RouteOverride], actor=None, ip: str | None = None
) -> None:
    """Replace every override of deployment with overrides (already validated), in order."""
    for existing in list(deployment.overrides.all()):
        delete_override(override=existing, actor=actor, ip=ip, bump_version=False)
    for override in overrides:
        override.deployment = deployment
        save_override(override=override, actor=actor, ip=ip, bump_version=False)


# --- Keys ---------------------------------------------------------------------------------------


def _role_label(role: str) -> str:
    return str(keyring.ROLE_LABELS.get(role, role))


def _key_label(key: Key) -> str:
    label = f" ({key.label})" if key.label else ""
    return f"{key.deployment.slug}: {_role_label(key.role)}{label}"


def check_key(
    *,
    deployment: Deployment,
    role: str,
    secret: str,
    custom_format: bool = False,
    replacing: Key | None = None,
    ignore: Iterable[int] = (),
) -> list[keyring.Refusal]:
    """Return every rule that storing secret as role in deployment breaks (empty when none).

    Besides the role's shape rules: the same secret may not be stored twice in one deployment
    (fingerprints are compared, nothing is decrypted), and single-role keys are unique.
    ``ignore`` lists key ids being deleted in the same edit.
    """
    problems = keyring.check_shape(role, secret, custom_format=custom_format)
    if deployment.pk is None:
        return problems
    label = _role_label(role)
    skip = {*ignore, *([replacing.pk] if replacing is not None and replacing.pk else [])}
    fingerprint = keyring.fingerprint(secret)
    for other in deployment.keys.filter(fingerprint=fingerprint).exclude(pk__in=skip):
        if other.role == role:
            message = gettext(
                "%(role)s: this secret is already stored as another %(role)s of this deployment"
                "%(label)s."
            ) % {"role": label, "label": f" ({other.label})" if other.label else ""}
        else:
            message = gettext(
                "%(role)s: this secret is already stored as the %(other)s of this deployment. "
                "Do not mix the three keys: each role needs its own secret."
            ) % {"role": label, "other": _role_label(other.role)}
        problems.append(keyring.Refusal("reuse", message))
    if role in Key.SINGLE_ROLES and (replacing is None or replacing.role != role):
        if deployment.keys.filter(role=role).exclude(pk__in=skip).exists():
            problems.append(
                keyring.Refusal(
                    "single_role",
                    gettext(
                        "%(role)s: a deployment holds only one %(role)s; give the existing key a "
                        "new secret to rotate it."
                    )
                    % {"role": label},
                )
            )
    return problems


def _refusal_error(problems: list[keyring.Refusal]) -> ValidationError:
    return ValidationError({"secret": [ValidationError(p.message, code=p.code) for p in problems]})


def save_key(
    *,
    key: Key,
    secret: str | None = None,
    actor=None,
    ip: str | None = None,
    reason: str = "admin",
    bump_version: bool = True,
) -> Key:
    """Validate and save key; a new secret for an existing key is a recorded rotation.

    ``secret=None`` keeps the stored secret (only the label or custom format change). Refusals
    raise ValidationError on the ``secret`` field, each naming the rule and the role.
    """
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=key.deployment_id)
        key.deployment = deployment
        stored = Key.objects.filter(pk=key.pk).first() if key.pk else None
        if stored is not None and stored.role != key.role:
            raise ValidationError(
                {
                    "role": ValidationError(
                        _(
                            "The role of a stored key cannot change; add a new key "
                            "and delete this one."
                        ),
                        code="invalid",
                    )
                }
            )
        if secret is None and stored is None:
            raise ValidationError(
                {"secret": ValidationError(_("A new key needs its secret."), code="required")}
            )
        if secret is not None:
            problems = check_key(
                deployment=deployment,
                role=key.role,
                secret=secret,
                custom_format=key.custom_format,
                replacing=stored,
            )
            if problems:
                raise _refusal_error(problems)
        elif stored.custom_format and not key.custom_format:
            # Turning the custom-format allowance off must not leave a key its role refuses.
            problems = keyring.check_shape(key.role, stored.reveal(), custom_format=False)
            if problems:
                raise _refusal_error(problems)

        changes: dict[str, Any] = {"role": key.role}
        action = "key.change"
        if stored is None:
            key.set_secret(secret)
            key.created_by = _actor(actor)
            action = "key.create"
            changes["secret"] = audit.CHANGED
        elif secret is not None and keyring.fingerprint(secret) != stored.fingerprint:
            KeyRotation.objects.create(
                key=stored,
                previous_fingerprint=stored.fingerprint,
                previous_last4=stored.last4,
                rotated_by=_actor(actor),
                reason=reason,
            )
            key.set_secret(secret)
            key.rotated_at = timezone.now()
            key.rotated_by = _actor(actor)
            action = "key.rotate"
            changes["secret"] = audit.CHANGED
        for name in ("label", "custom_format"):
            old = getattr(stored, name) if stored is not None else None
            if old != getattr(key, name):
                changes[name] = [old, getattr(key, name)]
        if stored is not None and len(changes) == 1:
            return stored
        try:
            with transaction.atomic():
                key.save()
        except IntegrityError:
            # A concurrent save took the single-role slot or stored the same secret.
            raise _refusal_error(
                check_key(
                    deployment=deployment,
                    role=key.role,
                    secret=secret or "",
                    custom_format=key.custom_format,
                    replacing=stored,
                )
                or [keyring.Refusal("conflict", gettext("The key changed meanwhile; try again."))]
            ) from None
        _record_part_edit(
            deployment=deployment,
            action=action,
            object_repr=_key_label(key),
            changes=changes,
            actor=actor,
            ip=ip,
            bump_version=bump_version,
        )
    return key


def set_key(
    *,
    deployment: Deployment,
    role: str,
    secret: str,
    label: str = "",
    custom_format: bool = False,
    actor=None,
    ip: str | None = None,
    reason: str = "set_key",
) -> Key:
    """Store secret as role: replace the single-role key, or the API key with the same label.

    Any other API key is added. Replacing a secret is a rotation and is recorded.
    """
    if role not in keyring.ROLE_LABELS:
        raise ValidationError(
            {
                "role": ValidationError(
                    _("Unknown key role %(role)s; use one of %(roles)s."),
                    code="invalid",
                    params={"role": role, "roles": ", ".join(keyring.ROLE_LABELS)},
                )
            }
        )
    with transaction.atomic():
        Deployment.objects.select_for_update().filter(pk=deployment.pk).first()
        key = None
        if role in Key.SINGLE_ROLES:
            key = deployment.keys.filter(role=role).first()
        elif label:
            key = deployment.keys.filter(role=role, label=label).order_by("id").first()
        if key is None:
            key = Key(deployment=deployment, role=role, label=label)
        elif label:
            key.label = label
        key.custom_format = custom_format
        return save_key(key=key, secret=secret, actor=actor, ip=ip, reason=reason)


def delete_key(*, key: Key, actor=None, ip: str | None = None, bump_version: bool = True) -> None:
    """Delete a key; counts as an edit of its deployment. The secret is gone for good."""
    with transaction.atomic():
        deployment = key.deployment
        label = _key_label(key)
        changes: dict[str, Any] = {"role": key.role, "secret": audit.CHANGED}
        key.delete()
        _record_part_edit(
            deployment=deployment,
            action="key.delete",
            object_repr=label,
            changes=changes,
            actor=actor,
            ip=ip,
            bump_version=bump_version,
        )
