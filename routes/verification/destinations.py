"""Where keys may go: the origins an owner confirmed, and who may move them.

Three URLs decide where the console sends keys: the deployment's verification base URL, its
job's base URL and the CPA URL used by the direct management check (``cpa_direct`` sends the CPA
Management Key there). Only a user who may ``SET_KEY_DESTINATION`` (an owner, with two-factor
when the team requires it) sets or changes them. Anyone else's edit that moves the derived base
URL (server name, ports, HTTPS) leaves the new origin unconfirmed: checks then run without keys
until an owner confirms it. Commands are run by whoever holds the server and its encryption keys,
so a command (no acting user, routes.context) counts as an owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from routes import audit
from routes import validators as v
from routes.context import current, current_actor
from routes.models import DOCKER_PRESET, HOST_PRESET, Deployment, VerificationJob
from routes.permissions import Action, can

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    from routes.permissions import AnyUser

CONFIRM_ACTION = "deployment.confirm_destination"
# Deployment fields that name a key destination, and the job's.
DEPLOYMENT_DESTINATION_FIELDS = ("verification_base_url", "cpamp_cpa_url")
JOB_DESTINATION_FIELDS = ("base_url",)
# What a non-owner may give a new deployment: empty, or a documented preset's address.
NEW_DEPLOYMENT_VALUES = {
    "verification_base_url": frozenset({""}),
    "cpamp_cpa_url": frozenset({DOCKER_PRESET["cpamp_cpa_url"], HOST_PRESET["cpamp_cpa_url"]}),
    "base_url": frozenset({""}),
}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """Return scheme://host[:port] of url, lower-cased, default port left out ("" if none)."""
    try:
        parts = urlsplit((url or "").strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def host_header(base_url: str, server_name: str) -> str:
    """Return the Host header checks send to base_url ("" when the URL's host is used)."""
    # Checking through an IP address (before DNS, or nginx on a loopback port): send the
    # deployment's server name, as curl --resolve would, so nginx picks the right server block.
    parts = urlsplit(base_url)
    if not server_name or server_name.startswith("*") or not parts.hostname:
        return ""
    if not v.is_ip_literal(parts.hostname):
        return ""
    return f"{server_name}:{parts.port}" if parts.port else server_name


def destination_of(url: str, host: str = "") -> str:
    """Return where a request to url goes: its origin, plus the Host header when one is sent.

    On a shared nginx the Host header picks the server block, and so the upstream that gets
    the key: changing it is moving the key, even when the address stays the same.
    """
    origin = origin_of(url)
    return f"{origin} (Host: {host})" if origin and host else origin


def _job_of(deployment: Deployment) -> VerificationJob | None:
    if deployment.pk is None:
        return None
    return VerificationJob.objects.filter(deployment_id=deployment.pk).first()


def key_origins(deployment: Deployment, *, job: VerificationJob | None = None) -> list[str]:
    """Return where the deployment's checks send keys now (sorted, unique destination_of()).

    The run's base URL (the job's, else the deployment's) and, with a CPA URL, cpa_direct's.
    """
    job = job if job is not None else _job_of(deployment)
    base = ((job.base_url if job is not None else "") or deployment.base_url).rstrip("/")
    origins = {destination_of(base, host_header(base, deployment.server_name))}
    if deployment.cpamp_cpa_url:
        origins.add(destination_of(deployment.cpamp_cpa_url))
    return sorted(o for o in origins if o)


def confirmed_origins(deployment: Deployment) -> frozenset[str]:
    """Return the origins an owner confirmed for the deployment's keys."""
    stored = deployment.keys_confirmed_origins
    if not isinstance(stored, list):
        return frozenset()
    return frozenset(o for o in stored if isinstance(o, str))


def unconfirmed_origins(deployment: Deployment, *, job: VerificationJob | None = None) -> list[str]:
    """Return the origins keys would go to now that no owner has confirmed."""
    confirmed = confirmed_origins(deployment)
    return [o for o in key_origins(deployment, job=job) if o not in confirmed]


def may_set_destination(user: AnyUser | None, team_id: int | None) -> bool:
    """Return True when user (None: a command) may set where the team's keys are sent."""
    if user is None:
        return True
    return can(user, Action.SET_KEY_DESTINATION, team_id)


def _acting_may_set(team_id: int | None) -> bool:
    """Return True when whoever is acting now may set where the team's keys are sent."""
    actor = current_actor()
    if actor is None and current().user is not None:
        # A request whose user is not signed in is nobody, not a command: never an owner.
        return False
    return may_set_destination(actor, team_id)


def refusal(*, team_slug: str, field_label: StrOrPromise | None = None) -> ValidationError:
    """Return the error a non-owner gets for a field that decides where keys are sent."""
    if field_label is None:
        return ValidationError(
            _(
                "only an owner of team %(team)s may change where keys are sent (owners of a "
                "team that requires two-factor must have signed in with it)"
            ),
            code="key_destination",
            params={"team": team_slug},
        )
    return ValidationError(
        _(
            "%(field)s: only an owner of team %(team)s may change where keys are sent (owners "
            "of a team that requires two-factor must have signed in with it)."
        ),
        code="key_destination",
        params={"field": field_label, "team": team_slug},
    )


def refused_fields(
    *,
    user: AnyUser | None,
    team_ids: Iterable[int | None],
    submitted: dict[str, str],
    stored: dict[str, str] | None,
) -> list[str]:
    """Return the destination fields of submitted that user may not set.

    stored holds the current values (None for a new object). Unchanged values are always
    allowed; a new object may take the values in NEW_DEPLOYMENT_VALUES.
    """
    if all(may_set_destination(user, team_id) for team_id in team_ids):
        return []
    refused = []
    for name, value in submitted.items():
        value = value or ""
        if stored is not None:
            if value.rstrip("/") != (stored.get(name) or "").rstrip("/"):
                refused.append(name)
        elif value.rstrip("/") not in {ok.rstrip("/") for ok in NEW_DEPLOYMENT_VALUES[name]}:
            refused.append(name)
    return refused


def _write(*, deployment: Deployment, origins: list[str], how: str) -> list[str]:
    """Store origins as the acting user's confirmed destinations and record it; return them."""
    before = sorted(confirmed_origins(deployment))
    now = timezone.now()
    by = current_actor()
    Deployment.objects.filter(pk=deployment.pk).update(
        keys_confirmed_origins=origins, keys_confirmed_at=now, keys_confirmed_by=by
    )
    deployment.keys_confirmed_origins = origins
    deployment.keys_confirmed_at = now
    deployment.keys_confirmed_by = by
    audit.record(
        action=CONFIRM_ACTION,
        team=deployment.team_id,
        obj=deployment,
        changes={"origins": [before, origins], "how": how},
    )
    return origins


def confirm_destination(
    *,
    deployment: Deployment,
    expected: Iterable[str] | None = None,
) -> list[str]:
    """Confirm every origin keys go to now; return them. Refused to anyone but an owner.

    The acting user (routes.context) confirms. expected: the origins the owner was shown; when
    they moved meanwhile, ValidationError.
    """
    if not _acting_may_set(deployment.team_id):
        raise PermissionDenied
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        origins = key_origins(locked)
        if expected is not None and sorted(set(expected)) != origins:
            raise ValidationError(
                _(
                    "Where keys go changed while you were looking (now: %(origins)s). Review the "
                    "deployment and confirm again."
                ),
                code="moved",
                params={"origins": ", ".join(origins) or "—"},
            )
        _write(deployment=locked, origins=origins, how="confirm")
    for name in Deployment.CONFIRMATION_FIELDS:
        setattr(deployment, name, getattr(locked, name))
    return origins


def confirm_own_change(
    *,
    deployment: Deployment,
    before: Iterable[str],
    how: str = "save",
) -> list[str]:
    """After the acting user's save: confirm the origins it introduced if they are an owner.

    before: key_origins() ahead of the save. Origins that were already there keep their state,
    so an owner who saves an unrelated field does not silently confirm someone else's change.
    Returns the origins still unconfirmed.
    """
    deployment.refresh_from_db(fields=list(Deployment.CONFIRMATION_FIELDS))
    now_origins = key_origins(deployment)
    if _acting_may_set(deployment.team_id):
        confirmed = confirmed_origins(deployment)
        earlier = set(before)
        wanted = sorted(o for o in now_origins if o in confirmed or o not in earlier)
        if set(wanted) - confirmed:
            _write(deployment=deployment, origins=wanted, how=how)
    return unconfirmed_origins(deployment)


def withheld_message(origin: str) -> str:
    """Return why a check went without its key to origin (the run's diagnosis)."""
    return gettext(
        "Keys held back: an owner has not confirmed %(origin)s as a destination for this "
        "deployment's keys, so this check went without its key. An owner can confirm it with "
        "“Confirm key destination” on the deployment page."
    ) % {"origin": origin or "?"}


def pending_message(origins: Iterable[str]) -> str:
    """Return the warning shown after a save that left key destinations unconfirmed."""
    return gettext(
        "Keys are held back from %(origins)s until an owner confirms this destination on the "
        "deployment page; until then checks run without keys."
    ) % {"origins": ", ".join(origins)}
