"""Django's and third-party admins (users, groups, sign-in throttling, task results) on the trail.

Only superusers reach these admins: staff users hold no Django model permissions. Their changes
have no workflow of ours to record them, so each admin records its own additions, changes and
deletions in routes.audit where Django would write a LogEntry, and its "History" page shows that
trail: the console has one audit trail, and LogEntry is neither written nor read.
"""

from __future__ import annotations

from typing import Any

from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Model
from django.http import HttpRequest
from django_tasks_db.models import DBTaskResult

from routes import audit
from routes.admin.options import TrailAdmin

STOCK_MODELS: tuple[type[Model], ...] = (
    get_user_model(),
    Group,
    AccessAttempt,
    AccessLog,
    AccessFailureLog,
    DBTaskResult,
)


def _fields(message: Any) -> list[str]:
    """Return the field labels named by Django's change message (never their values)."""
    if not isinstance(message, list):
        return []
    return [
        str(field)
        for entry in message
        if isinstance(entry, dict)
        for detail in entry.values()
        if isinstance(detail, dict)
        for field in detail.get("fields", ())
    ]


class RecordedAdmin(TrailAdmin):
    """Records what Django would write as a LogEntry in the audit trail instead."""

    def _record(self, verb: str, obj: Model, **changes: Any) -> None:
        audit.record(action=f"{self.opts.model_name}.{verb}", obj=obj, changes=changes)

    # Django ignores what these return, though the stubs ask for a LogEntry.
    def log_addition(self, request: HttpRequest, obj: Model, message: Any) -> None:  # type: ignore[override]
        """Record the addition of obj in the audit trail."""
        self._record("create", obj)

    def log_change(self, request: HttpRequest, obj: Model, message: Any) -> None:  # type: ignore[override]
        """Record a change of obj and the names of the fields it touched."""
        self._record("change", obj, fields=_fields(message))

    def log_deletion(self, request: HttpRequest, obj: Model, object_repr: str) -> None:
        """Record the deletion of obj in the audit trail."""
        self._record("delete", obj)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> None:  # type: ignore[override]
        """Record the deletion of each object in the audit trail."""
        for obj in queryset:
            self._record("delete", obj)


def record_stock_admins(site: admin.AdminSite) -> None:
    """Re-register each stock admin of site as itself plus RecordedAdmin."""
    for model in STOCK_MODELS:
        if not site.is_registered(model):
            continue
        stock = type(site.get_model_admin(model))
        if issubclass(stock, RecordedAdmin):
            continue
        site.unregister(model)
        site.register(model, type(stock.__name__, (RecordedAdmin, stock), {}))
