"""Import a hand-written nginx site config of the seed's shape as a deployment, all or nothing."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes.adoption import Adoption, adopt, config_limit, display_name
from routes.management.base import ConsoleCommand, resolve_team
from routes.nginx.adopt import Finding, Proposal
from routes.nginx.sandbox import readable_regular_file

USAGE_ERROR = 2


class Command(ConsoleCommand):
    help = "Import an nginx site config (or - for stdin) as a deployment, all or nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="The site config, e.g. /etc/nginx/conf.d/site.conf.")
        parser.add_argument("--slug", required=True, help="Slug of the deployment, e.g. prod.")
        parser.add_argument("--team", required=True, metavar="TEAM", help="Slug of its team.")
        parser.add_argument("--name", default="", help="Its name (default: the slug).")
        parser.add_argument(
            "--update",
            action="store_true",
            help="Replace the definition of the team's deployment of that slug (never its keys).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be imported; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        team = resolve_team(options["team"], returncode=USAGE_ERROR)
        if team is None:
            raise CommandError(_("--team: give a team slug."), returncode=USAGE_ERROR)
        source = options["file"]
        data = self._read(source)
        adoption = adopt(
            data=data,
            source=display_name(source) if source != "-" else "stdin",
            slug=options["slug"],
            team=team,
            name=options["name"],
            update=options["update"],
            dry_run=options["dry_run"],
        )
        if adoption.proposal is not None:
            self._report(adoption.proposal, adoption)
        if not adoption.ok:
            for line in adoption.problem_lines():
                self.stderr.write(line)
            raise CommandError(
                _("%(n)d problem(s); nothing was imported.") % {"n": len(adoption.problems)},
                returncode=1,
            )
        slug = adoption.slug
        if options["dry_run"]:
            message = (
                _("%(slug)s: would be created (dry run: nothing was changed)")
                if adoption.created
                else _("%(slug)s: would be updated (dry run: nothing was changed)")
            )
        else:
            message = _("%(slug)s: created") if adoption.created else _("%(slug)s: updated")
        self.stdout.write(message % {"slug": slug})

    def _read(self, source: str) -> bytes:
        """Return at most the limit plus one byte of FILE: enough to refuse a larger one."""
        limit = config_limit()
        if source == "-":
            stream = getattr(sys.stdin, "buffer", sys.stdin)
            data = stream.read(limit + 1)
            return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        # stat() only: a FIFO would block the open, /dev/zero never end.
        reason = readable_regular_file(os.path.abspath(source))
        if reason is None:
            try:
                with open(source, "rb") as fh:
                    return fh.read(limit + 1)
            except OSError as exc:
                reason = exc.strerror or str(exc)
        raise CommandError(
            _("%(file)s: cannot read: %(error)s") % {"file": source, "error": reason},
            returncode=USAGE_ERROR,
        )

    def _section(self, title: str, proposal: Proposal, findings: list[Finding]) -> None:
        if not findings:
            return
        self.stdout.write(title)
        for finding in findings:
            self.stdout.write(f"  {proposal.where(finding.line)}: {finding.text}")

    def _report(self, proposal: Proposal, adoption: Adoption) -> None:
        """Print what the file became: recognised, built-ins, overrides, added, lint."""
        self._section(_("Recognised:"), proposal, proposal.recognised)
        self._section(_("Built-in routes (nothing stored):"), proposal, proposal.builtins)
        overrides = [
            Finding(line, f"{o['match']} {o['path']} -> {o['target']} (position {o['position']})")
            for line, o in zip(proposal.override_lines, proposal.overrides, strict=True)
        ]
        self._section(_("Overrides:"), proposal, overrides)
        self._section(_("Added by the console (not in this file):"), proposal, proposal.added)
        if adoption.warnings:
            self.stdout.write(_("Lint warnings:"))
            for warning in adoption.warnings:
                self.stdout.write(
                    "  " + _("warning: %(warning)s") % {"warning": f"{adoption.slug}: {warning}"}
                )
