"""Store a deployment key read from stdin, never from the command line."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes import keys as keyring
from routes.management.base import ConsoleCommand, add_team_argument, resolve_team
from routes.models import Deployment
from routes.workflows.keys import set_key


class Command(ConsoleCommand):
    help = "Set a deployment key from stdin; replacing a single-role key is a recorded rotation."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", metavar="SLUG", help="The deployment's slug, e.g. prod.")
        parser.add_argument(
            "role",
            metavar="ROLE",
            choices=list(keyring.ROLE_LABELS),
            help=f"One of {', '.join(keyring.ROLE_LABELS)}.",
        )
        parser.add_argument(
            "--label", default="", help="Label, e.g. ci-runner; an API key with it is replaced."
        )
        parser.add_argument(
            "--custom-format",
            action="store_true",
            help="Accept a CPAMP Admin Key in a format of your own (CPA_MANAGER_ADMIN_KEY).",
        )
        add_team_argument(parser, help_text="Refuse unless the deployment belongs to this team.")

    def handle(self, *args: Any, **options: Any) -> None:
        team = resolve_team(options["team"])
        rows = Deployment.objects.filter(slug=options["slug"])
        if team is not None:
            rows = rows.filter(team=team)
        deployment = rows.first()
        if deployment is None:
            message = (
                _("%(slug)s: no such deployment in team %(team)s.")
                if team is not None
                else _("%(slug)s: no such deployment.")
            )
            raise CommandError(message % {"slug": options["slug"], "team": options["team"]})
        secret = self._read_secret()
        if not secret:
            raise CommandError(_("secret: nothing was read from stdin."))
        try:
            key = set_key(
                deployment=deployment,
                role=options["role"],
                secret=secret,
                label=options["label"],
                custom_format=options["custom_format"],
            )
        except ValidationError as exc:
            raise CommandError("\n".join(exc.messages)) from None
        # Accepted, but worth knowing (a short key): the message names the role, never the key.
        for warning in keyring.shape_warnings(key.role, secret):
            self.stderr.write(warning.message)
        label = f" {key.label}" if key.label else ""
        self.stdout.write(f"{deployment.slug}: {keyring.ROLE_LABELS[key.role]}{label} {key.masked}")

    def _read_secret(self) -> str:
        if sys.stdin.isatty():
            return getpass.getpass(_("Secret (not echoed): "))
        secret = sys.stdin.read()
        # One trailing newline is how shells and `echo` end a line; anything else is kept and
        # refused by the key rules if it is whitespace.
        if secret.endswith("\r\n"):
            return secret[:-2]
        return secret[:-1] if secret.endswith("\n") else secret
