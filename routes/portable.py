"""Deployment definitions as portable JSON (format version 1): import all-or-nothing, export.

The format is a contract shared with other consoles: an unknown field is an error, a missing
optional field takes its default, and secrets are never part of it (``keys`` only lists which
roles are set).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from routes import actions, audit
from routes import keys as keyring
from routes.models import Deployment, RouteOverride, Team

FORMAT_VERSION = 1

# Field name -> (JSON type, required). Order is the export order.
DEPLOYMENT_FIELDS: dict[str, tuple[type, bool]] = {
    "slug": (str, True),
    "name": (str, False),
    "team": (str, True),
    "mode": (str, False),
    "server_name": (str, True),
    "listen_address": (str, False),
    "tls": (bool, False),
    "http_port": (int, False),
    "https_port": (int, False),
    "ssl_certificate": (str, False),
    "ssl_certificate_key": (str, False),
    "http2": (bool, False),
    "cpa_upstream": (str, False),
    "cpamp_upstream": (str, False),
    "cpamp_cpa_url": (str, False),
    "resolver": (str, False),
    "client_max_body_size": (str, False),
    "proxy_read_timeout": (int, False),
    "proxy_send_timeout": (int, False),
    "route_tracing": (bool, False),
    "cpa_version": (str, False),
    "notes": (str, False),
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
VERIFICATION_FIELDS: dict[str, tuple[type, bool]] = {"base_url": (str, False)}
# Model field -> its name in the file, where they differ.
FILE_NAMES = {"verification_base_url": "verification.base_url"}
_TYPE_NAMES = {
    str: gettext_noop("a string"),
    bool: gettext_noop("true or false"),
    int: gettext_noop("an integer"),
}


class ImportFailed(Exception):
    """The file was refused; nothing was changed. ``problems`` is [(slug, field, reason)]."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s)")

    def lines(self) -> list[str]:
        """Return one "<slug>: <field>: <reason>" line per problem."""
        return [f"{slug}: {name}: {reason}" for slug, name, reason in self.problems]


@dataclass
class ImportReport:
    """What an import did."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    teams_created: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_payload(text: str) -> dict:
    """Return the parsed JSON of text; raise ImportFailed when it is not JSON."""
    try:
        return json.loads(text)
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


def dump_payload(payload: dict) -> str:
    """Return payload as the file's text: indented JSON ending with a newline."""
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def _messages(exc: ValidationError) -> list[str]:
    return [str(m).rstrip(".") for m in exc.messages]


def _typed(
    raw: dict, spec: dict[str, tuple[type, bool]], where: str, slug: str, problems: list
) -> dict[str, Any]:
    """Return the known, correctly typed values of raw; record every problem."""
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in spec:
            problems.append((slug, f"{where}{name}", _("unknown field")))
            continue
        expected = spec[name][0]
        # bool is an int in Python; a port of `true` is still a mistake.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            problems.append(
                (slug, f"{where}{name}", _("must be %(type)s") % {"type": _(_TYPE_NAMES[expected])})
            )
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


def _parse_entry(raw: Any, index: int, problems: list) -> _Entry | None:
    if not isinstance(raw, dict):
        problems.append((f"deployments[{index}]", "deployment", _("must be an object")))
        return None
    slug = raw.get("slug") if isinstance(raw.get("slug"), str) and raw.get("slug") else None
    label = slug or f"deployments[{index}]"
    scalars = {k: val for k, val in raw.items() if k not in NESTED_FIELDS}
    values = _typed(scalars, DEPLOYMENT_FIELDS, "", label, problems)

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

    roles: list[str] = []
    raw_keys = raw.get("keys", [])
    if not isinstance(raw_keys, list):
        problems.append((label, "keys", _("must be a list of key roles")))
        raw_keys = []
    for position, role in enumerate(raw_keys):
        if role not in keyring.ROLE_LABELS:
            problems.append(
                (
                    label,
                    f"keys[{position}]",
                    _("unknown key role %(role)r; use one of %(roles)s")
                    % {"role": role, "roles": ", ".join(keyring.ROLE_LABELS)},
                )
            )
        else:
            roles.append(role)
    if slug is None:
        return None
    return _Entry(slug, values, overrides, verification, roles)


