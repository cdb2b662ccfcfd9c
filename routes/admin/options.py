"""The console's admin base: who may do what as a table, other teams' objects as 404s, one trail.

Staff users hold no Django model permissions. Each admin names the routes.permissions Action
that every operation needs (``roles``) and the way from the object it is asked about to that
object's team (``team_path``); routes.permissions decides. An operation missing from the table
is refused to everyone, superusers included (read-only and append-only admins).

Django's own LogEntry is neither written nor read: the workflows record every change in
routes.audit, and an object's "History" page shows that trail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.contrib import admin
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import PAGE_VAR
from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.text import capfirst
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters

from routes.admin.bulk import refuse_any, valid_pk
from routes.models import AuditEvent, Deployment
from routes.permissions import (
    Action,
    RoleRequired,
    can,
    can_somewhere,
    refusal,
    require,
    teams_where,
)

if TYPE_CHECKING:
    from django.db.models.fields import Field
    from django_stubs_ext import StrOrPromise

    from routes.permissions import AnyUser

HISTORY_PAGE_SIZE = 100
# Django's own operations; any other key of a roles table becomes has_<key>_permission(),
# which is how admin actions declared with permissions=["export"] are checked.
STANDARD_OPERATIONS = frozenset({"view", "add", "change", "delete"})


def visible_events(user: AnyUser) -> QuerySet[AuditEvent]:
    """Return the audit events user may read: their teams' and their own; superusers all."""
    events = AuditEvent.objects.all()
    if user.is_superuser:
        return events
    return events.filter(Q(team__in=teams_where(user, Action.VIEW)) | Q(actor_id=user.pk))


def visible_deployment(
    request: HttpRequest, object_id: str | int, *, action: Action = Action.VIEW
) -> Deployment:
    """Return the user's deployment object_id (else 404) if they may do action on it (else 403).

    Another team's deployment and an id that does not exist get the same 404, so a page never
    tells which deployments exist elsewhere.
    """
    deployment = None
    if valid_pk(Deployment, object_id):
        deployment = (
            Deployment.objects.visible_to(request.user)
            .select_related("team")
            .filter(pk=object_id)
            .first()
        )
    if deployment is None:
        raise Http404(gettext("No such deployment in your teams."))
    require(request.user, action, deployment.team_id)
    return deployment


def viewed_and_managed(manage: Action) -> dict[str, Action]:
    """Return the roles table of objects members view and ``manage`` adds, changes, deletes."""
    return {"view": Action.VIEW, "add": manage, "change": manage, "delete": manage}


def _table_check(operation: str) -> Callable[..., bool]:
    def check(self: RoleTable, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.permitted(request, operation, obj)

    check.__name__ = f"has_{operation}_permission"
    check.__doc__ = f"Return whether the user may {operation} (from the admin's roles table)."
    return check


class RoleTable:
    """has_*_permission() of a ModelAdmin or an inline, answered from its ``roles`` table.

    For an inline, the object Django asks about is the parent (the deployment of a key row),
    so ``team_path`` starts there.
    """

    # operation ("view", "add", "change", "delete" or an action's permission) -> Action
    roles: ClassVar[Mapping[str, Action]] = {}
    # Django lookup from the object asked about to its team; "" when it is the team itself.
    team_path: ClassVar[str] = "team"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for operation in cls.roles.keys() - STANDARD_OPERATIONS:
            if not hasattr(cls, f"has_{operation}_permission"):
                setattr(cls, f"has_{operation}_permission", _table_check(operation))

    def team_of(self, obj: Model) -> int | None:
        """Return the id of obj's team, following team_path."""
        if not self.team_path:
            return obj.pk
        *hops, last = self.team_path.split("__")
        target: Any = obj
        for hop in hops:
            target = getattr(target, hop)
        return getattr(target, f"{last}_id")

    def permitted(self, request: HttpRequest, operation: str, obj: Model | None = None) -> bool:
        """Return whether the user may do operation on obj's team (without obj: in any team)."""
        action = self.roles.get(operation)
        if action is None:
            return False
        if obj is None:
            return can_somewhere(request.user, action)
        return can(request.user, action, self.team_of(obj))

    def refusal(
        self, request: HttpRequest, operation: str, obj: Model | None = None
    ) -> RoleRequired:
        """Return the PermissionDenied that says which role operation on obj needs."""
        action = self.roles.get(operation)
        # An operation outside the table is refused to every role, whatever the team.
        team = self.team_of(obj) if obj is not None and action is not None else None
        return refusal(request.user, action, team)

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Return whether the index lists this model: the user may view it in some team."""
        return self.permitted(request, "view")

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Return whether the user may view obj (without obj: the changelist)."""
        return self.permitted(request, "view", obj)

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Return whether the user may add (for an inline: rows to the parent obj)."""
        return self.permitted(request, "add", obj)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Return whether the user may change obj (without obj: some object)."""
        return self.permitted(request, "change", obj)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Return whether the user may delete obj (without obj: some object)."""
        return self.permitted(request, "delete", obj)


class TrailAdmin(admin.ModelAdmin):
    """A ModelAdmin whose "History" page shows the object's events of the audit trail."""

    object_history_template = "admin/routes/object_history.html"

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Show the object's events of the audit trail (Django's shows its LogEntry rows)."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            # Django's own answer for a missing object (a private helper, not in the stubs).
            return self._get_obj_does_not_exist_redirect(  # type: ignore[attr-defined]
                request, self.opts, object_id
            )
        if not self.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        events = (
            visible_events(request.user)
            .filter(object_type=self.opts.model_name, object_id=str(obj.pk))
            .order_by("created_at", "id")
        )
        paginator = self.get_paginator(request, events, HISTORY_PAGE_SIZE)
        page = paginator.get_page(request.GET.get(PAGE_VAR, 1))
        context = {
            **self.admin_site.each_context(request),
            "title": _("Change history: %s") % obj,
            "subtitle": None,
            "action_list": page,
            "page_range": paginator.get_elided_page_range(page.number),
            "page_var": PAGE_VAR,
            "pagination_required": paginator.count > HISTORY_PAGE_SIZE,
            "module_name": str(capfirst(self.opts.verbose_name_plural)),
            "object": obj,
            "opts": self.opts,
            "preserved_filters": self.get_preserved_filters(request),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.object_history_template, context)


