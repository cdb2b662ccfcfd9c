"""Deployment definitions as portable JSON (format version 1): import all-or-nothing, export.

The format is a contract shared with other consoles: an unknown field is an error, a missing
optional field takes its default, and secrets are never part of it (``keys`` only lists which
roles are set).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from routes import audit
from routes import keys as keyring
from routes.context import acting, current_ip
from routes.models import DEPLOYMENT_FIELDS as EDITED_FIELDS
from routes.models import MIN_INTERVAL_SECONDS, Deployment, RouteOverride, Team, VerificationJob
from routes.permissions import Action, can
from routes.verification import destinations, runs
from routes.workflows.deployments import save_deployment
from routes.workflows.overrides import replace_overrides
from routes.workflows.teams import create_team

if TYPE_CHECKING:
    from django.contrib.auth.models import User

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


def _shown(value: Any) -> str:
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


def _duplicates(raw: Any, where: str, slug: str, problems: Problems) -> None:
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


def _messages(exc: ValidationError) -> list[str]:
    return [str(m).rstrip(".") for m in exc.messages]


def _typed(
    raw: dict, spec: dict[str, tuple[type, bool]], where: str, slug: str, problems: Problems
) -> dict[str, Any]:
    """Return the known, correctly typed values of raw; record every problem."""
    values: dict[str, Any] = {}
    _duplicates(raw, where, slug, problems)
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
                (slug, f"{where}{name}", _("%(number)s is too large") % {"number": _shown(value)})
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
class _Entry:
    slug: str
    values: dict[str, Any]
    overrides: list[dict[str, Any]]
    verification: dict[str, Any]
    keys: list[str]


def _parse_entry(raw: Any, index: int, problems: Problems) -> _Entry | None:
    if not isinstance(raw, dict):
        problems.append((f"deployments[{index}]", "deployment", _("must be an object")))
        return None
    raw_slug = raw.get("slug")
    label = f"deployments[{index}]"
    if isinstance(raw_slug, str) and raw_slug and _text_problem(raw_slug) is None:
        label = raw_slug
    _duplicates(raw, "", label, problems)
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
                    % {"role": _shown(role), "roles": ", ".join(keyring.ROLE_LABELS)},
                )
            )
        else:
            roles.append(role)
    if slug is None:
        return None
    return _Entry(slug, values, overrides, verification, roles)


def _deployment_defaults() -> dict[str, Any]:
    """Return the model's default of every field of the file but the slug and the team."""
    defaults = {}
    for name in DEPLOYMENT_FIELDS:
        model_field = Deployment._meta.get_field(name)
        if name not in ("slug", "team") and isinstance(model_field, models.Field):
            defaults[name] = model_field.get_default()
    return defaults


def _override_signature(items: Iterable[RouteOverride]) -> list[tuple[Any, ...]]:
    return [(o.match, o.path, o.target, o.enabled, o.position, o.note) for o in items]


def import_payload(
    *,
    payload: Any,
    update: bool = False,
    team_slug: str | None = None,
    as_user: User | None = None,
) -> ImportReport:
    """Create or (with update) replace the deployments of payload, all or nothing.

    Missing teams are created. With team_slug every deployment goes into that team. Raises
    ImportFailed with every problem found; then nothing has changed. With as_user the import
    follows that user's role rules (and is recorded as theirs); without, it acts as the server
    administrator, who counts as an owner.
    """
    if as_user is None:
        return _import(payload=payload, update=update, team_slug=team_slug, as_user=None)
    # Recorded as as_user's, from wherever the import came.
    with acting(user=as_user, ip=current_ip()):
        return _import(payload=payload, update=update, team_slug=team_slug, as_user=as_user)


