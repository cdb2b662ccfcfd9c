"""The guided "New deployment" flow: deployment, keys, then the config and first-setup values.

Step 1 creates the deployment (validated with ``full_clean`` through ``save_deployment``), step 2
stores at once, through ``set_key`` (encrypted), each key its rules accept, step 3 shows what to
paste where. Between steps the session holds only the deployment id and the step reached, never
a secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.text import slugify
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters

from routes import keys as keyring
from routes.admin.dashboard import optional_url
from routes.admin.options import DeploymentPages, visible_deployment
from routes.forms import warn_about_keys
from routes.models import (
    DEPLOYMENT_FIELDS,
    DOCKER_PRESET,
    EDGE_FIELDS,
    PRESETS,
    UPSTREAM_FIELDS,
    Deployment,
    Key,
)
from routes.nginx.render import COMMON_FILENAME, render_common, render_site, site_filename
from routes.permissions import Action, can, refusal, require, teams_where
from routes.verification import destinations
from routes.workflows.deployments import save_deployment
from routes.workflows.keys import set_key

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    from routes.permissions import AnyUser

SESSION_KEY = "console_wizard"
# Left to their defaults by the wizard, to be tuned later on the deployment's page.
TUNING_FIELDS = (
    "http2",
    "resolver",
    "client_max_body_size",
    "proxy_read_timeout",
    "proxy_send_timeout",
    "route_tracing",
    "cpa_version",
    "notes",
    *EDGE_FIELDS,
)
CPA_SNIPPET = (
    'remote-management:\n  secret-key: "<your CPA Management Key>"\n  allow-remote: true\n'
)


class DeploymentStepForm(forms.ModelForm):
    """Step 1: team, names, mode, topology preset, domain and TLS."""

    topology = forms.ChoiceField(
        label=_("Topology"),
        choices=[
            ("docker", _("Docker network")),
            ("host", _("Nginx on the host")),
            ("custom", _("Custom")),
        ],
        initial="docker",
        widget=forms.RadioSelect,
    )

    class Meta:
        model = Deployment
        fields = [name for name in DEPLOYMENT_FIELDS if name not in TUNING_FIELDS]
        widgets = {"mode": forms.RadioSelect}

    def __init__(self, *args: Any, user: AnyUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        team = cast(forms.ModelChoiceField, self.fields["team"])
        team.queryset = teams_where(user, Action.CREATE).order_by("name")
        team.empty_label = None
        # The slug follows the name as on the plain form (console.js); left blank, the server
        # derives it the same way.
        slug = self.fields["slug"]
        slug.required = False
        slug.widget.attrs["data-slug-from"] = "#id_name"
        self.fields["server_name"].label = _("Domain")
        self.fields["tls"].widget.attrs["data-toggles"] = "#wizard-certificates"
        for name in ("ssl_certificate", "ssl_certificate_key"):
            # ModelForm replaces a model error's text by the form field's message of the same
            # code; without this, the model's "Required when HTTPS is on." would read "This
            # field is required.", which does not say why.
            self.fields[name].error_messages.pop("required", None)
        for name in UPSTREAM_FIELDS:
            self.fields[name].required = False
            self.fields[name].help_text = _("Filled in by the preset; edit it with Custom.")
        self.fields["cpamp_cpa_url"].help_text = _(
            "Entered in CPAMP's first setup. Use the internal address, never the public domain "
            "(that makes a loop CPAMP -> Nginx -> CPAMP/CPA)."
        )

    def clean_slug(self) -> str:
        slug = self.cleaned_data.get("slug") or ""
        if slug:
            return slug
        limit = Deployment._meta.get_field("slug").max_length
        slug = slugify(self.cleaned_data.get("name") or "")[:limit].strip("-_")
        if not slug:
            raise ValidationError(
                _(
                    "Slug: give one of letters, digits, hyphens or underscores; it cannot be "
                    "derived from this name."
                ),
                code="required",
            )
        return slug

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        preset = PRESETS.get(data.get("topology") or "")
        if preset is not None:
            # The chosen preset wins over whatever the upstream fields held.
            for name in UPSTREAM_FIELDS:
                data[name] = preset[name]
                self.errors.pop(name, None)
        else:
            for name in UPSTREAM_FIELDS:
                if not data.get(name) and name not in self.errors:
                    self.add_error(
                        name,
                        ValidationError(_("Required with the Custom topology."), code="required"),
                    )
        return data

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]  # BaseModelForm's hook, missing in the stubs
        # After the model's own validation, so a malformed URL is refused for what it is first.
        data = getattr(self, "cleaned_data", {})
        team = data.get("team")
        if team is not None:
            submitted = {
                name: data.get(name) or ""
                for name in destinations.DEPLOYMENT_DESTINATION_FIELDS
                if name not in self.errors
            }
            # Only an owner may point keys somewhere new: a preset's CPA URL or an empty
            # verification base URL is all anyone else may give a new deployment.
            for name in destinations.refused_fields(
                user=self.user, team_ids=[team.pk], submitted=submitted, stored=None
            ):
                self.add_error(
                    name,
                    destinations.refusal(field_label=self.fields[name].label, team_slug=team.slug),
                )


def _secret_field(label: StrOrPromise, help_text: StrOrPromise) -> forms.CharField:
    """Return a write-only key input: never rendered back, blank keeps what is stored."""
    return forms.CharField(
        label=label,
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=help_text,
    )


class KeysStepForm(forms.Form):
    """Step 2: the three keys, write-only; a blank field keeps what is stored."""

    cpamp_admin = _secret_field(
        _("CPAMP Admin Key"),
        _("Panel login. cmp_admin_... from CPAMP startup logs (cpamp_... on CPAMP v1.10+)."),
    )
    custom_format = forms.BooleanField(
        label=_("My CPAMP takes its admin key from CPA_MANAGER_ADMIN_KEY in another format"),
        required=False,
    )
    cpa_management = _secret_field(
        _("CPA Management Key"),
        _(
            "CPA connection. CPA remote-management.secret-key; CPAMP stores it server-side and "
            "uses it when talking to CPA."
        ),
    )
    cpa_api = _secret_field(
        _("CPA API Key"),
        _("Normal API request. One of CPA's api-keys, sent as Authorization: Bearer to /v1/... ."),
    )
    api_label = forms.CharField(
        label=_("API key label"),
        required=False,
        max_length=100,
        help_text=_("Optional, e.g. verification. Helps tell API keys apart."),
    )

    ROLES = (keyring.CPAMP_ADMIN, keyring.CPA_MANAGEMENT, keyring.CPA_API)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What the key rules accept but the operator should hear about (a short key), by role;
        # warnings lists those of the keys stored.
        self.role_warnings: dict[str, list[str]] = {}
        self.warnings: list[str] = []

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        reuse = keyring.ReuseTracker()
        for role in self.ROLES:
            secret = data.get(role) or ""
            if not secret:
                continue
            custom = bool(data.get("custom_format")) and role == keyring.CPAMP_ADMIN
            refusals: list[keyring.Refusal | None] = [
                *keyring.check_shape(role, secret, custom_format=custom),
                reuse.refusal(role, secret),
            ]
            for refused in filter(None, refusals):
                self.add_error(role, ValidationError(refused.message, code=refused.code))
            self.role_warnings[role] = [w.message for w in keyring.shape_warnings(role, secret)]
        return data

    def secrets(self) -> list[tuple[str, str]]:
        """Return (role, secret) for each key entered and not refused, in the seed's order."""
        # A refused key's field error took it out of cleaned_data.
        return [(role, secret) for role in self.ROLES if (secret := self.cleaned_data.get(role))]