class ConsoleAdmin(RoleTable, TrailAdmin):
    """A ModelAdmin guarded by its roles table that leaves the record keeping to routes.audit.

    Django's views refuse with a bare PermissionDenied; these say which role was needed.
    """

    def _explained(
        self,
        request: HttpRequest,
        operation: str,
        object_id: str | None,
        view: Callable[[], HttpResponse],
    ) -> HttpResponse:
        """Return view(); a bare PermissionDenied becomes the RoleRequired of operation."""
        try:
            return view()
        except RoleRequired:
            raise
        except PermissionDenied as exc:
            # Another team's object was already a 404 before any role was asked for.
            obj = self.get_object(request, unquote(object_id)) if object_id else None
            raise self.refusal(request, operation, obj) from exc

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Django's add page; a refusal names the role adding needs."""
        return self._explained(
            request,
            "add",
            None,
            lambda: super(ConsoleAdmin, self).add_view(request, form_url, extra_context),
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """Django's change page; a refusal names the role viewing (or saving) needs."""
        operation = "change" if request.method == "POST" else "view"
        return self._explained(
            request,
            operation,
            object_id,
            lambda: super(ConsoleAdmin, self).change_view(
                request, object_id, form_url, extra_context
            ),
        )

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Django's delete page; a refusal names the role deleting needs."""
        return self._explained(
            request,
            "delete",
            object_id,
            lambda: super(ConsoleAdmin, self).delete_view(request, object_id, extra_context),
        )

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The trail's history page; a refusal names the role viewing needs."""
        return self._explained(
            request,
            "view",
            object_id,
            lambda: super(ConsoleAdmin, self).history_view(request, object_id, extra_context),
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Django's list page; a refusal names the role viewing needs."""
        return self._explained(
            request,
            "view",
            None,
            lambda: super(ConsoleAdmin, self).changelist_view(request, extra_context),
        )

    # The workflows record each change in the audit trail; a LogEntry would be a second trail.
    # Django ignores what these return, though the stubs ask for a LogEntry.
    def log_addition(self, request: HttpRequest, obj: Model, message: Any) -> None:  # type: ignore[override]
        """Write nothing: routes.audit is the one trail."""

    def log_change(self, request: HttpRequest, obj: Model, message: Any) -> None:  # type: ignore[override]
        """Write nothing: routes.audit is the one trail."""

    def log_deletion(self, request: HttpRequest, obj: Model, object_repr: str) -> None:
        """Write nothing: routes.audit is the one trail."""

    def log_deletions(self, request: HttpRequest, queryset: Any) -> None:  # type: ignore[override]
        """Write nothing: routes.audit is the one trail."""


class ScopedAdmin(ConsoleAdmin):
    """Objects outside the user's teams do not exist for them: 404, not 403.

    Its forms know whose role rules apply (``form.user``), for the fields that only some roles
    may set (where keys are sent).
    """

    view_on_site = False
    missing_message = _("No such object in your teams.")

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        """Return the object of the user's teams, else raise 404."""
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(self.missing_message)
        return obj

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[Any]]:
        """Return the admin's form class, made for this request's user."""
        form = super().get_form(request, obj, change=change, **kwargs)
        # A fresh class per request (modelform_factory), so the user never leaks across.
        form.user = request.user  # type: ignore[attr-defined]
        return form


# The page an edit form goes back to once saved (the verification page a fix link came from).
RETURN_VAR = "next"


def with_return(url: str, *, back_to: str, anchor: str = "") -> str:
    """Return url with ?next=back_to (when given) and then #anchor (when given)."""
    if back_to:
        url = f"{url}{'&' if '?' in url else '?'}{urlencode({RETURN_VAR: back_to})}"
    return f"{url}#{anchor}" if anchor else url


def return_target(request: HttpRequest) -> str | None:
    """Return the request's ?next= page if it is a path or URL of this site, else None."""
    target = request.GET.get(RETURN_VAR, "")
    safe = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and safe else None


class ReturnsToNext:
    """A model admin whose add and change forms, opened with ?next=, go back there on "Save".

    The other buttons keep Django's redirect, which keeps the query string (so ?next=) on the
    page it goes to: "Save and continue editing" keeps the way back for the next save.
    """

    def _back(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        target = return_target(request)
        if target is None or not isinstance(response, HttpResponseRedirect):
            return response
        if any(button in request.POST for button in ("_continue", "_addanother", "_saveasnew")):
            return response
        return HttpResponseRedirect(target)

    def response_add(
        self, request: HttpRequest, obj: Any, post_url_continue: str | None = None
    ) -> HttpResponse:
        return self._back(request, super().response_add(request, obj, post_url_continue))  # type: ignore[misc]

    def response_change(self, request: HttpRequest, obj: Any) -> HttpResponse:
        return self._back(request, super().response_change(request, obj))  # type: ignore[misc]


class ProgressAdmin(ScopedAdmin):
    """A scoped admin whose change pages poll ``<id>/progress/`` for progress_data()'s JSON."""

    def progress_data(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        """Return what the page draws while the object's work goes on."""
        raise NotImplementedError

    def get_urls(self) -> list[URLPattern]:
        opts = self.model._meta
        return [
            path(
                "<path:object_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name=f"{opts.app_label}_{opts.model_name}_progress",
            ),
            *super().get_urls(),
        ]

    def progress_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Return progress_data() as JSON (404 for an object of another team)."""
        obj = self.get_object(request, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        return JsonResponse(self.progress_data(request, obj))


class SecretFormsAdmin(ScopedAdmin):
    """A scoped admin whose add and change forms carry key secrets."""

    # Keep the POST data out of Django's error reports.
    @method_decorator(sensitive_post_parameters())
    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """Django's add and change page."""
        return super().changeform_view(request, object_id, form_url, extra_context)


class ScopedInline(RoleTable, admin.TabularInline):
    """A tabular inline guarded by its roles table (asked about the parent object)."""


class DeploymentPages(SecretFormsAdmin):
    """The deployment admin's base; mixins of it add custom pages, buttons and actions.

    Each mixin wires its pages in get_urls() with ``self.admin_site.admin_view`` (in the way of
    django.contrib.auth's UserAdmin) and adds its buttons in page_links().
    """

    def page_links(self, request: HttpRequest, deployment: Deployment) -> list[tuple[str, str]]:
        """Return the (label, url) buttons of the deployment page that the user may use."""
        return []

    def page_context(
        self,
        request: HttpRequest,
        deployment: Deployment | None,
        *,
        title: StrOrPromise,
        **extra: Any,
    ) -> dict[str, Any]:
        """Return the context every custom deployment page starts from."""
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": deployment,
            "deployment": deployment,
            "title": title,
            **extra,
        }


class VisibleTeamFilter(admin.RelatedFieldListFilter):
    """A team filter that lists only the teams the user can see."""

    def field_choices(
        self, field: Field[Any, Any], request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, StrOrPromise]]:
        """Return (id, name) of the teams the user may view."""
        return [(str(team.pk), str(team)) for team in teams_where(request.user, Action.VIEW)]


@admin.action(description=_("Delete selected %(verbose_name_plural)s"), permissions=["delete"])
def delete_selected(
    modeladmin: ConsoleAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> HttpResponse | None:
    """Django's delete_selected, refused unless the user may delete every selected object."""
    refused = [str(obj) for obj in queryset if not modeladmin.has_delete_permission(request, obj)]
    message = gettext("You may not delete %(objects)s; nothing was deleted.")
    if refuse_any(modeladmin, request, refused, message=message, key="objects"):
        return None
    return django_delete_selected(modeladmin, request, queryset)
