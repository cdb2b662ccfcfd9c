"""Files written whole or not at all: a temp file beside the target, then one rename.

No Django here: console/settings.py writes its local secrets with it before apps are loaded.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

# The temp files' names: mkstemp's "." + target + "." + 8 random [a-z0-9_] + ".tmp".
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def _temp_file(path: Path, text: str, mode: int) -> str:
    """Write text to a new temp file beside path, with mode; return its name."""
    # The name ends in .tmp so that an nginx reload never includes a half-written file. Its shape
    # is TEMP_NAME, so that whoever owns the directory can remove what a killed writer left.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def replace_all(changes: Mapping[Path, str], *, mode: int = 0o644) -> None:
    """Replace every file atomically: all temp files are on disk before the first rename."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in changes.items():
            staged.append((_temp_file(path, text, mode), path))
        if staged:
            # One sync for the whole batch: an fsync per file costs more than rendering it.
            os.sync()
        while staged:
            tmp, path = staged[0]
            os.replace(tmp, path)
            staged.pop(0)
    finally:
        for tmp, _path in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def atomic_write(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace path with text, so that a reader sees the old file or the new one, never half."""
    replace_all({path: text}, mode=mode)


def fsync_dir(directory: Path) -> None:
    """Flush directory's entries (the renames into it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
