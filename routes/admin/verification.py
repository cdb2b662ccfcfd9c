"""Verification in the admin: run history, jobs, the "Run verification" action and page, live
progress, and "Test this key".

Staff hold no Django model permissions: every page asks routes.permissions, and runs of other
teams' deployments do not exist for a user (404).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _

from routes import audit, destinations, verify
from routes.admin import registry
from routes.admin.bulk import may_act_on
from routes.models import Deployment, Key, VerificationJob, VerificationRun
from routes.permissions import Action, can, has_any_membership, teams_where


def status_badge(status: str, label: str | None = None):
    """Return a run or check status as a coloured badge (classes from console.css)."""
    return format_html('<span class="console-badge {}">{}</span>', status, label or status)


@admin.display(description=_("last verification"), ordering="last_run_at")
def last_run(obj):
    """Changelist column for deployments annotated by verify.annotate_last_run()."""
    status = getattr(obj, "last_run_status", None)
    if not status:
        return "—"
    label = VerificationRun.Status(status).label
    when = getattr(obj, "last_run_at", None)
    if when is None:
        return status_badge(status, label)
    # format_html escapes its arguments first, so the date is formatted before it goes in.
    when_text = date_format(localtime(when), "Y-m-d H:i")
    return format_html("{} <small>{}</small>", status_badge(status, label), when_text)


def _visible_deployment(request, object_id) -> Deployment:
    deployment = (
        Deployment.objects.visible_to(request.user).filter(pk=object_id).select_related("team")
    ).first()
    if deployment is None:
        raise Http404(_("No such deployment in your teams."))
    return deployment


# --- the deployment's verification page, progress and key tests ---------------------------


def verify_view(model_admin, request, object_id):
    """GET: the job, the latest (or ?run=) run with live progress. POST: queue a run."""
    deployment = _visible_deployment(request, object_id)
    if not can(request.user, Action.VIEW, deployment.team_id):
        raise PermissionDenied
    may_run = can(request.user, Action.VERIFY, deployment.team_id)
    if request.method == "POST":
        if not may_run:
            raise PermissionDenied
        run = verify.start_run(
            deployment=deployment, trigger=VerificationRun.Trigger.MANUAL, actor=request.user
        )
        messages.success(request, _("Verification run #%(id)d queued.") % {"id": run.pk})
        url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
        return HttpResponseRedirect(f"{url}?run={run.pk}")
    verify.mark_stale_runs()
    job = VerificationJob.objects.filter(deployment=deployment).first()
    runs = VerificationRun.objects.filter(job__deployment=deployment)
    run = None
    if request.GET.get("run", "").isdigit():
        run = runs.filter(pk=int(request.GET["run"])).first()
        if run is None:
            raise Http404(_("No such run for this deployment."))
    else:
        run = runs.order_by("-created_at", "-id").first()
    planned = (
        verify.planned_checks(job)
        if job
        else verify.planned_checks(VerificationJob(deployment=deployment))
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Verification of %(name)s") % {"name": deployment},
        "opts": model_admin.model._meta,
        "original": deployment,
        "deployment": deployment,
        "job": job,
        "base_url": job.effective_base_url if job else deployment.base_url,
        "planned": planned,
        "run": run,
        "progress": verify.progress(run) if run else None,
        "may_run": may_run,
        "may_edit_job": can(request.user, Action.EDIT, deployment.team_id),
        "job_url": reverse("admin:routes_verificationjob_change", args=[job.pk]) if job else "",
        "runs": verify.recent_runs(deployment),
    }
    return TemplateResponse(request, "admin/routes/verification/verify.html", context)


def test_key_view(model_admin, request, object_id, key_id):
    """POST: run "Test this key" and go back to the deployment page with the outcome."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    deployment = _visible_deployment(request, object_id)
    if not can(request.user, Action.VERIFY, deployment.team_id):
        raise PermissionDenied
    key = get_object_or_404(Key, pk=key_id, deployment=deployment)
    result = verify.probe_key(key=key, actor=request.user)
    name = f"{key.get_role_display()} {key.masked}"
    if result.ok:
        messages.success(request, _("%(key)s: the key works.") % {"key": name})
    elif result.ok is None:
        messages.warning(
            request, _("%(key)s: not tested. %(detail)s") % {"key": name, "detail": result.detail}
        )
    else:
        messages.error(
            request,
            _("%(key)s: the test failed. %(detail)s") % {"key": name, "detail": result.detail},
        )
    return HttpResponseRedirect(reverse("admin:routes_deployment_change", args=[deployment.pk]))


