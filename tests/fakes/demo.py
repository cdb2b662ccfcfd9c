"""`make demo`: the console with a demo team and deployment behind a private nginx, on loopback.

Run as ``python -m tests.fakes.demo [--data-dir DIR] [--port PORT]`` (the Makefile's demo target).
In this process it starts the CPA and CPAMP emulators (tests/fakes) and a small control server.
It points a database of its own (DIR, default data/demo/; the user's data/ is never touched) at
them: a demo team, superuser and deployment with its three keys. It exports the deployment's
nginx config into DIR/nginx/conf.d and serves it with a private nginx master (prefix DIR/nginx,
its own nginx.conf). Then it starts gunicorn, the task workers and the scheduler, queues one
verification run at once (the job also runs every 30 s) and prints the login. The console's demo
page (routes/admin/demo.py, present only while CONSOLE_DEMO_CONTROL_URL is set) stops and starts
CPAMP through the control server. Ctrl-C or SIGTERM stops everything it started. Every server
binds 127.0.0.1.

The console never imports this module. Django may only be set up once the environment names the
demo database, so the Django imports live inside the functions that run after django.setup().
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.fakes.cpa import Answer, EmulatorServer, FakeCPA, json_answer
from tests.fakes.cpamp import FakeCPAMP

if TYPE_CHECKING:
    from routes.models import Deployment

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO / "data" / "demo"
DEFAULT_PORT = 8000
TEAM_SLUG = "demo"
TEAM_NAME = "Demo"
DEPLOYMENT_SLUG = "demo"
DEPLOYMENT_NAME = "Demo"
SERVER_NAME = "api.demo.example"
USERNAME = "demo"
# Seconds between scheduled runs: the shortest a job may have is 20 (models.MIN_INTERVAL_SECONDS).
INTERVAL = 30
WORKERS = 2
# The header every state-changing request to the control server carries: a page in the user's
# browser cannot send it without a preflight, which the control server refuses.
CONTROL_HEADER = "X-Demo-Control"
# Seconds the children get to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 10.0
# Seconds the children get after a Ctrl-C (which reaches them too) before they are sent SIGTERM.
CTRL_C_GRACE = 5.0
READY_TIMEOUT = 60.0


class DemoFailed(Exception):
    """The demo could not start or one of its processes died; str() says which and why."""


def free_port() -> int:
    """Return a port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Return True when nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        # A connection of the last demo in TIME_WAIT does not keep gunicorn out, nor this.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- the control server -----------------------------------------------------------------------


class Control(EmulatorServer):
    """The switchboard of the demo page: GET /status, POST /<service>/stop and /<service>/start.

    Answers are JSON: {"deployment": slug, "services": {name: {"up": bool, "address": str}}}.
    """

    name = "control"

    def __init__(
        self, *, deployment: str, services: dict[str, EmulatorServer] | None = None
    ) -> None:
        super().__init__()
        self.deployment = deployment
        # Filled once the emulators run: the control server starts first, since the console's
        # settings need its URL before Django (and with it the emulators' keys) can be set up.
        self.services: dict[str, EmulatorServer] = dict(services or {})
        self._switching = threading.Lock()

    def status(self) -> dict[str, Any]:
        """Return the state of every service and the deployment they serve."""
        return {
            "deployment": self.deployment,
            "services": {
                name: {"up": not server.down, "address": server.address}
                for name, server in self.services.items()
            },
        }

    def act(self, service: str, action: str) -> bool:
        """Stop or start service (on its own port again); return False for an unknown one."""
        server = self.services.get(service)
        if server is None or action not in ("stop", "start"):
            return False
        with self._switching:
            if action == "stop" and not server.down:
                server.stop()
            elif action == "start" and server.down:
                server.start()
        return True

    def handle(
        self, method: str, path: str, query: dict, headers: dict, body: bytes, client_ip: str
    ) -> tuple[Answer, str]:
        if method == "GET" and path == "/status":
            return json_answer(200, self.status()), ""
        if method != "POST":
            return json_answer(404, {"error": "not found"}), ""
        if headers.get(CONTROL_HEADER.lower()) != "1":
            return json_answer(403, {"error": f"{CONTROL_HEADER}: 1 is required"}), "refused"
        service, _slash, action = path.strip("/").partition("/")
        if not self.act(service, action):
            return json_answer(404, {"error": "not found"}), "ok"
        return json_answer(200, self.status()), "ok"


