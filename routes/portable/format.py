"""The definitions file, format version 1: its fields, reading its JSON, and each entry checked
for types and names before any model sees it.

The format is a contract shared with other consoles: an unknown field is an error, a missing
optional field takes its default, and secrets are never part of it (``keys`` only lists which
roles are set).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from routes import keys as keyring
from routes.models import DEPLOYMENT_FIELDS as EDITED_FIELDS
from routes.models import MIN_INTERVAL_SECONDS, Deployment
from routes.verification import runs

FORMAT_VERSION = 1

# Model field -> its name in the file, where they differ.
FILE_NAMES = {"verification_base_url": "verification.base_url"}
REQUIRED_FIELDS = frozenset({"slug", "team", "server_name"})


def _json_type(name: str) -> type:
    """Return the JSON type of the deployment field name in the file (the team is its slug)."""
    model_field = Deployment._meta.get_field(name)
    if isinstance(model_field, models.BooleanField):
        return bool
    if isinstance(model_field, models.IntegerField):
        return int
    return str


# Field name -> (JSON type, required), in export order: the slug leads (it names the entry in
# every problem), then the fields people edit; FILE_NAMES are written nested instead.
DEPLOYMENT_FIELDS: dict[str, tuple[type, bool]] = {
    name: (_json_type(name), name in REQUIRED_FIELDS)
    for name in dict.fromkeys(("slug", *EDITED_FIELDS))
    if name not in FILE_NAMES
}
NESTED_FIELDS = ("route_overrides", "verification", "keys")
OVERRIDE_FIELDS: dict[str, tuple[type, bool]] = {
    "match": (str, False),
    "path": (str, True),
    "target": (str, False),
    "enabled": (bool, False),
    "position": (int, False),
    "note": (str, False),
}
VERIFICATION_FIELDS: dict[str, tuple[type, bool]] = {
    "base_url": (str, False),
    # Seconds between scheduled runs (20 to a week), or null: manual runs only.
    "interval_seconds": (int, False),
}
# Fields (as the file names them) whose value may also be null.
NULLABLE_FIELDS = frozenset({"verification.interval_seconds"})
_TYPE_NAMES = {
    str: gettext_noop("a string"),
    bool: gettext_noop("true or false"),
    int: gettext_noop("an integer"),
}


# (slug or "file", field, reason) per problem found in a file.
Problems = list[tuple[str, str, str]]


class ImportFailed(Exception):
    """The file was refused; nothing was changed. ``problems`` is [(slug, field, reason)]."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s)")

    def lines(self) -> list[str]:
        """Return one "<slug>: <field>: <reason>" line per problem, printable and bounded."""
        return [
            f"{_printable(slug, limit=_LABEL_LIMIT)}: {_printable(name, limit=_LABEL_LIMIT)}: "
            f"{_printable(str(reason))}"
            for slug, name, reason in self.problems
        ]


# Slugs and field names come from the file: one problem line shows at most this much of each.
_LABEL_LIMIT = 100
# Digits of the longest integer a file may hold: more than any field accepts, small enough for
# a 64-bit database integer (SQLite's driver raises OverflowError beyond), and far below Python's
# int-to-str limit (4300 digits), whose ValueError would escape json.loads.
_MAX_DIGITS = 18


def _printable(text: str, *, limit: int | None = None) -> str:
    """Return text with control characters (NUL, newlines, escapes) shown as escapes."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class _Object(dict):
    """A JSON object that remembers the names it saw more than once (the last value wins)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.duplicates: list[str] = []
        for name, value in pairs:
            if name in self and name not in self.duplicates:
                self.duplicates.append(name)
            self[name] = value


@dataclass(frozen=True)
class _HugeNumber:
    """A JSON integer too long to be any field's value; refused where it appears."""

    digits: int


def _integer(text: str) -> int | _HugeNumber:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= _MAX_DIGITS else _HugeNumber(digits)


def shown(value: Any) -> str:
    """Return a short rendering of a value from the file, for a problem's reason."""
    if isinstance(value, _HugeNumber):
        return _("a number of %(digits)d digits") % {"digits": value.digits}
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= 60 else text[:60] + "…"
    # Never repr() a container: it may be nested thousands deep.
    return _("a list") if isinstance(value, list) else _("an object")