def deployment_urls(model_admin):
    wrap = model_admin.admin_site.admin_view
    return [
        path(
            "<path:object_id>/verify/",
            wrap(lambda request, object_id: verify_view(model_admin, request, object_id)),
            name="routes_deployment_verify",
        ),
        path(
            "<path:object_id>/keys/<int:key_id>/test/",
            wrap(
                lambda request, object_id, key_id: test_key_view(
                    model_admin, request, object_id, key_id
                )
            ),
            name="routes_deployment_test_key",
        ),
    ]


def deployment_links(request, deployment):
    if not can(request.user, Action.VIEW, deployment.team_id):
        return []
    return [(_("Verification"), reverse("admin:routes_deployment_verify", args=[deployment.pk]))]


@admin.action(description=_("Run verification"), permissions=["verify"])
def run_verification(modeladmin, request, queryset):
    """Queue a verification run for each selected deployment the user may verify."""
    if not may_act_on(
        modeladmin,
        request,
        list(queryset),
        action=Action.VERIFY,
        refused_message=_("You may not verify %(slugs)s; nothing was queued."),
    ):
        return None
    runs = [
        verify.start_run(deployment=d, trigger=VerificationRun.Trigger.MANUAL, actor=request.user)
        for d in queryset
    ]
    modeladmin.message_user(
        request,
        _("Queued %(n)d verification run(s).") % {"n": len(runs)},
        messages.SUCCESS,
    )
    if len(runs) == 1:
        url = reverse("admin:routes_deployment_verify", args=[runs[0].job.deployment_id])
        return HttpResponseRedirect(f"{url}?run={runs[0].pk}")
    return None


registry.deployment_urls.append(deployment_urls)
registry.deployment_links.append(deployment_links)
registry.deployment_actions.append(run_verification)


# --- run history ----------------------------------------------------------------------------


class DeploymentFilter(admin.SimpleListFilter):
    title = _("deployment")
    parameter_name = "deployment"

    def lookups(self, request, model_admin):
        return [
            (str(d.pk), d.slug) for d in Deployment.objects.visible_to(request.user).only("slug")
        ]

    def queryset(self, request, queryset):
        if self.value() and self.value().isdigit():
            return queryset.filter(job__deployment_id=int(self.value()))
        return queryset


@admin.register(VerificationRun)
class VerificationRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "deployment",
        "status_badge",
        "trigger",
        "triggered_by",
        "created_at",
        "duration_ms",
        "failed_checks",
    )
    list_display_links = ("id", "deployment")
    list_filter = (DeploymentFilter, "status", "trigger", ("created_at", admin.DateFieldListFilter))
    search_fields = ("job__deployment__slug", "job__deployment__name")
    list_select_related = ("job__deployment", "triggered_by")
    date_hierarchy = "created_at"
    fields = (
        "deployment",
        "status_badge",
        "trigger",
        "triggered_by",
        "base_url",
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "error",
        "checks_table",
    )
    readonly_fields = fields
    actions = None
    view_on_site = False

    def get_queryset(self, request):
        return (
            VerificationRun.objects.filter(
                job__deployment__in=Deployment.objects.visible_to(request.user)
            )
            .select_related("job__deployment", "triggered_by")
            .annotate(n_failed=Count("results", filter=Q(results__passed=False)))
        )

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(_("No such run in your teams."))
        return obj

    def changelist_view(self, request, extra_context=None):
        verify.mark_stale_runs()
        return super().changelist_view(request, extra_context)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/progress/",
                wrap(self.progress_view),
                name="routes_verificationrun_progress",
            ),
            *super().get_urls(),
        ]

    def progress_view(self, request, object_id):
        run = self.get_object(request, object_id)
        if not can(request.user, Action.VIEW, run.job.deployment.team_id):
            raise PermissionDenied
        return JsonResponse(verify.progress(run))

    @admin.display(description=_("deployment"), ordering="job__deployment__slug")
    def deployment(self, obj):
        return obj.job.deployment.slug

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj):
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description=_("failed checks"))
    def failed_checks(self, obj):
        return getattr(obj, "n_failed", None)

    @admin.display(description=_("checks"))
    def checks_table(self, obj):
        return render_to_string(
            "admin/routes/verification/check_table.html",
            {"results": list(obj.results.all()), "run": obj},
        )

    def has_module_permission(self, request):
        return has_any_membership(request.user)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return has_any_membership(request.user)
        return can(request.user, Action.VIEW, obj.job.deployment.team_id)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # History is pruned by `manage.py prune_runs`, not by hand.
        return False


# --- jobs -------------------------------------------------------------------------------------


