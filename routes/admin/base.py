"""Core admins: teams, memberships, deployments with their overrides and write-only keys.

Staff users hold no Django model permissions: every admin here asks routes.permissions, scopes
its queryset to the user's teams and answers 404 for another team's objects. Mutations go
through routes.actions so that validation, versions and the audit trail stay in one place.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Exists, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import NoReverseMatch, path, reverse
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters

from routes import actions, destinations, portable, verify
from routes import keys as keyring
from routes.admin import registry
from routes.admin.bulk import may_act_on
from routes.admin.verification import last_run
from routes.audit import client_ip
from routes.forms import (
    DeploymentForm,
    KeyForm,
    KeyInlineFormSet,
    MembershipAddForm,
    MembershipChangeForm,
    RouteOverrideForm,
    StandaloneKeyForm,
    TeamForm,
)
from routes.models import Deployment, Key, KeyRotation, Membership, RouteOverride, Team
from routes.permissions import Action, can, has_any_membership, teams_where


def _any_team(request, action: Action) -> bool:
    """Return whether the user may perform action in at least one team (memoised per request)."""
    # The admin asks this for every model, action and inline on a page: ask the database once.
    memo = request.__dict__.setdefault("_console_any_team", {})
    if action not in memo:
        memo[action] = teams_where(request.user, action).exists()
    return memo[action]


class VisibleTeamFilter(admin.RelatedFieldListFilter):
    """A team filter that lists only the teams the user can see."""

    def field_choices(self, field, request, model_admin):
        return [(team.pk, str(team)) for team in teams_where(request.user, Action.VIEW)]


@admin.action(description=_("Delete selected %(verbose_name_plural)s"), permissions=["delete"])
def delete_selected(modeladmin, request, queryset):
    """Django's delete_selected, refused unless the user may delete every selected object."""
    refused = [str(obj) for obj in queryset if not modeladmin.has_delete_permission(request, obj)]
    if refused:
        modeladmin.message_user(
            request,
            _("You may not delete %(objects)s; nothing was deleted.")
            % {"objects": ", ".join(refused)},
            messages.ERROR,
        )
        return None
    return django_delete_selected(modeladmin, request, queryset)


class ScopedAdmin(admin.ModelAdmin):
    """Objects outside the user's teams do not exist for them: 404, not 403."""

    view_on_site = False

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(_("No such object in your teams."))
        return obj

    def has_module_permission(self, request):
        return has_any_membership(request.user)


# --- Deployments --------------------------------------------------------------------------------


class RouteOverrideInline(admin.TabularInline):
    model = RouteOverride
    form = RouteOverrideForm
    fields = ("match", "path", "target", "enabled", "position", "note")
    extra = 1

    def has_view_permission(self, request, obj=None):
        return (
            can(request.user, Action.VIEW, obj.team_id) if obj else has_any_membership(request.user)
        )

    def has_add_permission(self, request, obj=None):
        return (
            can(request.user, Action.EDIT, obj.team_id)
            if obj
            else _any_team(request, Action.CREATE)
        )

    def has_change_permission(self, request, obj=None):
        return self.has_add_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.has_add_permission(request, obj)


class KeyDisplayMixin:
    """Read-only renderings of a key: never the secret, only its masked form and status."""

    @admin.display(description=_("stored secret"))
    def masked_secret(self, obj):
        return obj.masked if obj and obj.pk else "—"

    @admin.display(description=_("last test"))
    def last_validation(self, obj):
        if not obj or obj.last_validated_at is None:
            return _("never")
        verdict = _("passed") if obj.last_validation_ok else _("failed")
        return f"{verdict} ({obj.last_validated_at:%Y-%m-%d %H:%M})"


