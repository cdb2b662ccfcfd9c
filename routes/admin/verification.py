"""Verification in the admin: run history, jobs, the "Run verification" action and page, live
progress, and "Test this key".

Staff hold no Django model permissions: every admin here answers from its roles table, and runs
of other teams' deployments do not exist for a user (404).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.core.validators import MinValueValidator
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import format_lazy
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from routes import audit, tasks
from routes.admin.bulk import may_act_on
from routes.admin.options import (
    DeploymentPages,
    ProgressAdmin,
    ReturnsToNext,
    ScopedAdmin,
    return_target,
    viewed_and_managed,
    visible_deployment,
    with_return,
)
from routes.admin.run_display import TLS_OFF_ACTIONS, cause_views, check_rows, progress_extras
from routes.models import (
    MIN_INTERVAL_SECONDS,
    Deployment,
    Key,
    VerificationJob,
    VerificationRun,
)
from routes.permissions import Action, can, teams_where
from routes.verification import destinations, remarks
from routes.verification.checks import CHECKS
from routes.verification.runs import (
    MAX_INTERVAL_SECONDS,
    interval_allowed,
    planned_checks,
    probe_key,
    progress,
    recent_runs,
    reschedule,
)
from routes.workflows.verification import turn_tls_verification_off

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise


def status_badge(status: str, label: StrOrPromise | None = None) -> SafeString:
    """Return a run or check status as a coloured badge (classes from console.css)."""
    return format_html('<span class="console-badge {}">{}</span>', status, label or status)


@admin.display(description=_("last verification"), ordering="last_run_at")
def last_run(obj: Deployment) -> str:
    """Changelist column for deployments annotated by runs.annotate_last_run()."""
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


def job_edit_url(job: VerificationJob, *, back_to: str) -> str:
    """Return the job's change page, which goes back to back_to once saved."""
    url = reverse("admin:routes_verificationjob_change", args=[job.pk])
    return with_return(url, back_to=back_to)


def run_flash_tags(run: VerificationRun) -> str:
    """Return the extra tags of a "run queued" message: verify.js turns it into the outcome."""
    return f"console-run-flash console-run-flash-{run.pk}"


def recent_runs_html(deployment: Deployment, *, limit: int = 10) -> SafeString:
    """Return the deployment page's strip of recent runs (autoescaped template)."""
    return render_to_string(
        "admin/routes/verification/recent_runs.html",
        {"deployment": deployment, "runs": recent_runs(deployment, limit=limit)},
    )


# --- the deployment's verification page, progress and key tests ---------------------------


