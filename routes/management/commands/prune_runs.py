"""`manage.py prune_runs`: keep only the newest verification runs of each job."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from routes import audit
from routes.management.base import ConsoleCommand, add_team_argument, resolve_team
from routes.verification import runs


class Command(ConsoleCommand):
    help = "Delete finished verification runs beyond the newest N of each job."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--keep",
            type=int,
            default=None,
            help="Runs kept per job (default: CONSOLE_RUNS_KEPT, e.g. 50).",
        )
        add_team_argument(parser, help_text="Only jobs of this team (slug).")

    def handle(self, *args: Any, **options: Any) -> None:
        keep = settings.CONSOLE_RUNS_KEPT if options["keep"] is None else options["keep"]
        if keep < 0:
            raise CommandError("--keep: give 0 or more runs to keep.")
        team = resolve_team(options["team"])
        deleted = runs.prune_runs(keep=keep, team=team)
        audit.record(
            action="verification.prune",
            team=team,
            object_repr="verification runs",
            changes={"deleted": deleted, "keep": keep},
        )
        self.stdout.write(f"Deleted {deleted} verification run(s); kept up to {keep} per job.")
