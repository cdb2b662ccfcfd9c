"""The console as operators run it, for Playwright: gunicorn, the task worker, emulators, nginx.

One session fixture starts everything on loopback with a throwaway database (a SQLite file, or
a scratch database on the PostgreSQL pass), passed to the subprocesses through DATABASE_URL and
CONSOLE_DATA_DIR, and stops it at the end. Chromium is Debian's /usr/bin/chromium; no browser
is ever downloaded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.fakes.cpa import FakeCPA
from tests.fakes.cpamp import FakeCPAMP

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
USERNAME = "walker"
# Test-only credentials of a throwaway database; never a real secret.
PASSWORD = "Walk-through-Passw0rd!"
ADMIN_KEY = "cpamp_" + "W4lkThr0ugh" * 2 + "Key0Key0Ke"
MANAGEMENT_KEY = "mgmt-walkthrough-9931"
API_KEY = "sk-walkthrough-client-7720"

pytestmark = pytest.mark.browser


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Console:
    """The running console and the services behind it."""

    url: str
    env: dict[str, str]
    workdir: Path
    cpa: FakeCPA
    cpamp: FakeCPAMP
    processes: list[subprocess.Popen] = field(default_factory=list)

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        """Run a management command against the console's database."""
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} server exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    # Each process leads its own session, so its workers go with it; only ours are signalled.
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Launch Debian's chromium headless; never a downloaded browser."""
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {
        **browser_context_args,
        "viewport": {"width": 1280, "height": 800},
        "accept_downloads": True,
        "locale": "en-US",
    }


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Return tests/artifacts/ (git-ignored), where screenshots go."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@contextmanager
def scratch_database(workdir: Path) -> Iterator[str]:
    """Yield a DATABASE_URL for the console under test, dropped afterwards.

    On the PostgreSQL pass (DATABASE_URL names a postgres server) it is a fresh database on that
    server; otherwise a throwaway SQLite file.
    """
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        yield f"sqlite:///{workdir / 'console.sqlite3'}"
        return
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/') or 'console'}_browser_{os.getpid()}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def console(tmp_path_factory) -> Iterator[Console]:
    """Start CPA/CPAMP emulators, then gunicorn and the task worker on a fresh database."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (make system-deps)")
    workdir = tmp_path_factory.mktemp("console")
    data = workdir / "data"
    data.mkdir()
    with scratch_database(workdir) as database_url:
        yield from _serve(workdir, data, database_url)


def _serve(workdir: Path, data: Path, database_url: str) -> Iterator[Console]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": database_url,
        "CONSOLE_DATA_DIR": str(data),
        "CONSOLE_EXPORT_DIR": str(workdir / "export"),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)

    # CPAMP's finished setup has turned CPA's usage statistics on (reference 3.3).
    cpa = FakeCPA(
        api_keys=[API_KEY], management_key=MANAGEMENT_KEY, usage_statistics_enabled=True
    ).start()
    cpamp = FakeCPAMP(
        admin_key=ADMIN_KEY, cpa_url=cpa.url, management_key=MANAGEMENT_KEY, setup_done=True
    ).start()
    console = Console(url="", env=env, workdir=workdir, cpa=cpa, cpamp=cpamp)
    try:
        console.manage("migrate", "--no-input", "-v0")
        console.manage("collectstatic", "--no-input", "-v0")
        console.manage("compilemessages", "-v0", "-l", "zh_Hans", "--ignore", ".venv")
        console.manage(
            "createsuperuser", "--no-input", "--username", USERNAME, "--email", "walker@example.com"
        )
        port = free_port()
        console.url = f"http://127.0.0.1:{port}"
        web_log = workdir / "gunicorn.log"
        worker_log = workdir / "worker.log"
        with open(web_log, "w") as out:
            web = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "console.wsgi:application",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "2",
                    "--timeout",
                    "60",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        console.processes.append(web)
        with open(worker_log, "w") as out:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "db_worker",
                    "--no-reload",
                    "--interval",
                    "0.2",
                    "--no-startup-delay",
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        console.processes.append(worker)
        _wait_http(f"{console.url}/admin/login/", web, web_log)
        yield console
    finally:
        for proc in reversed(console.processes):
            _stop(proc)
        cpamp.stop()
        cpa.stop()