def start_emulators() -> dict[str, EmulatorServer]:
    """Start CPA and CPAMP as a finished setup leaves them, with tests.fakes.stack's keys."""
    from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY

    # CPAMP's finished setup has turned CPA's usage statistics on (reference 3.3).
    cpa = FakeCPA(
        api_keys=[API_KEY], management_key=MANAGEMENT_KEY, usage_statistics_enabled=True
    ).start()
    cpamp = FakeCPAMP(admin_key=ADMIN_KEY, cpa_url=cpa.url, management_key=MANAGEMENT_KEY).start()
    return {"cpa": cpa, "cpamp": cpamp}


# --- where everything lives -------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The demo's files, all under one directory (data/demo/ by default)."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "console.sqlite3"

    @property
    def nginx_prefix(self) -> Path:
        return self.root / "nginx"

    @property
    def conf_dir(self) -> Path:
        return self.nginx_prefix / "conf.d"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def demo_environment(layout: Layout, *, port: int, control_url: str) -> dict[str, str]:
    """Return the environment that points the console at the demo's own database and files.

    Set in the real environment, these win over a local .env. The empty secrets make the settings
    generate the demo's own in DIR/local-secrets.json, whatever the user's configuration says.
    """
    return {
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "CONSOLE_DATA_DIR": str(layout.root),
        "DATABASE_URL": f"sqlite:///{layout.database}",
        "SECRET_KEY": "",
        "CONSOLE_ENCRYPTION_KEYS": "",
        "CONSOLE_FINGERPRINT_KEY": "",
        "CONSOLE_EXPORT_DIR": str(layout.conf_dir),
        "CONSOLE_NGINX_DIR": str(layout.conf_dir),
        "CONSOLE_DEMO_CONTROL_URL": control_url,
        "CONSOLE_BASE_URL": f"http://127.0.0.1:{port}",
        "CONSOLE_BEHIND_TLS": "false",
        "CONSOLE_TASK_BACKEND": "django_tasks_db.DatabaseBackend",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DEBUG": "false",
        "PYTHONUNBUFFERED": "1",
    }


def nginx_argv(binary: str, layout: Layout) -> list[str]:
    """Return the command line of the private nginx master (its own prefix, conf and log)."""
    prefix = layout.nginx_prefix
    return [
        binary,
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
    ]


def nginx_commands(binary: str, layout: Layout) -> dict[str, str]:
    """Return the apply settings that test and reload the private master, not the system's."""
    base = nginx_argv(binary, layout)
    return {
        "CONSOLE_NGINX_TEST_CMD": shlex.join([*base, "-t"]),
        "CONSOLE_NGINX_RELOAD_CMD": shlex.join([*base, "-s", "reload"]),
    }


# --- the demo's rows --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoLogin:
    """The demo superuser's name and the password set at this start (printed once)."""

    username: str
    password: str = field(repr=False)


