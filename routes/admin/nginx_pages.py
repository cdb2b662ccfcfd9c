"""Admin pages of a deployment's nginx config: preview, diff, check, download, export and routes.

Every page loads the deployment through Deployment.objects.visible_to (another team's deployment
is a 404) and asks routes.permissions for the action: VIEW to read, EXPORT to download or export.
"""

from __future__ import annotations

import difflib

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from routes.admin import registry
from routes.admin.base import ScopedAdmin
from routes.admin.bulk import may_act_on
from routes.audit import client_ip
from routes.models import ConfigExport, Deployment
from routes.nginx import boundaries as b
from routes.nginx.export import (
    ExportError,
    build_archive,
    check_files,
    prepared,
    record_exports,
    write_export,
)
from routes.nginx.lint import lint
from routes.nginx.regexes import RegexTimeout
from routes.nginx.render import (
    COMMON_FILENAME,
    InvalidDeployment,
    effective_locations,
    enabled_overrides,
    render_common,
    render_site,
    site_filename,
    validate_deployment,
)
from routes.nginx.sandbox import nginx_binary
from routes.nginx.simulate import simulate_locations
from routes.permissions import Action, can, has_any_membership, require

RECENT_EXPORTS = 10
TARGET_LABELS = {b.CPA: _("CPA :8317"), b.CPAMP: _("CPAMP :18317")}
MATCH_LABELS = {
    b.EXACT: _("exact"),
    b.PREFIX: _("prefix, no regex after"),
    b.REGEX: _("regex"),
    b.REGEX_I: _("regex, case-insensitive"),
}


def _deployment(request, pk: int, action: Action) -> Deployment:
    deployment = get_object_or_404(
        Deployment.objects.visible_to(request.user)
        .select_related("team")
        .prefetch_related("overrides"),
        pk=pk,
    )
    require(request.user, action, deployment.team_id)
    return deployment


def _context(model_admin, request, deployment: Deployment, title) -> dict:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": Deployment._meta,
        "original": deployment,
        "deployment": deployment,
        "title": title,
        "subtitle": str(deployment),
    }


def _diff_lines(previous: str, current: str, previous_label: str) -> list[tuple[str, str]]:
    lines = difflib.unified_diff(
        previous.splitlines(),
        current.splitlines(),
        fromfile=previous_label,
        tofile=gettext("now"),
        lineterm="",
    )
    kinds = {"+": "added", "-": "removed", "@": "hunk"}
    return [
        (
            kinds.get(line[:1], "same") if not line.startswith(("+++", "---")) else "file",
            line,
        )
        for line in lines
    ]


def _config_view(model_admin):
    def view(request, pk):
        deployment = _deployment(request, pk, Action.VIEW)
        may_export = can(request.user, Action.EXPORT, deployment.team_id)
        if request.method == "POST":
            if not may_export:
                raise PermissionDenied
            return _export_to_directory(model_admin, request, deployment)
        context = _context(model_admin, request, deployment, _("Nginx config"))
        try:
            site = render_site(deployment)
        except InvalidDeployment as exc:
            context.update({"invalid": exc.errors})
            return TemplateResponse(request, "admin/routes/nginx/config.html", context)
        common = render_common([deployment.server_name])
        exports = list(
            ConfigExport.objects.filter(deployment=deployment)
            .select_related("created_by")
            .order_by("-created_at", "-id")[:RECENT_EXPORTS]
        )
        last = exports[0] if exports else None
        diff = []
        if last is not None and last.text != site:
            when = timezone.localtime(last.created_at).strftime("%Y-%m-%d %H:%M:%S")
            label = gettext("export of %(when)s") % {"when": when}
            diff = _diff_lines(last.text, site, label)
        context.update(
            {
                "site": site,
                "site_filename": site_filename(deployment),
                "common": common,
                "common_filename": COMMON_FILENAME,
                "warnings": lint(deployment),
                "check": check_files({COMMON_FILENAME: common, site_filename(deployment): site}),
                "last_export": last,
                "diff": diff,
                "exports": exports,
                "may_export": may_export,
                "export_dir": settings.CONSOLE_EXPORT_DIR,
                "routes_url": reverse("admin:routes_deployment_routes", args=[deployment.pk]),
                "download_url": reverse(
                    "admin:routes_deployment_config_download", args=[deployment.pk]
                ),
            }
        )
        return TemplateResponse(request, "admin/routes/nginx/config.html", context)

    return view


