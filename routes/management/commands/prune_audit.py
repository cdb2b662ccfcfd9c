"""Delete audit events older than a date (the trail is append-only otherwise)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from routes import audit
from routes.management.base import ConsoleCommand, add_team_argument, resolve_team
from routes.models import AuditEvent, Team


def parse_before(value: str) -> dt.datetime:
    """Return the aware datetime of a YYYY-MM-DD date (midnight, local time) or ISO datetime."""
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is None:
                raise ValueError
            moment = dt.datetime.combine(day, dt.time.min)
    except ValueError:
        raise CommandError(
            f"--before: {value!r} is not a date; use YYYY-MM-DD or an ISO datetime "
            "such as 2025-01-31T12:00:00+00:00."
        ) from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def prune_events(*, before: dt.datetime, team: Team | None = None) -> int:
    """Delete the events created before `before` (of team, when given); return how many."""
    deleted, _ = _events_before(before=before, team=team).delete()
    return deleted


def _events_before(*, before: dt.datetime, team: Team | None) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(created_at__lt=before)
    return events.filter(team=team) if team is not None else events


class Command(ConsoleCommand):
    help = "Delete audit events created before a date (superuser pruning from the command line)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--before",
            required=True,
            help="Delete events created before this date, e.g. 2025-01-01 (midnight, TIME_ZONE).",
        )
        add_team_argument(parser, help_text="Only events of this team (slug).")
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        before = parse_before(options["before"])
        if before > timezone.now():
            raise CommandError(
                f"--before: {options['before']} is in the future; that would delete today's "
                "events too. Give a past date."
            )
        team = resolve_team(options["team"])
        if options["dry_run"]:
            count = _events_before(before=before, team=team).count()
        else:
            count = prune_events(before=before, team=team)
            # The prune itself stays in the trail, so a gap always has an explanation.
            audit.record(
                action="audit.prune",
                team=team,
                changes={"before": before.isoformat(), "count": count},
            )
        if options["json"]:
            payload = {
                "before": before.isoformat(),
                "deleted": 0 if options["dry_run"] else count,
                "matching": count,
                "dry_run": options["dry_run"],
            }
            self.stdout.write(json.dumps(payload))
        elif options["dry_run"]:
            self.stdout.write(
                f"{count} audit event(s) created before {before:%Y-%m-%d %H:%M %Z} "
                "would be deleted (dry run)."
            )
        else:
            self.stdout.write(
                f"Deleted {count} audit event(s) created before {before:%Y-%m-%d %H:%M %Z}."
            )
