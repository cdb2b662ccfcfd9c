"""CPAMP first-setup values: the one page that shows secrets, after an explicit, audited owner POST.

CPAMP's first setup (the seed, "CPAMP First Setup") asks for the Admin Key, the CPA URL and the
CPA Management Key; CPA needs the same management key in ``remote-management.secret-key`` with
``allow-remote: true``. GET explains what will be shown; only POST reveals, with no-store caching.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache

from routes import audit
from routes import keys as keyring
from routes.admin.options import DeploymentPages, visible_deployment
from routes.auth import enrol_url, pending_2fa_teams
from routes.models import Deployment, Key
from routes.permissions import Action, can, refusal

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# Shown in the order CPAMP's first-setup form asks for them.
SETUP_ROLES = (keyring.CPAMP_ADMIN, keyring.CPA_MANAGEMENT)
MISSING_HINTS = {
    keyring.CPAMP_ADMIN: _(
        "No CPAMP Admin Key is stored for this deployment. CPAMP prints it in its startup log "
        "(cpamp_… or cmp_admin_…); add it under Keys on the deployment page."
    ),
    keyring.CPA_MANAGEMENT: _(
        "No CPA Management Key is stored for this deployment. It is CPA's "
        "remote-management.secret-key; add it under Keys on the deployment page."
    ),
}


@dataclass(frozen=True)
class SetupValue:
    """One first-setup value: its label and either the clear value or why there is none."""

    role: str
    label: StrOrPromise
    value: str = ""
    problem: str = ""


def reveal_setup_values(*, deployment: Deployment) -> list[SetupValue]:
    """Return the Admin Key and the CPA Management Key of deployment, clear or explained."""
    stored = {k.role: k for k in Key.objects.filter(deployment=deployment, role__in=SETUP_ROLES)}
    values = []
    for role in SETUP_ROLES:
        label = keyring.ROLE_LABELS[role]
        key = stored.get(role)
        if key is None:
            values.append(SetupValue(role, label, problem=str(MISSING_HINTS[role])))
            continue
        try:
            values.append(SetupValue(role, label, value=key.reveal()))
        except keyring.DecryptionError:
            values.append(
                SetupValue(
                    role,
                    label,
                    problem=str(
                        _(
                            "The stored %(label)s cannot be decrypted with the configured "
                            "encryption keys (was CONSOLE_ENCRYPTION_KEYS changed without "
                            "keeping the old key?). Set the key again."
                        )
                        % {"label": label}
                    ),
                )
            )
    return values


def cpa_config_snippet(management_key: str) -> str:
    """Return CPA's remote-management block for config.yaml, with the key safely quoted."""
    # A JSON string is a valid YAML double-quoted scalar, so any character is escaped correctly.
    return f"remote-management:\n  secret-key: {json.dumps(management_key)}\n  allow-remote: true\n"


def first_setup_link(request: HttpRequest, deployment: Deployment) -> list[tuple[str, str]]:
    """A button to the first-setup page, for users who may see the values."""
    if can(request.user, Action.MANAGE_KEYS, deployment.team_id):
        return [
            (
                str(_("CPAMP first-setup values")),
                reverse("admin:routes_deployment_first_setup", args=[deployment.pk]),
            )
        ]
    return []


class FirstSetupPages(DeploymentPages):
    """The deployment admin's first-setup page: GET explains, an owner's POST reveals."""

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:pk>/first-setup/",
                self.admin_site.admin_view(self.first_setup_view),
                name="routes_deployment_first_setup",
            ),
            *super().get_urls(),
        ]

    def page_links(self, request: HttpRequest, deployment: Deployment) -> list[tuple[str, str]]:
        return [*first_setup_link(request, deployment), *super().page_links(request, deployment)]

    @method_decorator(never_cache)
    def first_setup_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """GET: what will be shown and to whom. POST (owners): the values, audited."""
        deployment = visible_deployment(request, pk)
        user = request.user
        context = self.page_context(
            request,
            deployment,
            title=_("CPAMP first-setup values"),
            panel_url=f"{deployment.base_url}/management.html",
            cpa_url=deployment.cpamp_cpa_url,
            cpa_panel_mode=deployment.mode == Deployment.Mode.CPA_PANEL,
        )
        if not can(user, Action.MANAGE_KEYS, deployment.team):
            if any(t.pk == deployment.team_id for t in pending_2fa_teams(user)):
                # An owner of a 2FA-only team: explain the refusal instead of a bare 403.
                context.update({"needs_2fa": True, "enrol_url": enrol_url()})
                return TemplateResponse(
                    request, "admin/routes/first_setup.html", context, status=403
                )
            raise refusal(user, Action.MANAGE_KEYS, deployment.team_id)
        if request.method == "POST":
            values = reveal_setup_values(deployment=deployment)
            revealed = [v.role for v in values if v.value]
            audit.record(
                action="key.reveal",
                team=deployment.team,
                obj=deployment,
                changes={
                    "purpose": "cpamp_first_setup",
                    "revealed": revealed,
                    "missing": [v.role for v in values if not v.value],
                },
            )
            management = next(
                (v.value for v in values if v.role == keyring.CPA_MANAGEMENT and v.value), ""
            )
            context.update(
                {
                    "revealed": True,
                    "values": values,
                    "snippet": cpa_config_snippet(management) if management else "",
                }
            )
        return TemplateResponse(request, "admin/routes/first_setup.html", context)
