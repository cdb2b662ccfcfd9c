"""`manage.py verify`: run deployments' verification now, or enqueue the scheduled ones."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError, CommandParser
from django.utils import translation

from routes import tasks
from routes import validators as v
from routes.management.base import (
    ConsoleCommand,
    add_team_argument,
    named_deployments,
    resolve_team,
)
from routes.models import VerificationRun
from routes.verification import remarks, runs

USAGE_ERROR = 2


class Command(ConsoleCommand):
    help = "Run the verification checks of deployments now (exit 0 passed, 1 failed, 2 usage)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slugs", nargs="*", metavar="SLUG", help="Deployment slugs to verify.")
        parser.add_argument(
            "--json", action="store_true", help="Print JSON (one object per deployment)."
        )
        parser.add_argument(
            "--base-url",
            help=(
                "Send the checks, keys included, to this origin (scheme, host and optional port) "
                "instead of the job's base URL, e.g. https://10.0.0.5."
            ),
        )
        parser.add_argument(
            "--insecure", action="store_true", help="Do not verify TLS certificates."
        )
        parser.add_argument(
            "--lang",
            metavar="CODE",
            help="Print diagnoses in this language, e.g. zh-hans (default: English).",
        )
        parser.add_argument(
            "--due",
            action="store_true",
            help="Enqueue every scheduled job that is due (an alias of `run_scheduler --once`).",
        )
        add_team_argument(parser, help_text="Only deployments of this team (slug).")

    def handle(self, *args: Any, **options: Any) -> None:
        languages = [code for code, _name in settings.LANGUAGES]
        language = options["lang"] or "en"
        if language not in languages:
            raise CommandError(
                f"--lang: {language!r} is not one of {', '.join(languages)}.",
                returncode=USAGE_ERROR,
            )
        # Runs are stored as codes; only what is printed takes the language.
        with translation.override(language):
            self._handle(**options)

    def _handle(self, **options: Any) -> None:
        team = resolve_team(options["team"], returncode=USAGE_ERROR)
        if options["due"]:
            if options["slugs"] or options["base_url"] or options["insecure"]:
                raise CommandError(
                    "--due enqueues scheduled jobs; it takes no SLUG, --base-url or --insecure.",
                    returncode=USAGE_ERROR,
                )
            # An alias of `run_scheduler --once`: the same pass, the same output.
            call_command(
                "run_scheduler",
                once=True,
                json=options["json"],
                team=team.slug if team is not None else None,
                stdout=self.stdout,
                stderr=self.stderr,
            )
            return
        if not options["slugs"]:
            raise CommandError(
                "Give at least one deployment SLUG (or --due).", returncode=USAGE_ERROR
            )
        base_url = options["base_url"]
        if base_url:
            try:
                v.validate_origin(base_url)
            except ValidationError as exc:
                raise CommandError(
                    f"--base-url: {' '.join(exc.messages)}", returncode=USAGE_ERROR
                ) from None
        deployments = named_deployments(options["slugs"], team=team, returncode=USAGE_ERROR)
        all_passed = True
        for deployment in deployments:
            # Whoever runs a command holds the server and its encryption keys, like an owner:
            # keys may go to the origin they name here, for this run only.
            run = runs.verify_now(
                deployment=deployment,
                base_url=base_url,
                insecure=options["insecure"],
                trust_base_url=True,
            )
            tasks.queue_notifications(run)  # a change of state is sent by the task worker
            all_passed &= run.status == runs.Status.PASSED
            if options["json"]:
                self.stdout.write(json.dumps(runs.run_as_json(run)))
            else:
                self._table(run)
        if not all_passed:
            raise SystemExit(1)

    def _table(self, run: VerificationRun) -> None:
        data = runs.run_as_json(run)
        style = self.style.SUCCESS if run.status == runs.Status.PASSED else self.style.ERROR
        self.stdout.write(
            style(
                f"{data['deployment']}: run #{data['run']} {data['status']} in "
                f"{data['duration_ms'] or 0} ms ({run.base_url})"
            )
        )
        said = remarks.run_text(run)
        if said:
            self.stdout.write(f"  {said}")
        for cause in data["causes"]:
            checks = ", ".join(cause["checks"])
            self.stdout.write(f"  cause {cause['code']} ({checks}): {cause['diagnosis']}")
        header = f"  {'check':<28} {'method':<6} {'status':>6} {'expected':<9} {'observed':<9} "
        self.stdout.write(header + f"{'ms':>6}  result")
        for check in data["checks"]:
            status = check["status_code"] if check["status_code"] is not None else "-"
            latency = check["latency_ms"] if check["latency_ms"] is not None else "-"
            result = "ok" if check["passed"] else "FAIL"
            self.stdout.write(
                f"  {check['id']:<28} {check['method']:<6} {status!s:>6} "
                f"{check['expected_upstream'] or '-':<9} {check['observed_upstream'] or '-':<9} "
                f"{latency!s:>6}  {result}"
            )
            if check["diagnosis"]:
                self.stdout.write(f"      {check['diagnosis']}")
            if check["warning"]:
                self.stdout.write(f"      {check['warning']}")
