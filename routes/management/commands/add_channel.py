"""Add a notification channel to a team; its target is read from stdin, never from argv."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes.alerts.channels import KINDS, create_channel
from routes.management.base import ConsoleCommand, named_deployments
from routes.models import Team

# How the command's user knows each field of the channel.
FIELD_NAMES = {
    "name": "--name",
    "deployments": "--deployment",
    "remind_every_hours": "--remind-every-hours",
}


class Command(ConsoleCommand):
    help = "Add a team's notification channel (target read from stdin); print the channel's id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", metavar="TEAM_SLUG", help="The team's slug, e.g. ops.")
        parser.add_argument("kind", choices=KINDS, help=f"One of {', '.join(KINDS)}.")
        parser.add_argument(
            "--name", default="", help="e.g. 'On-call email'; default: the kind and masked target."
        )
        parser.add_argument(
            "--deployment",
            dest="deployments",
            action="extend",
            nargs="+",
            default=[],
            metavar="SLUG",
            help="Only these deployments of the team (repeatable); default: all of them.",
        )
        parser.add_argument(
            "--remind-every-hours",
            type=int,
            metavar="N",
            help="While a deployment stays down, remind every N hours (1 to 720).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        team = Team.objects.filter(slug=options["team"]).first()
        if team is None:
            raise CommandError(
                _("TEAM_SLUG: no team with slug %(slug)s.") % {"slug": repr(options["team"])}
            )
        deployments = named_deployments(options["deployments"], team=team, option="--deployment")
        target = self._read_target()
        if not target:
            raise CommandError(_("target: nothing was read from stdin."))
        try:
            channel = create_channel(
                team=team,
                kind=options["kind"],
                target=target,
                name=options["name"],
                deployments=deployments,
                remind_every_hours=options["remind_every_hours"],
            )
        except ValidationError as exc:
            raise CommandError(
                "\n".join(
                    f"{FIELD_NAMES.get(field, field)}: {message}"
                    for field, messages in exc.message_dict.items()
                    for message in messages
                )
            ) from None
        self.stdout.write(str(channel.pk))

    def _read_target(self) -> str:
        if sys.stdin.isatty():
            return getpass.getpass(_("Target (address or URL, not echoed): ")).strip()
        # A target holds no whitespace: the newline `echo` adds, and any other, is dropped.
        return sys.stdin.read().strip()