class VerificationJobForm(forms.ModelForm):
    # Set per request by the job admin: whose role rules apply to the base URL.
    user = None
    enabled_checks = forms.MultipleChoiceField(
        label=_("enabled checks"),
        required=False,
        choices=[(c.id, f"{c.id}: {c.label}") for c in verify.CHECKS.values()],
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None ticked: every check that applies to the deployment runs."),
    )

    class Meta:
        model = VerificationJob
        fields = (
            "deployment",
            "base_url",
            "verify_tls",
            "timeout_seconds",
            "enabled_checks",
            "interval_minutes",
        )

    def clean_timeout_seconds(self):
        value = self.cleaned_data["timeout_seconds"]
        if value is None or not 0.5 <= value <= 120:
            raise ValidationError(_("Give 0.5 to 120 seconds."), code="invalid")
        return value

    def clean_interval_minutes(self):
        value = self.cleaned_data["interval_minutes"]
        if value is not None and not 1 <= value <= 10080:
            raise ValidationError(
                _("Give 1 to 10080 minutes (a week), or leave empty for manual runs only."),
                code="invalid",
            )
        return value

    def clean_enabled_checks(self):
        # Stored in the registry's order, so the field compares equal whatever the tick order.
        chosen = set(self.cleaned_data["enabled_checks"])
        return [c for c in verify.CHECKS if c in chosen]

    def _post_clean(self):
        super()._post_clean()
        # After the model's own validation, so a malformed URL is refused for what it is first.
        cleaned = getattr(self, "cleaned_data", {})
        deployment = cleaned.get("deployment") or getattr(self.instance, "deployment", None)
        if deployment is None or "base_url" in self.errors or "base_url" not in self.fields:
            return
        stored = (
            VerificationJob.objects.filter(pk=self.instance.pk).values("base_url").first()
            if self.instance.pk
            else None
        )
        refused = destinations.refused_fields(
            user=self.user,
            team_ids=[deployment.team_id],
            submitted={"base_url": cleaned.get("base_url") or ""},
            stored=stored,
        )
        if refused:
            self.add_error(
                "base_url",
                destinations.refusal(
                    field_label=self.fields["base_url"].label, team_slug=deployment.team.slug
                ),
            )


@admin.register(VerificationJob)
class VerificationJobAdmin(admin.ModelAdmin):
    form = VerificationJobForm
    list_display = (
        "deployment",
        "effective_base_url",
        "verify_tls",
        "interval_minutes",
        "last_enqueued_at",
    )
    list_select_related = ("deployment",)
    search_fields = ("deployment__slug", "deployment__name")
    readonly_fields = ("last_enqueued_at",)
    actions = None

    def get_queryset(self, request):
        return VerificationJob.objects.filter(
            deployment__in=Deployment.objects.visible_to(request.user)
        ).select_related("deployment")

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(_("No such job in your teams."))
        return obj

    def get_readonly_fields(self, request, obj=None):
        # The deployment of an existing job never changes (one job per deployment).
        return ("deployment", "last_enqueued_at") if obj else ("last_enqueued_at",)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "deployment":
            kwargs["queryset"] = Deployment.objects.filter(
                team__in=teams_where(request.user, Action.EDIT), verification_job__isnull=True
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description=_("base URL used"))
    def effective_base_url(self, obj):
        return obj.effective_base_url

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        # A fresh class per request: the user whose role decides where keys may go.
        form.user = request.user
        return form

    def save_model(self, request, obj, form, change):
        stored = VerificationJob.objects.filter(pk=obj.pk).first() if change and obj.pk else None
        before = audit.snapshot(stored) if stored is not None else {}
        origins_before = destinations.key_origins(obj.deployment, job=stored)
        obj.save()
        audit.record(
            action="verification_job.change" if change else "verification_job.create",
            actor=request.user,
            team=obj.deployment.team_id,
            obj=obj,
            changes=audit.field_diff(before, audit.snapshot(obj)),
            ip=audit.client_ip(request),
        )
        pending = destinations.confirm_own_change(
            deployment=obj.deployment,
            before=origins_before,
            actor=request.user,
            ip=audit.client_ip(request),
        )
        if pending:
            self.message_user(request, destinations.pending_message(pending), messages.WARNING)

    def delete_model(self, request, obj):
        audit.record(
            action="verification_job.delete",
            actor=request.user,
            team=obj.deployment.team_id,
            obj=obj,
            ip=audit.client_ip(request),
        )
        obj.delete()

    def has_module_permission(self, request):
        return has_any_membership(request.user)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return has_any_membership(request.user)
        return can(request.user, Action.VIEW, obj.deployment.team_id)

    def has_add_permission(self, request):
        return teams_where(request.user, Action.EDIT).exists()

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return teams_where(request.user, Action.EDIT).exists()
        return can(request.user, Action.EDIT, obj.deployment.team_id)

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)
