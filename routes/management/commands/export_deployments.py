"""Export deployment definitions as version-1 JSON (key roles only, never secrets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes import portable
from routes.files import atomic_write
from routes.management.base import (
    ConsoleCommand,
    add_team_argument,
    named_deployments,
    resolve_team,
)
from routes.models import Deployment


class Command(ConsoleCommand):
    help = "Export deployments as JSON in the import format; secrets are never included."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slugs", nargs="*", metavar="SLUG", help="Deployments (default: all).")
        add_team_argument(parser, help_text="Only deployments of this team.")
        parser.add_argument(
            "--output", metavar="FILE", help="Write to FILE instead of standard output."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        team = resolve_team(options["team"])
        deployments = (
            Deployment.objects.all() if team is None else Deployment.objects.filter(team=team)
        )
        if options["slugs"]:
            named = named_deployments(options["slugs"], team=team)
            deployments = Deployment.objects.filter(pk__in=[d.pk for d in named])
        # A queryset, not a list: the export reads it in a constant number of queries.
        payload = portable.export_definitions(deployments=deployments)
        text = portable.dump_payload(payload)
        output = options["output"]
        if not output:
            self.stdout.write(text, ending="")
            return
        try:
            atomic_write(Path(output), text)
        except OSError as exc:
            raise CommandError(
                _("%(file)s: cannot write: %(error)s") % {"file": output, "error": exc.strerror}
            ) from None
        self.stderr.write(
            _("%(n)d deployment(s) written to %(file)s")
            % {"n": len(payload["deployments"]), "file": output}
        )
