"""The audit trail in the admin: read-only, scoped to the viewer's teams, exportable.

Members see the events of their teams and their own (logins included); superusers see all and
are the only ones who may delete (prune) events.
"""

import csv
import json
from collections.abc import Iterable, Iterator

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from routes import audit
from routes.audit import client_ip
from routes.models import AuditEvent
from routes.permissions import Action, has_any_membership, teams_where

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


def event_row(event: AuditEvent) -> dict:
    """Return event as a plain dict in EXPORT_FIELDS order."""
    return {
        "id": event.pk,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_label,
        "actor_id": event.actor_id,
        "team": event.team.slug if event.team_id else None,
        "team_id": event.team_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object": event.object_repr,
        "changes": event.changes,
        "ip": event.ip,
    }


def _csv_cell(value) -> str:
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


class ObjectTypeFilter(admin.SimpleListFilter):
    title = _("object type")
    parameter_name = "object_type"

    def lookups(self, request, model_admin):
        types = (
            model_admin.get_queryset(request)
            .exclude(object_type="")
            .order_by("object_type")
            .values_list("object_type", flat=True)
            .distinct()
        )
        return [(t, t) for t in types]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(object_type=self.value())
        return queryset


class ActionFilter(admin.SimpleListFilter):
    title = _("action")
    parameter_name = "action"

    def lookups(self, request, model_admin):
        actions = (
            model_admin.get_queryset(request)
            .order_by("action")
            .values_list("action", flat=True)
            .distinct()
        )
        return [(a, a) for a in actions]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(action=self.value())
        return queryset


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "actor_label",
        "action",
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
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "changes_json",
        "ip",
    )
    readonly_fields = fields
    actions = ("export_csv", "export_jsonl")
    change_list_template = "admin/routes/audit/change_list.html"

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        user = request.user
        if user.is_superuser:
            return qs
        return qs.filter(Q(team__in=teams_where(user, Action.VIEW)) | Q(actor=user))

    # Append-only: nobody adds or edits; only superusers delete (prune).
    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff and has_any_membership(request.user)

    def has_view_permission(self, request, obj=None):
        if not self.has_module_permission(request):
            return False
        return obj is None or self.get_queryset(request).filter(pk=obj.pk).exists()

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    @admin.display(description=_("changes"))
    def changes_json(self, obj):
        return json.dumps(obj.changes, indent=2, sort_keys=True, ensure_ascii=False)

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        self._record_prune(request, 1, [obj.pk])

    def delete_queryset(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        super().delete_queryset(request, queryset)
        self._record_prune(request, len(ids), ids)

    def _record_prune(self, request, count: int, ids: list[int]) -> None:
        # Pruning is itself recorded, so a gap in the trail always has an explanation.
        audit.record(
            action="audit.prune",
            actor=request.user,
            changes={"count": count, "ids": ids[:1000]},
            ip=client_ip(request),
        )

    # --- export ---------------------------------------------------------------------------
    def get_urls(self):
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

    def changelist_view(self, request, extra_context=None):
        query = request.GET.urlencode()
        suffix = f"?{query}" if query else ""
        extra_context = {
            **(extra_context or {}),
            "export_csv_url": reverse("admin:routes_auditevent_export_csv") + suffix,
            "export_jsonl_url": reverse("admin:routes_auditevent_export_jsonl") + suffix,
        }
        return super().changelist_view(request, extra_context=extra_context)

    def export_view(self, request, fmt):
        """Export what the changelist shows with the same filters and search (all pages)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest(_("Unknown filter in the export link."))
        queryset = changelist.get_queryset(request)
        return self._export(request, queryset, fmt, filters=request.GET.urlencode())

    @admin.action(description=_("Export selected events as CSV"))
    def export_csv(self, request, queryset):
        return self._export(request, queryset, "csv", filters="selected")

    @admin.action(description=_("Export selected events as JSON lines"))
    def export_jsonl(self, request, queryset):
        return self._export(request, queryset, "jsonl", filters="selected")

    def _export(self, request, queryset, fmt: str, *, filters: str):
        queryset = queryset.select_related("team").order_by("created_at", "id")
        count = queryset.count()
        recorded = audit.record(
            action="audit.export",
            actor=request.user,
            changes={"format": fmt, "count": count, "filters": filters[:500]},
            ip=client_ip(request),
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
