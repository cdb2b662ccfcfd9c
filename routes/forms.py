"""Console forms: deployments (presets, edit conflicts), overrides, write-only keys, members."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import connection
from django.forms.formsets import DELETION_FIELD_NAME
from django.utils.translation import gettext_lazy as _

from routes import keys as keyring
from routes import validators as v
from routes.models import (
    DEPLOYMENT_FIELD_GROUPS,
    DEPLOYMENT_FIELDS,
    PRESETS,
    UPSTREAM_FIELDS,
    Deployment,
    Key,
    Membership,
    Role,
    RouteOverride,
    Team,
)
from routes.permissions import Action, can
from routes.verification import destinations
from routes.workflows.keys import check_key
from routes.workflows.memberships import check_keeps_an_owner, find_user
from routes.workflows.versions import Change, changes_since

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.http import HttpRequest
    from django_stubs_ext import StrOrPromise

# Titles of the deployment's field groups on the admin page (None: the untitled first one).
_GROUP_TITLES: dict[str, StrOrPromise | None] = {
    "identity": None,
    "listening": _("Listening"),
    "upstreams": _("Upstreams"),
    "proxy": _("Proxy"),
    "edge": _("Edge hardening"),
    "verification": _("Versions and verification"),
    "notes": _("Notes"),
}
# DeploymentForm's own fields, placed at the start or the end of a group.
_FORM_FIELDS_FIRST = {"upstreams": ("topology",)}
_FORM_FIELDS_LAST = {"identity": ("loaded_version",)}


def deployment_fieldsets(
    *, shown_last: Mapping[str, tuple[str, ...]] | None = None
) -> list[tuple[StrOrPromise | None, dict[str, tuple[str, ...]]]]:
    """Return the admin fieldsets of DeploymentForm, one per field group of the deployment.

    ``shown_last`` adds read-only fields of the admin at the end of a group, by group name.
    """
    extra = shown_last or {}
    return [
        (
            _GROUP_TITLES[group],
            {
                "fields": (
                    *_FORM_FIELDS_FIRST.get(group, ()),
                    *names,
                    *_FORM_FIELDS_LAST.get(group, ()),
                    *extra.get(group, ()),
                )
            },
        )
        for group, names in DEPLOYMENT_FIELD_GROUPS.items()
    ]


@dataclass(frozen=True)
class Difference:
    """A field whose stored value differs from the value a user submitted."""

    label: str
    current: Any
    submitted: Any


@dataclass(frozen=True)
class Conflict:
    """Why a save was refused: the version loaded, the stored one and what happened between."""

    loaded_version: int
    current_version: int
    changes: list[Change]
    differences: list[Difference]

    @property
    def change_rows(self) -> list[tuple[Change, str]]:
        """Return each change with its fields summarised as "name: old → new; ..."."""
        return [(change, summarise(change.fields)) for change in self.changes]


def summarise(fields: dict[str, Any]) -> str:
    """Return a field diff as one line; secrets only ever appear as "changed"."""
    parts = []
    for name, value in fields.items():
        if isinstance(value, list) and len(value) == 2:
            old, new = ("—" if x in (None, "") else x for x in value)
            parts.append(f"{name}: {old} → {new}")
        else:
            parts.append(f"{name}: {value}")
    return "; ".join(parts)


class DeploymentForm(forms.ModelForm):
    # The wizard's presets (routes.models.PRESETS), as radio buttons: console.js fills the
    # upstream fields when one is picked and switches to Custom when an address is typed.
    topology = forms.ChoiceField(
        label=_("Topology preset"),
        required=False,
        initial="docker",
        widget=forms.RadioSelect,
        choices=[
            (
                "docker",
                _(
                    "Docker network: cli-proxy-api:8317, cpa-manager-plus:18317, "
                    "CPAMP reaches CPA at http://cli-proxy-api:8317"
                ),
            ),
            (
                "host",
                _(
                    "Nginx on the host: 127.0.0.1:8317, 127.0.0.1:18317, "
                    "CPAMP reaches CPA at http://127.0.0.1:8317"
                ),
            ),
            ("custom", _("Custom: I fill in the upstream fields")),
        ],
        help_text=_(
            "A preset sets the upstream fields below that still hold a preset's address; an "
            "address you typed is kept, and a blank one is refused, never filled in."
        ),
    )
    loaded_version = forms.IntegerField(widget=forms.HiddenInput, required=False)
    # Set per request by the deployment admin: whose role rules apply to key destinations.
    user: User | None = None

    class Meta:
        model = Deployment
        fields = DEPLOYMENT_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conflict: Conflict | None = None
        if self.instance.pk:
            self.fields.pop("topology", None)
            self.fields["loaded_version"].initial = self.instance.version
        else:
            self.fields.pop("loaded_version", None)
            # The add form shows the Docker preset's addresses (the model's defaults), so what
            # is saved is what the page showed.
            for name in UPSTREAM_FIELDS:
                if name in self.fields:
                    self.fields[name].error_messages["required"] = _(
                        "Required: type the address, or choose a topology preset to fill it in."
                    )

    def clean_server_name(self) -> str:
        # Users type IDN domains; nginx and the model want the punycode form.
        return v.normalize_server_name(self.cleaned_data.get("server_name", ""))

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        preset = PRESETS.get(cleaned.get("topology") or "") if "topology" in self.fields else None
        if preset is not None:
            # Without JavaScript the fields still hold the preset first shown: a preset's
            # address follows the chosen preset, a typed one stays. Blanks were refused above.
            for name in UPSTREAM_FIELDS:
                if cleaned.get(name) in {values[name] for values in PRESETS.values()}:
                    cleaned[name] = preset[name]
        if self.instance.pk and "loaded_version" in self.fields:
            self._refuse_stale_edit(cleaned)
        return cleaned

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]  # BaseModelForm's hook, missing in the stubs
        # After the model's own validation, so a malformed URL is refused for what it is first.
        if hasattr(self, "cleaned_data"):
            self._refuse_key_destination_change(self.cleaned_data)

    def _refuse_key_destination_change(self, cleaned: dict[str, Any]) -> None:
        """Only an owner sets a URL keys go to, or moves a deployment with keys elsewhere."""
        stored: dict[str, Any] | None = None
        team_ids = [cleaned["team"].pk] if cleaned.get("team") else []
        if self.instance.pk:
            stored = (
                Deployment.objects.filter(pk=self.instance.pk)
                .values("team_id", *destinations.DEPLOYMENT_DESTINATION_FIELDS)
                .first()
            )
        if stored is not None:
            team_ids.append(stored["team_id"])
        submitted = {
            name: cleaned.get(name) or ""
            for name in destinations.DEPLOYMENT_DESTINATION_FIELDS
            if name in self.fields and name not in self.errors
        }
        team = cleaned.get("team") or getattr(self.instance, "team", None)
        for name in destinations.refused_fields(
            user=self.user, team_ids=team_ids, submitted=submitted, stored=stored
        ):
            self.add_error(
                name,
                destinations.refusal(
                    field_label=self.fields[name].label, team_slug=team.slug if team else "?"
                ),
            )
        if stored is None or not cleaned.get("team") or cleaned["team"].pk == stored["team_id"]:
            return
        if self.instance.keys.exists():
            if not destinations.may_set_destination(self.user, stored["team_id"]):
                self.add_error(
                    "team",
                    ValidationError(
                        _(
                            "team: only an owner of team %(team)s may move a deployment that "
                            "holds keys to another team."
                        ),
                        code="key_destination",
                        params={"team": Team.objects.get(pk=stored["team_id"]).slug},
                    ),
                )

    def _refuse_stale_edit(self, cleaned: dict[str, Any]) -> None:
        """Raise ValidationError with the changes since when the stored version moved on."""
        loaded = cleaned.get("loaded_version")
        rows = Deployment.objects.filter(pk=self.instance.pk)
        if connection.in_atomic_block:
            # Hold the row until the admin's transaction ends, so check and save are one step.
            rows = rows.select_for_update()
        current = rows.first()
        if current is None or loaded is None or current.version == loaded:
            return
        differences = []
        for name, field in self.fields.items():
            if name in ("loaded_version",) or name not in cleaned:
                continue
            stored = getattr(current, name, None)
            submitted = cleaned[name]
            if isinstance(submitted, Team):
                submitted, stored = submitted.slug, current.team.slug
            if stored != submitted:
                differences.append(Difference(str(field.label), stored, submitted))
        self.conflict = Conflict(
            loaded_version=loaded,
            current_version=current.version,
            changes=changes_since(deployment=current, version=loaded),
            differences=differences,
        )
        # The next save is a deliberate overwrite by a user who has seen the changes below.
        # A QueryDict (copy.copy makes it mutable) or, from tests and code, a plain dict.
        data = cast("dict[str, Any]", copy.copy(self.data))
        data[self.add_prefix("loaded_version")] = current.version
        self.data = data
        raise ValidationError(
            _(
                "Someone else saved this deployment after you opened it (you loaded version "
                "%(loaded)s, it is now at version %(current)s). Nothing was saved and your edits "
                "are still in the form. Review what changed below, then save again to replace "
                "the current version with yours, or reload the page to start from it. Key "
                "secrets you typed must be typed again."
            ),
            code="stale",
            params={"loaded": loaded, "current": current.version},
        )


class RouteOverrideForm(forms.ModelForm):
    class Meta:
        model = RouteOverride
        fields = ["match", "path", "target", "enabled", "position", "note"]


class KeyForm(forms.ModelForm):
    """A key with a write-only secret: it is never rendered back, blank keeps the stored one."""

    secret = forms.CharField(
        label=_("Secret"),
        required=False,
        strip=False,
        max_length=keyring.MAX_LENGTH * 2,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Write-only. Leave blank to keep the stored secret; a new value rotates it."),
    )
    # The standalone key admin checks reuse and single roles here; the inline formset does it
    # across all its rows instead.
    check_deployment = False

    class Meta:
        model = Key
        fields = ["deployment", "role", "label", "custom_format", "secret"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What the key rules accept but the operator should hear about (a short key).
        self.warnings: list[str] = []
        if self.instance.pk:
            for name in ("role", "deployment"):
                if name in self.fields:
                    self.fields[name].disabled = True
                    self.fields[name].help_text = _(
                        "Fixed for a stored key; add a new key to use another."
                    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        secret = cleaned.get("secret") or ""
        role = cleaned.get("role") or self.instance.role
        if not self.instance.pk and not secret and self.has_changed():
            self.add_error(
                "secret", ValidationError(_("A new key needs its secret."), code="required")
            )
        if not (secret and role):
            return cleaned
        deployment = cleaned.get("deployment") or getattr(self.instance, "deployment", None)
        if self.check_deployment and deployment is not None:
            problems = check_key(
                deployment=deployment,
                role=role,
                secret=secret,
                custom_format=bool(cleaned.get("custom_format")),
                replacing=self.instance if self.instance.pk else None,
            )
        else:
            problems = keyring.check_shape(
                role, secret, custom_format=bool(cleaned.get("custom_format"))
            )
        for problem in problems:
            self.add_error("secret", ValidationError(problem.message, code=problem.code))
        if not problems:
            self.warnings = [w.message for w in keyring.shape_warnings(role, secret)]
        return cleaned


def warn_about_keys(request: HttpRequest, saved: Iterable[forms.BaseForm]) -> None:
    """Show the user who saved them each saved key form's warnings; never the secret itself."""
    for form in saved:
        for warning in getattr(form, "warnings", ()):
            messages.warning(request, warning)


