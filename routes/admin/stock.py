"""Django's and third-party admins (users, groups, sign-in throttling, task results) on the trail.

Only superusers reach these admins: staff users hold no Django model permissions. Their changes
have no workflow of ours to record them, so each admin records its own additions, changes and
deletions in routes.audit where Django would write a LogEntry, and its "History" page shows that
trail: the console has one audit trail, and LogEntry is neither written nor read.

This module also decides, in one table, which of these sections the sidebar and the index list
for users who are not superusers, and gives their labels translations where the apps leave them
as plain English.
"""

from __future__ import annotations

from typing import Any

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Model
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import gettext_noop, pgettext_lazy
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_tasks_db.admin import DBTaskResultAdmin
from django_tasks_db.models import DBTaskResult

from routes import audit
from routes.admin.options import TrailAdmin
from routes.permissions import Action, can_somewhere

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


# --- Sidebar and index ----------------------------------------------------------------------

# Sections (model labels) that the sidebar and the index list for superusers only. Their pages
# stay where each admin's permissions allow them: every staff user still manages their own
# two-factor devices, from the "Two-factor" link in the header.
SUPERUSER_SECTIONS = frozenset(
    {
        "auth.group",
        "axes.accessattempt",
        "axes.accessfailurelog",
        "axes.accesslog",
        "django_tasks_database.dbtaskresult",
        "otp_totp.totpdevice",
    }
)
# Listed for superusers and for owners of some team (when Django's permissions let them in).
OWNER_SECTIONS = frozenset({"auth.user"})


def visible_sections(request: HttpRequest, app_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return app_list without the sections the user's role does not list; empty apps go."""
    user = request.user
    if user.is_superuser:
        return app_list
    hidden = set(SUPERUSER_SECTIONS)
    if not can_somewhere(user, Action.MANAGE_MEMBERS):
        hidden |= OWNER_SECTIONS
    shown = []
    for app in app_list:
        models = [m for m in app["models"] if m["model"]._meta.label_lower not in hidden]
        if models:
            shown.append({**app, "models": models})
    return shown


def list_sections_by_role(site: admin.AdminSite) -> None:
    """Make site's sidebar and index (not an app's own index page) list by visible_sections."""
    stock = site.get_app_list

    def get_app_list(request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        app_list = stock(request, app_label)
        # An app's own page (a breadcrumb's target) keeps what Django's permissions allow.
        return visible_sections(request, app_list) if app_label is None else app_list

    # The default site is one shared instance; replacing its class would need its own
    # AdminConfig in INSTALLED_APPS for one method.
    site.get_app_list = get_app_list  # type: ignore[method-assign]


# --- Labels these apps leave untranslated ---------------------------------------------------

APP_NAMES = {
    "axes": _("Sign-in throttling"),
    "django_tasks_database": _("Background tasks"),
}
# Only the labels change, never what migrations compare: a field's verbose_name is not in its
# deconstruction (_verbose_name is), and model names and help texts keep their English text.
MODEL_NAMES = {TOTPDevice: (_("TOTP device"), _("TOTP devices"))}
FIELD_LABELS: dict[type[Model], dict[str, Any]] = {
    TOTPDevice: {
        "name": (_("name"), _("The human-readable name of this device.")),
        "user": (_("user"), _("The user that this device belongs to.")),
        "confirmed": (_("confirmed"), _("Is this device ready for use?")),
        "created_at": (
            _("created at"),
            _("The date and time when this device was initially created in the system."),
        ),
        "last_used_at": (
            _("last used at"),
            _("The most recent date and time this device was used."),
        ),
    },
    DBTaskResult: {"id": (_("ID"), "")},
}
# Admin columns named by a method or a property without a translated description.
COLUMN_LABELS: dict[type[Any], dict[str, Any]] = {
    AccessAttemptAdmin: {"status": _("Status")},
    DBTaskResultAdmin: {
        "formatted_traceback": _("traceback"),
        "display_run_after": _("run after"),
    },
    DBTaskResult: {"task_name": _("task name")},
}
# Marked for translation in the apps' own code but not translated into Chinese by them: listed
# so that makemessages puts them into the console's catalogue, which Django consults first.
THIRD_PARTY_MSGIDS = (
    gettext_noop("User Agent"),
    gettext_noop("IP Address"),
    gettext_noop("Username"),
    gettext_noop("HTTP Accept"),
    gettext_noop("Path"),
    gettext_noop("Attempt Time"),
    gettext_noop("Access lock out"),
    gettext_noop("access failure"),
    gettext_noop("access failures"),
    gettext_noop("GET Data"),
    gettext_noop("POST Data"),
    gettext_noop("Failed Logins"),
    gettext_noop("access attempt"),
    gettext_noop("access attempts"),
    gettext_noop("Access Attempt"),
    gettext_noop("Expires At"),
    gettext_noop("The time when access attempt expires and is no longer valid."),
    gettext_noop("access attempt expiration"),
    gettext_noop("access attempt expirations"),
    gettext_noop("Logout Time"),
    gettext_noop("Session key hash (sha256)"),
    gettext_noop("access log"),
    gettext_noop("access logs"),
    gettext_noop("Locked Out"),
    gettext_noop("Form Data"),
    gettext_noop("Meta Data"),
    gettext_noop("Clean up expired attempts"),
    gettext_noop("Attempt Remaining"),
    gettext_noop("Not set"),
    gettext_noop("Task Result"),
    gettext_noop("Task Results"),
    gettext_noop("status"),
    gettext_noop("enqueued at"),
    gettext_noop("started at"),
    gettext_noop("finished at"),
    gettext_noop("args kwargs"),
    gettext_noop("priority"),
    gettext_noop("task path"),
    gettext_noop("worker id"),
    gettext_noop("queue name"),
    gettext_noop("backend name"),
    gettext_noop("return value"),
    gettext_noop("exception class path"),
    # django_tasks' TaskResultStatus labels, in their own context.
    pgettext_lazy("Task", "Ready"),
    pgettext_lazy("Task", "Running"),
    pgettext_lazy("Task", "Failed"),
    pgettext_lazy("Task", "Successful"),
)


def _set_column_label(owner: type[Any], name: str, label: Any) -> None:
    attr = owner.__dict__.get(name)
    if isinstance(attr, property) and attr.fget is not None:
        attr.fget.short_description = label  # type: ignore[attr-defined]
    elif callable(attr):
        attr.short_description = label


def name_stock_sections() -> None:
    """Give the sections, models, fields and columns above their translatable labels."""
    for label, name in APP_NAMES.items():
        apps.get_app_config(label).verbose_name = name
    for model, (singular, plural) in MODEL_NAMES.items():
        model._meta.verbose_name, model._meta.verbose_name_plural = singular, plural
    for model, fields in FIELD_LABELS.items():
        for field_name, (verbose_name, help_text) in fields.items():
            field = model._meta.get_field(field_name)
            field.verbose_name = verbose_name  # type: ignore[union-attr]
            if help_text:
                field.help_text = help_text  # type: ignore[union-attr]
    for owner, columns in COLUMN_LABELS.items():
        for column, label in columns.items():
            _set_column_label(owner, column, label)