def setup_demo(
    *,
    cpa_upstream: str,
    cpamp_upstream: str,
    cpa_url: str,
    nginx_port: int,
    interval: int = INTERVAL,
) -> tuple[Deployment, DemoLogin]:
    """Create or update the demo team, superuser, deployment, keys and job; return them.

    Idempotent: with the same addresses a second call adds or changes no row but the superuser's
    password, which is new at every start (the database is the demo's alone).
    """
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from routes import keys as keyring
    from routes.context import acting
    from routes.models import Deployment, Team
    from routes.verification import destinations
    from routes.verification.runs import job_for, reschedule
    from routes.workflows.deployments import save_deployment
    from routes.workflows.keys import set_key
    from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY

    origin = f"http://127.0.0.1:{nginx_port}"
    password = secrets.token_urlsafe(18)
    with acting(label="make demo"), transaction.atomic():
        team, _created = Team.objects.get_or_create(slug=TEAM_SLUG, defaults={"name": TEAM_NAME})
        User = get_user_model()
        user = User.objects.filter(username=USERNAME).first()
        if user is None:
            User.objects.create_superuser(USERNAME, "", password)
        else:
            user.is_superuser = user.is_staff = user.is_active = True
            user.set_password(password)
            user.save()
        deployment = Deployment.objects.filter(slug=DEPLOYMENT_SLUG).first() or Deployment(
            slug=DEPLOYMENT_SLUG, name=DEPLOYMENT_NAME, team=team
        )
        wanted: dict[str, Any] = {
            "server_name": SERVER_NAME,
            "tls": False,
            "listen_address": "127.0.0.1",
            "http_port": nginx_port,
            "cpa_upstream": cpa_upstream,
            "cpamp_upstream": cpamp_upstream,
            "cpamp_cpa_url": cpa_url,
            "verification_base_url": origin,
            "notes": "Made by make demo: CPA and CPAMP are the emulators of tests/fakes, served by "
            "a private nginx on loopback.",
        }
        for name, value in wanted.items():
            setattr(deployment, name, value)
        save_deployment(deployment=deployment)
        keys = (
            (keyring.CPAMP_ADMIN, ADMIN_KEY, ""),
            (keyring.CPA_MANAGEMENT, MANAGEMENT_KEY, ""),
            (keyring.CPA_API, API_KEY, "demo"),
        )
        for role, secret, label in keys:
            stored = deployment.keys.filter(role=role, fingerprint=keyring.fingerprint(secret))
            if not stored.exists():
                set_key(deployment=deployment, role=role, secret=secret, label=label)
        job = job_for(deployment)
        previous = job.interval_seconds
        job.base_url = origin
        job.interval_seconds = interval
        reschedule(job, previous_interval=previous)
        job.full_clean()
        job.save()
        # The demo stands in for the owner who points the deployment at its emulators.
        if destinations.unconfirmed_origins(deployment, job=job):
            destinations.confirm_destination(deployment=deployment)
    return deployment, DemoLogin(username=USERNAME, password=password)


def prepare_database() -> None:
    """Migrate the demo database and collect the static files gunicorn serves."""
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)


def export_config(conf_dir: Path) -> None:
    """Write the demo deployment's nginx config into conf_dir, checked by nginx -t first."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    out = io.StringIO()
    try:
        # Not call_command(stdout=...): that keyword would set export_nginx's own --stdout.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            call_command("export_nginx", DEPLOYMENT_SLUG, "--output-dir", str(conf_dir), "--check")
    except CommandError as exc:
        raise DemoFailed(f"the demo's nginx config was refused: {exc}\n{out.getvalue()}") from exc


def queue_first_run(deployment: Deployment, *, interval: int = INTERVAL) -> int:
    """Queue a verification run now and the schedule's next one an interval later; return its id."""
    import datetime as dt

    from django.utils import timezone

    from routes import tasks
    from routes.context import acting
    from routes.models import VerificationJob, VerificationRun

    with acting(label="make demo"):
        run = tasks.start_run(deployment=deployment, trigger=VerificationRun.Trigger.COMMAND)
    # Without this the scheduler would queue a second run as soon as the first one ends.
    VerificationJob.objects.filter(deployment=deployment).update(
        next_run_at=timezone.now() + dt.timedelta(seconds=interval)
    )
    return run.pk


# --- processes --------------------------------------------------------------------------------


@dataclass
class Child:
    """A process the demo started, and the file its output goes to."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_child(name: str, argv: list[str], *, env: dict[str, str], log: Path) -> Child:
    """Start argv in the repository with its output in log; return it.

    The child stays in this process group on purpose: Ctrl-C in a terminal, or a kill of the
    group, reaches every process the demo started, even if this one is gone.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return Child(name=name, proc=proc, log=log)