def _import(
    *, payload: Any, update: bool, team_slug: str | None, as_user: User | None
) -> ImportReport:
    """Do import_payload's work as whoever is acting now."""
    problems: Problems = []
    if not isinstance(payload, dict):
        raise ImportFailed([("file", "file", _("must be a JSON object"))])
    _duplicates(payload, "", "file", problems)
    for name in payload:
        if name not in ("version", "deployments"):
            problems.append(("file", name, _("unknown field")))
    version = payload.get("version")
    # `true` equals 1 in Python; it is still not the version number.
    if isinstance(version, bool) or version != FORMAT_VERSION:
        problems.append(
            (
                "file",
                "version",
                _("must be %(version)d (got %(found)s)")
                % {"version": FORMAT_VERSION, "found": _shown(payload.get("version"))},
            )
        )
    raw_entries = payload.get("deployments")
    if not isinstance(raw_entries, list):
        problems.append(("file", "deployments", _("must be a list")))
        raw_entries = []

    entries: list[_Entry] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_entries):
        entry = _parse_entry(raw, index, problems)
        if entry is None:
            continue
        if entry.slug in seen:
            problems.append((entry.slug, "slug", _("appears twice in the file")))
            continue
        seen.add(entry.slug)
        entries.append(entry)

    report = ImportReport()
    try:
        with transaction.atomic():
            teams = _ensure_teams(entries, team_slug, problems, report)
            planned = [
                _plan(
                    entry,
                    teams[team_slug or entry.values["team"]],
                    update,
                    problems,
                    as_user=as_user,
                )
                for entry in entries
                if (team_slug or entry.values.get("team")) in teams
            ]
            if problems:
                raise ImportFailed(problems)
            for deployment, overrides, entry in planned:
                created = deployment.pk is None
                unchanged_overrides = not created and _override_signature(
                    deployment.overrides.all()
                ) == _override_signature(overrides)
                stored = None if created else Deployment.objects.get(pk=deployment.pk)
                before = destinations.key_origins(stored) if stored is not None else []
                save_deployment(deployment=deployment, action="deployment.import")
                destinations.confirm_own_change(deployment=deployment, before=before, how="import")
                if not unchanged_overrides:
                    replace_overrides(deployment=deployment, overrides=overrides)
                _apply_schedule(deployment, entry.verification.get("interval_seconds"))
                (report.created if created else report.updated).append(deployment.slug)
                present = set(deployment.keys.values_list("role", flat=True))
                for role in entry.keys:
                    if role not in present:
                        report.warnings.append(
                            _(
                                "%(slug)s: keys: %(role)s is listed but secrets are never "
                                "exported; set it with `manage.py set_key %(slug)s %(role)s`"
                            )
                            % {"slug": deployment.slug, "role": role}
                        )
    except ValidationError as exc:
        # A concurrent change slipped past validation; report it like any other problem.
        raise ImportFailed([("file", "deployments", m) for m in _messages(exc)]) from None
    return report


def _apply_schedule(deployment: Deployment, interval: int | None) -> None:
    """Give deployment's job the file's interval and its next run; record a change.

    No job is created for a deployment without a schedule: it gets one on its first run.
    """
    job = VerificationJob.objects.filter(deployment=deployment).first()
    if job is None and interval is None:
        return
    if job is not None and job.interval_seconds == interval:
        return
    created = job is None
    job = job if job is not None else VerificationJob(deployment=deployment)
    before = {} if created else audit.snapshot(job)
    previous = job.interval_seconds
    job.interval_seconds = interval
    runs.reschedule(job, previous_interval=previous)
    job.save()
    audit.record(
        action="verification_job.create" if created else "verification_job.change",
        team=deployment.team_id,
        obj=job,
        changes=audit.field_diff(before, audit.snapshot(job)),
    )


def _ensure_teams(
    entries: list[_Entry],
    team_slug: str | None,
    problems: Problems,
    report: ImportReport,
) -> dict[str, Team]:
    """Return the teams the entries go to by slug, creating missing ones (with problems)."""
    wanted = {team_slug} if team_slug else {e.values["team"] for e in entries if "team" in e.values}
    teams = {t.slug: t for t in Team.objects.filter(slug__in=wanted)}
    for slug in sorted(wanted - set(teams)):
        team = Team(name=slug, slug=slug)
        try:
            team.full_clean()
        except ValidationError as exc:
            owner = (
                "--team"
                if team_slug
                else next(e.slug for e in entries if e.values.get("team") == slug)
            )
            problems.append((owner, "team", "; ".join(_messages(exc))))
            continue
        # Commands act as the server administrator: nobody becomes owner of imported teams.
        teams[slug] = create_team(name=slug, slug=slug, creator_becomes_owner=False)
        report.teams_created.append(slug)
    return teams


