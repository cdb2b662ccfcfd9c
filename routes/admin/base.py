"""Core admins: teams, memberships, deployments with their overrides and write-only keys.

Staff users hold no Django model permissions: every admin here says in its ``roles`` table which
routes.permissions Action each operation needs, scopes its queryset to the user's teams and
answers 404 for another team's objects (routes.admin.options). Mutations go through
routes.workflows so that validation, versions and the audit trail stay in one place.

The deployment admin is put together from page mixins, one per feature module (nginx config,
verification, first-setup values, the wizard); each wires its own pages in get_urls().
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from routes import keys as keyring
from routes import portable
from routes.admin.adopt_page import AdoptPages
from routes.admin.board import BoardPages, drift_badges
from routes.admin.bulk import may_act_on
from routes.admin.first_setup import FirstSetupPages
from routes.admin.nginx_pages import NginxPages
from routes.admin.options import (
    DeploymentPages,
    ReturnsToNext,
    ScopedAdmin,
    ScopedInline,
    SecretFormsAdmin,
    VisibleTeamFilter,
    delete_selected,
    viewed_and_managed,
    visible_deployment,
)
from routes.admin.otp_admin import enrol_link
from routes.admin.verification import VerificationPages, last_run, recent_runs_html
from routes.admin.wizard import WizardPages, presets_json
from routes.forms import (
    DeploymentForm,
    KeyForm,
    KeyInlineFormSet,
    MembershipAddForm,
    MembershipChangeForm,
    RouteOverrideForm,
    StandaloneKeyForm,
    TeamForm,
    deployment_fieldsets,
    warn_about_keys,
)
from routes.models import Deployment, Key, KeyRotation, Membership, RouteOverride, Team
from routes.nginx.drift import with_drift_data
from routes.permissions import Action, can, teams_where
from routes.templatetags.console_wrap import domain_breaks
from routes.verification import destinations, runs
from routes.workflows.deployments import delete_deployment, save_deployment
from routes.workflows.keys import delete_key, save_key
from routes.workflows.memberships import (
    add_membership,
    change_membership,
    check_keeps_an_owner,
    remove_membership,
)
from routes.workflows.overrides import delete_override, save_override
from routes.workflows.teams import create_team, delete_team, save_team
from routes.workflows.versions import claim_version

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldOpts, _FieldsetSpec, _ListDisplayT
    from django_stubs_ext import StrOrPromise

# --- Deployments --------------------------------------------------------------------------------


class RouteOverrideInline(ScopedInline):
    model = RouteOverride
    form = RouteOverrideForm
    fields = ("match", "path", "target", "enabled", "position", "note")
    extra = 1
    # Asked about the deployment; on its add page, whether the user may edit in some team.
    roles = viewed_and_managed(Action.EDIT)


class KeyDisplayMixin:
    """Read-only renderings of a key: never the secret, only its masked form and status."""

    @admin.display(description=_("stored secret"))
    def masked_secret(self, obj: Key | None) -> str:
        return obj.masked if obj and obj.pk else "—"

    @admin.display(description=_("last test"))
    def last_validation(self, obj: Key | None) -> str:
        if not obj or obj.last_validated_at is None:
            return str(_("never"))
        verdict = _("passed") if obj.last_validation_ok else _("failed")
        return f"{verdict} ({obj.last_validated_at:%Y-%m-%d %H:%M})"


class KeyInline(KeyDisplayMixin, ScopedInline):
    model = Key
    form = KeyForm
    formset = KeyInlineFormSet
    extra = 1
    verbose_name_plural = _("keys (write-only: secrets are never shown again)")
    # One card per key, Test and Rotate always in sight (a table row squeezed them).
    template = "admin/routes/deployment/key_inline.html"
    # On the add page the team is not chosen yet; the formset checks it on save.
    roles = viewed_and_managed(Action.MANAGE_KEYS)

    def get_fields(self, request: HttpRequest, obj: Deployment | None = None) -> tuple[str, ...]:
        fields = ["role", "label", "custom_format"]
        if self.has_change_permission(request, obj) or self.has_add_permission(request, obj):
            fields.append("secret")
        fields += ["masked_secret", "rotated_at", "last_validation"]
        if obj is not None and can(request.user, Action.VERIFY, obj.team_id):
            fields.append("test_key")
        return tuple(fields)

    def get_readonly_fields(
        self, request: HttpRequest, obj: Deployment | None = None
    ) -> tuple[str, ...]:
        return ("masked_secret", "rotated_at", "last_validation", "test_key")

    def get_formset(
        self, request: HttpRequest, obj: Deployment | None = None, **kwargs: Any
    ) -> type[BaseInlineFormSet[Any, Any, Any]]:
        formset = super().get_formset(request, obj, **kwargs)
        # A fresh class per request: the user whose role decides which keys may be saved.
        formset.user = request.user  # type: ignore[attr-defined]
        return formset

    @admin.display(description=_("test"))
    def test_key(self, obj: Key | None) -> str:
        if not obj or not obj.pk:
            return "—"
        try:
            url = reverse("admin:routes_deployment_test_key", args=[obj.deployment_id, obj.pk])
        except NoReverseMatch:
            return "—"
        return format_html(
            '<button type="submit" class="button" formaction="{}" formmethod="post" '
            "formnovalidate>{}</button>",
            url,
            _("Test this key"),
        )


@admin.register(Deployment)
class DeploymentAdmin(
    ReturnsToNext,
    AdoptPages,
    BoardPages,
    NginxPages,
    VerificationPages,
    FirstSetupPages,
    WizardPages,
    DeploymentPages,
):
    form = DeploymentForm
    inlines = [RouteOverrideInline, KeyInline]
    roles = {
        "view": Action.VIEW,
        "add": Action.CREATE,
        "change": Action.EDIT,
        # Deleting a deployment destroys its keys, so it takes the role that manages keys.
        "delete": Action.MANAGE_KEYS,
        "export": Action.EXPORT,
        # Downloading what a viewer may read (configs, definitions: never a secret).
        "download": Action.VIEW,
        "verify": Action.VERIFY,
    }
    actions = [delete_selected, "export_definitions", "download_archive", "run_verification"]
    # What an operator decides by; mode, ports and history are on the deployment's page.
    list_display = ("title", "team", "domain", "key_roles", last_run, "drift")
    list_display_links = ("title",)
    list_filter = (("team", VisibleTeamFilter), "mode", "tls")
    search_fields = ("slug", "name", "server_name")
    list_select_related = ("team",)
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = (
        "version",
        "created_at",
        "created_by",
        "updated_at",
        "updated_by",
        "key_destination",
        "key_destination_confirmable",
    )
    # deployment_fieldsets() gives plain dicts where the stubs want their _FieldOpts TypedDict.
    fieldsets = cast(
        "_FieldsetSpec",
        (
            *deployment_fieldsets(shown_last={"verification": ("key_destination",)}),
            (
                _("History"),
                {
                    "fields": ("version", "created_at", "created_by", "updated_at", "updated_by"),
                    "classes": ("collapse",),
                },
            ),
        ),
    )

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/confirm-destination/",
                self.admin_site.admin_view(self.confirm_destination_view),
                name="routes_deployment_confirm_destination",
            ),
            *super().get_urls(),
        ]

    def page_links(self, request: HttpRequest, deployment: Deployment) -> list[tuple[str, str]]:
        # Owners of a team that requires two-factor are pointed to enrolment first.
        return [*super().page_links(request, deployment), *enrol_link(request, deployment)]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Deployment]:
        keys = Key.objects.filter(deployment=OuterRef("pk"))
        api_keys = (
            keys.filter(role=keyring.CPA_API)
            .order_by()
            .values("deployment")
            .annotate(n=Count("pk"))
            .values("n")
        )
        visible = (
            Deployment.objects.visible_to(request.user)
            .select_related("team")
            .annotate(
                has_admin_key=Exists(keys.filter(role=keyring.CPAMP_ADMIN)),
                has_management_key=Exists(keys.filter(role=keyring.CPA_MANAGEMENT)),
                api_key_count=Coalesce(Subquery(api_keys, output_field=IntegerField()), Value(0)),
            )
        )
        # DeploymentQuerySet is a plain QuerySet subclass: the stubs do not know its model.
        return with_drift_data(runs.annotate_last_run(cast("QuerySet[Deployment]", visible)))

    def get_fieldsets(self, request: HttpRequest, obj: Deployment | None = None) -> _FieldsetSpec:
        drop = (
            {"loaded_version", "version", "created_at", "created_by", "updated_at", "updated_by"}
            if obj is None
            else {"topology"}
        )
        if obj is not None and not self.has_change_permission(request, obj):
            drop.add("loaded_version")
        if obj is None:
            drop.add("key_destination")
        # Owners get the same display with the "Confirm key destination" button.
        owner = obj is not None and can(request.user, Action.SET_KEY_DESTINATION, obj.team_id)
        swap = {"key_destination": "key_destination_confirmable"} if owner else {}
        fieldsets: list[tuple[StrOrPromise | None, _FieldOpts]] = []
        for name, options in super().get_fieldsets(request, obj):
            fields = tuple(
                swap.get(f, f) if isinstance(f, str) else f
                for f in options["fields"]
                if f not in drop
            )
            if fields:
                fieldsets.append((name, {**options, "fields": fields}))
        return fieldsets

    def formfield_for_foreignkey(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField[Any] | None:
        if db_field.name == "team":
            kwargs["queryset"] = teams_where(request.user, Action.CREATE)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_list_display(self, request: HttpRequest) -> _ListDisplayT[Any]:
        shown = super().get_list_display(request)
        # In one team, its name on every row only takes width from the columns that matter.
        if request.user.is_superuser or teams_where(request.user, Action.VIEW)[:2].count() > 1:
            return shown
        return [column for column in shown if column != "team"]

    @admin.display(description=_("deployment"), ordering="name")
    def title(self, obj: Deployment) -> SafeString:
        return format_html(
            '{}<br><span class="console-mono console-muted">{}</span>', obj.name, obj.slug
        )

    @admin.display(description=_("Domain"), ordering="server_name")
    def domain(self, obj: Deployment) -> SafeString:
        return format_html("{}<br>{}", domain_breaks(obj.server_name), self.https(obj))

    @admin.display(description=_("drift"))
    def drift(self, obj: Deployment) -> SafeString:
        return drift_badges(obj)

    # Plain HTTP is a choice, not an error: no red icon of a boolean column.
    @admin.display(description=_("HTTPS"), ordering="tls")
    def https(self, obj: Deployment) -> SafeString:
        if obj.tls:
            return format_html('<span class="console-badge console-https">{}</span>', "HTTPS")
        return format_html('<span class="console-muted console-http">{}</span>', _("HTTP only"))

    @admin.display(description=_("keys"))
    def key_roles(self, obj: Deployment) -> SafeString | str:
        present = []
        if getattr(obj, "has_admin_key", False):
            present.append(str(_("CPAMP admin")))
        if getattr(obj, "has_management_key", False):
            present.append(str(_("CPA management")))
        count = getattr(obj, "api_key_count", 0)
        if count:
            present.append(str(_("CPA API ×%(n)d") % {"n": count}))
        # One role a line: "CPA management" wraps as a whole, never mid-name.
        return format_html_join(mark_safe("<br>"), "{}", ((p,) for p in present)) or "—"

    def _key_destination_html(self, obj: Deployment | None, *, confirmable: bool) -> str:
        if obj is None or obj.pk is None:
            return "—"
        origins = destinations.key_origins(obj)
        confirmed = destinations.confirmed_origins(obj)
        rows = format_html_join(
            "",
            "<li><code>{}</code>: {}</li>",
            (
                (
                    origin,
                    _("confirmed")
                    if origin in confirmed
                    else _("not confirmed, checks run without keys"),
                )
                for origin in origins
            ),
        )
        who: SafeString | str = ""
        if obj.keys_confirmed_at is not None:
            who = format_html(
                "<p>{}</p>",
                _("Last confirmed %(at)s by %(who)s.")
                % {
                    "at": date_format(localtime(obj.keys_confirmed_at), "Y-m-d H:i"),
                    "who": obj.keys_confirmed_by or _("the server administrator"),
                },
            )
        button: SafeString | str = ""
        if confirmable and any(origin not in confirmed for origin in origins):
            # What the owner sees is what gets confirmed: the view refuses if it moved since.
            shown = format_html_join(
                "",
                '<input type="hidden" name="confirm_origins" value="{}">',
                ((origin,) for origin in origins),
            )
            button = format_html(
                '{}<button type="submit" class="button" formaction="{}" formmethod="post" '
                "formnovalidate>{}</button>",
                shown,
                reverse("admin:routes_deployment_confirm_destination", args=[obj.pk]),
                _("Confirm key destination"),
            )
        return format_html('<ul class="console-key-destinations">{}</ul>{}{}', rows, who, button)

    @admin.display(description=_("where keys go"))
    def key_destination(self, obj: Deployment | None) -> str:
        return self._key_destination_html(obj, confirmable=False)

    @admin.display(description=_("where keys go"))
    def key_destination_confirmable(self, obj: Deployment | None) -> str:
        return self._key_destination_html(obj, confirmable=True)

    @method_decorator(require_POST)
    @method_decorator(sensitive_post_parameters())
    def confirm_destination_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST (owners): confirm the origins keys go to now, as shown on the page."""
        deployment = visible_deployment(request, object_id, action=Action.SET_KEY_DESTINATION)
        shown = request.POST.getlist("confirm_origins")
        try:
            origins = destinations.confirm_destination(deployment=deployment, expected=shown)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            self.message_user(
                request,
                _("Keys may now be sent to %(origins)s.") % {"origins": ", ".join(origins) or "—"},
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:routes_deployment_change", args=[deployment.pk]))

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Deployment | None = None,
    ) -> HttpResponse:
        adminform = context.get("adminform")
        context.update(
            {
                "console_links": self.page_links(request, obj) if obj is not None else [],
                "version_warnings": obj.version_warnings() if obj is not None else [],
                "recent_runs_html": recent_runs_html(obj) if obj is not None else "",
                "conflict": getattr(adminform.form, "conflict", None) if adminform else None,
                # The add form's topology presets, for console.js (the wizard's data).
                "presets_json": presets_json() if obj is None else "",
            }
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(
        self, request: HttpRequest, obj: Deployment, form: forms.ModelForm[Deployment], change: bool
    ) -> None:
        stored = Deployment.objects.filter(pk=obj.pk).first() if change else None
        before = destinations.key_origins(stored) if stored is not None else []
        save_deployment(
            deployment=obj,
            expected_version=form.cleaned_data.get("loaded_version") if change else None,
        )
        pending = destinations.confirm_own_change(deployment=obj, before=before)
        if pending:
            self.message_user(request, destinations.pending_message(pending), messages.WARNING)

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm[Deployment], formsets: Any, change: bool
    ) -> None:
        deployment = form.instance
        loaded = form.cleaned_data.get("loaded_version")
        # Override and key edits are edits of the deployment: they move its version once.
        if change and deployment.version == loaded and any(fs.has_changed() for fs in formsets):
            claim_version(deployment=deployment, expected_version=loaded)
        super().save_related(request, form, formsets, change)
        for warning in deployment.version_warnings():
            self.message_user(request, warning, messages.WARNING)

    def save_formset(
        self, request: HttpRequest, form: forms.ModelForm[Deployment], formset: Any, change: bool
    ) -> None:
        deleted = formset.deleted_forms
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        # Deletions first: a deleted key frees its role and its secret for a new row.
        for sub in deleted:
            if not sub.instance.pk:
                continue
            if formset.model is Key:
                delete_key(key=sub.instance, bump_version=False)
            else:
                delete_override(override=sub.instance, bump_version=False)
            formset.deleted_objects.append(sub.instance)
        for sub in formset.forms:
            if sub in deleted or not sub.has_changed():
                continue
            obj = sub.instance
            obj.deployment = form.instance
            adding = obj.pk is None
            if formset.model is Key:
                save_key(key=obj, secret=sub.cleaned_data.get("secret") or None, bump_version=False)
                warn_about_keys(request, [sub])
            else:
                save_override(override=obj, bump_version=False)
            if adding:
                formset.new_objects.append(obj)
            else:
                formset.changed_objects.append((obj, sub.changed_data))

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Overrides, keys, exports and runs belong to the deployment; their read-only admins
        # must not block whoever may delete the deployment itself.
        if all(self.has_delete_permission(request, obj) for obj in objs):
            perms_needed = set()
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Deployment) -> None:
        delete_deployment(deployment=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in queryset:
            delete_deployment(deployment=deployment)

    @admin.action(
        description=_("Download definitions of selected deployments (JSON, no secrets)"),
        permissions=["download"],
    )
    def export_definitions(
        self, request: HttpRequest, queryset: QuerySet[Deployment]
    ) -> HttpResponse | None:
        """Download the selected deployments in the import format; secrets are never included."""
        selected = list(queryset)
        if not may_act_on(
            self,
            request,
            selected,
            action=Action.VIEW,
            refused_message=_("You may not download %(slugs)s; nothing was downloaded."),
        ):
            return None
        payload = portable.export_definitions(deployments=selected)
        response = HttpResponse(portable.dump_payload(payload), content_type="application/json")
        response["Content-Disposition"] = 'attachment; filename="deployments.json"'
        return response


# --- Keys ---------------------------------------------------------------------------------------


class KeyRotationInline(ScopedInline):
    """Rotation history of a key: who replaced it and when, never the value."""

    model = KeyRotation
    fields = ("rotated_at", "rotated_by", "previous_secret", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False
    # Asked about the key; history is written by rotations only, never by hand.
    team_path = "deployment__team"
    roles = {"view": Action.VIEW}

    @admin.display(description=_("previous secret"))
    def previous_secret(self, obj: KeyRotation) -> str:
        return keyring.masked(obj.previous_last4)


@admin.register(Key)
class KeyAdmin(KeyDisplayMixin, SecretFormsAdmin):
    form = StandaloneKeyForm
    inlines = [KeyRotationInline]
    team_path = "deployment__team"
    roles = viewed_and_managed(Action.MANAGE_KEYS)
    list_display = (
        "deployment",
        "role",
        "label",
        "masked_secret",
        "created_at",
        "rotated_at",
        "last_validation",
    )
    list_filter = (("deployment__team", VisibleTeamFilter), "role")
    search_fields = ("label", "deployment__slug", "deployment__name")
    list_select_related = ("deployment", "deployment__team")
    actions = [delete_selected]
    readonly_fields = (
        "masked_secret",
        "created_at",
        "created_by",
        "rotated_at",
        "rotated_by",
        "last_validation",
        "last_validation_detail",
    )

    def get_fields(self, request: HttpRequest, obj: Key | None = None) -> tuple[str, ...]:
        fields = ["deployment", "role", "label", "custom_format"]
        if obj is None or self.has_change_permission(request, obj):
            fields.append("secret")
        return (*fields, *self.readonly_fields)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Key]:
        return Key.objects.visible_to(request.user).select_related("deployment__team")

    def formfield_for_foreignkey(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField[Any] | None:
        if db_field.name == "deployment":
            kwargs["queryset"] = Deployment.objects.filter(
                team__in=teams_where(request.user, Action.MANAGE_KEYS)
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(
        self, request: HttpRequest, obj: Key, form: forms.ModelForm[Key], change: bool
    ) -> None:
        save_key(key=obj, secret=form.cleaned_data.get("secret") or None)
        warn_about_keys(request, [form])

    def delete_model(self, request: HttpRequest, obj: Key) -> None:
        delete_key(key=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Key]) -> None:
        for key in queryset.select_related("deployment"):
            delete_key(key=key)


# --- Teams and memberships ----------------------------------------------------------------------


@admin.register(Team)
class TeamAdmin(ScopedAdmin):
    form = TeamForm
    list_display = ("name", "slug", "require_owner_2fa", "created_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    actions = [delete_selected]
    team_path = ""  # the object asked about is the team
    # Owners of a team (and superusers) may create teams; the creator becomes owner. Deleting
    # a team (and its history) is the server administrator's call.
    roles = {**viewed_and_managed(Action.MANAGE_MEMBERS), "delete": Action.ADMINISTER}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Team]:
        return teams_where(request.user, Action.VIEW)

    def save_model(
        self, request: HttpRequest, obj: Team, form: forms.ModelForm[Team], change: bool
    ) -> None:
        if change:
            save_team(team=obj)
        else:
            created = create_team(
                name=obj.name, slug=obj.slug, require_owner_2fa=obj.require_owner_2fa
            )
            obj.pk = created.pk
            obj.created_at = created.created_at

    def delete_model(self, request: HttpRequest, obj: Team) -> None:
        delete_team(team=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Team]) -> None:
        for team in queryset:
            delete_team(team=team)


@admin.register(Membership)
class MembershipAdmin(ScopedAdmin):
    list_display = ("user", "team", "role", "created_at")
    list_filter = (("team", VisibleTeamFilter), "role")
    search_fields = ("user__username", "team__slug", "team__name")
    list_select_related = ("user", "team")
    actions = [delete_selected]
    roles = viewed_and_managed(Action.MANAGE_MEMBERS)

    def get_form(
        self,
        request: HttpRequest,
        obj: Membership | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> type[forms.ModelForm[Membership]]:
        kwargs["form"] = MembershipChangeForm if obj is not None else MembershipAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Membership | None = None) -> tuple[str, ...]:
        return ("user", "team", "role") if obj is not None else ("username", "team", "role")

    def get_readonly_fields(
        self, request: HttpRequest, obj: Membership | None = None
    ) -> tuple[str, ...]:
        return ("user", "team") if obj is not None else ()

    def get_queryset(self, request: HttpRequest) -> QuerySet[Membership]:
        return Membership.objects.filter(
            team__in=teams_where(request.user, Action.VIEW)
        ).select_related("user", "team")

    def formfield_for_foreignkey(
        self, db_field: Any, request: HttpRequest, **kwargs: Any
    ) -> forms.ModelChoiceField[Any] | None:
        if db_field.name == "team":
            kwargs["queryset"] = teams_where(request.user, Action.MANAGE_MEMBERS)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for membership in objs:
            try:
                check_keeps_an_owner(membership=membership)
            except ValidationError as exc:
                protected = [*protected, *exc.messages]
        return deleted, counts, perms_needed, protected

    def save_model(
        self, request: HttpRequest, obj: Membership, form: forms.ModelForm[Membership], change: bool
    ) -> None:
        if change:
            change_membership(membership=obj, role=obj.role)
            return
        created = add_membership(team=obj.team, user=form.cleaned_data["user"], role=obj.role)
        obj.pk, obj.user, obj.created_at = created.pk, created.user, created.created_at

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        remove_membership(membership=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset:
            remove_membership(membership=membership)
