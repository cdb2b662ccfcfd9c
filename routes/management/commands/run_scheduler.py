"""`manage.py run_scheduler`: queue every scheduled verification run when it falls due.

Runs until SIGINT or SIGTERM (``make run`` starts it beside gunicorn and the task workers);
``--once`` queues what is due now and exits, for cron and tests. Several schedulers may run at
once: each due run is claimed by exactly one (routes.verification.runs.claim_slot).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes import tasks
from routes.management.base import ConsoleCommand, add_team_argument, resolve_team
from routes.models import VerificationRun
from routes.verification import runs

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """Set stop on SIGINT or SIGTERM while inside; a second signal acts as it would without."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        # A second Ctrl-C should not have to wait for the pass in progress.
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def enqueued_payload(enqueued: list[VerificationRun]) -> dict[str, Any]:
    """Return what ``--once --json`` prints: the count and each queued run with its deployment."""
    return {
        "count": len(enqueued),
        "enqueued": [{"deployment": r.job.deployment.slug, "run": r.pk} for r in enqueued],
    }


class Command(ConsoleCommand):
    help = (
        "Queue scheduled verification runs as their jobs fall due, about once a second, until "
        "stopped (SIGINT/SIGTERM); --once queues what is due now and exits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="Queue the runs due now, print how many, exit."
        )
        parser.add_argument("--json", action="store_true", help="With --once: print JSON.")
        add_team_argument(parser, help_text="Only the jobs of this team's deployments (slug).")

    def handle(self, *args: Any, **options: Any) -> None:
        team = resolve_team(options["team"])
        if options["json"] and not options["once"]:
            raise CommandError(_("--json only works with --once."))
        enqueue = partial(tasks.enqueue_due, team=team)
        if options["once"]:
            enqueued = enqueue()
            if options["json"]:
                self.stdout.write(json.dumps(enqueued_payload(enqueued)))
            else:
                self.stdout.write(
                    _("Enqueued %(n)d scheduled verification run(s).") % {"n": len(enqueued)}
                )
            return
        stop = threading.Event()
        self.stderr.write(_("Scheduler running; SIGINT or SIGTERM (Ctrl-C) stops it."))
        with stopped_by_signals(stop):
            queued = runs.run_schedule(enqueue, stop=stop)
        self.stderr.write(
            _("Scheduler stopped; it queued %(n)d verification run(s).") % {"n": queued}
        )
