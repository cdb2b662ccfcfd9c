"""Import deployment definitions from a version-1 JSON file, all or nothing."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from routes import portable


class Command(BaseCommand):
    help = "Import deployments from a JSON file (or - for stdin), all or nothing."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", help="Path of the JSON file, or - to read stdin.")
        parser.add_argument(
            "--update",
            action="store_true",
            help="Replace deployments whose slug exists (their overrides become the file's).",
        )
        parser.add_argument(
            "--team", metavar="SLUG", help="Put every imported deployment in this team."
        )

    def handle(self, *args, **options) -> None:
        source = options["file"]
        if source == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(source).read_text(encoding="utf-8")
            except OSError as exc:
                raise CommandError(
                    _("%(file)s: cannot read: %(error)s") % {"file": source, "error": exc.strerror}
                ) from None
        try:
            report = portable.import_payload(
                payload=portable.load_payload(text),
                update=options["update"],
                team_slug=options["team"],
            )
        except portable.ImportFailed as failed:
            for line in failed.lines():
                self.stderr.write(line)
            raise CommandError(
                _("%(n)d problem(s); nothing was imported.") % {"n": len(failed.problems)},
                returncode=1,
            ) from None
        for slug in report.teams_created:
            self.stdout.write(_("team %(slug)s: created") % {"slug": slug})
        for slug in report.created:
            self.stdout.write(_("%(slug)s: created") % {"slug": slug})
        for slug in report.updated:
            self.stdout.write(_("%(slug)s: updated") % {"slug": slug})
        for warning in report.warnings:
            self.stdout.write(self.style.WARNING(warning))
