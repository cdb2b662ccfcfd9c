"""The audit trail in the admin: read-only, scoped to the viewer's teams, exportable.

Members see the events of their teams and their own (logins included); superusers see all.
Nobody deletes events here: pruning is the prune_audit command's job, and it records itself.
An export is recorded in the trail, so it is a POST (a button): a GET, which links, prefetching
and crawlers send, writes nothing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from routes import audit
from routes.admin.options import ConsoleAdmin, visible_events
from routes.audit import action_label
from routes.models import AuditEvent
from routes.permissions import Action

EXPORT_FIELDS = (
    "id",
    "created_at",
    "actor",
    "actor_id",
    "team",
    "team_id",
    "action",
    "object_type",
    "object_id",
    "object",
    "changes",
    "ip",
)
# Spreadsheets run cells that start with these as formulas; a failed login's username is
# attacker-chosen, so such cells are prefixed with a quote.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def event_row(event: AuditEvent) -> dict[str, Any]:
    """Return event as a plain dict in EXPORT_FIELDS order."""
    return {
        "id": event.pk,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_label,
        "actor_id": event.actor_id,
        "team": event.team.slug if event.team is not None else None,
        "team_id": event.team_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object": event.object_repr,
        "changes": event.changes,
        "ip": event.ip,
    }


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """Yield the CSV header and one line per event."""
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for event in events:
        row = event_row(event)
        yield writer.writerow([_csv_cell(row[name]) for name in EXPORT_FIELDS])


def jsonl_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """Yield one JSON object per line per event."""
    for event in events:
        yield json.dumps(event_row(event), sort_keys=False, ensure_ascii=False) + "\n"


class ValueFilter(admin.SimpleListFilter):
    """Filter events by one column, offering the values the user's events hold."""

    parameter_name: str

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        column = self.parameter_name
        values = (
            model_admin.get_queryset(request)
            .exclude(**{column: ""})
            .order_by(column)
            .values_list(column, flat=True)
            .distinct()
        )
        return [(value, value) for value in values]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent]
    ) -> QuerySet[AuditEvent]:
        value = self.value()
        return queryset.filter(**{self.parameter_name: value}) if value else queryset


class ObjectTypeFilter(ValueFilter):
    title = _("object type")
    parameter_name = "object_type"


class ActionFilter(ValueFilter):
    title = _("action")
    parameter_name = "action"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        named = [
            (value, action_label(value)) for value, _code in super().lookups(request, model_admin)
        ]
        return sorted(named, key=lambda choice: choice[1].lower())


@admin.register(AuditEvent)
class AuditEventAdmin(ConsoleAdmin):
    list_display = (
        "created_at",
        "actor_label",
        "action_name",
        "team",
        "object_type",
        "object_repr",
        "ip",
    )
    list_filter = (
        ("team", admin.RelatedOnlyFieldListFilter),
        ("actor", admin.RelatedOnlyFieldListFilter),
        ObjectTypeFilter,
        ActionFilter,
        "created_at",
    )
    list_select_related = ("team",)
    search_fields = ("actor_label", "action", "object_repr", "object_id", "ip")
    fields = (
        "created_at",
        "actor_label",
        "actor",
        "team",
        "action_detail",
        "object_type",
        "object_id",
        "object_repr",
        "changes_json",
        "ip",
    )
    readonly_fields = fields
    actions = ("export_csv", "export_jsonl")
    change_list_template = "admin/routes/audit/change_list.html"

    # Append-only: nobody adds, edits or deletes here, superusers included (prune_audit prunes).
    roles = {"view": Action.VIEW}

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        return visible_events(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Not by team alone: a team-less event (a sign-in) is readable by the user it is about.
        if obj is None:
            return super().has_view_permission(request)
        return self.has_module_permission(request) and (
            self.get_queryset(request).filter(pk=obj.pk).exists()
        )

    @admin.display(description=_("action"), ordering="action")
    def action_name(self, obj: AuditEvent) -> str:
        return action_label(obj.action)

    @admin.display(description=_("action"))
    def action_detail(self, obj: AuditEvent) -> str:
        return format_html(
            '{} <code class="console-muted">{}</code>', action_label(obj.action), obj.action
        )

    @admin.display(description=_("changes"))
    def changes_json(self, obj: AuditEvent) -> str:
        return json.dumps(obj.changes, indent=2, sort_keys=True, ensure_ascii=False)

    # --- export ---------------------------------------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "export.csv",
                wrap(self.export_view),
                {"fmt": "csv"},
                name="routes_auditevent_export_csv",
            ),
            path(
                "export.jsonl",
                wrap(self.export_view),
                {"fmt": "jsonl"},
                name="routes_auditevent_export_jsonl",
            ),
        ] + super().get_urls()

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        query = request.GET.urlencode()
        suffix = f"?{query}" if query else ""
        extra_context = {
            **(extra_context or {}),
            "export_csv_url": reverse("admin:routes_auditevent_export_csv") + suffix,
            "export_jsonl_url": reverse("admin:routes_auditevent_export_jsonl") + suffix,
        }
        return super().changelist_view(request, extra_context=extra_context)

    def export_view(self, request: HttpRequest, fmt: str) -> HttpResponseBase:
        """POST: export what the changelist shows with the same filters and search (all pages).

        The filters travel in the query string, as on the changelist; only the button's POST,
        which carries a CSRF token, exports and records the export.
        """
        if not self.has_view_permission(request):
            raise self.refusal(request, "view")
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest(_("Unknown filter in the export link."))
        queryset = changelist.get_queryset(request)
        return self._export(queryset, fmt, filters=request.GET.urlencode())

    @admin.action(description=_("Export selected events as CSV"))
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponseBase:
        return self._export(queryset, "csv", filters="selected")

    @admin.action(description=_("Export selected events as JSON lines"))
    def export_jsonl(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent]
    ) -> HttpResponseBase:
        return self._export(queryset, "jsonl", filters="selected")

    def _export(
        self, queryset: QuerySet[AuditEvent], fmt: str, *, filters: str
    ) -> HttpResponseBase:
        queryset = queryset.select_related("team").order_by("created_at", "id")
        count = queryset.count()
        recorded = audit.record(
            action="audit.export",
            changes={"format": fmt, "count": count, "filters": filters[:500]},
        )
        # The export shows the trail as it was when asked for, without its own record.
        queryset = queryset.filter(pk__lt=recorded.pk)
        events = queryset.iterator(chunk_size=500)
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        if fmt == "csv":
            response = StreamingHttpResponse(
                csv_lines(events), content_type="text/csv; charset=utf-8"
            )
        else:
            response = StreamingHttpResponse(
                jsonl_lines(events), content_type="application/x-ndjson; charset=utf-8"
            )
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
        response["Cache-Control"] = "no-store"
        return response
