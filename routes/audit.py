"""The audit trail: one function records an action; secrets appear only as "changed"."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from routes.context import current, current_actor
from routes.models import COMMAND_ACTOR, AuditEvent, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django_stubs_ext import StrOrPromise

# Field names whose values are never written to the trail.
SECRET_FIELDS = frozenset({"ciphertext", "secret", "password", "fingerprint"})
CHANGED = "changed"

# What each action code of the trail reads as; the code stays what is stored and exported.
ACTION_LABELS: dict[str, StrOrPromise] = {
    "audit.export": _("Audit trail exported"),
    "audit.prune": _("Audit trail pruned"),
    "channel.create": _("Notification channel added"),
    "channel.change": _("Notification channel changed"),
    "channel.delete": _("Notification channel deleted"),
    "channel.test": _("Notification channel tested"),
    "config.export": _("Nginx config exported"),
    "config.prune": _("Export history pruned"),
    "config.test": _("Nginx config tested"),
    "definitions.export": _("Definitions downloaded"),
    "deployment.create": _("Deployment created"),
    "deployment.change": _("Deployment changed"),
    "deployment.delete": _("Deployment deleted"),
    "deployment.import": _("Deployment imported"),
    "deployment.confirm_destination": _("Key destination confirmed"),
    "group.create": _("Group added"),
    "group.change": _("Group changed"),
    "group.delete": _("Group deleted"),
    "key.create": _("Key added"),
    "key.change": _("Key changed"),
    "key.rotate": _("Key rotated"),
    "key.delete": _("Key deleted"),
    "key.reveal": _("First-setup values revealed"),
    "key.test": _("Key tested"),
    "keys.reencrypt": _("Keys re-encrypted"),
    "login": _("Signed in"),
    "login.failed": _("Sign-in failed"),
    "logout": _("Signed out"),
    "membership.add": _("Member added"),
    "membership.change": _("Member's role changed"),
    "membership.remove": _("Member removed"),
    "nginx.apply": _("Nginx config applied"),
    "nginx.apply.rollback_failed": _("Nginx apply failed and could not be rolled back"),
    "otp.enrol": _("Two-factor device enrolled"),
    "otp.remove": _("Two-factor device removed"),
    "override.create": _("Route override added"),
    "override.change": _("Route override changed"),
    "override.delete": _("Route override deleted"),
    "team.create": _("Team created"),
    "team.change": _("Team changed"),
    "team.delete": _("Team deleted"),
    "user.create": _("User added"),
    "user.change": _("User changed"),
    "user.delete": _("User deleted"),
    "verification.run": _("Verification run"),
    "verification.prune": _("Verification history pruned"),
    "verification_job.create": _("Verification job created"),
    "verification_job.change": _("Verification job changed"),
    "verification_job.delete": _("Verification job deleted"),
}


def action_label(action: str) -> str:
    """Return what action reads as in the user's language; an unknown code reads as itself."""
    label = ACTION_LABELS.get(action)
    return str(label) if label is not None else action


def _plain(value: Any) -> Any:
    """Return value as JSON can store it: models and other objects as their text."""
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def field_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Return {field: [old, new]} for fields that differ; secret fields become "changed"."""
    diff: dict[str, Any] = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        diff[name] = CHANGED if name in SECRET_FIELDS else [_plain(old), _plain(new)]
    return diff


def snapshot(obj: models.Model, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the concrete field values of obj, for field_diff (secrets are kept out)."""
    values: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if field.name in exclude or field.name in SECRET_FIELDS:
            continue
        values[field.name] = _plain(getattr(obj, field.attname))
    return values


def record(
    *,
    action: str,
    team: Team | int | None = None,
    obj: models.Model | None = None,
    object_repr: str = "",
    changes: dict[str, Any] | None = None,
    actor: User | None = None,
    ip: str | None = None,
    actor_label: str = "",
) -> AuditEvent:
    """Append one event to the trail and return it.

    The actor and the address are whoever routes.context says is acting; ``actor`` and ``ip``
    name them instead where no request or command has set them (the task worker, login signals).
    """
    acting = current()
    if actor is None:
        actor = current_actor()
    elif not getattr(actor, "is_authenticated", False):
        actor = None
    # actor_label names an actor that is no user (e.g. an anonymous failed login).
    label = actor_label or (actor.get_username() if actor is not None else acting.label)
    team_id = team.pk if isinstance(team, Team) else team
    return AuditEvent.objects.create(
        actor=actor,
        actor_label=(label or COMMAND_ACTOR)[:150],
        team_id=team_id,
        action=action,
        object_type=(obj._meta.model_name or "") if obj is not None else "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=(object_repr or (str(obj) if obj is not None else ""))[:200],
        changes=changes or {},
        ip=ip if ip is not None else acting.ip,
    )


def _valid_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request: HttpRequest | None) -> str | None:
    """Return the client's IP: the TCP peer, or the X-Forwarded-For hop a trusted proxy saw."""
    if request is None:
        return None
    peer = _valid_ip(request.META.get("REMOTE_ADDR", ""))
    trusted = set(settings.CONSOLE_TRUSTED_PROXIES)
    if peer is None or peer not in trusted:
        return peer
    # Walk the header from the right: the rightmost address a trusted proxy did not add is the
    # client; anything further left was written by the client and could be forged.
    hops = [h for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        address = _valid_ip(hop)
        if address is None:
            return peer
        if address not in trusted:
            return address
    return peer
