"""Notifications in the admin: channels (owners manage, operators test, viewers read masked) and
every delivery attempt, per channel and per run.

A channel's target is write-only: pages show ``target_masked`` only, a blank target on a change
keeps the stored one, and it never reaches an error report. "Send test notification" only
queues a delivery: the task worker sends it.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Max, Q, QuerySet
from django.db.models.fields.related import ForeignKey, ManyToManyField
from django.forms import ModelChoiceField, ModelMultipleChoiceField
from django.http import HttpRequest
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timezone import localtime
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from routes import tasks
from routes.admin.bulk import refuse_any
from routes.admin.options import (
    ScopedAdmin,
    SecretFormsAdmin,
    VisibleTeamFilter,
    delete_selected,
)
from routes.admin.verification import status_badge
from routes.alerts import channels, events
from routes.models import Deployment, NotificationChannel, NotificationDelivery
from routes.permissions import Action, can, teams_where

Result = NotificationDelivery.Result
# Badge colours of console.css, by delivery result.
RESULT_BADGE: dict[str, str] = {
    Result.PENDING: "queued",
    Result.SENDING: "running",
    Result.SENT: "passed",
    Result.RETRIED: "error",
    Result.FAILED: "failed",
}
RECENT_DELIVERIES = 10
# What the delivery list and a delivery's page show of each attempt.
DELIVERY_COLUMNS = (
    "channel",
    "deployment",
    "run_link",
    "event",
    "attempt",
    "result_badge",
    "response_code",
    "error",
)
# Channel targets are secrets like keys: whoever manages a team's keys manages its channels.
MANAGE = Action.MANAGE_KEYS


def _when(value: Any) -> str:
    return date_format(localtime(value), "Y-m-d H:i:s") if value else "—"


def result_badge(delivery: NotificationDelivery) -> SafeString:
    """Return the delivery's result as a coloured badge."""
    return status_badge(RESULT_BADGE.get(delivery.result, "queued"), delivery.get_result_display())


def deliveries_url(**query: int) -> str:
    """Return the delivery list filtered by channel= and/or run= ids."""
    params = "&".join(f"{name}={value}" for name, value in query.items())
    return reverse("admin:routes_notificationdelivery_changelist") + (
        f"?{params}" if params else ""
    )


# --- channels ---------------------------------------------------------------------------------


class ChannelForm(forms.ModelForm):
    """A channel with a write-only target, checked by routes.alerts.channels."""

    target = forms.CharField(
        label=_("target"),
        required=False,
        strip=True,
        max_length=channels.MAX_TARGET_LENGTH,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_(
            "Email: an address such as ops@example.com. Webhook: a URL such as "
            "https://hooks.example.com/console, which receives a JSON POST. Apprise: a URL such "
            "as slack://TokenA/TokenB/TokenC or ntfys://ntfy.sh/ops-alerts. Write-only: stored "
            "encrypted and shown masked; leave blank to keep the stored target."
        ),
    )

    class Meta:
        model = NotificationChannel
        fields = (
            "team",
            "name",
            "kind",
            "all_deployments",
            "deployments",
            "remind_every_hours",
            "enabled",
        )

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]  # BaseModelForm's hook, missing in the stubs
        deployments = list(self.cleaned_data.get("deployments") or [])
        target = self.cleaned_data.get("target") or None
        if self.instance.team_id is None:
            return  # the team field has its own error
        for field, errors in channels.channel_errors(self.instance, target, deployments).items():
            if field in self.fields and field not in self.errors:
                self.add_error(field, errors)
            elif field not in self.fields:
                self.add_error(None, errors)

    def validate_unique(self) -> None:
        """Leave the name and the constraints to channel_errors, which names the field."""


