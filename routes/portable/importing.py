"""Importing definitions all or nothing, in bulk: each entry validated once, what exists loaded a
chunk of slugs at a time, every row written with bulk_create and bulk_update in one transaction.

A 10,000-deployment file costs a few statements per CHUNK of entries, not a hundred per entry.
"""

from __future__ import annotations

import functools
import gc
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _

from routes import audit
from routes.context import acting, current_actor, current_ip
from routes.models import Deployment, Key, RouteOverride, Team, VerificationJob
from routes.permissions import Action, can
from routes.portable.cleaning import clean_errors
from routes.portable.format import (
    DEPLOYMENT_FIELDS,
    FILE_NAMES,
    FORMAT_VERSION,
    Entry,
    ImportFailed,
    ImportReport,
    Problems,
    messages_of,
    note_duplicates,
    parse_entry,
    shown,
)
from routes.portable.trail import record_for_team
from routes.verification import destinations, runs
from routes.workflows.deployments import _UNTRACKED as UNTRACKED_FIELDS
from routes.workflows.teams import create_team
from routes.workflows.versions import version_note

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# Rows per INSERT or UPDATE and slugs or ids per lookup: a handful of statements for 10,000
# deployments, and far below the number of parameters one SQLite statement may take.
CHUNK = 500
# A deployment's links, which full_clean() would look up with one query each: the importer
# resolved the team itself and sets who created and changed the row.
LINKS = ("team", "created_by", "updated_by", "keys_confirmed_by")

_T = TypeVar("_T")


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """Yield items CHUNK at a time."""
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _update_in_bulk(rows: Sequence[models.Model], fields: Iterable[str], **same: Any) -> None:
    """Store fields of rows, and set same on them, a CHUNK of rows per statement or two.

    A field whose new value every row of a chunk shares joins same in one plain UPDATE;
    bulk_update's CASE, which costs Django and SQLite a WHEN per row, only takes the others.
    """
    if not rows:
        return
    model = type(rows[0])
    names = list(fields)
    for chunk in _chunks(rows):
        shared = dict(same)
        varying = []
        for name in names:
            attname = model._meta.get_field(name).attname  # type: ignore[union-attr]
            first = getattr(chunk[0], attname)
            if all(getattr(row, attname) == first for row in chunk):
                shared[attname] = first
            else:
                varying.append(name)
        if varying:
            model._default_manager.bulk_update(chunk, varying)
        if shared:
            model._default_manager.filter(pk__in=[row.pk for row in chunk]).update(**shared)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block; then restore it as it was.

    An import holds every new row, override and job of its file until it commits: none of
    them is garbage, yet each full collection walks them all (and the rest of the process)
    again as they pile up, which made a 10,000-deployment import slower than linear.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@functools.cache
def _no_job() -> VerificationJob:
    """Return the job of a deployment that has none, for key_origins(): no base URL of its own.

    One unsaved instance, never saved nor changed.
    """
    return VerificationJob()


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


def _override_labels(items: Iterable[RouteOverride]) -> list[str]:
    """Return the overrides as the trail lists them, e.g. "prefix /config -> cpamp"."""
    return [f"{o.match} {o.path} -> {o.target}" for o in items]


@dataclass
class _Stored:
    """What the database holds for the slugs of a file, loaded a chunk of slugs at a time."""

    deployments: dict[str, Deployment] = field(default_factory=dict)
    overrides: dict[int, list[RouteOverride]] = field(default_factory=lambda: defaultdict(list))
    roles: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    jobs: dict[int, VerificationJob] = field(default_factory=dict)


def _load_stored(slugs: Sequence[str]) -> _Stored:
    """Return the deployments of slugs with their overrides, key roles and jobs.

    Four queries per CHUNK of slugs, whatever each deployment holds. The deployments stay
    locked until the import commits, as save_deployment locks the row it replaces.
    """
    stored = _Stored()
    for chunk in _chunks(slugs):
        rows = (
            Deployment.objects.select_for_update(of=("self",))
            .select_related("team")
            .filter(slug__in=chunk)
        )
        stored.deployments.update((d.slug, d) for d in rows)
    ids = [d.pk for d in stored.deployments.values()]
    for id_chunk in _chunks(ids):
        overrides = RouteOverride.objects.filter(deployment_id__in=id_chunk).order_by(
            "deployment_id", "position", "id"
        )
        for override in overrides:
            stored.overrides[override.deployment_id].append(override)
        roles = Key.objects.filter(deployment_id__in=id_chunk).values_list("deployment_id", "role")
        for deployment_id, role in roles:
            stored.roles[deployment_id].add(role)
        jobs = VerificationJob.objects.filter(deployment_id__in=id_chunk)
        stored.jobs.update((job.deployment_id, job) for job in jobs)
    return stored