@dataclass(frozen=True)
class Step:
    """One entry of the wizard's step indicator."""

    number: int
    label: StrOrPromise
    state: str  # "done", "current" or "todo"


def presets_json() -> str:
    """Return the topology presets as console.js reads them: {"docker": {field: value}, ...}."""
    return json.dumps({name: dict(values) for name, values in PRESETS.items()})


def _steps(current: int) -> list[Step]:
    labels = [_("Deployment"), _("Keys"), _("Config and first setup")]
    return [
        Step(n, label, "done" if n < current else "current" if n == current else "todo")
        for n, label in enumerate(labels, start=1)
    ]


def _remember(request: HttpRequest, deployment: Deployment, step: int) -> None:
    # Only ids and step numbers: a secret never enters the session.
    request.session[SESSION_KEY] = {"deployment": deployment.pk, "step": step}


def _resumable(request: HttpRequest) -> tuple[Deployment, int] | None:
    state = request.session.get(SESSION_KEY)
    if not isinstance(state, dict):
        return None
    deployment = (
        Deployment.objects.visible_to(request.user).filter(pk=state.get("deployment")).first()
    )
    if deployment is None:
        request.session.pop(SESSION_KEY, None)
        return None
    return deployment, int(state.get("step") or 2)


STEP_URLS = {2: "admin:routes_deployment_wizard_keys", 3: "admin:routes_deployment_wizard_finish"}


