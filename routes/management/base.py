"""What every console command shares: who acts (the command), and the ``--team`` option."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from routes.context import acting
from routes.models import Team


class ConsoleCommand(BaseCommand):
    """A command whose work is recorded as the server administrator's ("command")."""

    def execute(self, *args: Any, **options: Any) -> str | None:
        with acting(label="command"):
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