class VerificationPages(DeploymentPages):
    """The deployment admin's verification page, "Test this key" and "Run verification"."""

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/verify/",
                wrap(self.verify_view),
                name="routes_deployment_verify",
            ),
            path(
                "<path:object_id>/verify/tls-off/",
                wrap(self.tls_off_view),
                name="routes_deployment_verify_tls_off",
            ),
            path(
                "<path:object_id>/keys/<int:key_id>/test/",
                wrap(self.test_key_view),
                name="routes_deployment_test_key",
            ),
            *super().get_urls(),
        ]

    def page_links(self, request: HttpRequest, deployment: Deployment) -> list[tuple[str, str]]:
        """A button to the verification page, for whoever may view the deployment."""
        links = []
        if can(request.user, Action.VIEW, deployment.team_id):
            url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
            links.append((str(_("Verification")), url))
        return [*links, *super().page_links(request, deployment)]

    def verify_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the job, the latest (or ?run=) run with live progress. POST: queue a run."""
        if request.method == "POST":
            deployment = visible_deployment(request, object_id, action=Action.VERIFY)
            queued = tasks.start_run(deployment=deployment, trigger=VerificationRun.Trigger.MANUAL)
            messages.success(
                request,
                _("Verification run #%(id)d queued.") % {"id": queued.pk},
                extra_tags=run_flash_tags(queued),
            )
            url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
            return HttpResponseRedirect(f"{url}?run={queued.pk}")
        return self._verify_page(request, visible_deployment(request, object_id))

    def _verify_page(
        self, request: HttpRequest, deployment: Deployment, *, status: int = 200
    ) -> TemplateResponse:
        """Return the verification page: the job, the run (causes first, then its checks)."""
        # Without a stored job the page shows what a first run would do; nothing is saved.
        job = VerificationJob.objects.filter(deployment=deployment).first()
        runs = VerificationRun.objects.filter(job__deployment=deployment).select_related("job")
        run: VerificationRun | None
        if request.GET.get("run", "").isdigit():
            run = runs.filter(pk=int(request.GET["run"])).first()
            if run is None:
                raise Http404(_("No such run for this deployment."))
        else:
            run = runs.order_by("-created_at", "-id").first()
        # Fix links and "Edit the job" bring the user back here, to this very run, once saved.
        here = request.get_full_path()
        causes = (
            cause_views(run, user=request.user, deployment=deployment, back_to=here) if run else []
        )
        context = self.page_context(
            request,
            deployment,
            title=_("Verification of %(name)s") % {"name": deployment},
            job=job,
            base_url=job.effective_base_url if job else deployment.base_url,
            planned=planned_checks(job or VerificationJob(deployment=deployment)),
            run=run,
            progress=progress(run) if run else None,
            causes=causes,
            rows=check_rows(run.results.all(), causes) if run else [],
            may_run=can(request.user, Action.VERIFY, deployment.team_id),
            may_edit_job=can(request.user, Action.EDIT, deployment.team_id),
            job_url=job_edit_url(job, back_to=here) if job else "",
            # The live redraw draws the same fix links as this page: the same way back.
            progress_url=(
                with_return(
                    reverse("admin:routes_verificationrun_progress", args=[run.pk]), back_to=here
                )
                if run
                else ""
            ),
            runs=recent_runs(deployment),
        )
        return TemplateResponse(
            request, "admin/routes/verification/verify.html", context, status=status
        )

    @method_decorator(require_POST)
    def tls_off_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: turn the job's TLS verification off (audited) and queue a run."""
        deployment = visible_deployment(request, object_id)
        if not all(can(request.user, a, deployment.team_id) for a in TLS_OFF_ACTIONS):
            messages.error(
                request,
                _(
                    "Only an operator or owner of team %(team)s may turn TLS verification off; "
                    "nothing was changed."
                )
                % {"team": deployment.team.slug},
            )
            return self._verify_page(request, deployment, status=403)
        with transaction.atomic():
            turn_tls_verification_off(deployment=deployment)
            queued = tasks.start_run(deployment=deployment, trigger=VerificationRun.Trigger.MANUAL)
        messages.success(
            request,
            _("TLS verification is off for %(name)s; verification run #%(id)d queued.")
            % {"name": deployment, "id": queued.pk},
            extra_tags=run_flash_tags(queued),
        )
        url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
        return HttpResponseRedirect(f"{url}?run={queued.pk}")

    @method_decorator(require_POST)
    def test_key_view(self, request: HttpRequest, object_id: str, key_id: int) -> HttpResponse:
        """POST: run "Test this key" and go back to the deployment page with the outcome."""
        deployment = visible_deployment(request, object_id, action=Action.VERIFY)
        key = get_object_or_404(Key, pk=key_id, deployment=deployment)
        result = probe_key(key=key)
        name = f"{key.get_role_display()} {key.masked}"
        if result.ok:
            messages.success(request, _("%(key)s: the key works.") % {"key": name})
        elif result.ok is None:
            messages.warning(
                request,
                _("%(key)s: not tested. %(detail)s") % {"key": name, "detail": result.detail},
            )
        else:
            messages.error(
                request,
                _("%(key)s: the test failed. %(detail)s") % {"key": name, "detail": result.detail},
            )
        return HttpResponseRedirect(reverse("admin:routes_deployment_change", args=[deployment.pk]))

    @admin.action(description=_("Run verification"), permissions=["verify"])
    def run_verification(
        self, request: HttpRequest, queryset: QuerySet[Deployment]
    ) -> HttpResponse | None:
        """Queue a verification run for each selected deployment the user may verify."""
        if not may_act_on(
            self,
            request,
            list(queryset),
            action=Action.VERIFY,
            refused_message=_("You may not verify %(slugs)s; nothing was queued."),
        ):
            return None
        runs = [
            tasks.start_run(deployment=d, trigger=VerificationRun.Trigger.MANUAL) for d in queryset
        ]
        self.message_user(
            request,
            _("Queued %(n)d verification run(s).") % {"n": len(runs)},
            messages.SUCCESS,
            extra_tags=run_flash_tags(runs[0]) if len(runs) == 1 else "",
        )
        if len(runs) == 1:
            url = reverse("admin:routes_deployment_verify", args=[runs[0].job.deployment_id])
            return HttpResponseRedirect(f"{url}?run={runs[0].pk}")
        return None