@dataclass
class _Planned:
    """One validated entry: its deployment with the file's values, and what it replaces."""

    entry: Entry
    deployment: Deployment
    created: bool
    # Tracked values and key destinations as stored ({} and [] for a new deployment).
    before: dict[str, Any]
    origins_before: list[str]
    overrides: list[RouteOverride]
    stored_overrides: list[RouteOverride]
    job: VerificationJob | None
    # Filled in while writing: what the trail records of this deployment.
    changes: dict[str, Any] = field(default_factory=dict)
    overrides_changed: bool = False
    confirmed: list[list[str]] | None = None


def _tracked(deployment: Deployment, team_slug: str) -> dict[str, Any]:
    """Return the values of deployment that an edit's diff compares, with the team as its slug."""
    values = audit.snapshot(deployment, exclude=UNTRACKED_FIELDS)
    values["team"] = team_slug
    return values


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
    administrator, who counts as an owner. The trail gets one "deployment.import" event per
    team the file reaches, listing its deployments, never one per deployment.
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
    note_duplicates(payload, "", "file", problems)
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
                % {"version": FORMAT_VERSION, "found": shown(payload.get("version"))},
            )
        )
    raw_entries = payload.get("deployments")
    if not isinstance(raw_entries, list):
        problems.append(("file", "deployments", _("must be a list")))
        raw_entries = []

    entries: list[Entry] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_entries):
        entry = parse_entry(raw, index, problems)
        if entry is None:
            continue
        if entry.slug in seen:
            problems.append((entry.slug, "slug", _("appears twice in the file")))
            continue
        seen.add(entry.slug)
        entries.append(entry)

    report = ImportReport()
    try:
        with _collector_paused(), transaction.atomic():
            teams = _ensure_teams(entries, team_slug, problems, report)
            stored = _load_stored([entry.slug for entry in entries])
            defaults = _deployment_defaults()
            planned = [
                _plan(
                    entry,
                    teams[team_slug or entry.values["team"]],
                    update,
                    problems,
                    stored=stored,
                    defaults=defaults,
                    as_user=as_user,
                )
                for entry in entries
                if (team_slug or entry.values.get("team")) in teams
            ]
            if problems:
                raise ImportFailed(problems)
            _write(planned, stored=stored, report=report)
    except (ValidationError, IntegrityError) as exc:
        # A concurrent change slipped past validation; report it like any other problem.
        messages = messages_of(exc) if isinstance(exc, ValidationError) else [_conflict(exc)]
        raise ImportFailed([("file", "deployments", m) for m in messages]) from None
    return report


def _conflict(exc: IntegrityError) -> str:
    """Return the reason of a write the database refused after validation passed."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _("changed by someone else during the import (%(error)s); try again") % {"error": detail}


def _write(planned: list[_Planned], *, stored: _Stored, report: ImportReport) -> None:
    """Write the planned deployments, their overrides, jobs and confirmations in bulk; record."""
    now = timezone.now()
    actor = current_actor()
    new = [p for p in planned if p.created]
    for p in new:
        p.deployment.created_by = p.deployment.updated_by = actor
        p.deployment.version = 1
    # A new deployment's job has no base URL of its own yet: its destinations are known now,
    # and are stored with its row.
    _confirm_destinations(new, now=now, actor=actor)
    Deployment.objects.bulk_create([p.deployment for p in new], batch_size=CHUNK)
    for p in planned:
        if p.created:
            # A new deployment's fields are the file's: only an event about it alone lists them.
            p.overrides_changed = bool(p.overrides)
            continue
        p.changes = audit.field_diff(p.before, _tracked(p.deployment, p.deployment.team.slug))
        p.overrides_changed = _override_signature(p.stored_overrides) != (
            _override_signature(p.overrides)
        )
    _save_edits([p for p in planned if not p.created], now=now, actor=actor)
    _replace_overrides([p for p in planned if p.overrides_changed])
    _apply_schedules(planned, now=now)
    existing = [p for p in planned if not p.created]
    _update_in_bulk(
        _confirm_destinations(existing, now=now, actor=actor), Deployment.CONFIRMATION_FIELDS
    )
    for p in planned:
        slug = p.deployment.slug
        (report.created if p.created else report.updated).append(slug)
        present = stored.roles.get(p.deployment.pk, set()) if not p.created else set()
        for role in p.entry.keys:
            if role not in present:
                report.warnings.append(
                    _(
                        "%(slug)s: keys: %(role)s is listed but secrets are never "
                        "exported; set it with `manage.py set_key %(slug)s %(role)s`"
                    )
                    % {"slug": slug, "role": role}
                )
    _record_import(planned)


def _save_edits(existing: list[_Planned], *, now: datetime, actor: User | None) -> None:
    """Store the file's values of deployments it changed and move their versions on by one.

    An override change is an edit of its deployment too. The version moves by an UPDATE of
    version + 1, as claim_version does, so an open form based on the old one goes stale.
    """
    edited = [p for p in existing if p.changes or p.overrides_changed]
    fields = sorted({name for p in edited for name in p.changes})
    _update_in_bulk(
        [p.deployment for p in edited],
        fields,
        version=F("version") + 1,
        updated_at=now,
        updated_by=actor,
    )
    versions: dict[int, int] = {}
    for chunk in _chunks([p.deployment.pk for p in edited]):
        versions.update(Deployment.objects.filter(pk__in=chunk).values_list("pk", "version"))
    for p in edited:
        p.deployment.version = versions[p.deployment.pk]
        p.deployment.updated_at, p.deployment.updated_by = now, actor
        p.changes["version"] = version_note(p.deployment)


def _replace_overrides(replaced: list[_Planned]) -> None:
    """Replace the overrides of each deployment with the file's (already validated), in order."""
    ids = [p.deployment.pk for p in replaced if not p.created]
    for chunk in _chunks(ids):
        RouteOverride.objects.filter(deployment_id__in=chunk).delete()
    rows = []
    for p in replaced:
        for override in p.overrides:
            override.deployment = p.deployment
            rows.append(override)
        p.changes["route_overrides"] = [
            _override_labels(p.stored_overrides),
            _override_labels(p.overrides),
        ]
    RouteOverride.objects.bulk_create(rows, batch_size=CHUNK)


