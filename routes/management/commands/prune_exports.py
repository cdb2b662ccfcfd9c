"""`manage.py prune_exports`: keep only the newest exported configs of each deployment."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes import audit
from routes.management.base import ConsoleCommand, add_team_argument, resolve_team
from routes.nginx import history


class Command(ConsoleCommand):
    help = "Delete exported configs beyond the newest N of each deployment (the export history)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--keep",
            type=int,
            default=None,
            help="Exports kept per deployment, 1 or more (default: CONSOLE_EXPORTS_KEPT, e.g. 20).",
        )
        add_team_argument(parser, help_text="Only deployments of this team (slug).")

    def handle(self, *args: Any, **options: Any) -> None:
        keep = settings.CONSOLE_EXPORTS_KEPT if options["keep"] is None else options["keep"]
        if keep < 1:
            raise CommandError(
                _(
                    "--keep: give 1 or more exports to keep (the newest is what the next export "
                    "compares with)."
                )
            )
        team = resolve_team(options["team"])
        deleted = history.prune_exports(keep=keep, team=team)
        audit.record(
            action="config.prune",
            team=team,
            object_repr="export history",
            changes={"deleted": deleted, "keep": keep},
        )
        self.stdout.write(
            _("Deleted %(deleted)d export(s); kept up to %(keep)d per deployment.")
            % {"deleted": deleted, "keep": keep}
        )