# --- run history ----------------------------------------------------------------------------


# Past this many visible deployments the run history's deployment filter lists only the chosen
# one: ten thousand links would weigh more than the page; the search box finds any slug.
MAX_DEPLOYMENT_CHOICES = 50


class BoundedCountPaginator(Paginator):
    """Counts at most `bound` rows: the history pages through its newest runs, never COUNTs all.

    ``more`` says that rows lie past the bound; filters reach them.
    """

    bound = 10_000
    more = False

    @cached_property
    def count(self) -> int:
        """Return the number of rows, at most bound."""
        rows = self.object_list
        if not isinstance(rows, QuerySet):
            return len(rows)
        # Unordered and cut at bound + 1: the scan stops there and sorts nothing.
        counted = rows.order_by()[: self.bound + 1].count()
        self.more = counted > self.bound
        return min(counted, self.bound)


class DeploymentFilter(admin.SimpleListFilter):
    title = _("deployment")
    parameter_name = "deployment"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        visible = Deployment.objects.visible_to(request.user).order_by("slug")
        choices = list(visible.values_list("pk", "slug")[: MAX_DEPLOYMENT_CHOICES + 1])
        if len(choices) > MAX_DEPLOYMENT_CHOICES:
            value = self.value()
            chosen = int(value) if value and value.isdigit() else None
            choices = list(visible.filter(pk=chosen).values_list("pk", "slug")) if chosen else []
        return [(str(pk), slug) for pk, slug in choices]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[VerificationRun]
    ) -> QuerySet[VerificationRun]:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(job__deployment_id=int(value))
        return queryset


@admin.register(VerificationRun)
class VerificationRunAdmin(ProgressAdmin):
    list_display = (
        "id",
        "deployment",
        "status_badge",
        "trigger",
        "triggered_by",
        "created_at",
        "duration_ms",
        "failed_count",
    )
    list_display_links = ("id", "deployment")
    list_filter = (DeploymentFilter, "status", "trigger", ("created_at", admin.DateFieldListFilter))
    search_fields = ("job__deployment__slug", "job__deployment__name")
    list_select_related = ("job__deployment", "triggered_by")
    # No date_hierarchy: its bar reads the distinct days of every run on each page view, and
    # the created_at filter already narrows by date. Neither a second COUNT for "N total" nor
    # facets (a COUNT per filter choice, one per deployment) is worth a pass over every run.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = BoundedCountPaginator
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
        "error_text",
        "checks_table",
    )
    readonly_fields = fields
    actions = None
    missing_message = _("No such run in your teams.")
    team_path = "job__deployment__team"
    # Runs are written by the worker and pruned by `manage.py prune_runs`, never by hand.
    roles = {"view": Action.VIEW}
    # The run's causes come first, above the read-only form (a fix may be a POST button).
    change_form_template = "admin/routes/verification/run_change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[VerificationRun]:
        runs = VerificationRun.objects.select_related("job__deployment", "triggered_by")
        if request.user.is_superuser:
            # Every run is visible: a semi-join with every deployment would only slow each COUNT.
            return runs
        return runs.filter(job__deployment__in=Deployment.objects.visible_to(request.user))

    def progress_data(self, request: HttpRequest, run: VerificationRun) -> dict[str, Any]:
        """The small JSON the verify page polls."""
        # The page that polls says where it is (?next=); its fix links lead back there.
        page = reverse("admin:routes_deployment_verify", args=[run.job.deployment_id])
        back_to = return_target(request) or f"{page}?run={run.pk}"
        extras = progress_extras(
            run, user=request.user, results=list(run.results.all()), back_to=back_to
        )
        return {**progress(run), **extras}

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: VerificationRun | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["causes"] = cause_views(obj, user=request.user, back_to=request.get_full_path())
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.display(description=_("deployment"), ordering="job__deployment__slug")
    def deployment(self, obj: VerificationRun) -> str:
        return obj.job.deployment.slug

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: VerificationRun) -> SafeString:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description=_("error"))
    def error_text(self, obj: VerificationRun) -> str:
        # The remarks in the reader's language; the column keeps the English words.
        return remarks.run_text(obj)

    @admin.display(description=_("checks"))
    def checks_table(self, obj: VerificationRun) -> SafeString:
        # Numbered as the causes above it; without a user, so no fix link is looked up.
        rows = check_rows(obj.results.all(), cause_views(obj, user=None))
        return render_to_string("admin/routes/verification/check_table.html", {"rows": rows})