def _text_problem(value: str) -> str | None:
    """Return why a string from the file cannot be stored, or None."""
    if "\x00" in value:
        # PostgreSQL refuses NUL in text: refused here, a file imports alike on every database.
        return _("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _("must be valid Unicode (it holds a lone surrogate escape)")
    return None


def note_duplicates(raw: Any, where: str, slug: str, problems: Problems) -> None:
    """Record every name that appears more than once in the JSON object raw."""
    for name in getattr(raw, "duplicates", ()):
        problems.append((slug, f"{where}{name}", _("appears more than once in this object")))


@dataclass
class ImportReport:
    """What an import did."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    teams_created: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_payload(text: str | bytes, *, limit: int | None = None) -> Any:
    """Return the parsed JSON of text (bytes must be UTF-8); raise ImportFailed otherwise.

    With limit, more than that many bytes is refused. Every JSON object remembers duplicate
    names, and over-long integers are kept as _HugeNumber, for import_payload to refuse.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if limit is not None and size > limit:
        raise ImportFailed(
            [
                (
                    "file",
                    "file",
                    _("larger than %(limit)d bytes (the limit is CONSOLE_IMPORT_MAX_BYTES)")
                    % {"limit": limit},
                )
            ]
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportFailed(
                [
                    (
                        "file",
                        "file",
                        _("not UTF-8 text: the byte at offset %(offset)d cannot be decoded")
                        % {"offset": exc.start},
                    )
                ]
            ) from None
    try:
        return json.loads(text, object_pairs_hook=_Object, parse_int=_integer)
    except json.JSONDecodeError as exc:
        raise ImportFailed(
            [
                (
                    "file",
                    "json",
                    _("not valid JSON: %(error)s (line %(line)d, column %(column)d)")
                    % {"error": exc.msg, "line": exc.lineno, "column": exc.colno},
                )
            ]
        ) from None
    except RecursionError:
        raise ImportFailed(
            [("file", "json", _("nested too deeply to be a definitions file"))]
        ) from None


def dump_payload(payload: dict[str, Any]) -> str:
    """Return payload as the file's text: indented JSON ending with a newline."""
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def messages_of(exc: ValidationError) -> list[str]:
    return [str(m).rstrip(".") for m in exc.messages]


def _typed(
    raw: dict, spec: dict[str, tuple[type, bool]], where: str, slug: str, problems: Problems
) -> dict[str, Any]:
    """Return the known, correctly typed values of raw; record every problem."""
    values: dict[str, Any] = {}
    note_duplicates(raw, where, slug, problems)
    for name, value in raw.items():
        if name not in spec:
            problems.append((slug, f"{where}{name}", _("unknown field")))
            continue
        expected = spec[name][0]
        nullable = f"{where}{name}" in NULLABLE_FIELDS
        if value is None and nullable:
            values[name] = None
            continue
        if isinstance(value, _HugeNumber):
            problems.append(
                (slug, f"{where}{name}", _("%(number)s is too large") % {"number": shown(value)})
            )
            continue
        # bool is an int in Python; a port of `true` is still a mistake.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            wanted = _("must be %(type)s or null") if nullable else _("must be %(type)s")
            problems.append((slug, f"{where}{name}", wanted % {"type": _(_TYPE_NAMES[expected])}))
            continue
        reason = _text_problem(value) if isinstance(value, str) else None
        if reason is not None:
            problems.append((slug, f"{where}{name}", reason))
            continue
        values[name] = value
    for name, (_type, required) in spec.items():
        if required and name not in raw:
            problems.append((slug, f"{where}{name}", _("required")))
    return values


@dataclass
class Entry:
    slug: str
    values: dict[str, Any]
    overrides: list[dict[str, Any]]
    verification: dict[str, Any]
    keys: list[str]


def parse_entry(raw: Any, index: int, problems: Problems) -> Entry | None:
    if not isinstance(raw, dict):
        problems.append((f"deployments[{index}]", "deployment", _("must be an object")))
        return None
    raw_slug = raw.get("slug")
    label = f"deployments[{index}]"
    if isinstance(raw_slug, str) and raw_slug and _text_problem(raw_slug) is None:
        label = raw_slug
    note_duplicates(raw, "", label, problems)
    scalars = {k: val for k, val in raw.items() if k not in NESTED_FIELDS}
    values = _typed(scalars, DEPLOYMENT_FIELDS, "", label, problems)
    # Only a slug that passed _typed goes on: it is used in queries, where NUL breaks PostgreSQL.
    slug = values.get("slug") or None
    if raw_slug == "":
        problems.append((label, "slug", _("must not be empty")))

    overrides: list[dict[str, Any]] = []
    raw_overrides = raw.get("route_overrides", [])
    if not isinstance(raw_overrides, list):
        problems.append((label, "route_overrides", _("must be a list")))
        raw_overrides = []
    for position, item in enumerate(raw_overrides):
        where = f"route_overrides[{position}]"
        if not isinstance(item, dict):
            problems.append((label, where, _("must be an object")))
            continue
        override = _typed(item, OVERRIDE_FIELDS, f"{where}.", label, problems)
        override.setdefault("position", position)
        overrides.append(override)

    verification: dict[str, Any] = {}
    raw_verification = raw.get("verification", {})
    if not isinstance(raw_verification, dict):
        problems.append((label, "verification", _("must be an object")))
    else:
        verification = _typed(
            raw_verification, VERIFICATION_FIELDS, "verification.", label, problems
        )
        interval = verification.get("interval_seconds")
        if not runs.interval_allowed(interval):
            problems.append(
                (
                    label,
                    "verification.interval_seconds",
                    _(
                        "must be %(min)d to %(max)d seconds (a week), or null for manual runs "
                        "only (got %(value)d)"
                    )
                    % {
                        "min": MIN_INTERVAL_SECONDS,
                        "max": runs.MAX_INTERVAL_SECONDS,
                        "value": interval,
                    },
                )
            )

    roles: list[str] = []
    raw_keys = raw.get("keys", [])
    if not isinstance(raw_keys, list):
        problems.append((label, "keys", _("must be a list of key roles")))
        raw_keys = []
    for position, role in enumerate(raw_keys):
        # A role that is not a string ({} or []) cannot be looked up: it is unhashable.
        if not isinstance(role, str) or role not in keyring.ROLE_LABELS:
            problems.append(
                (
                    label,
                    f"keys[{position}]",
                    _("unknown key role %(role)s; use one of %(roles)s")
                    % {"role": shown(role), "roles": ", ".join(keyring.ROLE_LABELS)},
                )
            )
        else:
            roles.append(role)
    if slug is None:
        return None
    return Entry(slug, values, overrides, verification, roles)
