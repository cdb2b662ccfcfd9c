"""Drift between a deployment, its last export and the files in the export directory.

Two questions, each answered without writing anything and without starting a process:

- changed since the last export: the SHA-256 of the site config rendered now differs from the
  content_hash of the deployment's latest ConfigExport (whatever its source);
- edited on disk: a file the console wrote into CONSOLE_EXPORT_DIR for the deployment (its site
  file, its compose file, and the shared file its site needs) no longer has the SHA-256 that the
  export manifest recorded when the console wrote it, or is gone. The manifest is the record of
  what the console wrote into that directory, so an archive download or an export into another
  --output-dir never makes a file there look edited. A deployment the manifest does not list was
  never exported into the directory: nothing to compare.

Reads are bounded: a file larger than MAX_FILE_BYTES counts as edited (the console never writes
one that large), and only regular files are opened, never a FIFO or a device. Pages call this
for at most one page of deployments; the manifest is parsed once per version of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import OuterRef, Subquery, prefetch_related_objects

from routes.models import ConfigExport, Deployment
from routes.nginx.export import MANIFEST, read_regular_bytes, sha256
from routes.nginx.render import COMMON_FILENAME, InvalidDeployment, render_site, site_filename

if TYPE_CHECKING:
    from django.db.models import QuerySet

# Rendered site and compose files are a few kilobytes; anything far larger is not the console's.
MAX_FILE_BYTES = 1024 * 1024
# A manifest lists one short entry per file: this is room for well over 100,000 of them.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
EDITED = "edited"
MISSING = "missing"


@dataclass(frozen=True)
class DiskDrift:
    """The deployment's files in the export directory that differ from what the console wrote.

    ``files`` maps a file name to EDITED or MISSING; ``tracked`` says whether the manifest lists
    a file of the deployment at all.
    """

    tracked: bool
    files: dict[str, str] = field(default_factory=dict)

    @property
    def edited(self) -> bool:
        return bool(self.files)


@dataclass(frozen=True)
class Drift:
    """Both drift answers of one deployment."""

    exported: bool
    changed_since_export: bool
    disk: DiskDrift

    @property
    def edited_on_disk(self) -> bool:
        return self.disk.edited


def last_export_hash() -> Subquery:
    """Return the content_hash of the outer deployment's latest ConfigExport (for annotate)."""
    return Subquery(
        ConfigExport.objects.filter(deployment=OuterRef("pk"))
        .order_by("-created_at", "-id")
        .values("content_hash")[:1]
    )


def with_drift_data(queryset: QuerySet[Deployment]) -> QuerySet[Deployment]:
    """Return the deployments with what drift_of() needs, in a fixed number of queries."""
    return queryset.annotate(last_export_hash=last_export_hash()).prefetch_related("overrides")


def rendered_hash(deployment: Deployment) -> str | None:
    """Return the SHA-256 of the deployment's site config as rendered now, None if it cannot be."""
    try:
        return sha256(render_site(deployment))
    except InvalidDeployment:
        return None


# {manifest path: (its stat signature, {deployment slug: {file name: sha256}})}. The export
# replaces the manifest by a rename, so a new version always has a new signature.
_manifests: dict[str, tuple[tuple[int, ...], dict[str, dict[str, str]]]] = {}
_manifests_lock = threading.Lock()


def _parse_manifest(data: bytes) -> dict[str, dict[str, str]]:
    """Return {deployment slug: {file name: sha256}} of a manifest's site and compose entries."""
    try:
        files = json.loads(data.decode("utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return {}
    if not isinstance(files, dict):
        return {}
    by_slug: dict[str, dict[str, str]] = {}
    for name, entry in files.items():
        if not isinstance(entry, dict) or "/" in name or name.startswith("."):
            continue
        digest, slug = entry.get("sha256"), entry.get("deployment")
        if entry.get("kind") in ("site", "compose") and isinstance(digest, str) and slug:
            by_slug.setdefault(str(slug), {})[name] = digest
        elif entry.get("kind") == "common" and isinstance(digest, str):
            by_slug.setdefault("", {})[name] = digest
    return by_slug


def written_files(directory: Path) -> dict[str, dict[str, str]]:
    """Return {deployment slug: {file name: sha256 the console wrote}} from the manifest.

    The shared file is under the slug "". An unreadable or malformed manifest gives {}: what the
    console wrote is then unknown, and export_nginx reports the manifest itself.
    """
    path = directory / MANIFEST
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return {}
    signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _manifests_lock:
        cached = _manifests.get(str(path))
    if cached is not None and cached[0] == signature:
        return cached[1]
    data = read_regular_bytes(path, MAX_MANIFEST_BYTES)
    parsed = _parse_manifest(data) if data is not None else {}
    with _manifests_lock:
        _manifests[str(path)] = (signature, parsed)
    return parsed


def disk_drift(deployment: Deployment, *, directory: Path | None = None) -> DiskDrift:
    """Return which of the deployment's files in the export directory differ from the manifest."""
    directory = Path(directory or settings.CONSOLE_EXPORT_DIR)
    written = written_files(directory)
    own = written.get(deployment.slug, {})
    if not own:
        return DiskDrift(tracked=False)
    expected = dict(own)
    # The site file only works next to the shared file it was exported with.
    if site_filename(deployment) in own and COMMON_FILENAME in written.get("", {}):
        expected[COMMON_FILENAME] = written[""][COMMON_FILENAME]
    differing = {}
    for name, digest in sorted(expected.items()):
        path = directory / name
        data = read_regular_bytes(path, MAX_FILE_BYTES)
        if data is None:
            differing[name] = MISSING if not os.path.lexists(path) else EDITED
        elif hashlib.sha256(data).hexdigest() != digest:
            differing[name] = EDITED
    return DiskDrift(tracked=True, files=differing)


def drift_of(
    deployment: Deployment, *, last_hash: str | None = None, directory: Path | None = None
) -> Drift:
    """Return the drift of a deployment loaded through with_drift_data() (or given last_hash)."""
    if last_hash is None:
        last_hash = getattr(deployment, "last_export_hash", None)
    return Drift(
        exported=last_hash is not None,
        changed_since_export=last_hash is not None and rendered_hash(deployment) != last_hash,
        disk=disk_drift(deployment, directory=directory),
    )


def drift_for(
    deployments: Iterable[Deployment], *, directory: Path | None = None
) -> dict[int, Drift]:
    """Return {deployment id: drift} for loaded deployments, with two queries in all."""
    deployments = list(deployments)
    if not deployments:
        return {}
    prefetch_related_objects(deployments, "overrides")
    hashes = dict(
        Deployment.objects.filter(pk__in=[d.pk for d in deployments])
        .annotate(last=last_export_hash())
        .values_list("pk", "last")
    )
    return {d.pk: drift_of(d, last_hash=hashes.get(d.pk), directory=directory) for d in deployments}
