"""What every console command shares: who acts (the command), ``--team``, and how deployments
are chosen by slug or ``--all``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet
from django.utils import translation
from django.utils.translation import gettext as _

from routes.context import acting
from routes.models import Deployment, Team


class ConsoleCommand(BaseCommand):
    """A command whose work is recorded as the server administrator's ("command").

    It prints English whatever language its thread had active (a script parses the same words
    everywhere); a command with ``--lang`` switches inside handle().
    """

    def execute(self, *args: Any, **options: Any) -> str | None:
        with acting(label="command"), translation.override("en"):
            return super().execute(*args, **options)


def add_team_argument(
    parser: CommandParser, *, help_text: str = "Only the deployments of this team (slug)."
) -> None:
    """Add the ``--team SLUG`` option every team-scoped command takes."""
    parser.add_argument("--team", metavar="SLUG", help=help_text)


def resolve_team(slug: str | None, *, returncode: int = 1) -> Team | None:
    """Return the team --team names (None without --team); raise CommandError when none has it."""
    if not slug:
        return None
    team = Team.objects.filter(slug=slug).first()
    if team is None:
        raise CommandError(
            _("--team: no team with slug %(slug)s.") % {"slug": repr(slug)}, returncode=returncode
        )
    return team


def add_selection_arguments(parser: CommandParser, *, verb: str) -> None:
    """Add ``SLUG ...``, ``--all`` and ``--team`` for a command that acts on chosen deployments."""
    parser.add_argument("slugs", nargs="*", metavar="SLUG", help=f"Deployments to {verb}.")
    parser.add_argument(
        "--all", action="store_true", help=f"{verb.capitalize()} every deployment (of --team)."
    )
    add_team_argument(parser, help_text="With --all: only this team's.")


def named_deployments(
    slugs: Sequence[str],
    *,
    queryset: QuerySet[Deployment] | None = None,
    team: Team | None = None,
    option: str = "",
    returncode: int = 1,
) -> list[Deployment]:
    """Return the deployments slugs name, in their order; raise CommandError naming any missing."""
    queryset = Deployment.objects.all() if queryset is None else queryset
    if team is not None:
        queryset = queryset.filter(team=team)
    wanted = list(dict.fromkeys(slugs))
    found = {d.slug: d for d in queryset.filter(slug__in=wanted)}
    missing = [slug for slug in wanted if slug not in found]
    if missing:
        names = {"slugs": ", ".join(missing), "team": team.slug if team else ""}
        message = (
            _("no deployment %(slugs)s in team %(team)s.") % names
            if team is not None
            else _("no deployment %(slugs)s.") % names
        )
        raise CommandError(f"{option}: {message}" if option else message, returncode=returncode)
    return [found[slug] for slug in wanted]


def selected_deployments(
    options: dict[str, Any],
    *,
    queryset: QuerySet[Deployment] | None = None,
    returncode: int = 1,
) -> tuple[list[Deployment], Team | None]:
    """Return what ``SLUG ... | --all [--team]`` chose, and the team; CommandError on misuse."""
    slugs, everything, team_slug = options["slugs"], options["all"], options["team"]
    if everything and slugs:
        raise CommandError(_("Give deployment slugs or --all, not both."), returncode=returncode)
    if not everything and not slugs:
        raise CommandError(_("Give one or more deployment slugs, or --all."), returncode=returncode)
    if team_slug and not everything:
        raise CommandError(_("--team only works with --all."), returncode=returncode)
    queryset = Deployment.objects.order_by("slug") if queryset is None else queryset
    if not everything:
        return named_deployments(slugs, queryset=queryset, returncode=returncode), None
    team = resolve_team(team_slug, returncode=returncode)
    if team is not None:
        queryset = queryset.filter(team=team)
    return list(queryset), team
