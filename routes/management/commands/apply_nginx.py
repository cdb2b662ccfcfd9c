"""manage.py apply_nginx SLUG [SLUG ...] | --all [--team SLUG] [--no-verify] [--no-rollback]
[--json]: write, test, reload, confirm and verify; roll back on regression.

Exit 0 applied, 1 any other result (test_failed, rolled_back, rollback_failed, or refused before
anything changed), 2 usage error.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes import tasks
from routes.management.base import ConsoleCommand, add_selection_arguments, selected_deployments
from routes.models import Deployment, NginxApply
from routes.nginx.apply import ApplyRefused, perform_apply, queue_apply
from routes.nginx.apply_report import apply_as_json, step_label

USAGE_ERROR = 2
Result = NginxApply.Result
MARKS = {True: "ok", False: "FAILED", None: "skipped"}


class Command(ConsoleCommand):
    help = (
        "Put deployments' configs live on nginx: write, test, reload, confirm, verify, and roll "
        "back on regression (exit 0 applied, 1 otherwise, 2 usage)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_selection_arguments(parser, verb="apply")
        parser.add_argument(
            "--no-verify",
            action="store_true",
            help="Skip verification: the result is applied once the new config answers.",
        )
        parser.add_argument(
            "--no-rollback",
            action="store_true",
            help="Keep the new config even when a check regressed (it is still reported).",
        )
        parser.add_argument("--json", action="store_true", help="Print the outcome as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        deployments = self._select(options)
        try:
            record = queue_apply(
                deployments=deployments,
                source=NginxApply.Source.COMMAND,
                no_verify=options["no_verify"],
                no_rollback=options["no_rollback"],
            )
        except ApplyRefused as exc:
            raise CommandError(str(exc)) from exc
        record = perform_apply(apply=record)
        tasks.queue_apply_notifications(record)
        if record.result == Result.REFUSED:
            raise CommandError(record.reason or _("The apply was refused."))
        if options["json"]:
            self.stdout.write(json.dumps(apply_as_json(record)))
        else:
            self._report(record)
        if record.result == Result.ROLLBACK_FAILED:
            self.stderr.write(
                self.style.ERROR(
                    _("ROLLBACK FAILED: nginx may be serving a broken config. %(reason)s")
                    % {"reason": record.reason}
                )
            )
        if record.result != Result.APPLIED:
            raise SystemExit(1)

    def _select(self, options: dict[str, Any]) -> list[Deployment]:
        deployments, _team = selected_deployments(options, returncode=USAGE_ERROR)
        if not deployments:
            raise CommandError(_("No deployment to apply."), returncode=USAGE_ERROR)
        return deployments

    def _report(self, record: NginxApply) -> None:
        for step in record.steps:
            line = f"  {MARKS.get(step.get('ok'), '?'):<7} {step_label(step)}"
            if step.get("detail"):
                line += f": {step['detail']}"
            self.stdout.write(line)
        style = self.style.SUCCESS if record.result == Result.APPLIED else self.style.ERROR
        self.stdout.write(
            style(
                _("Apply #%(id)d of %(slugs)s: %(result)s (config %(new)s, before %(old)s).")
                % {
                    "id": record.pk,
                    "slugs": ", ".join(record.slugs),
                    "result": record.result,
                    "new": (record.config_hash or "-")[:12],
                    "old": (record.previous_hash or "-")[:12],
                }
            )
        )
        if record.reason:
            self.stdout.write(f"  {record.reason}")
        if record.regressions:
            self.stdout.write(
                _("  Regressions: %(checks)s") % {"checks": ", ".join(record.regressions)}
            )
        if record.runs:
            self.stdout.write(
                _("  Verification runs: %(runs)s")
                % {"runs": ", ".join(f"#{r}" for r in record.runs)}
            )
