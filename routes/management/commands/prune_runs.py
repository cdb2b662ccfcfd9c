"""`manage.py prune_runs`: keep only the newest verification runs of each job."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from routes import audit, verify
from routes.models import Team


class Command(BaseCommand):
    help = "Delete finished verification runs beyond the newest N of each job."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--keep",
            type=int,
            default=None,
            help="Runs kept per job (default: CONSOLE_RUNS_KEPT, e.g. 50).",
        )
        parser.add_argument("--team", help="Only jobs of this team (slug).")

    def handle(self, *args, **options) -> None:
        keep = settings.CONSOLE_RUNS_KEPT if options["keep"] is None else options["keep"]
        if keep < 0:
            raise CommandError("--keep: give 0 or more runs to keep.")
        team = None
        if options["team"]:
            team = Team.objects.filter(slug=options["team"]).first()
            if team is None:
                raise CommandError(f"--team: no team with slug {options['team']!r}.")
        deleted = verify.prune_runs(keep=keep, team=team)
        audit.record(
            action="verification.prune",
            team=team,
            object_repr="verification runs",
            changes={"deleted": deleted, "keep": keep},
        )
        self.stdout.write(f"Deleted {deleted} verification run(s); kept up to {keep} per job.")