class StandaloneKeyForm(KeyForm):
    check_deployment = True


class KeyInlineFormSet(forms.BaseInlineFormSet):
    """Checks across rows: no secret twice in a deployment, one key per single role, owners only."""

    user: User | None = None  # set per request by the inline admin

    def clean(self) -> None:
        super().clean()
        deployment = self.instance
        # Not self.deleted_forms: it is empty while any row is invalid, as it may be here.
        deleting = [f for f in self.forms if self._marked_deleted(f)]
        deleted = {f.instance.pk for f in deleting if f.instance.pk}
        live = [f for f in self.forms if f not in deleting and f.has_changed()]
        if (live or deleted) and deployment.team_id is not None and self.user is not None:
            if not can(self.user, Action.MANAGE_KEYS, deployment.team_id):
                raise ValidationError(
                    _("Only owners of team %(team)s manage its keys."),
                    code="permission",
                    params={"team": deployment.team.slug},
                )
        reuse = keyring.ReuseTracker()
        seen_roles: set[str] = set()
        for form in self.forms:
            if form in deleting or not hasattr(form, "cleaned_data"):
                continue
            role = form.cleaned_data.get("role") or form.instance.role
            if role in Key.SINGLE_ROLES:
                if role in seen_roles:
                    form.add_error("role", self._single_role_error(role))
                seen_roles.add(role)
            secret = form.cleaned_data.get("secret")
            if not secret or form.errors.get("secret"):
                continue
            refusal = reuse.refusal(role, secret)
            if refusal is not None:
                form.add_error("secret", ValidationError(refusal.message, code=refusal.code))
                continue
            if deployment.pk is None:
                continue
            for problem in check_key(
                deployment=deployment,
                role=role,
                secret=secret,
                custom_format=bool(form.cleaned_data.get("custom_format")),
                replacing=form.instance if form.instance.pk else None,
                ignore=deleted,
            ):
                if problem.code in ("reuse", "single_role"):
                    field = "role" if problem.code == "single_role" else "secret"
                    form.add_error(field, ValidationError(problem.message, code=problem.code))

    def _marked_deleted(self, form: forms.BaseForm) -> bool:
        return bool(
            self.can_delete
            and getattr(form, "cleaned_data", None)
            and form.cleaned_data.get(DELETION_FIELD_NAME)
        )

    @staticmethod
    def _single_role_error(role: str) -> ValidationError:
        return ValidationError(
            _(
                "%(role)s: a deployment holds only one %(role)s; give the existing key a new "
                "secret to rotate it."
            ),
            code="single_role",
            params={"role": keyring.ROLE_LABELS[role]},
        )


class TeamForm(forms.ModelForm):
    class Meta:
        model = Team
        fields = ["name", "slug", "require_owner_2fa"]


class MembershipAddForm(forms.ModelForm):
    """Adds an existing account to a team by username (owners do not browse every account)."""

    username = forms.CharField(
        label=_("Username"), max_length=150, help_text=_("An existing account, e.g. alice.")
    )

    class Meta:
        model = Membership
        fields = ["username", "team", "role"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        username = cleaned.get("username")
        team = cleaned.get("team")
        if not username:
            return cleaned
        try:
            user = find_user(username=username)
        except ValidationError as exc:
            self.add_error(None, exc)
            return cleaned
        if team is not None and Membership.objects.filter(team=team, user=user).exists():
            self.add_error(
                "username",
                ValidationError(
                    _("%(user)s is already a member of %(team)s."),
                    code="unique",
                    params={"user": username, "team": team.slug},
                ),
            )
        cleaned["user"] = user
        return cleaned


class MembershipChangeForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["role"]

    def clean_role(self) -> str:
        role = self.cleaned_data["role"]
        stored = Membership.objects.select_related("team").get(pk=self.instance.pk)
        if stored.role != role and role != Role.OWNER:
            check_keeps_an_owner(membership=stored)
        return role
