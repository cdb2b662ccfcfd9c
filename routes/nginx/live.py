"""The live nginx: its test and reload commands, and which config hash answers a deployment.

The commands come from settings (CONSOLE_NGINX_TEST_CMD, CONSOLE_NGINX_RELOAD_CMD): split with
shlex, run without a shell, stdin closed, with a time limit; what they print is kept redacted and
cut to MAX_OUTPUT characters. Which config answers is read from the ``X-Console-Config`` header
of a keyless request through the verification HTTP seam, with the job's base URL, Host header and
TLS verification, so it goes where the checks go and never carries a key.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

from routes import validators as v
from routes.models import Deployment
from routes.nginx.render import CONFIG_HEADER
from routes.verification import destinations, http
from routes.verification.runs import job_for

# Characters of a command's output that are kept.
MAX_OUTPUT = 8000
# A keyless path every exported config proxies (to CPA's health check): its answer carries the
# trace headers whoever answers, even nginx's own 502.
PROBE_PATH = "/healthz"
# Seconds between two rounds of probes while waiting for a reload to take, and the answers in
# a row that prove it took.
POLL_INTERVAL = 0.25
CONFIRMATIONS = 3
# nginx's own message: "nginx: [emerg] <what> in /etc/nginx/conf.d/x.conf:12".
_NGINX_MESSAGE = re.compile(
    r"\[(?P<level>emerg|alert|crit|error)\]\s+(?P<what>.*?)(?:\s+in\s+(?P<file>\S+):(?P<line>\d+))?$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class CommandOutcome:
    """What a test or reload command did: ok, its output (redacted), a one-line summary."""

    ok: bool
    output: str
    summary: str


def nginx_message(output: str) -> str:
    """Return nginx's first error in output as "what (file, line N)", or ""."""
    found = _NGINX_MESSAGE.search(output)
    if found is None:
        return ""
    if found["file"]:
        return _("%(what)s (%(file)s, line %(line)s)") % {
            "what": found["what"],
            "file": found["file"],
            "line": found["line"],
        }
    return found["what"]


def run_command(command: str, *, redact: http.Redactor) -> CommandOutcome:
    """Run command (a shell-like line) without a shell; never raises for its failures."""
    try:
        args = shlex.split(command)
    except ValueError as exc:
        return CommandOutcome(
            False, "", _("The command cannot be split: %(error)s.") % {"error": exc}
        )
    if not args:
        return CommandOutcome(False, "", _("The command is empty."))
    timeout = float(settings.CONSOLE_NGINX_COMMAND_TIMEOUT)
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return CommandOutcome(
            False, "", _("%(program)s was not found on the console host.") % {"program": args[0]}
        )
    except subprocess.TimeoutExpired:
        return CommandOutcome(
            False,
            "",
            _("%(command)s did not finish within %(seconds)d seconds and was stopped.")
            % {"command": args[0], "seconds": round(timeout)},
        )
    except OSError as exc:
        return CommandOutcome(
            False,
            "",
            _("%(program)s could not be started: %(error)s")
            % {"program": args[0], "error": exc.strerror},
        )
    output = redact.cut((proc.stderr + proc.stdout).strip(), MAX_OUTPUT, marker="…")
    if proc.returncode == 0:
        return CommandOutcome(True, output, "")
    summary = redact(nginx_message(output)) or _("exit status %(code)d") % {"code": proc.returncode}
    return CommandOutcome(False, output, summary)


def run_test_command(*, redact: http.Redactor) -> CommandOutcome:
    """Run CONSOLE_NGINX_TEST_CMD: the live nginx's test of its whole configuration."""
    return run_command(settings.CONSOLE_NGINX_TEST_CMD, redact=redact)


def run_reload_command(*, redact: http.Redactor) -> CommandOutcome:
    """Run CONSOLE_NGINX_RELOAD_CMD."""
    return run_command(settings.CONSOLE_NGINX_RELOAD_CMD, redact=redact)


# --- which config answers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a deployment answered: the config hash it carries (None: no header), or an error."""

    config_hash: str | None
    error: str = ""


def answering_hash(deployment: Deployment, *, timeout: float) -> Answer:
    """Return the X-Console-Config of one keyless request to the deployment's base URL."""
    job = job_for(deployment)
    base_url = job.effective_base_url
    try:
        v.validate_origin(base_url)
    except ValidationError as exc:
        return Answer(None, " ".join(exc.messages))
    host = destinations.host_header(base_url, deployment.server_name)
    probe = http.send(
        method="GET",
        url=base_url + PROBE_PATH,
        timeout=max(0.2, min(float(job.timeout_seconds or 10.0), timeout)),
        verify=job.verify_tls,
        headers={"Host": host} if host else None,
    )
    if probe.error:
        return Answer(None, probe.error_reason or probe.error)
    return Answer(probe.headers.get(CONFIG_HEADER.lower()))


def wait_for_hashes(
    deployments: Mapping[Deployment, Callable[[Answer], bool]], *, timeout: float
) -> dict[str, Answer]:
    """Poll each deployment until its answer satisfies its test, or until timeout seconds pass.

    A deployment passes after CONFIRMATIONS answers in a row: during a reload the old workers
    still answer for a moment, so one answer of the new config proves little. Return the last
    answer of each deployment that has not passed ({} when all did).
    """
    deadline = time.monotonic() + timeout
    pending = dict(deployments)
    streak = dict.fromkeys(pending, 0)
    last: dict[str, Answer] = {}
    while True:
        for deployment, wanted in list(pending.items()):
            left = deadline - time.monotonic()
            answer = answering_hash(deployment, timeout=max(left, 0.2))
            streak[deployment] = streak[deployment] + 1 if wanted(answer) else 0
            if streak[deployment] >= CONFIRMATIONS:
                del pending[deployment]
                last.pop(deployment.slug, None)
            else:
                last[deployment.slug] = answer
        if not pending or time.monotonic() >= deadline:
            return last
        time.sleep(POLL_INTERVAL)