def _deployment_defaults() -> dict[str, Any]:
    defaults = {}
    for name in DEPLOYMENT_FIELDS:
        if name in ("slug", "team"):
            continue
        model_field = Deployment._meta.get_field(name)
        defaults[name] = model_field.get_default()
    return defaults


def _override_signature(items: Iterable[RouteOverride]) -> list[tuple]:
    return [(o.match, o.path, o.target, o.enabled, o.position, o.note) for o in items]


def import_payload(
    *,
    payload: dict,
    update: bool = False,
    team_slug: str | None = None,
    actor=None,
    ip: str | None = None,
) -> ImportReport:
    """Create or (with update) replace the deployments of payload, all or nothing.

    Missing teams are created. With team_slug every deployment goes into that team. Raises
    ImportFailed with every problem found; then nothing has changed.
    """
    problems: list[tuple[str, str, str]] = []
    if not isinstance(payload, dict):
        raise ImportFailed([("file", "file", _("must be a JSON object"))])
    for name in payload:
        if name not in ("version", "deployments"):
            problems.append(("file", name, _("unknown field")))
    if payload.get("version") != FORMAT_VERSION:
        problems.append(
            (
                "file",
                "version",
                _("must be %(version)d (got %(found)r)")
                % {"version": FORMAT_VERSION, "found": payload.get("version")},
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
            teams = _ensure_teams(entries, team_slug, problems, report, ip)
            planned = [
                _plan(entry, teams[team_slug or entry.values["team"]], update, problems)
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
                actions.save_deployment(
                    deployment=deployment, actor=actor, action="deployment.import", ip=ip
                )
                if not unchanged_overrides:
                    actions.replace_overrides(
                        deployment=deployment, overrides=overrides, actor=actor, ip=ip
                    )
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


def _ensure_teams(
    entries: list[_Entry],
    team_slug: str | None,
    problems: list,
    report: ImportReport,
    ip: str | None,
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
        teams[slug] = actions.create_team(name=slug, slug=slug, actor=None, ip=ip)
        report.teams_created.append(slug)
    return teams


def _plan(entry: _Entry, team: Team, update: bool, problems: list):
    """Return (deployment, overrides, entry) with the file's values applied and validated."""
    existing = Deployment.objects.filter(slug=entry.slug).first()
    if existing is not None and not update:
        problems.append((entry.slug, "slug", _("already exists; use --update to replace it")))
    deployment = existing if existing is not None else Deployment(slug=entry.slug)
    values = {**_deployment_defaults(), **entry.values}
    values.pop("team", None)
    values["name"] = values.get("name") or entry.slug
    for name, value in values.items():
        setattr(deployment, name, value)
    deployment.verification_base_url = entry.verification.get("base_url", "")
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


def export_payload(*, deployments: Iterable[Deployment]) -> dict:
    """Return the version-1 document of deployments, by slug; key roles only, never secrets."""
    if hasattr(deployments, "select_related"):
        deployments = deployments.select_related("team").prefetch_related("overrides", "keys")
    entries = []
    for deployment in sorted(deployments, key=lambda d: d.slug):
        entry: dict[str, Any] = {}
        for name in DEPLOYMENT_FIELDS:
            entry[name] = deployment.team.slug if name == "team" else getattr(deployment, name)
        entry["route_overrides"] = [
            {name: getattr(override, name) for name in OVERRIDE_FIELDS}
            for override in sorted(deployment.overrides.all(), key=lambda o: (o.position, o.pk))
        ]
        entry["verification"] = {"base_url": deployment.verification_base_url}
        entry["keys"] = sorted({key.role for key in deployment.keys.all()})
        entries.append(entry)
    return {"version": FORMAT_VERSION, "deployments": entries}


def export_definitions(
    *, deployments: Iterable[Deployment], actor=None, ip: str | None = None
) -> dict:
    """Return export_payload(deployments) and record the export of each deployment."""
    payload = export_payload(deployments=deployments)
    by_slug = {d.slug: d for d in deployments}
    for entry in payload["deployments"]:
        deployment = by_slug[entry["slug"]]
        audit.record(
            action="definitions.export",
            actor=actor,
            team=deployment.team_id,
            obj=deployment,
            changes={"keys": entry["keys"]},
            ip=ip,
        )
    return payload
