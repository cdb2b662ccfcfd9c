"""Apply history in the admin: read-only, scoped to the user's teams, and its live steps as JSON.

Applies are written by `manage.py apply_nginx` and the worker (the Deploy button), never by
hand. An apply of deployments of several teams (``apply_nginx --all``) has no team: only
superusers see it.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from routes.admin.options import ProgressAdmin
from routes.admin.verification import DeploymentFilter, status_badge
from routes.models import NginxApply
from routes.nginx.apply_report import progress, step_label
from routes.permissions import Action, teams_where

# Result -> the badge class of console.css that colours it.
BADGES: dict[str, str] = {
    NginxApply.Result.APPLIED: "passed",
    NginxApply.Result.TEST_FAILED: "failed",
    NginxApply.Result.ROLLED_BACK: "failed",
    NginxApply.Result.ROLLBACK_FAILED: "error",
    NginxApply.Result.REFUSED: "error",
    NginxApply.Result.INTERRUPTED: "error",
    NginxApply.Result.RUNNING: "running",
    NginxApply.Result.QUEUED: "queued",
}


def result_badge(record: NginxApply) -> SafeString:
    """Return the apply's result as a coloured badge."""
    return status_badge(BADGES.get(record.result, ""), record.get_result_display())


class AppliedDeploymentFilter(DeploymentFilter):
    """The run history's deployment filter, for applies (?deployment=<id>)."""

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(deployments__id=int(value))
        return queryset


@admin.register(NginxApply)
class NginxApplyAdmin(ProgressAdmin):
    list_display = (
        "id",
        "deployment_slugs",
        "result_badge",
        "source",
        "started_label",
        "created_at",
        "short_hash",
        "short_previous",
    )
    list_display_links = ("id", "deployment_slugs")
    list_filter = (
        AppliedDeploymentFilter,
        "result",
        "source",
        ("created_at", admin.DateFieldListFilter),
    )
    list_select_related = ("team",)
    date_hierarchy = "created_at"
    fields = (
        "deployment_slugs",
        "result_badge",
        "reason",
        "source",
        "started_label",
        "created_at",
        "started_at",
        "finished_at",
        "directory",
        "hashes",
        "runs_links",
        "regressions",
        "steps_table",
        "output",
    )
    readonly_fields = fields
    actions = None
    missing_message = _("No such apply in your teams.")
    team_path = "team"
    roles = {"view": Action.VIEW}

    def get_queryset(self, request: HttpRequest) -> QuerySet[NginxApply]:
        queryset = super().get_queryset(request).select_related("team")
        if request.user.is_superuser:
            return queryset
        return queryset.filter(team__in=teams_where(request.user, Action.VIEW))

    def progress_data(self, request: HttpRequest, record: NginxApply) -> dict[str, Any]:
        """The small JSON the config page polls while an apply runs."""
        data = progress(record)
        data["url"] = reverse("admin:routes_nginxapply_change", args=[record.pk])
        data["badge"] = BADGES.get(record.result, "")
        return data

    @admin.display(description=_("deployments"))
    def deployment_slugs(self, obj: NginxApply) -> str:
        return ", ".join(obj.slugs)

    @admin.display(description=_("result"), ordering="result")
    def result_badge(self, obj: NginxApply) -> SafeString:
        return result_badge(obj)

    @admin.display(description=_("config hash"))
    def short_hash(self, obj: NginxApply) -> str:
        return (obj.config_hash or "—")[:12]

    @admin.display(description=_("before"))
    def short_previous(self, obj: NginxApply) -> str:
        return (obj.previous_hash or "—")[:12]

    @admin.display(description=_("hashes (before → after)"))
    def hashes(self, obj: NginxApply) -> SafeString:
        return format_html_join(
            "\n",
            '<div class="console-mono">{}: {} → {}</div>',
            (
                (slug, obj.previous_hashes.get(slug) or "—", obj.config_hashes.get(slug) or "—")
                for slug in obj.slugs
            ),
        )

    @admin.display(description=_("verification runs"))
    def runs_links(self, obj: NginxApply) -> SafeString:
        links = format_html_join(
            " ",
            '<a href="{}">#{}</a>',
            ((reverse("admin:routes_verificationrun_change", args=[pk]), pk) for pk in obj.runs),
        )
        return links or format_html("{}", "—")

    @admin.display(description=_("steps"))
    def steps_table(self, obj: NginxApply) -> SafeString:
        steps = [{**step, "label": step_label(step)} for step in obj.steps]
        return render_to_string("admin/routes/nginx/apply_steps.html", {"steps": steps})

    @admin.display(description=_("test output"))
    def output(self, obj: NginxApply) -> SafeString:
        return format_html('<pre class="console-code">{}</pre>', obj.test_output or "—")