def console_commands(port: int, *, workers: int = WORKERS) -> list[tuple[str, list[str]]]:
    """Return (name, argv) of the console's processes: gunicorn, the task workers, the scheduler."""
    python, manage = sys.executable, str(REPO / "manage.py")
    web = [
        python,
        "-m",
        "gunicorn",
        "console.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--graceful-timeout",
        "5",
        "--access-logfile",
        "-",
        "--forwarded-allow-ips",
        "127.0.0.1",
    ]
    worker = [python, manage, "db_worker", "--no-reload", "--interval", "0.5", "--no-startup-delay"]
    return [
        ("gunicorn", web),
        *((f"worker-{n}", worker) for n in range(1, workers + 1)),
        ("scheduler", [python, manage, "run_scheduler"]),
    ]


def check_children(children: list[Child]) -> None:
    """Raise DemoFailed naming the first child that has exited, with the end of its log."""
    for child in children:
        code = child.proc.poll()
        if code is not None:
            tail = child.log.read_text(errors="replace")[-2000:] if child.log.exists() else ""
            raise DemoFailed(f"{child.name} exited with status {code}; end of {child.log}:\n{tail}")


def stop_children(
    children: list[Child], *, grace: float = 0.0, timeout: float = STOP_TIMEOUT
) -> None:
    """Stop every child: SIGTERM to those still running after grace, SIGKILL after timeout more.

    grace: seconds to let them end on their own, after a Ctrl-C that reached them too (a second
    signal would cut their own clean-up short).
    """
    deadline = time.monotonic() + grace
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for child in reversed(children):
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.terminate()
    deadline = time.monotonic() + timeout
    for child in reversed(children):
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def start_nginx(binary: str, layout: Layout, *, port: int, env: dict[str, str]) -> Child:
    """Start the private nginx master on layout's conf.d; return it once it listens on port."""
    # The sandbox's nginx.conf: everything under the prefix, conf.d included inside http {}.
    from routes.nginx.sandbox import _prepare, _wait_listening

    layout.conf_dir.mkdir(parents=True, exist_ok=True)
    _prepare(layout.nginx_prefix, layout.conf_dir, daemon=False)
    child = start_child("nginx", nginx_argv(binary, layout), env=env, log=layout.logs / "nginx.log")
    try:
        _wait_listening(child.proc, [("127.0.0.1", port)], layout.nginx_prefix)
    except RuntimeError as exc:
        stop_children([child])
        raise DemoFailed(str(exc)) from exc
    return child


def wait_until_serving(url: str, children: list[Child], *, timeout: float = READY_TIMEOUT) -> None:
    """Return once url answers 200; DemoFailed when a child dies or timeout passes first."""
    deadline = time.monotonic() + timeout
    while True:
        check_children(children)
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DemoFailed(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.2)


def _shown(path: Path) -> str:
    """Return path relative to the working directory when it is inside it."""
    with contextlib.suppress(ValueError):
        return f"{path.relative_to(Path.cwd())}"
    return str(path)


def banner(
    *,
    port: int,
    login: DemoLogin,
    layout: Layout,
    nginx_port: int,
    services: dict[str, EmulatorServer],
    control_url: str,
    interval: int,
) -> str:
    """Return what the demo prints once everything runs: the login, where each part listens."""
    console = f"http://127.0.0.1:{port}/admin/"
    lines = [
        "",
        "make demo is running; everything listens on 127.0.0.1. Ctrl-C stops it all.",
        f"  console:        {console}",
        f"  username:       {login.username}",
        f"  password:       {login.password}",
        "  (a new password at every start; this demo database is separate from data/)",
        f"  demo controls:  {console}demo/  (stop and start CPAMP, then run verification)",
        f"  nginx:          http://127.0.0.1:{nginx_port}  "
        f"({_shown(layout.nginx_prefix / 'nginx.conf')}, {_shown(layout.conf_dir)}/)",
        f"  CPA emulator:   {services['cpa'].address}",
        f"  CPAMP emulator: {services['cpamp'].address}",
        f"  control:        {control_url}",
        f"  data and logs:  {_shown(layout.root)}/, {_shown(layout.logs)}/",
        f"The first verification run is queued; the job runs every {interval} s.",
        "",
    ]
    return "\n".join(lines)