def _step_url(deployment: Deployment, step: int) -> str:
    return reverse(STEP_URLS.get(step, STEP_URLS[2]), args=[deployment.pk])


def _store_keys(deployment: Deployment, form: KeysStepForm) -> list[str]:
    """Store each entered key that its rules accept; return the roles stored.

    A refused key gets its reason on the form and the others are stored all the same: throwing
    away two good keys for one bad one only makes the user type them again.
    """
    stored = []
    for role, secret in form.secrets():
        if role == keyring.CPA_API and "api_label" in form.errors:
            continue  # its label is refused, so it is not stored either
        try:
            set_key(
                deployment=deployment,
                role=role,
                secret=secret,
                label=form.cleaned_data["api_label"] if role == keyring.CPA_API else "",
                custom_format=role == keyring.CPAMP_ADMIN and form.cleaned_data["custom_format"],
                reason="wizard",
            )
        except ValidationError as exc:
            form.add_error(role, list(exc.messages))
        else:
            stored.append(role)
    return stored


class WizardPages(DeploymentPages):
    """The deployment admin's guided "New deployment" pages."""

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("wizard/", wrap(self.wizard_start_view), name="routes_deployment_wizard"),
            path(
                "wizard/<int:pk>/keys/",
                wrap(self.wizard_keys_view),
                name="routes_deployment_wizard_keys",
            ),
            path(
                "wizard/<int:pk>/finish/",
                wrap(self.wizard_finish_view),
                name="routes_deployment_wizard_finish",
            ),
            *super().get_urls(),
        ]

    def _wizard_context(
        self, request: HttpRequest, *, title: StrOrPromise, step: int, **extra: Any
    ) -> dict[str, Any]:
        deployment = extra.pop("deployment", None)
        return self.page_context(
            request, deployment, title=title, steps=_steps(step), step=step, **extra
        )

    # Every POST here may carry a key: keep POST data out of Django's error reports.
    @method_decorator(sensitive_post_parameters())
    def wizard_start_view(self, request: HttpRequest) -> HttpResponse:
        """Step 1: create the deployment, or offer to resume an unfinished one."""
        if not teams_where(request.user, Action.CREATE).exists():
            team_add_url = optional_url("admin:routes_team_add")
            if request.user.has_perm("routes.add_team") and team_add_url:
                messages.info(
                    request, gettext("Deployments belong to a team: create a team first.")
                )
                return HttpResponseRedirect(team_add_url)
            raise refusal(request.user, Action.CREATE, None)
        if request.method == "POST":
            form = DeploymentStepForm(request.POST, user=request.user)
            if form.is_valid():
                deployment = form.save(commit=False)
                require(request.user, Action.CREATE, deployment.team_id)
                try:
                    save_deployment(deployment=deployment)
                except ValidationError as exc:
                    form.add_error(None, exc)
                else:
                    pending = destinations.confirm_own_change(
                        deployment=deployment, before=[], how="create"
                    )
                    if pending:
                        messages.warning(request, destinations.pending_message(pending))
                    _remember(request, deployment, 2)
                    messages.success(
                        request,
                        gettext("Deployment %(name)s created. Now add its keys.")
                        % {"name": deployment},
                    )
                    return HttpResponseRedirect(_step_url(deployment, 2))
        else:
            initial: dict[str, Any] = {"topology": "docker", **DOCKER_PRESET}
            team = request.GET.get("team")
            if team and team.isdigit():
                initial["team"] = int(team)
            form = DeploymentStepForm(initial=initial, user=request.user)
        resume = _resumable(request)
        context = self._wizard_context(
            request,
            title=_("New deployment"),
            step=1,
            form=form,
            presets_json=presets_json(),
            resume_deployment=resume[0] if resume else None,
            resume_url=_step_url(*resume) if resume else "",
            modes=Deployment.Mode,
        )
        return TemplateResponse(request, "admin/routes/wizard/deployment.html", context)

    @method_decorator(sensitive_post_parameters())
    def wizard_keys_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Step 2: store the three keys (owners only); each refused key names the broken rule."""
        deployment = visible_deployment(request, pk)
        may_manage = can(request.user, Action.MANAGE_KEYS, deployment.team_id)
        if request.method == "POST":
            if not may_manage:
                raise refusal(request.user, Action.MANAGE_KEYS, deployment.team)
            form = KeysStepForm(request.POST)
            form.is_valid()
            stored_now = _store_keys(deployment, form)
            form.warnings = [w for role in stored_now for w in form.role_warnings.get(role, [])]
            warn_about_keys(request, [form])
            if stored_now:
                messages.success(
                    request,
                    ngettext(
                        "%(count)d key stored encrypted: %(roles)s.",
                        "%(count)d keys stored encrypted: %(roles)s.",
                        len(stored_now),
                    )
                    % {
                        "count": len(stored_now),
                        "roles": ", ".join(str(keyring.ROLE_LABELS[r]) for r in stored_now),
                    },
                )
            if not form.errors:
                _remember(request, deployment, 3)
                return HttpResponseRedirect(_step_url(deployment, 3))
            entered = [role for role in KeysStepForm.ROLES if request.POST.get(role, "").strip()]
            refused = [role for role in entered if role not in stored_now]
        else:
            form = KeysStepForm()
            stored_now, refused = [], []
        stored: dict[str, list[Key]] = {role: [] for role in KeysStepForm.ROLES}
        for key in deployment.keys.order_by("role", "id"):
            stored.setdefault(key.role, []).append(key)
        purposes = {
            keyring.CPAMP_ADMIN: (_("Panel login"), form["custom_format"]),
            keyring.CPA_MANAGEMENT: (_("CPA connection"), None),
            keyring.CPA_API: (_("Normal API request"), form["api_label"]),
        }
        context = self._wizard_context(
            request,
            title=_("Keys of %(name)s") % {"name": deployment.name},
            step=2,
            deployment=deployment,
            form=form,
            may_manage=may_manage,
            roles=[
                {
                    "role": role,
                    "purpose": purposes[role][0],
                    "field": form[role],
                    "extra": purposes[role][1],
                    "stored": stored[role],
                }
                for role in KeysStepForm.ROLES
            ],
            finish_url=_step_url(deployment, 3),
            change_url=reverse("admin:routes_deployment_change", args=[deployment.pk]),
            short_key=keyring.SHORT_KEY,
            # Never the secrets: only which roles this POST stored and which it refused.
            stored_labels=[keyring.ROLE_LABELS[role] for role in stored_now],
            refused_labels=[keyring.ROLE_LABELS[role] for role in refused],
        )
        return TemplateResponse(request, "admin/routes/wizard/keys.html", context)

    @method_decorator(sensitive_post_parameters())
    def wizard_finish_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Step 3: the rendered config, the first-setup values (masked) and the CPA snippet."""
        deployment = visible_deployment(request, pk)
        state = request.session.get(SESSION_KEY)
        if isinstance(state, dict) and state.get("deployment") == deployment.pk:
            # The flow is complete: nothing left to resume.
            request.session.pop(SESSION_KEY, None)
        keys = {key.role: key for key in deployment.keys.filter(role__in=Key.SINGLE_ROLES)}
        api_keys = deployment.keys.filter(role=keyring.CPA_API).count()
        may_manage = can(request.user, Action.MANAGE_KEYS, deployment.team_id)
        may_export = can(request.user, Action.EXPORT, deployment.team_id)
        may_verify = can(request.user, Action.VERIFY, deployment.team_id)
        context = self._wizard_context(
            request,
            title=_("Config and first setup of %(name)s") % {"name": deployment.name},
            step=3,
            deployment=deployment,
            site_config=(site := render_site(deployment)),
            site_filename=site_filename(deployment),
            common_config=render_common([deployment.server_name], sites=[site]),
            common_filename=COMMON_FILENAME,
            cpa_snippet=CPA_SNIPPET,
            admin_key=keys.get(keyring.CPAMP_ADMIN),
            management_key=keys.get(keyring.CPA_MANAGEMENT),
            api_key_count=api_keys,
            panel_url=f"{deployment.base_url}/management.html",
            reveal_url=(
                optional_url("admin:routes_deployment_first_setup", deployment.pk)
                if may_manage
                else ""
            ),
            download_url=(
                optional_url("admin:routes_deployment_config_download", deployment.pk)
                if may_export
                else ""
            ),
            config_url=optional_url("admin:routes_deployment_config", deployment.pk),
            verify_url=(
                optional_url("admin:routes_deployment_verify", deployment.pk) if may_verify else ""
            ),
            keys_url=_step_url(deployment, 2),
            change_url=reverse("admin:routes_deployment_change", args=[deployment.pk]),
            manager_server=deployment.mode == Deployment.Mode.MANAGER_SERVER,
        )
        return TemplateResponse(request, "admin/routes/wizard/finish.html", context)
