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
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet
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
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from routes import audit
from routes.admin.options import ConsoleAdmin, visible_events
from routes.admin.verification import BoundedCountPaginator
from routes.audit import ACTION_LABELS, action_label
from routes.models import AuditEvent, Membership, Team
from routes.permissions import Action, teams_where

if TYPE_CHECKING:
    from django.db.models.fields import Field
    from django_stubs_ext import StrOrPromise

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


# Every kind of object the trail records events about (audit.record's obj), as model labels.
RECORDED_MODELS = (
    "routes.Deployment",
    "routes.Key",
    "routes.Membership",
    "routes.NginxApply",
    "routes.NotificationChannel",
    "routes.Team",
    "routes.VerificationJob",
    "routes.VerificationRun",
    "auth.Group",
    settings.AUTH_USER_MODEL,
)
# A team or user filter lists at most this many; the one chosen is listed too, and the search
# box finds any actor by name.
MAX_FILTER_CHOICES = 50


class ObjectTypeFilter(admin.SimpleListFilter):
    """Filter by the kind of object, offering the constant list of what the trail records."""

    title = _("object type")
    parameter_name = "object_type"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        models = [apps.get_model(label) for label in RECORDED_MODELS]
        named = [(m._meta.model_name or "", str(capfirst(m._meta.verbose_name))) for m in models]
        return sorted(named, key=lambda choice: choice[1].lower())

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent]
    ) -> QuerySet[AuditEvent]:
        value = self.value()
        return queryset.filter(object_type=value) if value else queryset


class ActionFilter(admin.SimpleListFilter):
    """Filter by action, offering every action code the console records (ACTION_LABELS)."""

    title = _("action")
    parameter_name = "action"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        named = [(code, action_label(code)) for code in ACTION_LABELS]
        return sorted(named, key=lambda choice: choice[1].lower())

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent]
    ) -> QuerySet[AuditEvent]:
        value = self.value()
        return queryset.filter(action=value) if value else queryset


class BoundedRelatedFilter(admin.RelatedFieldListFilter):
    """A related filter listing at most MAX_FILTER_CHOICES candidates, plus the chosen one.

    Candidates come from the viewer's teams, never from a pass over the trail.
    """

    def candidates(self, request: HttpRequest) -> QuerySet[Any]:
        """Return the rows the filter may offer, ordered."""
        raise NotImplementedError

    def label(self, row: Any) -> str:
        """Return how a row reads in the filter."""
        return str(row)

    def field_choices(
        self, field: Field[Any, Any], request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, StrOrPromise]]:
        rows = self.candidates(request)
        found = list(rows[:MAX_FILTER_CHOICES])
        chosen = [v for v in (self.lookup_val or []) if str(v).isdigit()]
        listed = {row.pk for row in found}
        if chosen and not {int(v) for v in chosen} <= listed:
            found += [row for row in rows.filter(pk__in=chosen) if row.pk not in listed]
        return [(str(row.pk), self.label(row)) for row in found]


class TeamFilter(BoundedRelatedFilter):
    def candidates(self, request: HttpRequest) -> QuerySet[Team]:
        return teams_where(request.user, Action.VIEW).order_by("name", "pk")


class ActorFilter(BoundedRelatedFilter):
    def candidates(self, request: HttpRequest) -> QuerySet[Any]:
        users = get_user_model().objects.order_by("username", "pk")
        if request.user.is_superuser:
            return users
        # The members of the viewer's teams, and the viewer: whose events they can read.
        shared = Membership.objects.filter(
            user_id=OuterRef("pk"), team__in=teams_where(request.user, Action.VIEW)
        )
        return users.filter(Q(Exists(shared)) | Q(pk=request.user.pk))

    def label(self, row: Any) -> str:
        return row.get_username()


@admin.register(AuditEvent)
class AuditEventAdmin(ConsoleAdmin):
    list_display = (
        "created_at",
        "actor_name",
        "action_name",
        "team",
        "object_type",
        "object_name",
        "ip",
    )
    list_filter = (
        ("team", TeamFilter),
        ("actor", ActorFilter),
        ObjectTypeFilter,
        ActionFilter,
        "created_at",
    )
    list_select_related = ("team",)
    # Filters, the team scope and the page all read the newest rows of an index (AuditEvent's
    # indexes): neither a COUNT of the whole trail for "N total" nor facets (a COUNT per
    # choice) is worth a pass over every event, so the count stops at the paginator's bound.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = BoundedCountPaginator
    search_fields = ("actor_label", "action", "object_repr", "object_id", "ip")
    fields = (
        "created_at",
        "actor_name",
        "actor",
        "team",
        "action_detail",
        "object_type",
        "object_id",
        "object_name",
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

    @admin.display(description=_("actor"), ordering="actor_label")
    def actor_name(self, obj: AuditEvent) -> str:
        return obj.actor_text()

    @admin.display(description=_("action"), ordering="action")
    def action_name(self, obj: AuditEvent) -> str:
        return action_label(obj.action)

    @admin.display(description=_("action"))
    def action_detail(self, obj: AuditEvent) -> str:
        return format_html(
            '{} <code class="console-muted">{}</code>', action_label(obj.action), obj.action
        )

    @admin.display(description=_("object"), ordering="object_repr")
    def object_name(self, obj: AuditEvent) -> str:
        # Stored in English; key roles read in the viewer's language (the export keeps it).
        return obj.object_text()

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
