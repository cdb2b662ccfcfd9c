"""Generations of an nginx directory: the files an apply replaces, kept whole in a journal.

An apply keeps the files it is about to replace (sites, the shared file, the manifest) as the
previous generation in JOURNAL, written atomically before the first of them is replaced: that
write is the commit point. While a journal exists the directory may hold the new generation,
the previous one or, for the moment of a rename, a mix; nginx only reads the directory when it
is reloaded, and whoever finds a journal puts the previous generation back whole first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.utils.translation import gettext as _

from routes.files import atomic_write, fsync_dir, replace_all
from routes.models import Deployment
from routes.nginx.export import ExportError, read_regular_text, remove_leftovers
from routes.nginx.render import CONFIG_HEADER, config_hash, site_filename

JOURNAL = ".console-apply.json"


@dataclass(frozen=True)
class Generation:
    """The files of one generation of the directory: {name: text, or None when absent}."""

    files: dict[str, str | None]

    def site_hashes(self, deployments: Iterable[Deployment]) -> dict[str, str | None]:
        """Return the config hash of each deployment's site file in it (None: no file)."""
        found = {}
        for d in deployments:
            text = self.files.get(site_filename(d))
            found[d.slug] = config_hash(text) if text is not None else None
        return found

    def traced(self, deployment: Deployment) -> bool:
        """Return whether the deployment's site file in it carries X-Console-Config."""
        return CONFIG_HEADER in (self.files.get(site_filename(deployment)) or "")


def read_generation(directory: Path, names: Iterable[str]) -> Generation:
    """Return the current files of directory under names."""
    return Generation({name: read_regular_text(directory / name) for name in sorted(names)})


def restore_generation(directory: Path, generation: Generation) -> None:
    """Put generation back in directory: files rewritten atomically, names it lacked removed."""
    changes = {
        directory / name: text
        for name, text in generation.files.items()
        if text is not None and read_regular_text(directory / name) != text
    }
    replace_all(changes)
    for name, text in generation.files.items():
        if text is None and (directory / name).exists():
            (directory / name).unlink()
    fsync_dir(directory)


def read_journal(directory: Path) -> dict[str, Any] | None:
    """Return the journal an unfinished apply left in directory, or None."""
    path = directory / JOURNAL
    if not path.exists():
        return None
    try:
        data = json.loads(read_regular_text(path) or "")
        files = data["files"]
        if not isinstance(files, dict) or not all(
            isinstance(t, str | None) and "/" not in n for n, t in files.items()
        ):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(
            _(
                "%(path)s is not a valid apply journal; nothing was changed. It holds the files "
                "of the generation before an interrupted apply: fix or delete it."
            )
            % {"path": path}
        ) from exc
    return data


def write_journal(directory: Path, *, apply_id: int, phase: str, previous: Generation) -> None:
    """Store the previous generation and the phase reached, atomically (the commit point)."""
    data = {"version": 1, "apply": apply_id, "phase": phase, "files": previous.files}
    atomic_write(directory / JOURNAL, json.dumps(data, sort_keys=True) + "\n", mode=0o600)


def remove_journal(directory: Path) -> None:
    """Forget the previous generation: the apply has settled."""
    (directory / JOURNAL).unlink(missing_ok=True)
    remove_leftovers(directory, {JOURNAL})
    fsync_dir(directory)