def _apply_schedules(planned: list[_Planned], *, now: datetime) -> None:
    """Give each deployment's job the file's interval and its next run (runs.reschedule).

    No job is created for a deployment without a schedule: it gets one on its first run.
    """
    created: list[VerificationJob] = []
    changed: list[VerificationJob] = []
    for p in planned:
        interval = p.entry.verification.get("interval_seconds")
        job = p.job
        if job.interval_seconds == interval if job is not None else interval is None:
            continue
        if job is None:
            job = p.job = VerificationJob(deployment=p.deployment)
            created.append(job)
        else:
            changed.append(job)
        previous = job.interval_seconds
        job.interval_seconds = interval
        runs.reschedule(job, previous_interval=previous, now=now)
        job.updated_at = now
        p.changes["verification.interval_seconds"] = [previous, interval]
    VerificationJob.objects.bulk_create(created, batch_size=CHUNK)
    _update_in_bulk(changed, ["interval_seconds", "next_run_at", "updated_at"])


def _confirm_destinations(
    planned: list[_Planned], *, now: datetime, actor: User | None
) -> list[Deployment]:
    """Confirm the key destinations the import introduced, where the actor is an owner.

    As destinations.confirm_own_change after a save: origins that were already there keep
    their state, so an import of unrelated fields confirms nobody else's change. Sets the
    confirmation on each deployment (unsaved) and returns those it set it on.
    """
    confirmed = []
    for p in planned:
        deployment = p.deployment
        # The command acts as the server administrator; as_user needs SET_KEY_DESTINATION.
        if not destinations._acting_may_set(deployment.team_id):
            continue
        job = p.job if p.job is not None else _no_job()
        now_origins = destinations.key_origins(deployment, job=job)
        earlier = set(p.origins_before)
        held = destinations.confirmed_origins(deployment)
        wanted = sorted(o for o in now_origins if o in held or o not in earlier)
        if not set(wanted) - held:
            continue
        p.confirmed = [sorted(held), wanted]
        deployment.keys_confirmed_origins = wanted
        deployment.keys_confirmed_at = now
        deployment.keys_confirmed_by = actor
        confirmed.append(deployment)
    return confirmed


def _by_team(planned: list[_Planned]) -> list[tuple[int, list[_Planned]]]:
    """Return planned grouped by the team each deployment is in now, by team id."""
    groups: dict[int, list[_Planned]] = defaultdict(list)
    for p in planned:
        groups[p.deployment.team_id].append(p)
    return sorted(groups.items())


def _one_change(p: _Planned) -> dict[str, Any]:
    """Return what an event about p's deployment alone records: as a save records a change.

    A new deployment lists every field as [None, value] and its version as [None, 1].
    """
    if not p.created:
        return p.changes
    after = _tracked(p.deployment, p.deployment.team.slug)
    created: dict[str, Any] = {name: [None, value] for name, value in after.items()}
    return {**created, "version": [None, 1], **p.changes}


