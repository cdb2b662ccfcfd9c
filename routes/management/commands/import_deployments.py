"""Import deployment definitions from a version-1 JSON file, all or nothing."""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes import portable
from routes.management.base import ConsoleCommand, add_team_argument
from routes.workflows.memberships import find_user


class Command(ConsoleCommand):
    help = "Import deployments from a JSON file (or - for stdin), all or nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="Path of the JSON file, or - to read stdin.")
        parser.add_argument(
            "--update",
            action="store_true",
            help="Replace deployments whose slug exists (their overrides become the file's).",
        )
        add_team_argument(parser, help_text="Put every imported deployment in this team.")
        parser.add_argument(
            "--as",
            dest="as_user",
            metavar="USERNAME",
            help=(
                "Import with this user's role rules (e.g. only owners set where keys are sent; "
                "no two-factor session exists here) and record it as theirs."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        as_user = None
        if options["as_user"]:
            try:
                as_user = find_user(username=options["as_user"])
            except ValidationError as exc:
                raise CommandError(f"--as: {' '.join(exc.messages)}") from None
        source = options["file"]
        limit = settings.CONSOLE_IMPORT_MAX_BYTES
        # One byte over the limit is enough to refuse: never read a huge file (or /dev/zero) whole.
        if source == "-":
            stream = getattr(sys.stdin, "buffer", sys.stdin)
            data = stream.read(limit + 1)
        else:
            try:
                with open(source, "rb") as fh:
                    data = fh.read(limit + 1)
            except OSError as exc:
                raise CommandError(
                    _("%(file)s: cannot read: %(error)s") % {"file": source, "error": exc.strerror}
                ) from None
        try:
            report = portable.import_payload(
                payload=portable.load_payload(data, limit=limit),
                update=options["update"],
                team_slug=options["team"],
                as_user=as_user,
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