class Terminated(Exception):
    """SIGTERM or SIGHUP reached this process (and, unlike Ctrl-C, most likely only this one)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the options; DEMO_DATA_DIR and DEMO_PORT give their defaults."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.demo", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DEMO_DATA_DIR") or DEFAULT_DATA_DIR),
        help="Where the demo database, nginx prefix and logs live (default: data/demo/).",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("DEMO_PORT") or DEFAULT_PORT),
        help="The console's port on 127.0.0.1 (default: 8000).",
    )
    return parser.parse_args(argv)


def run(layout: Layout, *, port: int, control: Control, children: list[Child]) -> None:
    """Set everything up and start it (children are added as they start), then watch them."""
    control_url = control.url
    os.environ.update(demo_environment(layout, port=port, control_url=control_url))
    import django

    django.setup()
    from django.db import connections

    from routes.nginx.sandbox import nginx_binary

    binary = nginx_binary()
    if binary is None:
        raise DemoFailed("nginx is not installed: run `make system-deps` (or apt-get nginx-light)")
    os.environ.update(nginx_commands(binary, layout))
    env = dict(os.environ)
    prepare_database()
    control.services.update(start_emulators())
    cpa, cpamp = control.services["cpa"], control.services["cpamp"]
    nginx_port = free_port()
    deployment, login = setup_demo(
        cpa_upstream=cpa.address,
        cpamp_upstream=cpamp.address,
        cpa_url=cpa.url,
        nginx_port=nginx_port,
    )
    export_config(layout.conf_dir)
    children.append(start_nginx(binary, layout, port=nginx_port, env=env))
    queue_first_run(deployment)
    # This process writes nothing more: it keeps no SQLite connection open beside the children.
    connections.close_all()
    for name, argv in console_commands(port):
        children.append(start_child(name, argv, env=env, log=layout.logs / f"{name}.log"))
    wait_until_serving(f"http://127.0.0.1:{port}/admin/login/", children)
    text = banner(
        port=port,
        login=login,
        layout=layout,
        nginx_port=nginx_port,
        services=control.services,
        control_url=control_url,
        interval=INTERVAL,
    )
    print(text, flush=True)
    while True:
        check_children(children)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C or SIGTERM; return the exit status (1: it failed, 2: usage)."""
    args = parse_args(argv)
    layout = Layout(args.data_dir.resolve())
    if not port_free(args.port):
        print(
            f"make demo: 127.0.0.1:{args.port} is in use; pick another port with "
            f"`make demo PORT={args.port + 1}`.",
            file=sys.stderr,
        )
        return 2
    layout.root.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    children: list[Child] = []
    control = Control(deployment=DEPLOYMENT_SLUG)
    control.start()
    status, grace = 0, 0.0
    try:
        run(layout, port=args.port, control=control, children=children)
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches the whole process group: the children stop by themselves.
        print("\nmake demo: stopping…", flush=True)
        grace = CTRL_C_GRACE
    except Terminated:
        print("make demo: stopping…", flush=True)
    except DemoFailed as exc:
        print(f"make demo: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave a process behind; the
        # clean-up itself is bounded (STOP_TIMEOUT, then SIGKILL).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stop_children(children, grace=grace)
        for server in control.services.values():
            server.stop()
        control.stop()
        print("make demo: stopped everything it started.", flush=True)
    return status


# --- for tests: the admin as make demo serves it ----------------------------------------------


def _reload_urls() -> None:
    from django.urls import clear_url_caches

    import console.urls

    importlib.reload(console.urls)
    clear_url_caches()


@contextmanager
def demo_page(control_url: str) -> Iterator[None]:
    """Inside the block, serve the admin with its demo page pointed at control_url (tests).

    The page is added when the admin's URLs are built, so they are built again on the way in and
    on the way out.
    """
    from django.test import override_settings

    try:
        with override_settings(CONSOLE_DEMO_CONTROL_URL=control_url):
            _reload_urls()
            yield
    finally:
        _reload_urls()


@contextmanager
def controlled_emulators(deployment: str) -> Iterator[Control]:
    """Run the emulators behind a control server naming deployment until the block ends (tests)."""
    control = Control(deployment=deployment, services=start_emulators())
    control.start()
    try:
        yield control
    finally:
        control.stop()
        for server in control.services.values():
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