class KeyInline(KeyDisplayMixin, admin.TabularInline):
    model = Key
    form = KeyForm
    formset = KeyInlineFormSet
    extra = 1
    verbose_name_plural = _("keys (write-only: secrets are never shown again)")

    def get_fields(self, request, obj=None):
        fields = ["role", "label", "custom_format"]
        if self.has_change_permission(request, obj) or self.has_add_permission(request, obj):
            fields.append("secret")
        fields += ["masked_secret", "rotated_at", "last_validation"]
        if obj is not None and can(request.user, Action.VERIFY, obj.team_id):
            fields.append("test_key")
        return fields

    def get_readonly_fields(self, request, obj=None):
        return ("masked_secret", "rotated_at", "last_validation", "test_key")

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        formset.user = request.user
        return formset

    @admin.display(description=_("test"))
    def test_key(self, obj):
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

    def has_view_permission(self, request, obj=None):
        return (
            can(request.user, Action.VIEW, obj.team_id) if obj else has_any_membership(request.user)
        )

    def has_add_permission(self, request, obj=None):
        # On the add page the team is not chosen yet; the formset checks it on save.
        return (
            can(request.user, Action.MANAGE_KEYS, obj.team_id)
            if obj
            else _any_team(request, Action.MANAGE_KEYS)
        )

    def has_change_permission(self, request, obj=None):
        return self.has_add_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.has_add_permission(request, obj)


