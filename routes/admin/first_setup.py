"""CPAMP first-setup values: the one page that shows secrets, after an explicit, audited owner POST.

CPAMP's first setup (the seed, "CPAMP First Setup") asks for the Admin Key, the CPA URL and the
CPA Management Key; CPA needs the same management key in ``remote-management.secret-key`` with
``allow-remote: true``. GET explains what will be shown; only POST reveals, with no-store caching.
"""

import json
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache

from routes import audit
from routes import keys as keyring
from routes.admin import registry
from routes.audit import client_ip
from routes.auth import enrol_url, pending_2fa_teams
from routes.models import Deployment, Key
from routes.permissions import Action, can

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
    label: str
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


def _first_setup_view(model_admin):
    @never_cache
    def view(request, pk):
        deployment = get_object_or_404(
            Deployment.objects.visible_to(request.user).select_related("team"), pk=pk
        )
        user = request.user
        context = {
            **model_admin.admin_site.each_context(request),
            "opts": Deployment._meta,
            "original": deployment,
            "deployment": deployment,
            "title": _("CPAMP first-setup values"),
            "panel_url": f"{deployment.base_url}/management.html",
            "cpa_url": deployment.cpamp_cpa_url,
            "cpa_panel_mode": deployment.mode == Deployment.Mode.CPA_PANEL,
        }
        if not can(user, Action.MANAGE_KEYS, deployment.team):
            if any(t.pk == deployment.team_id for t in pending_2fa_teams(user)):
                # An owner of a 2FA-only team: explain the refusal instead of a bare 403.
                context.update({"needs_2fa": True, "enrol_url": enrol_url()})
                return TemplateResponse(
                    request, "admin/routes/first_setup.html", context, status=403
                )
            raise PermissionDenied
        if request.method == "POST":
            values = reveal_setup_values(deployment=deployment)
            revealed = [v.role for v in values if v.value]
            audit.record(
                action="key.reveal",
                actor=user,
                team=deployment.team,
                obj=deployment,
                changes={
                    "purpose": "cpamp_first_setup",
                    "revealed": revealed,
                    "missing": [v.role for v in values if not v.value],
                },
                ip=client_ip(request),
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

    return view


def first_setup_urls(model_admin):
    """URL of the first-setup page, for the deployment admin's get_urls()."""
    return [
        path(
            "<int:pk>/first-setup/",
            model_admin.admin_site.admin_view(_first_setup_view(model_admin)),
            name="routes_deployment_first_setup",
        )
    ]


def first_setup_link(request, deployment):
    """A button to the first-setup page, for users who may see the values."""
    if can(request.user, Action.MANAGE_KEYS, deployment.team_id):
        return [
            (
                _("CPAMP first-setup values"),
                reverse("admin:routes_deployment_first_setup", args=[deployment.pk]),
            )
        ]
    return []


registry.deployment_urls.append(first_setup_urls)
registry.deployment_links.append(first_setup_link)