def _record_import(planned: list[_Planned]) -> None:
    """Record the import: one event per team, and one per team for confirmed destinations.

    An event per team, not per file: each team's members read their own part of the trail,
    and never another team's slugs.
    """
    for team_id, items in _by_team(planned):
        updated = [p for p in items if not p.created]
        record_for_team(
            action="deployment.import",
            team_id=team_id,
            deployments=[p.deployment for p in items],
            one=_one_change(items[0]),
            several={
                "created": [p.deployment.slug for p in items if p.created],
                "updated": [p.deployment.slug for p in updated if p.changes],
                "unchanged": [p.deployment.slug for p in updated if not p.changes],
                "changes": {p.deployment.slug: p.changes for p in updated if p.changes},
            },
        )
        confirmed = [p for p in items if p.confirmed is not None]
        if confirmed:
            record_for_team(
                action=destinations.CONFIRM_ACTION,
                team_id=team_id,
                deployments=[p.deployment for p in confirmed],
                one={"origins": confirmed[0].confirmed, "how": "import"},
                several={
                    "origins": {p.deployment.slug: p.confirmed for p in confirmed},
                    "how": "import",
                },
            )


def _ensure_teams(
    entries: list[Entry],
    team_slug: str | None,
    problems: Problems,
    report: ImportReport,
) -> dict[str, Team]:
    """Return the teams the entries go to by slug, creating missing ones (with problems)."""
    wanted = {team_slug} if team_slug else {e.values["team"] for e in entries if "team" in e.values}
    ordered = sorted(wanted)
    teams = {t.slug: t for chunk in _chunks(ordered) for t in Team.objects.filter(slug__in=chunk)}
    for slug in ordered:
        if slug in teams:
            continue
        team = Team(name=slug, slug=slug)
        try:
            team.full_clean(validate_unique=False)
        except ValidationError as exc:
            owner = (
                "--team"
                if team_slug
                else next(e.slug for e in entries if e.values.get("team") == slug)
            )
            problems.append((owner, "team", "; ".join(messages_of(exc))))
            continue
        # Commands act as the server administrator: nobody becomes owner of imported teams.
        teams[slug] = create_team(name=slug, slug=slug, creator_becomes_owner=False)
        report.teams_created.append(slug)
    return teams


def _plan(
    entry: Entry,
    team: Team,
    update: bool,
    problems: Problems,
    *,
    stored: _Stored,
    defaults: dict[str, Any],
    as_user: User | None = None,
) -> _Planned:
    """Return the entry planned: the file's values applied and validated once, problems noted."""
    existing = stored.deployments.get(entry.slug)
    if existing is not None and not update:
        problems.append((entry.slug, "slug", _("already exists; use --update to replace it")))
    job = stored.jobs.get(existing.pk) if existing is not None else None
    before: dict[str, Any] = {}
    origins_before: list[str] = []
    destination_values = None
    if existing is not None:
        before = _tracked(existing, existing.team.slug)
        # A deployment without a job sends keys where a job with no base URL of its own would.
        origins_before = destinations.key_origins(
            existing, job=job if job is not None else _no_job()
        )
        destination_values = {
            name: getattr(existing, name) for name in destinations.DEPLOYMENT_DESTINATION_FIELDS
        }
    deployment = existing if existing is not None else Deployment(slug=entry.slug)
    values = {**defaults, **entry.values}
    values.pop("team", None)
    values["name"] = values.get("name") or entry.slug
    for name, value in values.items():
        setattr(deployment, name, value)
    deployment.verification_base_url = entry.verification.get("base_url", "")
    if as_user is not None:
        has_keys = existing is not None and bool(stored.roles.get(existing.pk))
        _check_role_rules(
            entry, deployment, team, existing, destination_values, as_user, problems, has_keys
        )
    deployment.team = team
    for name, messages in clean_errors(deployment, exclude=LINKS).items():
        if name == "slug" and existing is not None:
            continue
        where = FILE_NAMES.get(name, "deployment" if name == NON_FIELD_ERRORS else name)
        problems.extend((entry.slug, where, m.rstrip(".")) for m in messages)

    overrides: list[RouteOverride] = []
    seen: dict[tuple[str, str], int] = {}
    for index, override_values in enumerate(entry.overrides):
        where = f"route_overrides[{index}]"
        override = RouteOverride(**override_values)
        errors = clean_errors(override, exclude=("deployment",))
        if errors:
            for name, messages in errors.items():
                field_name = f"{where}.{name}" if name != NON_FIELD_ERRORS else where
                problems.extend((entry.slug, field_name, m.rstrip(".")) for m in messages)
            continue
        # The one unique constraint of an override: its deployment's others are replaced.
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
    return _Planned(
        entry=entry,
        deployment=deployment,
        created=existing is None,
        before=before,
        origins_before=origins_before,
        overrides=overrides,
        stored_overrides=stored.overrides.get(existing.pk, []) if existing is not None else [],
        job=job,
    )


def _check_role_rules(
    entry: Entry,
    deployment: Deployment,
    team: Team,
    existing: Deployment | None,
    stored: dict[str, Any] | None,
    as_user: User,
    problems: Problems,
    has_keys: bool,
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
    if existing is None or existing.team_id == team.pk or not has_keys:
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
