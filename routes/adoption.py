"""Import a hand-written nginx site config as a deployment, all or nothing.

routes.nginx.adopt reads the file into a Proposal; ``adopt()`` saves one that maps completely
through routes.portable's import, so its values pass the same validators as every other input
and the save is audited and versioned like any import. ``manage.py import_nginx`` and the upload
page (routes/admin/adopt_page.py) are thin front ends over ``adopt()``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils.translation import gettext as _

from routes import portable
from routes.models import Deployment, Team
from routes.nginx.adopt import DESCRIBED_FIELDS, Proposal, propose
from routes.nginx.lint import LintWarning, lint
from routes.nginx.regexes import RegexTimeout
from routes.permissions import Action, can

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# A site config of the seed's shape is about 5 KB; CONSOLE_IMPORT_MAX_BYTES, made for definition
# files of many deployments, may be far larger, and the upload page carries the text once more.
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass
class Adoption:
    """What importing a config did or would do; no problems: it was saved (or would be)."""

    source: str
    slug: str
    proposal: Proposal | None
    # (slug, where, reason): where is "file:line" or a deployment field.
    problems: portable.Problems = field(default_factory=list)
    warnings: list[LintWarning] = field(default_factory=list)
    created: bool = False
    saved: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem_lines(self) -> list[str]:
        """Return one "<slug>: <where>: <reason>" line per problem, printable and bounded."""
        return portable.ImportFailed(self.problems).lines()


class _Undo(Exception):
    """Raised inside the import's transaction to leave the database as it was."""


def config_limit() -> int:
    """Return the most bytes a config file may have."""
    return min(int(settings.CONSOLE_IMPORT_MAX_BYTES), MAX_CONFIG_BYTES)


def display_name(path: str) -> str:
    """Return the name a file is shown and noted by: its base name, printable, at most 100."""
    name = os.path.basename(path) or "stdin"
    name = name if len(name) <= 100 else name[:100] + "…"
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def decode_config(data: bytes) -> tuple[str | None, str]:
    """Return (text, "") of a config file's bytes, or (None, why it is no config file)."""
    limit = config_limit()
    if len(data) > limit:
        return None, _("larger than %(limit)d bytes; a site config is a few KB") % {"limit": limit}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, _("not a text file: the byte at offset %(offset)d is not UTF-8") % {
            "offset": exc.start
        }
    if "\x00" in text:
        return None, _("not a text file: it holds NUL bytes")
    return text, ""


def _located(proposal: Proposal, problems: portable.Problems) -> portable.Problems:
    """Return portable's problems with the file and line of the value each is about."""
    located = []
    for slug, where, reason in problems:
        line = proposal.field_lines.get(where, 0)
        found = re.match(r"route_overrides\[(\d+)\]", where)
        if found and int(found.group(1)) < len(proposal.override_lines):
            line = proposal.override_lines[int(found.group(1))]
        located.append((slug, where, f"{reason} ({proposal.where(line)})" if line else reason))
    return located


def _default(name: str) -> Any:
    """Return the model's default of the deployment field name."""
    model_field = Deployment._meta.get_field(name)
    return model_field.get_default() if isinstance(model_field, models.Field) else None


def _entry(
    proposal: Proposal, *, slug: str, team: Team, name: str, existing: Deployment | None
) -> dict[str, Any]:
    """Return the definitions-format entry of the proposal.

    The fields a site config describes come from the proposal (else their defaults); an update
    starts from the deployment's own definition, so everything else (name, notes, CPA URL, route
    tracing, its verification schedule …) stays as stored.
    """
    entry: dict[str, Any] = {}
    if existing is not None:
        entry = portable.export_payload(deployments=[existing])["deployments"][0]
        # The roles of its keys: an import never touches keys.
        entry.pop("keys", None)
        entry.update({n: proposal.fields.get(n, _default(n)) for n in DESCRIBED_FIELDS})
    else:
        entry.update(proposal.fields)
    entry.update(slug=slug, team=team.slug, route_overrides=proposal.overrides)
    entry["name"] = name or entry.get("name") or slug
    return entry


def _slug_problem(slug: str) -> str:
    """Return why slug cannot name a deployment, or ""."""
    try:
        Deployment._meta.get_field("slug").clean(slug, None)
    except ValidationError as exc:
        return " ".join(m.rstrip(".") for m in exc.messages)
    return ""


def _existing_problem(
    existing: Deployment | None, *, team: Team, update: bool, as_user: User | None
) -> str:
    """Return why the slug's current deployment may not be replaced by this import, or ""."""
    if existing is None:
        return ""
    if not update:
        return _("already exists; import with --update (replace) to replace its definition")
    if existing.team_id == team.pk:
        return ""
    if as_user is not None and not can(as_user, Action.VIEW, existing.team_id):
        return _("already exists in another team")
    return _("belongs to team %(team)s; an import replaces deployments of %(this)s only") % {
        "team": existing.team.slug,
        "this": team.slug,
    }


def adopt(
    *,
    data: bytes,
    source: str,
    slug: str,
    team: Team,
    name: str = "",
    update: bool = False,
    dry_run: bool = False,
    as_user: User | None = None,
) -> Adoption:
    """Import the config as deployment slug of team, all or nothing; never raises for content.

    Without update an existing slug is refused; with it the deployment's definition (never its
    keys) is replaced, only within team. dry_run checks everything and changes nothing. With
    as_user the import follows that user's role rules and is recorded as theirs; without, it acts
    as the server administrator.
    """
    label = slug if slug and slug.isprintable() and len(slug) <= 50 else "?"
    text, reason = decode_config(data)
    if text is None:
        return Adoption(source, slug, None, [(label, source, reason)])
    proposal = propose(text, source=source)
    adoption = Adoption(source, slug, proposal)
    problems = adoption.problems
    problems += [(label, proposal.where(f.line), f.text) for f in proposal.unmapped]
    slug_problem = _slug_problem(slug)
    if slug_problem:
        problems.append((label, "slug", slug_problem))
    if proposal.mapped:
        try:
            adoption.warnings = lint(proposal.deployment(slug), proposal.route_overrides())
        except RegexTimeout:
            pass  # the routing check has reported the pattern
    if slug_problem or "server_name" not in proposal.fields:
        return adoption
    existing = Deployment.objects.select_related("team").filter(slug=slug).first()
    refusal = _existing_problem(existing, team=team, update=update, as_user=as_user)
    if refusal:
        problems.append((slug, "slug", refusal))
    adoption.created = existing is None
    entry = _entry(proposal, slug=slug, team=team, name=name, existing=existing if update else None)
    try:
        with transaction.atomic():
            portable.import_payload(
                payload={"version": portable.FORMAT_VERSION, "deployments": [entry]},
                update=existing is not None,
                team_slug=team.slug,
                as_user=as_user,
            )
            if dry_run or problems:
                raise _Undo
    except portable.ImportFailed as failed:
        problems += _located(proposal, failed.problems)
    except _Undo:
        pass
    else:
        adoption.saved = True
    return adoption