# --- jobs -------------------------------------------------------------------------------------


# The highest slow threshold: ten minutes, far above any check's timeout.
MAX_SLOW_THRESHOLD_MS = 600_000
# Job columns only the scheduler writes, but when the interval changes.
SCHEDULER_FIELDS = ("next_run_at", "last_enqueued_at")


class VerificationJobForm(forms.ModelForm):
    # Set per request by the job admin: whose role rules apply to the base URL.
    user: Any = None
    enabled_checks = forms.MultipleChoiceField(
        label=_("enabled checks"),
        required=False,
        # Lazy, so that each request reads the labels in its own language.
        choices=[(c.id, format_lazy("{}: {}", c.id, c.label)) for c in CHECKS.values()],
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
            "interval_seconds",
            "slow_threshold_ms",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The range checks below name the field and its whole range; a positive integer
        # field's own "at least 0" would say neither.
        ranges = {
            "interval_seconds": (MIN_INTERVAL_SECONDS, MAX_INTERVAL_SECONDS),
            "slow_threshold_ms": (1, MAX_SLOW_THRESHOLD_MS),
        }
        for name, (low, high) in ranges.items():
            if name not in self.fields:
                continue
            field = self.fields[name]
            field.validators = [v for v in field.validators if not isinstance(v, MinValueValidator)]
            field.widget.attrs.update({"min": low, "max": high})

    def clean_timeout_seconds(self) -> float:
        value = self.cleaned_data["timeout_seconds"]
        if value is None or not 0.5 <= value <= 120:
            raise ValidationError(_("Give 0.5 to 120 seconds."), code="invalid")
        return value

    def clean_interval_seconds(self) -> int | None:
        value = self.cleaned_data["interval_seconds"]
        if not interval_allowed(value):
            raise ValidationError(
                _(
                    "Interval: give %(min)d to %(max)d seconds (a week), or leave it empty for "
                    "manual runs only."
                ),
                code="invalid",
                params={"min": MIN_INTERVAL_SECONDS, "max": MAX_INTERVAL_SECONDS},
            )
        return value

    def clean_slow_threshold_ms(self) -> int | None:
        value = self.cleaned_data["slow_threshold_ms"]
        if value is not None and not 1 <= value <= MAX_SLOW_THRESHOLD_MS:
            raise ValidationError(
                _(
                    "Slow threshold: give 1 to %(max)d milliseconds, or leave it empty for no "
                    "slow warning."
                ),
                code="invalid",
                params={"max": MAX_SLOW_THRESHOLD_MS},
            )
        return value

    def clean_enabled_checks(self) -> list[str]:
        # Stored in the check table's order, so the field compares equal whatever the tick order.
        chosen = set(self.cleaned_data["enabled_checks"])
        return [c for c in CHECKS if c in chosen]

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]  # BaseModelForm's hook, missing in the stubs
        # After the model's own validation, so a malformed URL is refused for what it is first.
        cleaned = getattr(self, "cleaned_data", {})
        deployment = cleaned.get("deployment") or getattr(self.instance, "deployment", None)
        if deployment is None or "base_url" in self.errors or "base_url" not in self.fields:
            return
        row = (
            VerificationJob.objects.filter(pk=self.instance.pk).values("base_url").first()
            if self.instance.pk
            else None
        )
        stored = {"base_url": row["base_url"]} if row is not None else None
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
class VerificationJobAdmin(ReturnsToNext, ScopedAdmin):
    form = VerificationJobForm
    list_display = (
        "deployment",
        "effective_base_url",
        "verify_tls",
        "interval_seconds",
        "next_run",
    )
    list_select_related = ("deployment",)
    search_fields = ("deployment__slug", "deployment__name")
    readonly_fields = ("next_run", "last_enqueued_at")
    actions = None
    missing_message = _("No such job in your teams.")
    team_path = "deployment__team"
    roles = viewed_and_managed(Action.EDIT)

    def get_queryset(self, request: HttpRequest) -> QuerySet[VerificationJob]:
        return VerificationJob.objects.filter(
            deployment__in=Deployment.objects.visible_to(request.user)
        ).select_related("deployment")

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: VerificationJob | None = None,
    ) -> HttpResponse:
        # A deployment has one job: there is never another to add next.
        context["show_save_and_add_another"] = False
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_readonly_fields(
        self, request: HttpRequest, obj: VerificationJob | None = None
    ) -> tuple[str, ...]:
        # The deployment of an existing job never changes (one job per deployment).
        return ("deployment", *self.readonly_fields) if obj else self.readonly_fields

    def formfield_for_foreignkey(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField[Any] | None:
        if db_field.name == "deployment":
            kwargs["queryset"] = Deployment.objects.filter(
                team__in=teams_where(request.user, Action.EDIT), verification_job__isnull=True
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description=_("base URL used"))
    def effective_base_url(self, obj: VerificationJob) -> str:
        return obj.effective_base_url

    @admin.display(description=_("next run"), ordering="next_run_at")
    def next_run(self, obj: VerificationJob) -> str:
        """Return when the scheduler runs the job next: a time, "due now" or "manual only"."""
        if obj.pk is None or obj.interval_seconds is None:
            return str(_("manual only"))
        if obj.next_run_at is None or obj.next_run_at <= timezone.now():
            return str(_("due now (at the scheduler's next pass)"))
        return date_format(localtime(obj.next_run_at), "Y-m-d H:i:s")

    def save_model(
        self,
        request: HttpRequest,
        obj: VerificationJob,
        form: forms.ModelForm[VerificationJob],
        change: bool,
    ) -> None:
        stored = VerificationJob.objects.filter(pk=obj.pk).first() if change and obj.pk else None
        before = audit.snapshot(stored) if stored is not None else {}
        origins_before = destinations.key_origins(obj.deployment, job=stored)
        reschedule(obj, previous_interval=stored.interval_seconds if stored else None)
        if stored is not None and obj.next_run_at == stored.next_run_at:
            # The schedule stays: its columns are the scheduler's, which may claim meanwhile.
            obj.save(
                update_fields=[
                    f.name
                    for f in obj._meta.concrete_fields
                    if f.name not in SCHEDULER_FIELDS and not f.primary_key
                ]
            )
        else:
            obj.save()
        audit.record(
            action="verification_job.change" if change else "verification_job.create",
            team=obj.deployment.team_id,
            obj=obj,
            changes=audit.field_diff(before, audit.snapshot(obj)),
        )
        pending = destinations.confirm_own_change(deployment=obj.deployment, before=origins_before)
        if pending:
            self.message_user(request, destinations.pending_message(pending), messages.WARNING)

    def delete_model(self, request: HttpRequest, obj: VerificationJob) -> None:
        audit.record(action="verification_job.delete", team=obj.deployment.team_id, obj=obj)
        obj.delete()
