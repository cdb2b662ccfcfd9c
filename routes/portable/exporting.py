"""Exporting definitions in the version-1 format, in three queries whatever their number."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.db.models import F, QuerySet

from routes.models import Deployment, Key, RouteOverride
from routes.portable.format import DEPLOYMENT_FIELDS, FORMAT_VERSION, OVERRIDE_FIELDS
from routes.portable.trail import record_for_team


def _export_entries(deployments: Iterable[Deployment]) -> list[tuple[Deployment, dict[str, Any]]]:
    """Return (deployment, entry of the file) by slug, in three queries whatever their number.

    A queryset is read as a subquery (its filters kept, its annotations dropped); other
    iterables by their ids.
    """
    chosen: Any = (
        deployments.values("pk")
        if isinstance(deployments, QuerySet)
        else [d.pk for d in deployments]
    )
    rows = (
        Deployment.objects.filter(pk__in=chosen)
        .select_related("team")
        .annotate(file_interval=F("verification_job__interval_seconds"))
        .order_by("slug")
    )
    overrides: dict[int, list[RouteOverride]] = defaultdict(list)
    for override in RouteOverride.objects.filter(deployment__in=chosen).order_by(
        "deployment_id", "position", "id"
    ):
        overrides[override.deployment_id].append(override)
    roles: dict[int, set[str]] = defaultdict(set)
    for deployment_id, role in Key.objects.filter(deployment__in=chosen).values_list(
        "deployment_id", "role"
    ):
        roles[deployment_id].add(role)
    found: list[tuple[Deployment, dict[str, Any]]] = []
    for deployment in rows:
        entry: dict[str, Any] = {}
        for name in DEPLOYMENT_FIELDS:
            entry[name] = deployment.team.slug if name == "team" else getattr(deployment, name)
        entry["route_overrides"] = [
            {name: getattr(override, name) for name in OVERRIDE_FIELDS}
            for override in overrides[deployment.pk]
        ]
        entry["verification"] = {
            "base_url": deployment.verification_base_url,
            "interval_seconds": deployment.file_interval,
        }
        entry["keys"] = sorted(roles[deployment.pk])
        found.append((deployment, entry))
    return found


def _document(entries: list[tuple[Deployment, dict[str, Any]]]) -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "deployments": [entry for _d, entry in entries]}


def export_payload(*, deployments: Iterable[Deployment]) -> dict[str, Any]:
    """Return the version-1 document of deployments, by slug; key roles only, never secrets."""
    return _document(_export_entries(deployments))


def export_definitions(*, deployments: Iterable[Deployment]) -> dict[str, Any]:
    """Return export_payload(deployments) and record the export: one audit event per team."""
    entries = _export_entries(deployments)
    groups: dict[int, list[tuple[Deployment, dict[str, Any]]]] = defaultdict(list)
    for deployment, entry in entries:
        groups[deployment.team_id].append((deployment, entry))
    for team_id, items in sorted(groups.items()):
        record_for_team(
            action="definitions.export",
            team_id=team_id,
            deployments=[d for d, _entry in items],
            one={"keys": items[0][1]["keys"]},
            several={"deployments": [d.slug for d, _entry in items]},
        )
    return _document(entries)