def _plan(
    entry: _Entry, team: Team, update: bool, problems: Problems, *, as_user: User | None = None
) -> tuple[Deployment, list[RouteOverride], _Entry]:
    """Return (deployment, overrides, entry) with the file's values applied and validated."""
    existing = Deployment.objects.filter(slug=entry.slug).first()
    if existing is not None and not update:
        problems.append((entry.slug, "slug", _("already exists; use --update to replace it")))
    stored = (
        {name: getattr(existing, name) for name in destinations.DEPLOYMENT_DESTINATION_FIELDS}
        if existing is not None
        else None
    )
    deployment = existing if existing is not None else Deployment(slug=entry.slug)
    values = {**_deployment_defaults(), **entry.values}
    values.pop("team", None)
    values["name"] = values.get("name") or entry.slug
    for name, value in values.items():
        setattr(deployment, name, value)
    deployment.verification_base_url = entry.verification.get("base_url", "")
    if as_user is not None:
        _check_role_rules(entry, deployment, team, existing, stored, as_user, problems)
    deployment.team = team
    try:
        deployment.full_clean()
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            if name == "slug" and existing is not None:
                continue
            where = FILE_NAMES.get(name, "deployment" if name == "__all__" else name)
            problems.extend((entry.slug, where, m.rstrip(".")) for m in messages)

    overrides: list[RouteOverride] = []
    seen: dict[tuple[str, str], int] = {}
    for index, values in enumerate(entry.overrides):
        where = f"route_overrides[{index}]"
        override = RouteOverride(**values)
        try:
            override.full_clean(exclude=["deployment"])
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                field_name = f"{where}.{name}" if name != "__all__" else where
                problems.extend((entry.slug, field_name, m.rstrip(".")) for m in messages)
            continue
        signature = (override.match, override.path)
        if signature in seen:
            problems.append(
                (
                    entry.slug,
                    f"{where}.path",
                    _("route_overrides[%(index)d] already has this match and path")
                    % {"index": seen[signature]},
                )
            )
            continue
        seen[signature] = index
        overrides.append(override)
    return deployment, overrides, entry


def _check_role_rules(
    entry: _Entry,
    deployment: Deployment,
    team: Team,
    existing: Deployment | None,
    stored: dict[str, Any] | None,
    as_user: User,
    problems: Problems,
) -> None:
    """Record what as_user may not do: edit the team, set key destinations, move keys away."""
    needed = Action.EDIT if existing is not None else Action.CREATE
    if not can(as_user, needed, team.pk) or (
        existing is not None and not can(as_user, Action.EDIT, existing.team_id)
    ):
        message = (
            _("%(user)s may not change deployments of team %(team)s")
            if existing is not None
            else _("%(user)s may not create deployments in team %(team)s")
        )
        problems.append(
            (entry.slug, "team", message % {"user": as_user.get_username(), "team": team.slug})
        )
        return
    team_ids = [team.pk, *([existing.team_id] if existing is not None else [])]
    submitted = {n: getattr(deployment, n) for n in destinations.DEPLOYMENT_DESTINATION_FIELDS}
    for name in destinations.refused_fields(
        user=as_user, team_ids=team_ids, submitted=submitted, stored=stored
    ):
        reason = destinations.refusal(team_slug=team.slug).messages[0]
        problems.append((entry.slug, FILE_NAMES.get(name, name), reason))
    if existing is None or existing.team_id == team.pk or not existing.keys.exists():
        return
    if not destinations.may_set_destination(as_user, existing.team_id):
        problems.append(
            (
                entry.slug,
                "team",
                _("only an owner of team %(team)s may move a deployment that holds keys")
                % {"team": existing.team.slug},
            )
        )


def export_payload(*, deployments: Iterable[Deployment]) -> dict[str, Any]:
    """Return the version-1 document of deployments, by slug; key roles only, never secrets."""
    if hasattr(deployments, "select_related"):
        deployments = deployments.select_related("team").prefetch_related("overrides", "keys")
    deployments = list(deployments)
    intervals = dict(
        VerificationJob.objects.filter(deployment__in=[d.pk for d in deployments]).values_list(
            "deployment_id", "interval_seconds"
        )
    )
    entries = []
    for deployment in sorted(deployments, key=lambda d: d.slug):
        entry: dict[str, Any] = {}
        for name in DEPLOYMENT_FIELDS:
            entry[name] = deployment.team.slug if name == "team" else getattr(deployment, name)
        entry["route_overrides"] = [
            {name: getattr(override, name) for name in OVERRIDE_FIELDS}
            for override in sorted(deployment.overrides.all(), key=lambda o: (o.position, o.pk))
        ]
        entry["verification"] = {
            "base_url": deployment.verification_base_url,
            "interval_seconds": intervals.get(deployment.pk),
        }
        entry["keys"] = sorted({key.role for key in deployment.keys.all()})
        entries.append(entry)
    return {"version": FORMAT_VERSION, "deployments": entries}


def export_definitions(*, deployments: Iterable[Deployment]) -> dict[str, Any]:
    """Return export_payload(deployments) and record the export of each deployment."""
    payload = export_payload(deployments=deployments)
    by_slug = {d.slug: d for d in deployments}
    for entry in payload["deployments"]:
        deployment = by_slug[entry["slug"]]
        audit.record(
            action="definitions.export",
            team=deployment.team_id,
            obj=deployment,
            changes={"keys": entry["keys"]},
        )
    return payload