@admin.register(NotificationChannel)
class NotificationChannelAdmin(SecretFormsAdmin):
    # SecretFormsAdmin keeps the POSTed target out of Django's error reports.
    form = ChannelForm
    roles = {
        "view": Action.VIEW,
        "add": MANAGE,
        "change": MANAGE,
        "delete": MANAGE,
        "test": Action.VERIFY,
    }
    list_display = (
        "name",
        "team",
        "kind",
        "target_masked",
        "coverage",
        "remind_every_hours",
        "enabled",
        "last_delivery",
    )
    list_filter = (("team", VisibleTeamFilter), "kind", "enabled")
    list_select_related = ("team",)
    search_fields = ("name", "team__slug", "team__name")
    filter_horizontal = ("deployments",)
    actions = (delete_selected, "send_test_notification")
    readonly_fields = ("target_masked", "created_at", "created_by", "recent_deliveries")

    def get_queryset(self, request: HttpRequest) -> QuerySet[NotificationChannel]:
        """Return the channels of the user's teams, with their deployments and last delivery."""
        return (
            super()
            .get_queryset(request)
            .filter(team__in=teams_where(request.user, Action.VIEW))
            .prefetch_related("deployments")
            .annotate(last_delivery_at=Max("deliveries__created_at"))
        )

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """Return the form's fields; the target input only for those who may change it."""
        editable = self.has_change_permission(request, obj) if obj else True
        target = ("target_masked", "target") if obj and editable else ("target",)
        main = ("team", "name", "kind", *(target if editable else ("target_masked",)))
        fieldsets: list[tuple[Any, dict[str, Any]]] = [
            (None, {"fields": main}),
            (_("Deployments"), {"fields": ("all_deployments", "deployments")}),
            (_("Sending"), {"fields": ("remind_every_hours", "enabled")}),
        ]
        if obj is not None:
            fieldsets.append(
                (_("History"), {"fields": ("created_at", "created_by", "recent_deliveries")})
            )
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Return the read-only fields; a channel's team is fixed once it exists."""
        fields = tuple(self.readonly_fields)
        return ("team", *fields) if obj is not None else fields

    def formfield_for_foreignkey(
        self, db_field: ForeignKey[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField[Any] | None:
        """Offer only the teams whose channels the user manages."""
        if db_field.name == "team":
            kwargs["queryset"] = teams_where(request.user, MANAGE)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(
        self, db_field: ManyToManyField[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> ModelMultipleChoiceField[Any] | None:
        """Offer only deployments of those teams (the form checks they are the channel's)."""
        if db_field.name == "deployments":
            kwargs["queryset"] = Deployment.objects.filter(
                team__in=teams_where(request.user, MANAGE)
            ).order_by("slug")
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_model(
        self, request: HttpRequest, obj: NotificationChannel, form: Any, change: bool
    ) -> None:
        """Store the channel through the workflow (validation, encryption, audit trail)."""
        channels.save_channel(
            channel=obj,
            target=form.cleaned_data.get("target") or None,
            deployments=form.cleaned_data.get("deployments") or [],
        )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Do nothing: save_channel stored the deployments with the channel."""

    def delete_model(self, request: HttpRequest, obj: NotificationChannel) -> None:
        """Delete through the workflow, recorded in the audit trail."""
        channels.delete_channel(channel=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Delete each channel through the workflow."""
        for channel in queryset:
            channels.delete_channel(channel=channel)

    @admin.display(description=_("deployments"))
    def coverage(self, obj: NotificationChannel) -> str:
        if obj.all_deployments:
            return gettext("all")
        return ", ".join(d.slug for d in obj.deployments.all()) or "—"

    @admin.display(description=_("last delivery"), ordering="last_delivery_at")
    def last_delivery(self, obj: NotificationChannel) -> str:
        return _when(getattr(obj, "last_delivery_at", None))

    @admin.display(description=_("recent deliveries"))
    def recent_deliveries(self, obj: NotificationChannel) -> SafeString | str:
        if obj.pk is None:
            return "—"
        rows = list(obj.deliveries.select_related("deployment")[:RECENT_DELIVERIES])
        link = format_html(
            '<a href="{}">{}</a>', deliveries_url(channel=obj.pk), gettext("All deliveries")
        )
        if not rows:
            return format_html("{} · {}", gettext("None yet."), link)
        lines = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _when(d.created_at),
                    d.get_event_display(),
                    d.deployment.slug if d.deployment else "—",
                    d.attempt,
                    result_badge(d),
                    d.error or "",
                )
                for d in rows
            ),
        )
        return format_html("<table>{}</table>{}", lines, link)

    @admin.action(description=_("Send test notification"), permissions=["test"])
    def send_test_notification(
        self, request: HttpRequest, queryset: QuerySet[NotificationChannel]
    ) -> None:
        """Queue a test notification to each selected channel the user may test."""
        chosen = list(queryset.select_related("team"))
        refused = [c.name for c in chosen if not can(request.user, Action.VERIFY, c.team_id)]
        message = gettext("You may not test %(channels)s; nothing was sent.")
        if refuse_any(self, request, refused, message=message, key="channels"):
            return
        for channel in chosen:
            tasks.queue_delivery(events.create_test_delivery(channel=channel).pk)
        self.message_user(
            request,
            gettext(
                "Test notification queued for %(n)d channel(s); the worker sends it, and its "
                "result appears under Notification deliveries."
            )
            % {"n": len(chosen)},
            messages.SUCCESS,
        )


# --- deliveries -------------------------------------------------------------------------------


class IdFilter(admin.SimpleListFilter):
    """A filter by the id of a related row given in the URL (?channel=3, ?run=12)."""

    field = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """Return the related rows the user can see that have deliveries, newest first."""
        return []

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """Return the deliveries of the row named in the URL (an id that is no number: none)."""
        value = self.value()
        if value is None:
            return queryset
        if not value.isdigit():
            return queryset.none()
        return queryset.filter(**{f"{self.field}_id": int(value)})


class ChannelFilter(IdFilter):
    title = _("channel")
    parameter_name = "channel"
    field = "channel"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """Return the channels of the user's teams."""
        visible = NotificationChannel.objects.filter(
            team__in=teams_where(request.user, Action.VIEW)
        ).select_related("team")
        return [(str(c.pk), f"{c.team.slug}: {c.name}") for c in visible]


class RunFilter(IdFilter):
    title = _("run")
    parameter_name = "run"
    field = "run"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """Return the newest runs with deliveries (any other run id works in the URL too)."""
        ids = (
            model_admin.get_queryset(request)
            .exclude(run=None)
            .order_by("-run_id")
            .values_list("run_id", "deployment__slug")
            .distinct()[:20]
        )
        return [(str(run_id), f"#{run_id} {slug}") for run_id, slug in ids]


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(ScopedAdmin):
    roles = {"view": Action.VIEW}
    team_path = "channel__team"
    list_display = ("created_at", *DELIVERY_COLUMNS)
    list_filter = (ChannelFilter, RunFilter, "event", "result")
    list_select_related = ("channel", "deployment")
    search_fields = ("channel__name", "deployment__slug")
    fields = (*DELIVERY_COLUMNS, "created_at", "finished_at")
    readonly_fields = fields
    actions = None

    def get_queryset(self, request: HttpRequest) -> QuerySet[NotificationDelivery]:
        """Return the deliveries of channels of the user's teams."""
        visible = teams_where(request.user, Action.VIEW)
        return (
            super()
            .get_queryset(request)
            .filter(Q(channel__team__in=visible))
            .select_related("channel", "deployment")
        )

    @admin.display(description=_("run"), ordering="run_id")
    def run_link(self, obj: NotificationDelivery) -> SafeString | str:
        if obj.run_id is None:
            return "—"
        url = reverse("admin:routes_verificationrun_change", args=[obj.run_id])
        return format_html('<a href="{}">#{}</a>', url, obj.run_id)

    @admin.display(description=_("result"), ordering="result")
    def result_badge(self, obj: NotificationDelivery) -> SafeString:
        return result_badge(obj)