@admin.register(Deployment)
class DeploymentAdmin(ScopedAdmin):
    form = DeploymentForm
    inlines = [RouteOverrideInline, KeyInline]
    list_display = (
        "slug",
        "name",
        "team",
        "server_name",
        "mode",
        "tls",
        "key_roles",
        last_run,
        "updated_at",
    )
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
    fieldsets = (
        (None, {"fields": ("name", "slug", "team", "mode", "server_name", "loaded_version")}),
        (
            _("Listening"),
            {
                "fields": (
                    "listen_address",
                    "http_port",
                    "tls",
                    "https_port",
                    "ssl_certificate",
                    "ssl_certificate_key",
                    "http2",
                )
            },
        ),
        (
            _("Upstreams"),
            {"fields": ("topology", "cpa_upstream", "cpamp_upstream", "cpamp_cpa_url", "resolver")},
        ),
        (
            _("Proxy"),
            {
                "fields": (
                    "client_max_body_size",
                    "proxy_read_timeout",
                    "proxy_send_timeout",
                    "route_tracing",
                )
            },
        ),
        (
            _("Versions and verification"),
            {"fields": ("cpa_version", "verification_base_url", "key_destination")},
        ),
        (_("Notes"), {"fields": ("notes",)}),
        (
            _("History"),
            {
                "fields": ("version", "created_at", "created_by", "updated_at", "updated_by"),
                "classes": ("collapse",),
            },
        ),
    )

    # Key secrets arrive in these forms: keep them out of Django's error reports.
    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    # Feature modules add actions through routes.admin.registry.deployment_actions.
    @property
    def actions(self):
        return [delete_selected, export_definitions, *registry.deployment_actions]

    def get_urls(self):
        extra = [
            path(
                "<path:object_id>/confirm-destination/",
                self.admin_site.admin_view(self.confirm_destination_view),
                name="routes_deployment_confirm_destination",
            )
        ]
        for patterns in registry.deployment_urls:
            extra.extend(patterns(self))
        return extra + super().get_urls()

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        # A fresh class per request: the user whose role decides where keys may go.
        form.user = request.user
        return form

    def get_queryset(self, request):
        keys = Key.objects.filter(deployment=OuterRef("pk"))
        api_keys = (
            keys.filter(role=keyring.CPA_API)
            .order_by()
            .values("deployment")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return verify.annotate_last_run(
            Deployment.objects.visible_to(request.user)
            .select_related("team")
            .annotate(
                has_admin_key=Exists(keys.filter(role=keyring.CPAMP_ADMIN)),
                has_management_key=Exists(keys.filter(role=keyring.CPA_MANAGEMENT)),
                api_key_count=Coalesce(Subquery(api_keys, output_field=IntegerField()), Value(0)),
            )
        )

    def get_fieldsets(self, request, obj=None):
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
        fieldsets = []
        for name, options in super().get_fieldsets(request, obj):
            fields = tuple(swap.get(f, f) for f in options["fields"] if f not in drop)
            if fields:
                fieldsets.append((name, {**options, "fields": fields}))
        return fieldsets

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "team":
            kwargs["queryset"] = teams_where(request.user, Action.CREATE)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description=_("keys"))
    def key_roles(self, obj):
        present = []
        if getattr(obj, "has_admin_key", False):
            present.append(str(_("CPAMP admin")))
        if getattr(obj, "has_management_key", False):
            present.append(str(_("CPA management")))
        count = getattr(obj, "api_key_count", 0)
        if count:
            present.append(str(_("CPA API ×%(n)d") % {"n": count}))
        return ", ".join(present) or "—"

    def _key_destination_html(self, obj, *, confirmable: bool):
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
        who = ""
        if obj.keys_confirmed_at is not None:
            who = format_html(
                "<p>{}</p>",
                _("Last confirmed %(at)s by %(who)s.")
                % {
                    "at": date_format(localtime(obj.keys_confirmed_at), "Y-m-d H:i"),
                    "who": obj.keys_confirmed_by or _("the server administrator"),
                },
            )
        button = ""
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
    def key_destination(self, obj):
        return self._key_destination_html(obj, confirmable=False)

    @admin.display(description=_("where keys go"))
    def key_destination_confirmable(self, obj):
        return self._key_destination_html(obj, confirmable=True)

    @method_decorator(sensitive_post_parameters())
    def confirm_destination_view(self, request, object_id):
        """POST (owners): confirm the origins keys go to now, as shown on the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        deployment = self.get_object(request, object_id)
        if not can(request.user, Action.SET_KEY_DESTINATION, deployment.team_id):
            raise PermissionDenied
        shown = request.POST.getlist("confirm_origins")
        try:
            origins = destinations.confirm_destination(
                deployment=deployment, actor=request.user, ip=client_ip(request), expected=shown
            )
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            self.message_user(
                request,
                _("Keys may now be sent to %(origins)s.") % {"origins": ", ".join(origins) or "—"},
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:routes_deployment_change", args=[deployment.pk]))

    # Permissions: one question to routes.permissions each.
    def has_view_permission(self, request, obj=None):
        if obj is None:
            return has_any_membership(request.user)
        return can(request.user, Action.VIEW, obj.team_id)

    def has_add_permission(self, request):
        return _any_team(request, Action.CREATE)

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return _any_team(request, Action.EDIT)
        return can(request.user, Action.EDIT, obj.team_id)

    def has_delete_permission(self, request, obj=None):
        # Deleting a deployment destroys its keys, so it takes the role that manages keys.
        if obj is None:
            return _any_team(request, Action.MANAGE_KEYS)
        return can(request.user, Action.MANAGE_KEYS, obj.team_id)

    def has_export_permission(self, request):
        return _any_team(request, Action.EXPORT)

    def has_verify_permission(self, request):
        return _any_team(request, Action.VERIFY)

    def has_manage_keys_permission(self, request):
        return _any_team(request, Action.MANAGE_KEYS)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        links = []
        if obj is not None:
            for provider in registry.deployment_links:
                links.extend(provider(request, obj))
        context.update(
            {
                "console_links": links,
                "version_warnings": obj.version_warnings() if obj is not None else [],
                "recent_runs_html": verify.recent_runs_html(obj) if obj is not None else "",
                "conflict": getattr(context.get("adminform").form, "conflict", None)
                if context.get("adminform")
                else None,
            }
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(self, request, obj, form, change):
        stored = Deployment.objects.filter(pk=obj.pk).first() if change else None
        before = destinations.key_origins(stored) if stored is not None else []
        actions.save_deployment(
            deployment=obj,
            actor=request.user,
            expected_version=form.cleaned_data.get("loaded_version") if change else None,
            ip=client_ip(request),
        )
        pending = destinations.confirm_own_change(
            deployment=obj, before=before, actor=request.user, ip=client_ip(request)
        )
        if pending:
            self.message_user(request, destinations.pending_message(pending), messages.WARNING)

    def save_related(self, request, form, formsets, change):
        deployment = form.instance
        loaded = form.cleaned_data.get("loaded_version")
        # Override and key edits are edits of the deployment: they move its version once.
        if change and deployment.version == loaded and any(fs.has_changed() for fs in formsets):
            actions.claim_version(
                deployment=deployment, expected_version=loaded, actor=request.user
            )
        super().save_related(request, form, formsets, change)
        for warning in deployment.version_warnings():
            self.message_user(request, warning, messages.WARNING)

    def save_formset(self, request, form, formset, change):
        deleted = formset.deleted_forms
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        ip = client_ip(request)
        # Deletions first: a deleted key frees its role and its secret for a new row.
        for sub in deleted:
            if not sub.instance.pk:
                continue
            if formset.model is Key:
                actions.delete_key(key=sub.instance, actor=request.user, ip=ip, bump_version=False)
            else:
                actions.delete_override(
                    override=sub.instance, actor=request.user, ip=ip, bump_version=False
                )
            formset.deleted_objects.append(sub.instance)
        for sub in formset.forms:
            if sub in deleted or not sub.has_changed():
                continue
            obj = sub.instance
            obj.deployment = form.instance
            adding = obj.pk is None
            if formset.model is Key:
                actions.save_key(
                    key=obj,
                    secret=sub.cleaned_data.get("secret") or None,
                    actor=request.user,
                    ip=ip,
                    bump_version=False,
                )
            else:
                actions.save_override(override=obj, actor=request.user, ip=ip, bump_version=False)
            if adding:
                formset.new_objects.append(obj)
            else:
                formset.changed_objects.append((obj, sub.changed_data))

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Overrides, keys, exports and runs belong to the deployment; their read-only admins
        # must not block whoever may delete the deployment itself.
        if all(self.has_delete_permission(request, obj) for obj in objs):
            perms_needed = set()
        return deleted, counts, perms_needed, protected

    def delete_model(self, request, obj):
        actions.delete_deployment(deployment=obj, actor=request.user, ip=client_ip(request))

    def delete_queryset(self, request, queryset):
        for deployment in queryset:
            actions.delete_deployment(
                deployment=deployment, actor=request.user, ip=client_ip(request)
            )


@admin.action(
    description=_("Download definitions of selected deployments (JSON, no secrets)"),
    permissions=["export"],
)
def export_definitions(modeladmin, request, queryset):
    """Download the selected deployments in the import format; secrets are never included."""
    selected = list(queryset)
    if not may_act_on(
        modeladmin,
        request,
        selected,
        action=Action.EXPORT,
        refused_message=_("You may not export %(slugs)s; nothing was exported."),
    ):
        return None
    payload = portable.export_definitions(
        deployments=selected, actor=request.user, ip=client_ip(request)
    )
    response = HttpResponse(portable.dump_payload(payload), content_type="application/json")
    response["Content-Disposition"] = 'attachment; filename="deployments.json"'
    return response


# --- Keys ---------------------------------------------------------------------------------------


class KeyRotationInline(admin.TabularInline):
    """Rotation history of a key: who replaced it and when, never the value."""

    model = KeyRotation
    fields = ("rotated_at", "rotated_by", "previous_secret", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description=_("previous secret"))
    def previous_secret(self, obj):
        return keyring.masked(obj.previous_last4)

    def has_view_permission(self, request, obj=None):
        return obj is None or can(request.user, Action.VIEW, obj.deployment.team_id)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Key)
class KeyAdmin(KeyDisplayMixin, ScopedAdmin):
    form = StandaloneKeyForm
    inlines = [KeyRotationInline]
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

    # Key secrets arrive in these forms: keep them out of Django's error reports.
    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_fields(self, request, obj=None):
        fields = ["deployment", "role", "label", "custom_format"]
        if obj is None or self.has_change_permission(request, obj):
            fields.append("secret")
        return fields + list(self.readonly_fields)

    def get_queryset(self, request):
        return Key.objects.visible_to(request.user).select_related("deployment__team")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "deployment":
            kwargs["queryset"] = Deployment.objects.filter(
                team__in=teams_where(request.user, Action.MANAGE_KEYS)
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return has_any_membership(request.user)
        return can(request.user, Action.VIEW, obj.deployment.team_id)

    def has_add_permission(self, request):
        return _any_team(request, Action.MANAGE_KEYS)

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return _any_team(request, Action.MANAGE_KEYS)
        return can(request.user, Action.MANAGE_KEYS, obj.deployment.team_id)

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        actions.save_key(
            key=obj,
            secret=form.cleaned_data.get("secret") or None,
            actor=request.user,
            ip=client_ip(request),
        )

    def delete_model(self, request, obj):
        actions.delete_key(key=obj, actor=request.user, ip=client_ip(request))

    def delete_queryset(self, request, queryset):
        for key in queryset.select_related("deployment"):
            actions.delete_key(key=key, actor=request.user, ip=client_ip(request))


# --- Teams and memberships ----------------------------------------------------------------------


@admin.register(Team)
class TeamAdmin(ScopedAdmin):
    form = TeamForm
    list_display = ("name", "slug", "require_owner_2fa", "created_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    actions = [delete_selected]

    def get_queryset(self, request):
        return teams_where(request.user, Action.VIEW)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return has_any_membership(request.user)
        return can(request.user, Action.VIEW, obj)

    def has_add_permission(self, request):
        # Superusers and owners of a team may create teams; the creator becomes owner.
        return _any_team(request, Action.MANAGE_MEMBERS) or request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return _any_team(request, Action.MANAGE_MEMBERS)
        return can(request.user, Action.MANAGE_MEMBERS, obj)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def save_model(self, request, obj, form, change):
        if change:
            actions.save_team(team=obj, actor=request.user, ip=client_ip(request))
        else:
            created = actions.create_team(
                name=obj.name,
                slug=obj.slug,
                require_owner_2fa=obj.require_owner_2fa,
                actor=request.user,
                ip=client_ip(request),
            )
            obj.pk = created.pk
            obj.created_at = created.created_at

    def delete_model(self, request, obj):
        actions.delete_team(team=obj, actor=request.user, ip=client_ip(request))

    def delete_queryset(self, request, queryset):
        for team in queryset:
            actions.delete_team(team=team, actor=request.user, ip=client_ip(request))


@admin.register(Membership)
class MembershipAdmin(ScopedAdmin):
    list_display = ("user", "team", "role", "created_at")
    list_filter = (("team", VisibleTeamFilter), "role")
    search_fields = ("user__username", "team__slug", "team__name")
    list_select_related = ("user", "team")
    actions = [delete_selected]

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = MembershipChangeForm if obj is not None else MembershipAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ("user", "team", "role") if obj is not None else ("username", "team", "role")

    def get_readonly_fields(self, request, obj=None):
        return ("user", "team") if obj is not None else ()

    def get_queryset(self, request):
        return Membership.objects.filter(
            team__in=teams_where(request.user, Action.VIEW)
        ).select_related("user", "team")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "team":
            kwargs["queryset"] = teams_where(request.user, Action.MANAGE_MEMBERS)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for membership in objs:
            try:
                actions.check_keeps_an_owner(membership=membership)
            except ValidationError as exc:
                protected = [*protected, *exc.messages]
        return deleted, counts, perms_needed, protected

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return has_any_membership(request.user)
        return can(request.user, Action.VIEW, obj.team_id)

    def has_add_permission(self, request):
        return _any_team(request, Action.MANAGE_MEMBERS)

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return _any_team(request, Action.MANAGE_MEMBERS)
        return can(request.user, Action.MANAGE_MEMBERS, obj.team_id)

    def has_delete_permission(self, request, obj=None):
        return self.has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        ip = client_ip(request)
        if change:
            actions.change_membership(membership=obj, role=obj.role, actor=request.user, ip=ip)
            return
        created = actions.add_membership(
            team=obj.team, user=form.cleaned_data["user"], role=obj.role, actor=request.user, ip=ip
        )
        obj.pk, obj.user, obj.created_at = created.pk, created.user, created.created_at

    def delete_model(self, request, obj):
        actions.remove_membership(membership=obj, actor=request.user, ip=client_ip(request))

    def delete_queryset(self, request, queryset):
        for membership in queryset:
            actions.remove_membership(
                membership=membership, actor=request.user, ip=client_ip(request)
            )
