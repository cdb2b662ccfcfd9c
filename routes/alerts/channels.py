"""Notification channels: the three kinds, what a target must look like, masking, and saving.

A target is an email address, a webhook URL or an Apprise URL. URLs carry tokens, so a target is
stored like a key: encrypted with routes.keys, shown only masked (``target_masked``), never
logged, and every error a sender reports is redacted with the pieces secret_parts() names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils.translation import gettext as _

from routes import audit
from routes import keys as keyring
from routes import validators as v
from routes.alerts.models import MAX_REMIND_HOURS, NotificationChannel
from routes.context import current_actor
from routes.models import Deployment, Team

Kind = NotificationChannel.Kind
KINDS = tuple(Kind.values)
MAX_TARGET_LENGTH = 2000
# Below this many characters after the host, the last four would give most of it away.
MASK_SHOWS_LAST4_FROM = 12
# Pieces of a URL shorter than this are words such as "api" or "v1", not tokens.
MIN_SECRET_PART = 6
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")


# --- targets ----------------------------------------------------------------------------------


def _refuse(message: str, code: str = "invalid") -> ValidationError:
    return ValidationError(message, code=code)


def _check_webhook(target: str) -> None:
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https"):
        raise _refuse(_("A webhook URL starts with http:// or https://."), "scheme")
    # User and password are how some receivers take basic auth; the rest is checked as any URL
    # the console sends to (single-label Docker service names included).
    host_port = parts.netloc.rpartition("@")[2]
    if not host_port:
        raise _refuse(_("Give a URL such as https://hooks.example.com/console."))
    v.validate_url(target.replace(parts.netloc, host_port, 1))
    _check_host(parts.hostname or "")


def _check_host(host: str) -> None:
    if v.is_link_local(host) and not settings.CONSOLE_ALLOW_LINK_LOCAL:
        raise _refuse(
            _(
                "%(host)s is a link-local or cloud-metadata address; notifications are not sent "
                "there unless CONSOLE_ALLOW_LINK_LOCAL is on."
            )
            % {"host": host},
            "link_local",
        )


def _check_apprise(target: str) -> None:
    scheme = target.split("://", 1)[0] if "://" in target else ""
    if not scheme:
        raise _refuse(
            _("Give an Apprise URL such as slack://TokenA/TokenB/TokenC or ntfys://ntfy.sh/ops."),
            "scheme",
        )
    # Apprise logs the URL it could not parse; its logger is kept out of the console's logs
    # (console/settings.py LOGGING), so only this message is seen.
    plugin = apprise.Apprise.instantiate(target)
    if plugin is None:
        raise _refuse(
            _(
                "Apprise cannot use this %(scheme)s:// URL: the service is unknown or a part of "
                "the URL is missing (see the service's page in the Apprise wiki)."
            )
            % {"scheme": scheme},
            "unsupported",
        )
    _check_host(str(getattr(plugin, "host", "") or ""))


def validate_target(kind: str, target: str) -> None:
    """Raise ValidationError (never quoting the target) unless target can work for kind."""
    if kind not in KINDS:
        raise _refuse(
            _("Unknown kind %(kind)s: use one of %(kinds)s.")
            % {"kind": kind, "kinds": ", ".join(KINDS)},
            "kind",
        )
    if not target:
        raise _refuse(_("This field is required."), "required")
    if _FORBIDDEN.search(target):
        raise _refuse(_("A target may not contain spaces, line breaks or control characters."))
    if len(target) > MAX_TARGET_LENGTH:
        raise _refuse(
            _("A target is at most %(n)d characters long.") % {"n": MAX_TARGET_LENGTH}, "length"
        )
    if kind == Kind.EMAIL:
        try:
            validate_email(target)
        except ValidationError:
            raise _refuse(_("Give one email address, such as ops@example.com.")) from None
    elif kind == Kind.WEBHOOK:
        _check_webhook(target)
    else:
        _check_apprise(target)


def mask_target(kind: str, target: str) -> str:
    """Return target as pages show it: the address's domain, or a URL's scheme (and host)."""
    if kind == Kind.EMAIL:
        local, _at, domain = target.rpartition("@")
        return f"{local[:1]}•••@{domain}"
    parts = urlsplit(target)
    if kind == Kind.WEBHOOK:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        prefix = f"{parts.scheme}://{host}{port}/"
        rest = target.split(parts.netloc, 1)[1] if parts.netloc else ""
    else:
        # Apprise puts tokens anywhere, the host part included: only the scheme is shown.
        prefix = f"{parts.scheme}://"
        rest = target.split("://", 1)[1] if "://" in target else target
    rest = rest.rstrip("/")
    if not rest.strip("/"):
        return prefix
    last4 = keyring.last4(rest) if len(rest) >= MASK_SHOWS_LAST4_FROM else ""
    return prefix + keyring.masked(last4)


def secret_parts(kind: str, target: str) -> list[str]:
    """Return the pieces of target an error text must not contain (the target itself first)."""
    pieces = [target, unquote(target)]
    if kind != Kind.EMAIL:
        parts = urlsplit(target)
        pieces += [parts.path, parts.query, parts.fragment, parts.password or ""]
        pieces += [unquote(segment) for segment in parts.path.split("/")]
        pieces += [value for _name, value in parse_qsl(parts.query)]
        if kind == Kind.APPRISE:
            # Apprise URLs carry tokens in the host part too (tgram://BOT_TOKEN/CHAT).
            pieces += [parts.netloc, parts.username or "", parts.hostname or ""]
    return [p for p in dict.fromkeys(pieces) if len(p) >= MIN_SECRET_PART]


def default_name(channel: NotificationChannel) -> str:
    """Return a name for channel, given none: its kind and masked target, numbered if taken."""
    base = f"{channel.kind} {channel.target_masked}"[:94]
    taken = set(
        NotificationChannel.objects.filter(team_id=channel.team_id, name__startswith=base)
        .exclude(pk=channel.pk)
        .values_list("name", flat=True)
    )
    name, number = base, 2
    while name in taken:
        name, number = f"{base} ({number})", number + 1
    return name


# --- which channels hear about a deployment ----------------------------------------------------


def channels_for(deployment: Deployment) -> QuerySet[NotificationChannel]:
    """Return the enabled channels of the deployment's team that cover it."""
    return (
        NotificationChannel.objects.filter(team_id=deployment.team_id, enabled=True)
        .filter(Q(all_deployments=True) | Q(deployments=deployment))
        .distinct()
        .order_by("id")
    )


# --- saving -----------------------------------------------------------------------------------


def channel_errors(
    channel: NotificationChannel, target: str | None, deployments: list[Deployment]
) -> dict[str, list[ValidationError]]:
    """Return {field: errors} of storing channel with target (None: keep) and deployments."""
    errors: dict[str, list[ValidationError]] = {}

    def add(field: str, error: ValidationError) -> None:
        errors.setdefault(field, []).append(error)

    stored_kind = (
        NotificationChannel.objects.filter(pk=channel.pk).values_list("kind", flat=True).first()
        if channel.pk
        else None
    )
    if channel.kind not in KINDS:
        add("kind", _refuse(_("Use one of %(kinds)s.") % {"kinds": ", ".join(KINDS)}, "invalid"))
    elif target is not None:
        try:
            validate_target(channel.kind, target)
        except ValidationError as exc:
            add("target", exc)
    elif channel.pk is None:
        add("target", _refuse(_("This field is required."), "required"))
    elif stored_kind != channel.kind:
        add("target", _refuse(_("Give the target again: the kind changed."), "required"))
    outside = sorted(d.slug for d in deployments if d.team_id != channel.team_id)
    if outside:
        add(
            "deployments",
            _refuse(
                _("Not deployments of this channel's team: %(slugs)s.")
                % {"slugs": ", ".join(outside)},
                "team",
            ),
        )
    if not channel.all_deployments and not deployments:
        add(
            "deployments",
            _refuse(
                _("List at least one deployment, or let the channel cover all of them."),
                "required",
            ),
        )
    hours = channel.remind_every_hours
    if hours is not None and not 1 <= hours <= MAX_REMIND_HOURS:
        add(
            "remind_every_hours",
            _refuse(
                _("Give 1 to %(max)d hours, or leave empty for no reminders.")
                % {"max": MAX_REMIND_HOURS},
                "invalid",
            ),
        )
    if channel.name and len(channel.name) > 100:
        add("name", _refuse(_("A name is at most 100 characters long."), "length"))
    elif channel.name:
        taken = NotificationChannel.objects.filter(team_id=channel.team_id, name=channel.name)
        if taken.exclude(pk=channel.pk).exists():
            add(
                "name",
                _refuse(_("This team already has a channel with this name."), "unique"),
            )
    return errors


def _audit_state(channel: NotificationChannel, deployments: Iterable[Deployment]) -> dict[str, Any]:
    state = audit.snapshot(channel, exclude=("target_ciphertext",))
    state["deployments"] = ", ".join(sorted(d.slug for d in deployments))
    return state


def save_channel(
    *,
    channel: NotificationChannel,
    target: str | None = None,
    deployments: Iterable[Deployment] = (),
) -> NotificationChannel:
    """Validate and store channel for the acting user (target None keeps the stored one).

    Raise ValidationError naming each field and its reason; the target is never quoted.
    """
    listed = list(deployments)
    errors = channel_errors(channel, target, listed)
    if errors:
        raise ValidationError(errors)
    creating = channel.pk is None
    before: dict[str, Any] = {}
    if not creating:
        stored = NotificationChannel.objects.get(pk=channel.pk)
        before = _audit_state(stored, stored.deployments.all())
    if target is not None:
        channel.target_ciphertext = keyring.encrypt(target)
        channel.target_masked = mask_target(channel.kind, target)
    if not channel.name:
        channel.name = default_name(channel)
    if creating:
        channel.created_by = current_actor()
    with transaction.atomic():
        channel.save()
        channel.deployments.set([] if channel.all_deployments else listed)
        changes = audit.field_diff(before, _audit_state(channel, channel.deployments.all()))
        if target is not None and not creating:
            changes["target"] = audit.CHANGED
        audit.record(
            action="channel.create" if creating else "channel.change",
            team=channel.team_id,
            obj=channel,
            changes=changes,
        )
    return channel


def create_channel(
    *,
    team: Team,
    kind: str,
    target: str,
    name: str = "",
    deployments: Iterable[Deployment] = (),
    remind_every_hours: int | None = None,
    enabled: bool = True,
) -> NotificationChannel:
    """Store a new channel of team; it covers the listed deployments, or all without a list."""
    listed = list(deployments)
    channel = NotificationChannel(
        team=team,
        kind=kind,
        name=name,
        all_deployments=not listed,
        remind_every_hours=remind_every_hours,
        enabled=enabled,
    )
    return save_channel(channel=channel, target=target, deployments=listed)


def delete_channel(*, channel: NotificationChannel) -> None:
    """Delete channel and its deliveries, recorded in the audit trail."""
    with transaction.atomic():
        audit.record(
            action="channel.delete",
            team=channel.team_id,
            obj=channel,
            changes={"kind": channel.kind, "target": channel.target_masked},
        )
        channel.delete()


def reencrypt_targets() -> int:
    """Re-encrypt every channel target under the primary encryption key; return how many changed.

    For ``rotate_encryption_key``: a target under a key about to be dropped would become
    unreadable. Targets that no configured key decrypts are left as they are.
    """
    channels = NotificationChannel.objects.all()
    outcomes = [
        keyring.rotate_stored(channels, pk=pk, field="target_ciphertext", token=token)
        for pk, token in channels.values_list("pk", "target_ciphertext")
    ]
    return outcomes.count("rotated")
