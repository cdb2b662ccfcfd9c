"""Deployments: validated saves that move the version on, deletes, and what an edit changed."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from routes import audit
from routes.context import current_actor
from routes.models import Deployment, Team
from routes.workflows.versions import StaleVersion, claim_version, version_note

# Bookkeeping fields left out of field diffs: they change on every save.
_UNTRACKED = ("created_at", "updated_at", "version", "created_by", "updated_by")


def _snapshot(deployment: Deployment) -> dict[str, Any]:
    """Return the tracked field values of deployment, with the team as its slug."""
    values = audit.snapshot(deployment, exclude=_UNTRACKED)
    if deployment.team_id is not None:
        values["team"] = Team.objects.values_list("slug", flat=True).get(pk=deployment.team_id)
    return values


def save_deployment(
    *, deployment: Deployment, expected_version: int | None = None, action: str | None = None
) -> Deployment:
    """Validate and save deployment, moving its version on and recording the field diff.

    With expected_version, an update based on an older version raises StaleVersion and
    nothing is written.
    """
    deployment.full_clean()
    with transaction.atomic():
        if deployment.pk is None:
            deployment.created_by = deployment.updated_by = current_actor()
            deployment.version = 1
            deployment.save()
            after = _snapshot(deployment)
            changes: dict[str, Any] = {name: [None, value] for name, value in after.items()}
            changes["version"] = [None, 1]
            default_action = "deployment.create"
        else:
            stored = Deployment.objects.select_for_update().get(pk=deployment.pk)
            if expected_version is not None and stored.version != expected_version:
                raise StaleVersion(deployment=stored, loaded_version=expected_version)
            changes = audit.field_diff(_snapshot(stored), _snapshot(deployment))
            if not changes:
                # Nothing changed: the version stays, so nobody's open form goes stale for nothing.
                deployment.version = stored.version
                if action is not None:
                    audit.record(action=action, team=deployment.team_id, obj=deployment)
                return deployment
            claim_version(deployment=deployment, expected_version=stored.version)
            deployment.updated_by = current_actor()
            deployment.save()
            changes["version"] = version_note(deployment)
            default_action = "deployment.change"
        audit.record(
            action=action or default_action,
            team=deployment.team_id,
            obj=deployment,
            changes=changes,
        )
    return deployment


def delete_deployment(*, deployment: Deployment) -> None:
    """Delete deployment with its overrides and keys, recording what it was."""
    with transaction.atomic():
        audit.record(
            action="deployment.delete",
            team=deployment.team_id,
            obj=deployment,
            changes={name: [value, None] for name, value in _snapshot(deployment).items()},
        )
        deployment.delete()
