"""Guards of bulk actions: every selected id is a real id, and all of it is allowed.

``ActionSelectionMiddleware`` answers 400 for a changelist POST whose ``_selected_action`` holds
something that is not an id of the model (``abc``, or a number the database cannot store); left
to the admin, such a value raises deep in the query and becomes a 500. ``may_act_on`` is what
every bulk deployment action asks first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import BadRequest, ValidationError
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext

from routes.models import Deployment
from routes.permissions import Action, refused_slugs

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise


def valid_pk(model: type[Model], value: Any) -> bool:
    """Return True when value parses as a primary key of model that the database can store."""
    field = model._meta.pk
    try:
        # The validators hold the backend's integer range: 99999999999999999999 fails here
        # instead of overflowing in the database driver.
        field.run_validators(field.to_python(value))
    except (ValidationError, TypeError, ValueError, OverflowError):
        return False
    return True


class ActionSelectionMiddleware:
    """Refuse (400) a POST to a ModelAdmin view whose selected ids are not ids of its model."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> None:
        """Raise BadRequest for a ModelAdmin POST that selects an impossible id; else None."""
        # ModelAdmin.get_urls() marks every view it wraps with its model_admin.
        model_admin = getattr(view_func, "model_admin", None)
        if request.method != "POST" or model_admin is None:
            return None
        selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
        if not all(valid_pk(model_admin.model, value) for value in selected):
            raise BadRequest(gettext("The selection holds an object id that cannot exist."))
        return None


def refuse_any(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    refused: Sequence[str],
    *,
    message: StrOrPromise,
    key: str,
) -> bool:
    """Return True (and tell the user, naming them under %(key)s) when anything was refused."""
    if not refused:
        return False
    modeladmin.message_user(request, message % {key: ", ".join(refused)}, messages.ERROR)
    return True


def may_act_on(
    modeladmin: admin.ModelAdmin[Any],
    request: HttpRequest,
    deployments: Sequence[Deployment],
    *,
    action: Action,
    refused_message: StrOrPromise,
) -> bool:
    """Return True when deployments is not empty and user may perform action on each of them.

    Otherwise tell the user why (refused_message takes %(slugs)s) and return False; a bulk
    action then changes nothing.
    """
    if not deployments:
        modeladmin.message_user(request, gettext("No deployment selected."), messages.WARNING)
        return False
    refused = refused_slugs(request.user, action, deployments)
    return not refuse_any(modeladmin, request, refused, message=refused_message, key="slugs")
