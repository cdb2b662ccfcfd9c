"""gixy-next, a maintained nginx security linter, over the console's rendered files.

ACCEPTED is the one list of the findings the product needs, each with its reason: every other
finding is a fault of the config (tests/test_gixy.py keeps every exported variant free of them).
gixy-next is a development dependency (requirements-dev.txt): where it is not installed the
console says so and lints nothing. It runs as a subprocess of this Python, under a time limit,
from "Test with nginx" (a POST) and the tests, never while a page is read.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

# Plugin -> why the console writes what gixy-next flags. English, as written here; the page
# shows it through gettext.
ACCEPTED = {
    "proxy_buffering_off": gettext_noop(
        "The seed's proxy_buffering off: model answers stream (server-sent events), and a "
        "buffered stream reaches the client only when it ends."
    ),
    "default_server_flag": gettext_noop(
        "Which server is the default for a port belongs to the host's whole nginx, not to one "
        "export. An export directory that owns its ports gets a catch-all server from "
        "export_nginx --default-server (CONSOLE_NGINX_DEFAULT_SERVER)."
    ),
    "stale_dns_cache": gettext_noop(
        "IP-address upstreams (nginx on the host) are proxied through the same per-server "
        "variables as host names, so nginx's upstream list does not grow with the deployments; "
        "nginx needs no resolver for an IP address, which gixy-next cannot tell."
    ),
}
# The wrapper's own setting: gixy-next checks nginx.conf, which the host owns, not the export.
_MAIN_CONF = "worker_processes auto;\nevents {}\nhttp {\n    include {dir}/*.conf;\n}\n"


@dataclass(frozen=True)
class Finding:
    """One gixy-next finding: the plugin, its severity, what and where (file name, line)."""

    plugin: str
    severity: str
    summary: str
    reason: str
    file: str
    line: int | None

    @property
    def accepted(self) -> str:
        """Return why the console writes this anyway (translated), or "" when it is a fault."""
        reason = ACCEPTED.get(self.plugin, "")
        return _(reason) if reason else ""


@dataclass(frozen=True)
class Report:
    """What gixy-next said about a set of files; available is False when it is not installed."""

    available: bool
    findings: tuple[Finding, ...] = ()
    error: str = ""

    @property
    def unexplained(self) -> list[Finding]:
        """Return the findings ACCEPTED does not explain."""
        return [finding for finding in self.findings if not finding.accepted]

    def as_json(self) -> dict[str, Any] | None:
        """Return the report as stored on an NginxTest row (None: gixy-next is not installed)."""
        if not self.available:
            return None
        return {"findings": [asdict(f) for f in self.findings], "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Report:
        """Return the report stored by as_json."""
        if not data:
            return cls(available=False)
        return cls(
            available=True,
            findings=tuple(Finding(**f) for f in data.get("findings", [])),
            error=str(data.get("error", "")),
        )


def installed() -> bool:
    """Return True when gixy-next can be imported by this Python."""
    return importlib.util.find_spec("gixy") is not None


def _finding(raw: dict[str, Any], root: str) -> Finding:
    path = str(raw.get("file") or raw.get("path") or "")
    line = raw.get("line")
    return Finding(
        plugin=str(raw.get("plugin", "")),
        severity=str(raw.get("severity", "")),
        summary=str(raw.get("summary", "")),
        reason=str(raw.get("reason", "")),
        # The sandbox's paths mean nothing to a reader: its file names do.
        file=Path(path).name if path.startswith(root) else path,
        line=line if isinstance(line, int) else None,
    )


def lint_files(files: dict[str, str], *, timeout: float | None = None) -> Report:
    """Run gixy-next over {file name: text} included as one export directory; return its report.

    Only ``*.conf`` files are linted, inside a wrapper nginx.conf. The time limit (default
    CONSOLE_GIXY_TIMEOUT) ends in a report with an error, never in an exception.
    """
    if not installed():
        return Report(available=False)
    limit = float(settings.CONSOLE_GIXY_TIMEOUT if timeout is None else timeout)
    with tempfile.TemporaryDirectory(prefix="console-gixy-") as tmp:
        directory = Path(tmp) / "conf.d"
        directory.mkdir()
        for name, text in files.items():
            if name.endswith(".conf") and "/" not in name:
                (directory / name).write_text(text, encoding="utf-8")
        main = Path(tmp) / "nginx.conf"
        main.write_text(_MAIN_CONF.replace("{dir}", str(directory)), encoding="utf-8")
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "gixy", "-f", "json", str(main)],
                capture_output=True,
                text=True,
                timeout=limit,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return Report(
                available=True,
                error=_("gixy-next did not finish within %(seconds)d seconds.")
                % {"seconds": round(limit)},
            )
        try:
            raw = json.loads(proc.stdout or "[]")
        except ValueError:
            raw = None
        if not isinstance(raw, list):
            output = (proc.stderr or proc.stdout).strip().replace(tmp, "<gixy>")
            return Report(
                available=True,
                error=_("gixy-next failed: %(output)s") % {"output": output[-500:]},
            )
        findings = sorted(
            (_finding(item, tmp) for item in raw if isinstance(item, dict)),
            key=lambda f: (f.file, f.line or 0, f.plugin),
        )
        return Report(available=True, findings=tuple(findings))
