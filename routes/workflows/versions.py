"""A deployment's optimistic-locking version, and the changes that moved it on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import F
from django.utils import timezone

from routes import audit
from routes.context import current_actor
from routes.models import AuditEvent, Deployment


@dataclass(frozen=True)
class Change:
    """One recorded change of a deployment or its overrides and keys (no secret values)."""

    at: datetime
    actor: str
    action: str
    object_repr: str
    fields: dict[str, Any]


class StaleVersion(Exception):
    """The deployment was saved by someone else after the caller loaded it."""

    def __init__(self, *, deployment: Deployment, loaded_version: int | None) -> None:
        self.deployment = deployment
        self.loaded_version = loaded_version
        super().__init__(f"deployment {deployment.slug} moved on from version {loaded_version}")


def claim_version(*, deployment: Deployment, expected_version: int | None = None) -> int:
    """Move the stored version on by one and return it; raise StaleVersion if it is not expected.

    The conditional UPDATE is the lock: of two saves based on the same version, one matches.
    """
    rows = Deployment.objects.filter(pk=deployment.pk)
    if expected_version is not None:
        rows = rows.filter(version=expected_version)
    updated = rows.update(
        version=F("version") + 1, updated_at=timezone.now(), updated_by=current_actor()
    )
    if not updated:
        raise StaleVersion(deployment=deployment, loaded_version=expected_version)
    deployment.version = Deployment.objects.values_list("version", flat=True).get(pk=deployment.pk)
    return deployment.version


def changes_since(*, deployment: Deployment, version: int) -> list[Change]:
    """Return the recorded changes that moved deployment past version, oldest first."""
    found: list[Change] = []
    events = AuditEvent.objects.filter(
        object_type="deployment", object_id=str(deployment.pk)
    ).order_by("-created_at", "-id")[:200]
    for event in events:
        moved = event.changes.get("version") if isinstance(event.changes, dict) else None
        if not isinstance(moved, list) or len(moved) != 2 or not isinstance(moved[1], int):
            continue
        if moved[1] <= version:
            break
        fields = {k: val for k, val in event.changes.items() if k != "version"}
        found.append(
            # object_text: key roles named in the reader's language, as on the trail's pages.
            Change(event.created_at, event.actor_text(), event.action, event.object_text(), fields)
        )
    return list(reversed(found))


def version_note(deployment: Deployment) -> list[int]:
    """Return [previous, current] version of deployment, as the audit trail stores it."""
    return [deployment.version - 1, deployment.version]


def record_part_edit(
    *,
    deployment: Deployment,
    action: str,
    object_repr: str,
    changes: dict[str, Any],
    bump_version: bool,
) -> None:
    """Count a change to an override or key as an edit of its deployment, and audit it."""
    if bump_version:
        claim_version(deployment=deployment)
    changes["version"] = version_note(deployment)
    audit.record(
        action=action,
        team=deployment.team_id,
        obj=deployment,
        object_repr=object_repr,
        changes=changes,
    )
