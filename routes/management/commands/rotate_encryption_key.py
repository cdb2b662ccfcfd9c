"""Re-encrypt every stored key under the primary CONSOLE_ENCRYPTION_KEYS entry."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import transaction

from routes import audit
from routes import keys as keyring
from routes.alerts.channels import reencrypt_targets
from routes.management.base import ConsoleCommand, add_team_argument, resolve_team
from routes.models import Key, Team

GENERATE_HELP = """\
New encryption key (keep it as secret as the old one):

    {key}

To rotate:
  1. Put it FIRST in CONSOLE_ENCRYPTION_KEYS and keep the current key(s) after it, e.g.
       CONSOLE_ENCRYPTION_KEYS={key},<current key>
  2. Restart the console and the task worker, so that new keys are encrypted with it.
  3. Run `manage.py rotate_encryption_key` until it reports 0 keys left to re-encrypt
     (it is safe to interrupt and to run again).
  4. Only then drop the old key from CONSOLE_ENCRYPTION_KEYS and restart again.
"""


@dataclass
class RotationReport:
    """What one run did; undecryptable rows are named by id, never by value."""

    total: int = 0
    rotated: int = 0
    already_current: int = 0
    changed_meanwhile: int = 0
    undecryptable: list[dict[str, Any]] = field(default_factory=list)
    channels_rotated: int = 0


def check_configured_keys() -> None:
    """Raise CommandError when an entry of CONSOLE_ENCRYPTION_KEYS is not a Fernet key."""
    configured = settings.CONSOLE_ENCRYPTION_KEYS
    if not configured:
        raise CommandError("CONSOLE_ENCRYPTION_KEYS is empty: there is no key to encrypt with.")
    for position, value in enumerate(configured, start=1):
        try:
            keyring.fernet(value)
        except (ValueError, TypeError):
            raise CommandError(
                f"CONSOLE_ENCRYPTION_KEYS entry {position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes); generate one with --generate."
            ) from None


def rotate_keys(*, batch_size: int = 100, team: Team | None = None) -> RotationReport:
    """Re-encrypt every key not yet under the primary key, batch by batch; return the counts."""
    report = RotationReport()
    keys = Key.objects.all()
    if team is not None:
        keys = keys.filter(deployment__team=team)
    last_pk = 0
    while True:
        batch = list(
            keys.filter(pk__gt=last_pk)
            .order_by("pk")
            .values_list("pk", "ciphertext", "deployment__slug", "role")[:batch_size]
        )
        if not batch:
            break
        # A batch commits as a whole; an interruption loses at most one batch of work, and the
        # rows already written decrypt under the new key, so a rerun simply continues.
        with transaction.atomic():
            for pk, token, slug, role in batch:
                report.total += 1
                outcome = keyring.rotate_stored(keys, pk=pk, field="ciphertext", token=token)
                if outcome == "current":
                    report.already_current += 1
                elif outcome == "rotated":
                    report.rotated += 1
                elif outcome == "changed":
                    report.changed_meanwhile += 1
                else:
                    # Left untouched: perhaps the key that decrypts it is not configured yet.
                    report.undecryptable.append({"id": pk, "deployment": slug, "role": role})
        last_pk = batch[-1][0]
    if team is None:
        # Channel targets are encrypted like keys (their URLs carry tokens): dropping the old
        # encryption key must not leave them unreadable.
        report.channels_rotated = reencrypt_targets()
    return report


class Command(ConsoleCommand):
    help = "Re-encrypt every stored key under the first CONSOLE_ENCRYPTION_KEYS entry."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--generate",
            action="store_true",
            help="Print a new encryption key and the rotation steps; change nothing.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=100,
            help="Keys re-encrypted per transaction (default 100).",
        )
        add_team_argument(parser, help_text="Only the keys of this team's deployments (slug).")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["generate"]:
            self.stdout.write(GENERATE_HELP.format(key=Fernet.generate_key().decode()))
            return
        if options["batch_size"] < 1:
            raise CommandError("--batch-size: give a positive number of keys, e.g. 100.")
        team = resolve_team(options["team"])
        check_configured_keys()

        report = rotate_keys(batch_size=options["batch_size"], team=team)
        audit.record(
            action="keys.reencrypt",
            team=team,
            changes={
                "rotated": report.rotated,
                "already_current": report.already_current,
                "changed_meanwhile": report.changed_meanwhile,
                "undecryptable": len(report.undecryptable),
                "channels_rotated": report.channels_rotated,
            },
        )
        if options["json"]:
            self.stdout.write(json.dumps(asdict(report), indent=2))
        else:
            self.stdout.write(
                f"Keys examined: {report.total}; re-encrypted: {report.rotated}; already under "
                f"the primary key: {report.already_current}; changed meanwhile (skipped): "
                f"{report.changed_meanwhile}; undecryptable: {len(report.undecryptable)}; "
                f"notification channel targets re-encrypted: {report.channels_rotated}."
            )
            for row in report.undecryptable:
                self.stdout.write(
                    f"  key #{row['id']} ({row['deployment']}, {row['role']}) cannot be decrypted "
                    "with any configured key; left untouched."
                )
        if report.undecryptable:
            raise CommandError(
                f"{len(report.undecryptable)} key(s) could not be decrypted and were left "
                "untouched. Add the encryption key they were written with to "
                "CONSOLE_ENCRYPTION_KEYS (after the primary) and run again, or set those keys anew."
            )
