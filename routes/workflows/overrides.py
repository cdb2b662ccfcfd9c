"""Route overrides: each save or delete counts as an edit of its deployment."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from routes import audit
from routes.models import Deployment, RouteOverride
from routes.workflows.versions import record_part_edit

_UNTRACKED = ("deployment",)


def _override_label(override: RouteOverride) -> str:
    return f"{override.deployment.slug}: {override.match} {override.path}"


def save_override(*, override: RouteOverride, bump_version: bool = True) -> RouteOverride:
    """Validate and save a route override; counts as an edit of its deployment."""
    override.full_clean()
    with transaction.atomic():
        stored = RouteOverride.objects.filter(pk=override.pk).first() if override.pk else None
        before = audit.snapshot(stored, exclude=_UNTRACKED) if stored else {}
        override.save()
        diff = audit.field_diff(before, audit.snapshot(override, exclude=_UNTRACKED))
        diff.pop("id", None)
        if not diff:
            return override
        record_part_edit(
            deployment=override.deployment,
            action="override.change" if stored else "override.create",
            object_repr=_override_label(override),
            changes=diff,
            bump_version=bump_version,
        )
    return override


def delete_override(*, override: RouteOverride, bump_version: bool = True) -> None:
    """Delete a route override; counts as an edit of its deployment."""
    with transaction.atomic():
        deployment = override.deployment
        label = _override_label(override)
        before = audit.snapshot(override, exclude=(*_UNTRACKED, "id"))
        override.delete()
        record_part_edit(
            deployment=deployment,
            action="override.delete",
            object_repr=label,
            changes={name: [value, None] for name, value in before.items()},
            bump_version=bump_version,
        )


def replace_overrides(*, deployment: Deployment, overrides: Iterable[RouteOverride]) -> None:
    """Replace every override of deployment with overrides (already validated), in order."""
    for existing in list(deployment.overrides.all()):
        delete_override(override=existing, bump_version=False)
    for override in overrides:
        override.deployment = deployment
        save_override(override=override, bump_version=False)