def _export_to_directory(model_admin, request, deployment: Deployment):
    output_dir = settings.CONSOLE_EXPORT_DIR
    try:
        result = write_export(
            deployments=[deployment],
            output_dir=output_dir,
            check=nginx_binary() is not None,
            actor=request.user,
            source=ConfigExport.Source.ADMIN,
            ip=client_ip(request),
        )
    except (InvalidDeployment, ExportError) as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
    except OSError as exc:
        model_admin.message_user(
            request,
            gettext("Cannot write to %(dir)s: %(error)s") % {"dir": output_dir, "error": exc},
            messages.ERROR,
        )
    else:
        model_admin.message_user(
            request,
            gettext("Exported to %(dir)s: %(written)d written, %(unchanged)d unchanged.")
            % {
                "dir": output_dir,
                "written": len(result.written),
                "unchanged": len(result.unchanged),
            },
            messages.SUCCESS,
        )
        for _slug, warning in result.warnings:
            model_admin.message_user(request, str(warning), messages.WARNING)
    return HttpResponseRedirect(reverse("admin:routes_deployment_config", args=[deployment.pk]))


def _download_view(model_admin):
    def view(request, pk):
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        deployment = _deployment(request, pk, Action.EXPORT)
        try:
            # Neither file is handed out for a deployment that fails a validator, whatever way
            # the bad value reached the database.
            validate_deployment(deployment, enabled_overrides(deployment))
        except InvalidDeployment as exc:
            model_admin.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(
                reverse("admin:routes_deployment_config", args=[deployment.pk])
            )
        if request.GET.get("file") == "common":
            name, text = COMMON_FILENAME, render_common([deployment.server_name])
        else:
            try:
                text = render_site(deployment)
            except InvalidDeployment as exc:
                model_admin.message_user(request, str(exc), messages.ERROR)
                return HttpResponseRedirect(
                    reverse("admin:routes_deployment_config", args=[deployment.pk])
                )
            name = site_filename(deployment)
            # A GET is safe (links, prefetching, crawlers): only a POST, which carries a CSRF
            # token, records the download as an export.
            if request.method == "POST":
                record_exports(
                    texts=[(deployment, text)],
                    actor=request.user,
                    source=ConfigExport.Source.ADMIN,
                    ip=client_ip(request),
                )
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response

    return view


def _route_rows(locations, chosen=None) -> list[dict]:
    rows = []
    for position, location in enumerate(locations, start=1):
        if location.origin == "override" and location.replaces is not None:
            origin = _("override, replaces the built-in route to %(target)s") % {
                "target": TARGET_LABELS.get(location.replaces.target, _("a 302 redirect"))
            }
        else:
            origin = {
                "builtin": _("built-in"),
                "override": _("override"),
                "redirect": _("built-in"),
                "fallback": _("built-in fallback"),
            }[location.origin]
        rows.append(
            {
                "position": position,
                "header": location.display,
                "match": _("prefix, regexes still tried")
                if location.plain
                else MATCH_LABELS[location.match],
                "path": location.path,
                "upstream": TARGET_LABELS.get(location.target)
                or _("302 to %(url)s") % {"url": location.redirect},
                "target": location.target,
                "origin": origin,
                "note": gettext(location.note) if location.note else location.override_note,
                "selected": chosen is not None and location == chosen,
            }
        )
    return rows


