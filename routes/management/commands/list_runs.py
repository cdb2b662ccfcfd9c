"""`manage.py list_runs`: the newest verification runs first, as a table or as JSON (a contract)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.timezone import localtime
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from routes.management.base import (
    ConsoleCommand,
    add_team_argument,
    named_deployments,
    resolve_team,
)
from routes.verification import runs

MAX_LIMIT = 10_000
# Table columns: (JSON field, heading, right-aligned).
COLUMNS = (
    ("run", gettext_lazy("run"), True),
    ("deployment", gettext_lazy("deployment"), False),
    ("status", gettext_lazy("status"), False),
    ("trigger", gettext_lazy("trigger"), False),
    ("started_at", gettext_lazy("started"), False),
    ("finished_at", gettext_lazy("finished"), False),
    ("duration_ms", gettext_lazy("ms"), True),
)
TIMES = ("started_at", "finished_at")


def _cell(name: str, value: Any) -> str:
    """Return one table cell: times in the server's time zone to the second, "-" for none."""
    if value is None:
        return "-"
    if name in TIMES:
        return localtime(dt.datetime.fromisoformat(value)).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Return rows as aligned text lines under a heading."""
    cells = [[str(heading) for _name, heading, _right in COLUMNS]]
    for row in rows:
        cells.append([_cell(name, row[name]) for name, _h, _r in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_n, _h, right) in zip(line, widths, COLUMNS, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


class Command(ConsoleCommand):
    help = "List verification runs, newest first (all deployments, or the SLUGs given)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "slugs", nargs="*", metavar="SLUG", help="Only these deployments' runs."
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=20,
            metavar="N",
            help=f"Show at most N runs, 1 to {MAX_LIMIT} (default 20).",
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON list.")
        add_team_argument(parser, help_text="Only the runs of this team's deployments.")

    def handle(self, *args: Any, **options: Any) -> None:
        limit = options["limit"]
        if not 1 <= limit <= MAX_LIMIT:
            raise CommandError(
                _("--limit: give 1 to %(max)d (got %(limit)d).")
                % {"max": MAX_LIMIT, "limit": limit}
            )
        team = resolve_team(options["team"])
        deployments = named_deployments(options["slugs"], team=team) if options["slugs"] else None
        rows = runs.history(deployments=deployments, team=team, limit=limit)
        if options["json"]:
            self.stdout.write(json.dumps(rows))
            return
        if not rows:
            self.stdout.write(_("No verification runs."))
            return
        for line in table(rows):
            self.stdout.write(line)
