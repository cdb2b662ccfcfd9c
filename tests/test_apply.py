"""Apply to a real nginx master on loopback: applied, rolled back, test failed, killed mid-way.

Each test starts its own nginx master (tests.fakes.stack's sandbox: own prefix, own nginx.conf
that includes CONSOLE_NGINX_DIR, pid file and error log) and points the test and reload commands
at it; the CPA and CPAMP emulators of running_stack are the upstreams. The kill tests run
`manage.py apply_nginx` as a subprocess on a database of their own and SIGKILL it at each step.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse

from routes.alerts.events import message_of
from routes.models import (
    AuditEvent,
    Deployment,
    NginxApply,
    NotificationChannel,
    NotificationDelivery,
    RouteOverride,
)
from routes.nginx import live
from routes.nginx.apply_report import live_states
from routes.nginx.export import MANIFEST, export_lock, sha256
from routes.nginx.generations import JOURNAL
from routes.nginx.render import COMMON_FILENAME, config_hash, rendered_hash, site_filename
from routes.nginx.sandbox import nginx_binary, running_nginx
from routes.verification import http
from routes.verification.destinations import confirm_destination
from tests.fakes.cpa import FakeCPA
from tests.fakes.cpamp import FakeCPAMP
from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY, free_port, running_stack

NGINX = nginx_binary()
ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed"),
]


@dataclass
class LiveNginx:
    """A running nginx master whose nginx.conf includes conf_dir/*.conf."""

    prefix: Path
    conf_dir: Path

    def commands(self) -> dict[str, str]:
        """Return the test and reload command settings that drive this master."""
        base = f"{NGINX} -p {self.prefix} -c nginx.conf -e {self.prefix}/error.log"
        return {
            "CONSOLE_NGINX_TEST_CMD": f"{base} -t",
            "CONSOLE_NGINX_RELOAD_CMD": f"{base} -s reload",
        }


@contextmanager
def live_nginx(root: Path) -> Iterator[LiveNginx]:
    """Start an nginx master on an empty conf.d under root; stop it when the block ends."""
    conf_dir = root / "conf.d"
    conf_dir.mkdir()
    with running_nginx(conf_dir) as prefix:
        yield LiveNginx(prefix=prefix, conf_dir=conf_dir)


def answer(deployment: Deployment, path: str = "/healthz") -> http.Probe:
    """Return what nginx answers for deployment (its server name as Host) on path."""
    return http.send(
        method="GET",
        url=f"http://127.0.0.1:{deployment.http_port}{path}",
        timeout=5,
        verify=False,
        headers={"Host": deployment.server_name},
    )


def answering_hash(deployment: Deployment) -> str | None:
    return answer(deployment).headers.get("x-console-config")


@pytest.fixture
def nginx_live(tmp_path: Path, settings: Any) -> Iterator[LiveNginx]:
    with live_nginx(tmp_path) as live:
        settings.CONSOLE_NGINX_DIR = live.conf_dir
        for name, value in live.commands().items():
            setattr(settings, name, value)
        settings.CONSOLE_APPLY_CONFIRM_TIMEOUT = 10
        settings.CONSOLE_APPLY_LOCK_TIMEOUT = 1
        yield live


@contextmanager
def serving(deployment: Deployment, **options: Any) -> Iterator[Deployment]:
    """The emulators of running_stack, with the deployment moved to a port of the live nginx."""
    with running_stack(deployment, **options) as stack:
        moved = stack.deployment
        moved.http_port = free_port()
        moved.verification_base_url = f"http://127.0.0.1:{moved.http_port}"
        moved.save()
        confirm_destination(deployment=moved)
        yield Deployment.objects.get(pk=moved.pk)


def apply(*args: str) -> tuple[int, dict[str, Any]]:
    """Run `apply_nginx ARGS --json` here; return (exit code, the JSON printed)."""
    out = io.StringIO()
    try:
        call_command("apply_nginx", *args, "--json", stdout=out, stderr=io.StringIO())
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, json.loads(out.getvalue())


def test_a_healthy_apply_is_applied_and_the_new_hash_answers(deployment, nginx_live):
    with serving(deployment) as live:
        assert answer(live).error == "refused"  # nothing listens before the first apply
        code, data = apply("prod")
        assert code == 0, data
        assert data["result"] == "applied"
        assert data["deployments"] == ["prod"]
        assert data["config_hash"] == rendered_hash(live)
        assert data["previous_hash"] is None
        assert answering_hash(live) == data["config_hash"]
        # The file on disk carries the hash of the rest of itself.
        text = (nginx_live.conf_dir / site_filename(live)).read_text()
        assert config_hash(text) == data["config_hash"]
        assert "test is successful" in data["test_output"]
        assert not data["regressions"] and len(data["runs"]) == 1
    steps = [s["step"] for s in data["steps"]]
    assert steps == ["locked", "kept", "written", "tested", "reloaded", "confirmed", "verified"]
    assert not (nginx_live.conf_dir / JOURNAL).exists()
    record = NginxApply.objects.get(pk=data["apply"])
    assert record.result == "applied" and record.started_label == "command"
    assert record.runs == data["runs"] and not record.trial_runs
    event = AuditEvent.objects.get(action="nginx.apply")
    assert event.changes["result"] == "applied" and event.changes["deployments"] == ["prod"]
    assert live.exports.count() == 1


def test_an_override_sending_plugins_to_cpa_is_rolled_back_and_the_old_hash_answers(
    deployment, nginx_live
):
    with serving(deployment) as live:
        NotificationChannel.objects.create(
            team=live.team, name="hook", kind="webhook", target_masked="https://hooks.example/"
        )
        code, first = apply("prod")
        assert code == 0 and first["result"] == "applied"
        assert answer(live, "/v0/resource/plugins/").headers["x-console-upstream"] == "cpamp"
        RouteOverride.objects.create(
            deployment=live, match="prefix", path="/v0/resource/plugins/", target="cpa"
        )
        code, data = apply("prod")
        assert code == 1
        assert data["result"] == "rolled_back"
        assert "plugin_resources" in data["regressions"]
        assert data["previous_hash"] == first["config_hash"]
        assert data["config_hash"] == rendered_hash(live) != first["config_hash"]
        # Afterwards the old config answers again, and plugin paths go to CPAMP.
        assert answering_hash(live) == first["config_hash"]
        plugins = answer(live, "/v0/resource/plugins/")
        assert plugins.headers["x-console-upstream"] == "cpamp"
        text = (nginx_live.conf_dir / site_filename(live)).read_text()
        assert config_hash(text) == first["config_hash"]
    # One run of the new config (regressed), one of the restored config (passed).
    assert len(data["runs"]) == 2
    record = NginxApply.objects.get(pk=data["apply"])
    assert record.trial_runs == data["runs"][:1]
    assert "plugin_resources" in record.reason
    phases = [(s["phase"], s["step"]) for s in data["steps"]]
    assert ("rollback", "restored") in phases and phases[-1] == ("rollback", "rolled_back")
    delivery = NotificationDelivery.objects.get(event="rolled_back")
    assert delivery.payload["deployment"] == "prod" and delivery.payload["apply"] == record.pk
    assert "plugin_resources" in [c["code"] for c in delivery.payload["causes"]]
    assert AuditEvent.objects.filter(action="nginx.apply", changes__result="rolled_back").exists()
    assert live.exports.count() == 1  # only the applied config counts as exported


def test_no_rollback_keeps_a_regressed_config_and_reports_it(deployment, nginx_live):
    with serving(deployment) as live:
        assert apply("prod")[0] == 0
        RouteOverride.objects.create(
            deployment=live, match="prefix", path="/v0/resource/plugins/", target="cpa"
        )
        code, data = apply("prod", "--no-rollback")
        assert code == 0 and data["result"] == "applied"
        assert "plugin_resources" in data["regressions"]
        assert answering_hash(live) == data["config_hash"]


def test_a_clashing_foreign_file_gives_test_failed_and_nothing_changes(deployment, nginx_live):
    deployment.limit_req_rate = "5r/s"
    deployment.save()
    with serving(deployment) as live:
        code, first = apply("prod")
        assert code == 0
        # Someone kept a copy of the shared file under another name: the console does not own
        # it, and its rate-limit zone clashes with the export's.
        site = nginx_live.conf_dir / site_filename(live)
        shared = nginx_live.conf_dir / COMMON_FILENAME
        foreign = nginx_live.conf_dir / "zz-prod-copy.conf"
        foreign.write_text(shared.read_text())
        line = next(
            n
            for n, text in enumerate(foreign.read_text().splitlines(), 1)
            if "zone=console_" in text
        )
        live.client_max_body_size = "32m"
        live.save()
        code, data = apply("prod")
        assert code == 1
        assert data["result"] == "test_failed"
        assert "zz-prod-copy.conf" in data["test_output"]
        record = NginxApply.objects.get(pk=data["apply"])
        assert '"console_5r_s" is already bound' in record.reason
        assert f"zz-prod-copy.conf, line {line})" in record.reason
        # nginx keeps serving the old config; the directory holds it; the foreign file is as it was.
        assert answering_hash(live) == first["config_hash"]
        assert config_hash(site.read_text()) == first["config_hash"]
        assert "client_max_body_size 64m" in site.read_text()
        assert foreign.read_text() == shared.read_text()
        assert not data["runs"]
    assert [s["step"] for s in data["steps"]][-2:] == ["tested", "restored"]
    assert not (nginx_live.conf_dir / JOURNAL).exists()


def test_no_verify_is_applied_once_the_new_hash_answers(deployment, nginx_live):
    with serving(deployment) as live:
        code, data = apply("prod", "--no-verify")
        assert code == 0 and data["result"] == "applied" and data["runs"] == []
        assert answering_hash(live) == data["config_hash"]
    assert data["steps"][-1]["step"] == "verified" and data["steps"][-1]["ok"] is None


def test_a_second_apply_into_a_locked_directory_is_refused_with_a_clear_message(
    deployment, nginx_live
):
    with serving(deployment), export_lock(nginx_live.conf_dir):
        with pytest.raises(CommandError, match="Another apply or export is writing"):
            call_command("apply_nginx", "prod", stdout=io.StringIO())
        assert not (nginx_live.conf_dir / site_filename(deployment)).exists()
    assert NginxApply.objects.get().result == "refused"


def test_an_invalid_deployment_refuses_the_whole_apply(deployment, team, nginx_live):
    broken = Deployment.objects.create(
        slug="broken", name="Broken", team=team, server_name="broken.example.com"
    )
    Deployment.objects.filter(pk=broken.pk).update(client_max_body_size="64 m; evil")
    with pytest.raises(CommandError, match="broken"):
        call_command("apply_nginx", "--all", stdout=io.StringIO())
    assert list(nginx_live.conf_dir.iterdir()) == []
    assert not NginxApply.objects.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "Give one or more deployment slugs, or --all."),
        (["prod", "--all"], "Give deployment slugs or --all, not both."),
        (["prod", "--team", "ops"], "--team only works with --all."),
        (["nope"], "no deployment nope."),
        (["--all", "--team", "nope"], "--team: no team"),
    ],
)
def test_usage_errors_exit_2_and_apply_nothing(deployment, args, message):
    with pytest.raises(CommandError, match=message) as raised:
        call_command("apply_nginx", *args, stdout=io.StringIO())
    assert raised.value.returncode == 2
    assert not NginxApply.objects.exists()


@pytest.mark.parametrize(
    "args, message",
    [(["--frobnicate"], "unrecognized arguments"), ([], "Give one or more deployment slugs")],
)
def test_manage_py_apply_nginx_exits_2_on_a_usage_error(args, message):
    result = subprocess.run(
        [sys.executable, "manage.py", "apply_nginx", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr


def test_a_journal_left_by_a_killed_apply_is_restored_before_the_next_apply(deployment, nginx_live):
    with serving(deployment) as live:
        code, first = apply("prod")
        site = nginx_live.conf_dir / site_filename(live)
        before = site.read_text()
        # What a kill between two renames leaves: a journal and a half-new directory.
        (nginx_live.conf_dir / JOURNAL).write_text(
            json.dumps(
                {"version": 1, "apply": 999, "phase": "written", "files": {site.name: before}}
            )
        )
        site.write_text(before.replace("client_max_body_size 64m", "client_max_body_size 1m"))
        code, data = apply("prod")
        assert code == 0 and data["result"] == "applied"
        recovered = next(s for s in data["steps"] if s["step"] == "recovered")
        assert "#999" in recovered["detail"] and "written" in recovered["detail"]
        assert data["previous_hash"] == first["config_hash"]
        assert answering_hash(live) == data["config_hash"] == first["config_hash"]
        assert site.read_text() == before


def test_a_reload_that_does_not_take_is_rolled_back(deployment, nginx_live, settings):
    with serving(deployment) as live:
        code, first = apply("prod")
        live.client_max_body_size = "8m"
        live.save()
        # A reload command that signals nothing: nginx goes on serving the old config.
        settings.CONSOLE_NGINX_RELOAD_CMD = "true"
        settings.CONSOLE_APPLY_CONFIRM_TIMEOUT = 1
        code, data = apply("prod")
        assert code == 1 and data["result"] == "rolled_back"
        assert "did not take" in data["reason"] and first["config_hash"][:12] in data["reason"]
        assert answering_hash(live) == first["config_hash"]
        # The new config never answered: only the restored one is verified, and it is a baseline.
        assert len(data["runs"]) == 1
        assert NginxApply.objects.get(pk=data["apply"]).trial_runs == []
        assert data["steps"][-1] == {**data["steps"][-1], "step": "rolled_back", "ok": True}


def test_a_failed_rollback_is_loud_in_the_exit_code_audit_and_notifications(
    deployment, nginx_live, settings
):
    with serving(deployment) as live:
        NotificationChannel.objects.create(
            team=live.team, name="hook", kind="webhook", target_masked="https://hooks.example/"
        )
        apply("prod")
        live.client_max_body_size = "8m"
        live.save()
        settings.CONSOLE_NGINX_RELOAD_CMD = "false"
        err = io.StringIO()
        with pytest.raises(SystemExit) as exited:
            call_command("apply_nginx", "prod", stdout=io.StringIO(), stderr=err)
    assert exited.value.code == 1
    assert "ROLLBACK FAILED" in err.getvalue()
    record = NginxApply.objects.latest("id")
    assert record.result == "rollback_failed"
    assert "The rollback failed" in record.reason
    assert AuditEvent.objects.filter(action="nginx.apply.rollback_failed").exists()
    delivery = NotificationDelivery.objects.get(event="rollback_failed")
    assert delivery.payload["status"] == "rollback_failed" and delivery.run is None
    assert "ROLLBACK FAILED" in message_of(delivery.payload).subject
    # The directory holds the previous generation whole, whatever nginx serves now.
    assert not (nginx_live.conf_dir / JOURNAL).exists()
    assert "client_max_body_size 64m" in (nginx_live.conf_dir / "prod.conf").read_text()


def test_commands_run_without_a_shell_and_their_output_is_redacted():
    redact = http.Redactor([API_KEY])
    done = live.run_command(f"echo $HOME {API_KEY} 'two words'", redact=redact)
    assert done.ok and done.output == "$HOME [redacted] two words"
    missing = live.run_command("no-such-program-here -t", redact=redact)
    assert not missing.ok and "no-such-program-here was not found" in missing.summary
    failed = live.run_command("false", redact=redact)
    assert not failed.ok and failed.summary == "exit status 1"
    assert not live.run_command("echo 'unbalanced", redact=redact).ok


def test_nginx_messages_name_the_file_and_the_line():
    output = (
        'nginx: [emerg] duplicate upstream "console_prod_cpa" in /etc/nginx/conf.d/old.conf:5\n'
        "nginx: configuration file /etc/nginx/nginx.conf test failed"
    )
    assert live.nginx_message(output) == (
        'duplicate upstream "console_prod_cpa" (/etc/nginx/conf.d/old.conf, line 5)'
    )
    assert live.nginx_message("nginx: [emerg] no events section") == "no events section"
    assert live.nginx_message("syntax is ok") == ""


IMMEDIATE = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}


@pytest.mark.django_db(transaction=True)
def test_the_deploy_button_queues_an_apply_the_worker_performs_and_the_page_follows(
    deployment, nginx_live, make_user, client
):
    operator = make_user("olga", team=deployment.team, role="operator")
    viewer = make_user("vera", team=deployment.team, role="viewer")
    with serving(deployment) as live, override_settings(TASKS=IMMEDIATE):
        config_url = reverse("admin:routes_deployment_config", args=[live.pk])
        apply_url = reverse("admin:routes_deployment_apply", args=[live.pk])
        client.force_login(viewer)
        assert client.post(apply_url).status_code == 403
        assert b"data-apply-button" not in client.get(config_url).content
        client.force_login(operator)
        assert b"data-apply-button" in client.get(config_url).content
        response = client.post(apply_url)
        record = NginxApply.objects.get()
        assert response.status_code == 302
        assert response["Location"] == f"{config_url}?apply={record.pk}#apply"
        # The immediate backend ran the worker's task once the record was committed.
        assert record.result == "applied" and record.source == "admin"
        assert record.started_by == operator and record.started_label == "olga"
        assert answering_hash(live) == record.config_hash
        steps = client.get(reverse("admin:routes_nginxapply_progress", args=[record.pk])).json()
        assert steps["finished"] and steps["badge"] == "passed"
        assert [s["step"] for s in steps["steps"]][-3:] == ["reloaded", "confirmed", "verified"]
        page = client.get(response["Location"]).content.decode()
        assert f"Apply #{record.pk}" in page and 'data-step="confirmed"' in page
        dashboard = client.get(reverse("admin:index")).content.decode()
        assert 'data-live-state="live"' in dashboard
    assert AuditEvent.objects.get(action="nginx.apply").actor == operator


def test_the_dashboard_tells_live_not_applied_and_rolled_back(deployment, team):
    other = Deployment.objects.create(
        slug="stage", name="Stage", team=team, server_name="s.example.com"
    )
    third = Deployment.objects.create(
        slug="test", name="Test", team=team, server_name="t.example.com"
    )
    live_hash = rendered_hash(deployment)
    applied = NginxApply.objects.create(
        team=team,
        slugs=["prod"],
        directory="/x",
        source="command",
        result="applied",
        config_hashes={"prod": live_hash},
    )
    applied.deployments.set([deployment])
    rolled = NginxApply.objects.create(
        team=team,
        slugs=["test"],
        directory="/x",
        source="command",
        result="rolled_back",
        config_hashes={"test": "1" * 64},
        previous_hashes={"test": "2" * 64},
    )
    rolled.deployments.set([third])
    states = live_states([deployment, other, third])
    assert states[deployment.pk].state == "live" and states[deployment.pk].live_hash == live_hash
    assert states[other.pk].state == "not_applied" and states[other.pk].live_hash is None
    assert states[third.pk].state == "rolled_back" and states[third.pk].live_hash == "2" * 64
    # A change after the apply: what answers is no longer what renders.
    deployment.client_max_body_size = "1m"
    deployment.save()
    assert live_states([deployment])[deployment.pk].state == "not_applied"


# --- killed at each step ----------------------------------------------------------------------


@dataclass
class Console:
    """A database, an nginx master and emulators of its own, for apply_nginx subprocesses."""

    env: dict[str, str]
    live: LiveNginx
    port: int

    def manage(self, *args: str, pause_at: str = "", timeout: float = 120) -> subprocess.Popen:
        env = {**self.env, "CONSOLE_APPLY_PAUSE_AT": pause_at}
        return subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, *args: str) -> subprocess.CompletedProcess:
        proc = self.manage(*args)
        out, err = proc.communicate(timeout=180)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def apply(self) -> dict[str, Any]:
        done = self.run("apply_nginx", "prod", "--json")
        assert done.stdout, done.stderr
        return json.loads(done.stdout)

    def kill_at(self, step: str) -> None:
        """Start an apply, SIGKILL it once it reports that step is done."""
        proc = self.manage("apply_nginx", "prod", "--json", pause_at=step)
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                if line.startswith("apply paused at"):
                    break
                if not line and proc.poll() is not None:
                    raise AssertionError(f"apply ended before {step}: {proc.stdout.read()}")
            else:
                raise AssertionError(f"apply never reached {step}")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def change(self, code: str) -> None:
        """Run Python against the console's database (a change of the deployment)."""
        self.run_checked("shell", "-c", code)

    def run_checked(self, *args: str) -> None:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr


SETUP = """
from routes import keys as keyring
from routes.models import Deployment, Team
from routes.verification.destinations import confirm_destination
from tests.fakes.stack import store_key
team = Team.objects.create(name="Ops", slug="ops")
deployment = Deployment.objects.create(
    slug="prod", name="Production", team=team, server_name="api.example.com",
    listen_address="127.0.0.1", http_port={port}, cpa_upstream={cpa!r}, cpamp_upstream={cpamp!r},
    cpamp_cpa_url={cpa_url!r}, verification_base_url="http://127.0.0.1:{port}",
)
confirm_destination(deployment=deployment)
for role, secret in ((keyring.CPAMP_ADMIN, {admin!r}), (keyring.CPA_MANAGEMENT, {mgmt!r}),
                     (keyring.CPA_API, {api!r})):
    store_key(deployment, role, secret, custom_format=True)
"""
SET_SIZE = """
from routes.models import Deployment
Deployment.objects.filter(slug="prod").update(client_max_body_size={size!r})
"""
SET_PLUGINS = """
from routes.models import Deployment, RouteOverride
d = Deployment.objects.get(slug="prod")
RouteOverride.objects.filter(deployment=d).delete()
if {on!r}:
    RouteOverride.objects.create(
        deployment=d, match="prefix", path="/v0/resource/plugins/", target="cpa"
    )
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("apply-kill")
    cpa = FakeCPA(
        api_keys=[API_KEY], management_key=MANAGEMENT_KEY, usage_statistics_enabled=True
    ).start()
    cpamp = FakeCPAMP(
        admin_key=ADMIN_KEY, cpa_url=cpa.url, management_key=MANAGEMENT_KEY, setup_done=True
    ).start()
    try:
        with live_nginx(root) as live:
            env = {
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "console.settings",
                "DATABASE_URL": f"sqlite:///{root / 'console.sqlite3'}",
                "CONSOLE_DATA_DIR": str(root / "data"),
                "CONSOLE_NGINX_DIR": str(live.conf_dir),
                "CONSOLE_APPLY_CONFIRM_TIMEOUT": "10",
                **live.commands(),
            }
            port = free_port()
            console = Console(env=env, live=live, port=port)
            console.run_checked("migrate", "--no-input", "-v0")
            console.change(
                SETUP.format(
                    port=port,
                    cpa=cpa.address,
                    cpamp=cpamp.address,
                    cpa_url=cpa.url,
                    admin=ADMIN_KEY,
                    mgmt=MANAGEMENT_KEY,
                    api=API_KEY,
                )
            )
            yield console
    finally:
        cpa.stop()
        cpamp.stop()


def site_hash(console: Console) -> str | None:
    path = console.live.conf_dir / "prod.conf"
    return config_hash(path.read_text()) if path.exists() else None


def live_hash(console: Console) -> str | None:
    probe = http.send(
        method="GET",
        url=f"http://127.0.0.1:{console.port}/healthz",
        timeout=5,
        verify=False,
        headers={"Host": "api.example.com"},
    )
    return probe.headers.get("x-console-config")


def assert_one_generation(console: Console) -> None:
    """The files in the directory are the ones its manifest says were written together."""
    conf_dir = console.live.conf_dir
    manifest = json.loads((conf_dir / MANIFEST).read_text())["files"]
    for name in ("prod.conf", COMMON_FILENAME):
        assert manifest[name]["sha256"] == sha256((conf_dir / name).read_text()), name


APPLY_STEPS = ["locked", "kept", "written", "tested", "reloaded", "confirmed", "verified"]


@pytest.mark.slow
@pytest.mark.parametrize("step", APPLY_STEPS)
def test_a_kill_at_any_step_then_another_apply_leaves_one_complete_generation(console, step):
    first = console.apply()
    assert first["result"] == "applied", first
    old = first["config_hash"]
    size = f"{APPLY_STEPS.index(step) + 2}m"
    console.change(SET_SIZE.format(size=size))
    console.kill_at(step)
    # Killed: nginx serves one generation, the directory holds one whole (new or old).
    serving, on_disk = live_hash(console), site_hash(console)
    assert_one_generation(console)
    again = console.apply()
    assert again["result"] == "applied", again
    new = again["config_hash"]
    assert new != old and {serving, on_disk} <= {old, new}
    assert live_hash(console) == new == site_hash(console)
    assert f"client_max_body_size {size};" in (console.live.conf_dir / "prod.conf").read_text()
    if step != "locked":
        assert any(s["step"] == "recovered" for s in again["steps"]), again["steps"]
    assert not (console.live.conf_dir / JOURNAL).exists()


@pytest.mark.slow
@pytest.mark.parametrize("step", ["rollback:restored", "rollback:tested", "rollback:reloaded"])
def test_a_kill_during_a_rollback_then_another_apply_rolls_back_again(console, step):
    console.change(SET_PLUGINS.format(on=False))
    first = console.apply()
    assert first["result"] == "applied", first
    old = first["config_hash"]
    console.change(SET_PLUGINS.format(on=True))
    console.kill_at(step)
    serving, on_disk = live_hash(console), site_hash(console)
    assert_one_generation(console)
    again = console.apply()
    # The killed apply's run saw a config that did not stay live: it is no baseline.
    assert again["result"] == "rolled_back", again
    assert "plugin_resources" in again["regressions"]
    assert {serving, on_disk} <= {old, again["config_hash"]}
    assert live_hash(console) == old == site_hash(console)
    assert not (console.live.conf_dir / JOURNAL).exists()