def _routes_view(model_admin):
    def view(request, pk):
        deployment = _deployment(request, pk, Action.VIEW)
        context = _context(model_admin, request, deployment, _("Routes"))
        locations = effective_locations(deployment)
        tested = request.GET.get("path", "").strip()
        try:
            result = simulate_locations(locations, tested) if tested else None
        except RegexTimeout as exc:
            # A regex override that backtracks too long: say so instead of holding the worker.
            model_admin.message_user(request, exc.message, messages.ERROR)
            result = None
        context.update(
            {
                "rows": _route_rows(locations, result.location if result else None),
                "tested": tested,
                "result": result,
                "result_upstream": TARGET_LABELS.get(result.upstream) if result else None,
                "examples": ["/v1/models", "/v0/management/config", "/v1", "//v1/../health"],
                "config_url": reverse("admin:routes_deployment_config", args=[deployment.pk]),
            }
        )
        return TemplateResponse(request, "admin/routes/nginx/routes.html", context)

    return view


def nginx_urls(model_admin):
    """URLs of the config, download and routes pages, for the deployment admin's get_urls()."""
    wrap = model_admin.admin_site.admin_view
    return [
        path(
            "<int:pk>/nginx/",
            wrap(_config_view(model_admin)),
            name="routes_deployment_config",
        ),
        path(
            "<int:pk>/nginx/download/",
            wrap(_download_view(model_admin)),
            name="routes_deployment_config_download",
        ),
        path(
            "<int:pk>/routes/",
            wrap(_routes_view(model_admin)),
            name="routes_deployment_routes",
        ),
    ]


def nginx_links(request, deployment):
    """Buttons on the deployment page: config and routes (VIEW), download (EXPORT)."""
    links = []
    if can(request.user, Action.VIEW, deployment.team_id):
        links.append(
            (_("Nginx config"), reverse("admin:routes_deployment_config", args=[deployment.pk]))
        )
        links.append((_("Routes"), reverse("admin:routes_deployment_routes", args=[deployment.pk])))
    if can(request.user, Action.EXPORT, deployment.team_id):
        links.append(
            (
                _("Download config"),
                reverse("admin:routes_deployment_config_download", args=[deployment.pk]),
            )
        )
    return links


@admin.action(description=_("Download configs as archive"), permissions=["export"])
def download_archive(modeladmin, request, queryset):
    """Answer a tar.gz of the selected deployments' configs (with the shared file)."""
    deployments = prepared(queryset.order_by("slug"))
    if not may_act_on(
        modeladmin,
        request,
        deployments,
        action=Action.EXPORT,
        refused_message=gettext("You may not export %(slugs)s; nothing was downloaded."),
    ):
        return None
    try:
        data, _rows = build_archive(
            deployments=deployments,
            actor=request.user,
            source=ConfigExport.Source.ARCHIVE,
            ip=client_ip(request),
        )
    except InvalidDeployment as exc:
        modeladmin.message_user(request, str(exc), messages.ERROR)
        return None
    response = HttpResponse(data, content_type="application/gzip")
    response["Content-Disposition"] = 'attachment; filename="nginx-configs.tar.gz"'
    response["Cache-Control"] = "no-store"
    return response


registry.deployment_urls.append(nginx_urls)
registry.deployment_links.append(nginx_links)
registry.deployment_actions.append(download_archive)


@admin.register(ConfigExport)
class ConfigExportAdmin(ScopedAdmin):
    """Export history: read-only, scoped to the user's teams."""

    list_display = ("deployment", "short_hash", "source", "created_by", "created_at")
    list_filter = ("source", "created_at")
    search_fields = ("deployment__slug", "deployment__name", "content_hash")
    list_select_related = ("deployment", "created_by")
    date_hierarchy = "created_at"
    fields = ("deployment", "content_hash", "source", "created_by", "created_at", "config")
    readonly_fields = fields

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .filter(deployment__in=Deployment.objects.visible_to(request.user))
        )

    @admin.display(description=_("SHA-256"), ordering="content_hash")
    def short_hash(self, obj):
        return obj.content_hash[:12]

    @admin.display(description=_("config"))
    def config(self, obj):
        return format_html('<pre class="console-code">{}</pre>', obj.text)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return has_any_membership(request.user)
        return can(request.user, Action.VIEW, obj.deployment.team_id)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser
