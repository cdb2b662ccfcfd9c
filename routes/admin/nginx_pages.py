"""Admin pages of a deployment's nginx config: preview, diff, test, download, export and routes.

Every page loads the deployment with visible_deployment (another team's deployment is a 404)
and names the action it needs: VIEW to read and to download what it shows (a config holds no
secret), EXPORT to write the export directory or deploy to the live nginx (the worker applies
it: routes/nginx/apply.py), VERIFY to test the config with nginx. Reading
the config page never runs nginx: it shows the stored test of the config as it is now
(routes/nginx/tested.py), and "Test with nginx" is a POST.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet, prefetch_related_objects
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods, require_POST

from routes import tasks
from routes.admin.applies import BADGES
from routes.admin.bulk import may_act_on
from routes.admin.options import DeploymentPages, ScopedAdmin, visible_deployment
from routes.models import ConfigExport, Deployment, NginxApply, RouteOverride
from routes.nginx import boundaries as b
from routes.nginx import gixy
from routes.nginx.apply import ApplyRefused
from routes.nginx.apply_report import progress as apply_progress
from routes.nginx.export import (
    ExportError,
    build_archive,
    prepared,
    record_exports,
    render_files,
    write_export,
)
from routes.nginx.lint import lint
from routes.nginx.regexes import RegexTimeout
from routes.nginx.render import (
    COMMON_FILENAME,
    InvalidDeployment,
    Location,
    effective_locations,
    enabled_overrides,
    site_filename,
    validate_deployment,
    without_config_hash,
)
from routes.nginx.sandbox import nginx_binary
from routes.nginx.simulate import simulate_locations
from routes.nginx.tested import last_test, run_nginx_test
from routes.permissions import Action, can

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

RECENT_EXPORTS = 10
TARGET_LABELS = dict(RouteOverride.Target.choices)
MATCH_LABELS = {
    b.EXACT: _("exact"),
    b.PREFIX: _("prefix, no regex after"),
    b.REGEX: _("regex"),
    b.REGEX_I: _("regex, case-insensitive"),
}


def _deployment(request: HttpRequest, pk: int, action: Action) -> Deployment:
    deployment = visible_deployment(request, pk, action=action)
    prefetch_related_objects([deployment], "overrides")
    return deployment


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


def _route_rows(locations: list[Location], chosen: Location | None = None) -> list[dict[str, Any]]:
    rows = []
    for position, location in enumerate(locations, start=1):
        origin: StrOrPromise
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


class NginxPages(DeploymentPages):
    """The deployment admin's config, test, download and routes pages and its archive action."""

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/nginx/", wrap(self.config_view), name="routes_deployment_config"),
            path(
                "<int:pk>/nginx/test/",
                wrap(self.config_test_view),
                name="routes_deployment_config_test",
            ),
            path(
                "<int:pk>/nginx/download/",
                wrap(self.config_download_view),
                name="routes_deployment_config_download",
            ),
            path("<int:pk>/nginx/apply/", wrap(self.apply_view), name="routes_deployment_apply"),
            path("<int:pk>/routes/", wrap(self.routes_view), name="routes_deployment_routes"),
            *super().get_urls(),
        ]

    def page_links(self, request: HttpRequest, deployment: Deployment) -> list[tuple[str, str]]:
        """Buttons on the deployment page: config, routes and the download (VIEW)."""
        links = []
        if can(request.user, Action.VIEW, deployment.team_id):
            links.append(
                (
                    str(_("Nginx config")),
                    reverse("admin:routes_deployment_config", args=[deployment.pk]),
                )
            )
            links.append(
                (str(_("Routes")), reverse("admin:routes_deployment_routes", args=[deployment.pk]))
            )
            links.append(
                (
                    str(_("Download config")),
                    reverse("admin:routes_deployment_config_download", args=[deployment.pk]),
                )
            )
        return [*links, *super().page_links(request, deployment)]

    def config_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """GET: the rendered files, lint, the stored nginx test, the diff. POST: export them."""
        if request.method == "POST":
            return self._export_to_directory(request, _deployment(request, pk, Action.EXPORT))
        deployment = _deployment(request, pk, Action.VIEW)
        may_export = can(request.user, Action.EXPORT, deployment.team_id)
        context = self.page_context(
            request, deployment, title=_("Nginx config"), subtitle=str(deployment)
        )
        try:
            files = render_files([deployment])
        except InvalidDeployment as exc:
            context.update({"invalid": exc.errors})
            return TemplateResponse(request, "admin/routes/nginx/config.html", context)
        site, common = files[site_filename(deployment)], files[COMMON_FILENAME]
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
            # Every change moves the config hash line: the diff leaves it out.
            diff = _diff_lines(without_config_hash(last.text), without_config_hash(site), label)
        context.update(self._apply_context(request, deployment))
        nginx_test = last_test(deployment=deployment, files=files)
        context.update(
            {
                "site": site,
                "site_filename": site_filename(deployment),
                "common": common,
                "common_filename": COMMON_FILENAME,
                "warnings": lint(deployment),
                "nginx_installed": nginx_binary() is not None,
                "nginx_test": nginx_test,
                "gixy_installed": gixy.installed(),
                "gixy": gixy.Report.from_json(nginx_test.gixy) if nginx_test else None,
                "may_test": can(request.user, Action.VERIFY, deployment.team_id),
                "test_url": reverse("admin:routes_deployment_config_test", args=[deployment.pk]),
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

    def _apply_context(self, request: HttpRequest, deployment: Deployment) -> dict[str, Any]:
        """Return the Deploy section's context: the apply asked for (?apply=) or the latest."""
        applies = NginxApply.objects.filter(deployments=deployment).order_by("-created_at", "-id")
        wanted = request.GET.get("apply", "")
        record = applies.filter(pk=int(wanted)).first() if wanted.isdigit() else applies.first()
        return {
            "may_apply": can(request.user, Action.EXPORT, deployment.team_id),
            "apply_url": reverse("admin:routes_deployment_apply", args=[deployment.pk]),
            "apply_record": record,
            "apply_progress": apply_progress(record) if record else None,
            "apply_progress_url": (
                reverse("admin:routes_nginxapply_progress", args=[record.pk]) if record else ""
            ),
            "apply_busy": record is not None and not record.finished,
            "apply_badge": BADGES.get(record.result, "") if record else "",
            "applies_url": reverse("admin:routes_nginxapply_changelist")
            + f"?deployment={deployment.pk}",
            "nginx_dir": settings.CONSOLE_NGINX_DIR,
            "nginx_test_cmd": settings.CONSOLE_NGINX_TEST_CMD,
            "nginx_reload_cmd": settings.CONSOLE_NGINX_RELOAD_CMD,
        }

    @method_decorator(require_POST)
    def apply_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """POST (operators): queue an apply of the deployment's config to the live nginx."""
        deployment = _deployment(request, pk, Action.EXPORT)
        url = reverse("admin:routes_deployment_config", args=[deployment.pk])
        try:
            record = tasks.start_apply(deployment=deployment)
        except ApplyRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(url)
        self.message_user(
            request,
            gettext("Apply #%(id)d queued: the worker writes, tests, reloads and verifies it.")
            % {"id": record.pk},
            messages.SUCCESS,
        )
        return HttpResponseRedirect(f"{url}?apply={record.pk}#apply")

    @method_decorator(require_POST)
    def config_test_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """POST (operators): run nginx -t on the config as it is now, store and show the outcome."""
        deployment = _deployment(request, pk, Action.VERIFY)
        try:
            test = run_nginx_test(deployment=deployment)
        except InvalidDeployment as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            if test is not None:
                # gixy-next lints the same files, next to nginx -t and only on this POST.
                report = gixy.lint_files(render_files([deployment]))
                test.gixy = report.as_json()
                test.save(update_fields=["gixy"])
                if report.unexplained or report.error:
                    self.message_user(
                        request,
                        report.error
                        or gettext("gixy-next: %(n)d finding(s) the console does not explain.")
                        % {"n": len(report.unexplained)},
                        messages.WARNING,
                    )
            if test is None:
                level = messages.WARNING
                text = gettext("Nothing was tested: nginx is not installed on the console host.")
            elif test.timed_out:
                level = messages.WARNING
                text = gettext("Tested with nginx: nginx -t did not finish in time.")
            elif test.ok:
                level = messages.SUCCESS
                text = gettext("Tested with nginx: nginx -t accepts this config.")
            else:
                level = messages.ERROR
                text = gettext("Tested with nginx: nginx -t refuses this config.")
            self.message_user(request, text, level)
        return HttpResponseRedirect(reverse("admin:routes_deployment_config", args=[deployment.pk]))

    def _export_to_directory(self, request: HttpRequest, deployment: Deployment) -> HttpResponse:
        output_dir = settings.CONSOLE_EXPORT_DIR
        try:
            result = write_export(
                deployments=[deployment],
                output_dir=output_dir,
                check=nginx_binary() is not None,
                source=ConfigExport.Source.ADMIN,
            )
        except (InvalidDeployment, ExportError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        except OSError as exc:
            self.message_user(
                request,
                gettext("Cannot write to %(dir)s: %(error)s") % {"dir": output_dir, "error": exc},
                messages.ERROR,
            )
        else:
            self.message_user(
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
                self.message_user(request, str(warning), messages.WARNING)
        return HttpResponseRedirect(reverse("admin:routes_deployment_config", args=[deployment.pk]))

    @method_decorator(require_http_methods(["GET", "POST"]))
    def config_download_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Answer the site file (or ?file=common, the shared file) as a download (VIEW)."""
        deployment = _deployment(request, pk, Action.VIEW)
        config_url = reverse("admin:routes_deployment_config", args=[deployment.pk])
        try:
            # Neither file is handed out for a deployment that fails a validator, whatever way
            # the bad value reached the database.
            validate_deployment(deployment, enabled_overrides(deployment))
            files = render_files([deployment])
            if request.GET.get("file") == "common":
                name = COMMON_FILENAME
            else:
                name = site_filename(deployment)
            text = files[name]
        except InvalidDeployment as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(config_url)
        # A GET is safe (links, prefetching, crawlers): only a POST, which carries a CSRF
        # token, records the download of the site file as an export.
        if request.method == "POST" and name != COMMON_FILENAME:
            record_exports(texts=[(deployment, text)], source=ConfigExport.Source.ADMIN)
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response

    def routes_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The effective routing table and the path tester (?path=)."""
        deployment = _deployment(request, pk, Action.VIEW)
        context = self.page_context(
            request, deployment, title=_("Routes"), subtitle=str(deployment)
        )
        locations = effective_locations(deployment)
        tested = request.GET.get("path", "").strip()
        try:
            result = simulate_locations(locations, tested) if tested else None
        except RegexTimeout as exc:
            # A regex override that backtracks too long: say so instead of holding the worker.
            self.message_user(request, exc.message, messages.ERROR)
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

    @admin.action(description=_("Download configs as archive"), permissions=["download"])
    def download_archive(
        self, request: HttpRequest, queryset: QuerySet[Deployment]
    ) -> HttpResponse | None:
        """Answer a tar.gz of the selected deployments' configs (with the shared file)."""
        deployments = prepared(queryset.order_by("slug"))
        if not may_act_on(
            self,
            request,
            deployments,
            action=Action.VIEW,
            refused_message=gettext("You may not download %(slugs)s; nothing was downloaded."),
        ):
            return None
        try:
            data, _rows = build_archive(deployments=deployments, source=ConfigExport.Source.ARCHIVE)
        except InvalidDeployment as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        response = HttpResponse(data, content_type="application/gzip")
        response["Content-Disposition"] = 'attachment; filename="nginx-configs.tar.gz"'
        response["Cache-Control"] = "no-store"
        return response


@admin.register(ConfigExport)
class ConfigExportAdmin(ScopedAdmin):
    """Export history: read-only, scoped to the user's teams; superusers may prune it."""

    list_display = ("deployment", "short_hash", "source", "created_by", "created_at")
    list_filter = ("source", "created_at")
    search_fields = ("deployment__slug", "deployment__name", "content_hash")
    list_select_related = ("deployment", "created_by")
    date_hierarchy = "created_at"
    fields = ("deployment", "content_hash", "source", "created_by", "created_at", "config")
    readonly_fields = fields
    team_path = "deployment__team"
    roles = {"view": Action.VIEW, "delete": Action.ADMINISTER}

    def get_queryset(self, request: HttpRequest) -> QuerySet[ConfigExport]:
        return (
            super()
            .get_queryset(request)
            .filter(deployment__in=Deployment.objects.visible_to(request.user))
        )

    @admin.display(description=_("SHA-256"), ordering="content_hash")
    def short_hash(self, obj: ConfigExport) -> str:
        return obj.content_hash[:12]

    @admin.display(description=_("config"))
    def config(self, obj: ConfigExport) -> str:
        return format_html('<pre class="console-code">{}</pre>', obj.text)
