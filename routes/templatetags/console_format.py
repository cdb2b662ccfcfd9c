"""Display filters of the console: ``{{ when|ago }}`` and ``{{ event.action|audit_action }}``."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.timesince import timesince
from django.utils.translation import gettext

from routes.audit import action_label

register = template.Library()

# Under a minute Django's timesince says "0 minutes".
JUST_NOW = timedelta(minutes=1)


@register.filter
def ago(value: datetime | None) -> str:
    """Return "just now" under a minute (or a little ahead: clock skew), else "3 hours ago"."""
    if value is None:
        return ""
    now = timezone.now() if timezone.is_aware(value) else datetime.now()
    if now - value < JUST_NOW:
        return gettext("just now")
    return gettext("%(when)s ago") % {"when": timesince(value, now)}


@register.filter
def audit_action(action: str) -> str:
    """Return what an audit action code reads as (routes.audit.ACTION_LABELS)."""
    return action_label(action)
