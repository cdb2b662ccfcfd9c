"""Run real nginx on exported files in a throwaway prefix: ``nginx -t``, or serve them (tests).

The sandbox writes its own nginx.conf that includes the exported ``*.conf`` files inside
``http {}``, with its own pid, error log and temp paths, so it never touches the system nginx.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext as _

# Seconds of nginx -t per included file on top of CONSOLE_NGINX_CHECK_TIMEOUT: nginx -t grows
# faster than linearly with the number of sites (about 5 ms per site at 500 sites, 19 ms at 5,000
# on a 2-core host; see bench/bench_export_check.py), so a fixed limit fails big exports.
TIMEOUT_PER_FILE = 0.05


@dataclass(frozen=True)
class NginxCheck:
    """The outcome of ``nginx -t``: ok, nginx's own output, whether nginx was found, timed out."""

    ok: bool
    output: str
    available: bool = True
    timed_out: bool = False


def check_timeout(*, files: int) -> float:
    """Return the seconds one ``nginx -t`` of this many included files may take."""
    return float(settings.CONSOLE_NGINX_CHECK_TIMEOUT) + TIMEOUT_PER_FILE * max(files, 0)


def readable_regular_file(path: str) -> str | None:
    """Return None when path is a regular file this process may read, else why it is not.

    Only stat() is used: opening a FIFO blocks and reading /dev/zero never ends, so nothing that
    is not a regular file is ever opened (symlinks are followed to what they point at).
    """
    if not os.path.isabs(path):
        return _("not an absolute path")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return _("not found")
    except (OSError, ValueError):
        return _("not accessible")
    if not stat.S_ISREG(info.st_mode):
        return _("not a regular file")
    if not os.access(path, os.R_OK):
        return _("not readable")
    return None


def nginx_binary() -> str | None:
    """Return the path of the nginx binary, or None when it is not installed or disabled."""
    name = getattr(settings, "CONSOLE_NGINX_BIN", "nginx")
    if not name:
        return None
    found = shutil.which(name) or (shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin"))
    return found


def _main_conf(prefix: Path, conf_dir: Path, *, daemon: bool) -> str:
    # Everything lives under the prefix so a non-root user can run it; mime.types is optional.
    mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else ""
    return (
        f"daemon {'on' if daemon else 'off'};\n"
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    {mime}\n"
        f"    access_log off;\n"
        f"    client_body_temp_path {prefix}/client_temp;\n"
        f"    proxy_temp_path {prefix}/proxy_temp;\n"
        f"    fastcgi_temp_path {prefix}/fastcgi_temp;\n"
        f"    uwsgi_temp_path {prefix}/uwsgi_temp;\n"
        f"    scgi_temp_path {prefix}/scgi_temp;\n"
        f"    include {conf_dir}/*.conf;\n"
        "}\n"
    )


def _prepare(prefix: Path, conf_dir: Path, *, daemon: bool) -> Path:
    for sub in ("client_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    main = prefix / "nginx.conf"
    main.write_text(_main_conf(prefix, conf_dir.resolve(), daemon=daemon))
    return main


def check_directory(conf_dir: Path, *, timeout: float | None = None) -> NginxCheck:
    """Run ``nginx -t`` on every ``*.conf`` in conf_dir inside a throwaway sandbox.

    The time limit (default: check_timeout of the number of files) ends in a result that says
    so, never in an exception.
    """
    binary = nginx_binary()
    if binary is None:
        return NginxCheck(False, _("nginx is not installed on the console host"), available=False)
    if timeout is None:
        timeout = check_timeout(files=sum(1 for _path in Path(conf_dir).glob("*.conf")))
    with tempfile.TemporaryDirectory(prefix="console-nginx-t-") as tmp:
        prefix = Path(tmp)
        main = _prepare(prefix, Path(conf_dir), daemon=False)
        try:
            proc = subprocess.run(
                [
                    binary,
                    "-t",
                    "-q",
                    "-p",
                    str(prefix),
                    "-c",
                    str(main),
                    "-e",
                    str(prefix / "error.log"),
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            # subprocess.run has killed nginx by now; its partial output says nothing useful.
            return NginxCheck(
                False,
                _(
                    "nginx -t did not finish within %(seconds)d seconds and was stopped, so this "
                    "config was not checked. Raise CONSOLE_NGINX_CHECK_TIMEOUT if the host is "
                    "slow, or look for a file nginx waits on."
                )
                % {"seconds": round(timeout)},
                timed_out=True,
            )
        output = (proc.stderr + proc.stdout).strip()
        output = output.replace(str(prefix), "<sandbox>")
        return NginxCheck(proc.returncode == 0, output or "syntax is ok")


@contextmanager
def running_nginx(
    conf_dir: Path, *, wait_for: list[tuple[str, int]] | None = None
) -> Iterator[Path]:
    """Serve conf_dir with real nginx until the block ends; yield the sandbox prefix.

    Used by tests and benchmarks: the configs must listen on loopback addresses only.
    """
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    with tempfile.TemporaryDirectory(prefix="console-nginx-run-") as tmp:
        prefix = Path(tmp)
        main = _prepare(prefix, Path(conf_dir), daemon=False)
        proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(main), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _wait_listening(proc, wait_for or [], prefix)
            yield prefix
        finally:
            try:
                os.killpg(proc.pid, signal.SIGQUIT)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _wait_listening(
    proc: subprocess.Popen[bytes], addresses: list[tuple[str, int]], prefix: Path
) -> None:
    import socket

    deadline = time.monotonic() + 10
    pending = list(addresses)
    while pending:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
            raise RuntimeError(f"nginx exited: {err}{log}")
        host, port = pending[0]
        try:
            with socket.create_connection((host, port), timeout=0.2):
                pending.pop(0)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not listen on {host}:{port}") from None
            time.sleep(0.05)
