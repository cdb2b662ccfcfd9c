"""The guard every bulk deployment action runs first: something selected, all of it allowed."""

from django.contrib import messages
from django.utils.translation import gettext

from routes.permissions import Action, refused_slugs


def may_act_on(modeladmin, request, deployments, *, action: Action, refused_message: str) -> bool:
    """Return True when deployments is not empty and user may perform action on each of them.

    Otherwise tell the user why (refused_message takes %(slugs)s) and return False; a bulk
    action then changes nothing.
    """
    if not deployments:
        modeladmin.message_user(request, gettext("No deployment selected."), messages.WARNING)
        return False
    refused = refused_slugs(request.user, action, deployments)
    if refused:
        modeladmin.message_user(
            request, refused_message % {"slugs": ", ".join(refused)}, messages.ERROR
        )
        return False
    return True
