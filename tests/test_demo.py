"""`make demo` without a browser: its rows, its environment, its demo page and the README.

The browser test (tests/browser/test_demo.py) runs the whole demo; these check its parts: the
setup is idempotent and stores the keys encrypted, everything lives in the demo's own directory,
and the demo page exists only while CONSOLE_DEMO_CONTROL_URL is set.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import NoReverseMatch, reverse

from routes import keys as keyring
from routes.models import AuditEvent, Deployment, Key, Team, VerificationJob
from routes.verification.destinations import unconfirmed_origins
from tests.fakes.demo import (
    DEPLOYMENT_SLUG,
    INTERVAL,
    USERNAME,
    Control,
    Layout,
    controlled_emulators,
    demo_environment,
    demo_page,
    setup_demo,
)
from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY
from tests.test_get_writes_nothing import crawl

ROOT = Path(__file__).resolve().parent.parent
ADDRESSES = {
    "cpa_upstream": "127.0.0.1:41001",
    "cpamp_upstream": "127.0.0.1:41002",
    "cpa_url": "http://127.0.0.1:41001",
    "nginx_port": 41003,
}


def counts() -> dict[str, int]:
    return {
        "teams": Team.objects.count(),
        "users": get_user_model().objects.count(),
        "deployments": Deployment.objects.count(),
        "keys": Key.objects.count(),
        "jobs": VerificationJob.objects.count(),
        "audit": AuditEvent.objects.count(),
    }


# --- the demo's rows --------------------------------------------------------------------------


def test_it_creates_the_demo_rows_once_and_a_second_start_adds_or_changes_none(db):
    deployment, first = setup_demo(**ADDRESSES)
    before = counts()
    version = Deployment.objects.get(pk=deployment.pk).version
    _again, second = setup_demo(**ADDRESSES)
    assert counts() == before
    assert before["teams"] == before["deployments"] == before["jobs"] == 1
    assert before["keys"] == 3
    assert Deployment.objects.get(pk=deployment.pk).version == version
    # A new password at every start, and it is the one that signs in.
    user = get_user_model().objects.get(username=USERNAME)
    assert user.is_superuser and user.is_staff
    assert first.password != second.password
    assert user.check_password(second.password) and not user.check_password(first.password)
    assert second.password not in repr(second)


def test_it_stores_the_emulators_keys_encrypted_under_their_roles(db):
    deployment, _login = setup_demo(**ADDRESSES)
    wanted = {
        keyring.CPAMP_ADMIN: ADMIN_KEY,
        keyring.CPA_MANAGEMENT: MANAGEMENT_KEY,
        keyring.CPA_API: API_KEY,
    }
    keys = {key.role: key for key in deployment.keys.all()}
    assert set(keys) == set(wanted)
    for role, secret in wanted.items():
        assert secret not in keys[role].ciphertext
        assert keys[role].reveal() == secret
    for event in AuditEvent.objects.all():
        assert not any(secret in json.dumps(event.changes) for secret in wanted.values())


def test_the_job_checks_the_private_nginx_on_a_schedule_and_keys_may_go_there(db):
    deployment, _login = setup_demo(**ADDRESSES)
    job = VerificationJob.objects.get(deployment=deployment)
    assert job.base_url == "http://127.0.0.1:41003"
    assert job.interval_seconds == INTERVAL and job.next_run_at is not None
    assert deployment.listen_address == "127.0.0.1" and deployment.http_port == 41003
    assert (deployment.cpa_upstream, deployment.cpamp_upstream) == (
        "127.0.0.1:41001",
        "127.0.0.1:41002",
    )
    assert unconfirmed_origins(deployment, job=job) == []


def test_a_start_on_new_ports_moves_the_one_demo_deployment(db):
    setup_demo(**ADDRESSES)
    moved = {**ADDRESSES, "cpamp_upstream": "127.0.0.1:42002", "nginx_port": 42003}
    deployment, _login = setup_demo(**moved)
    assert Deployment.objects.get().pk == deployment.pk
    stored = Deployment.objects.get(slug=DEPLOYMENT_SLUG)
    assert stored.cpamp_upstream == "127.0.0.1:42002" and stored.http_port == 42003
    job = VerificationJob.objects.get(deployment=stored)
    assert job.base_url == "http://127.0.0.1:42003"
    assert unconfirmed_origins(stored, job=job) == []


# --- its environment --------------------------------------------------------------------------


def test_the_demo_environment_keeps_every_file_in_the_demo_directory(tmp_path):
    layout = Layout(tmp_path / "demo")
    layout.root.mkdir()
    env = {
        # What a user's own configuration might say; the demo's environment wins.
        "DATABASE_URL": "postgres://console@db.example/console",
        "CONSOLE_DATA_DIR": str(tmp_path / "users-data"),
        "SECRET_KEY": "the-users-own-secret-key",
        **demo_environment(layout, port=18000, control_url="http://127.0.0.1:18001"),
    }
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({'data': str(s.DATA_DIR), 'db': str(s.DATABASES['default']['NAME']), "
        "'export': str(s.CONSOLE_EXPORT_DIR), 'nginx': str(s.CONSOLE_NGINX_DIR), "
        "'secret': s.SECRET_KEY, 'control': s.CONSOLE_DEMO_CONTROL_URL}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("data", "db", "export", "nginx"):
        assert Path(seen[name]).is_relative_to(layout.root), (name, seen[name])
    stored = json.loads((layout.root / "local-secrets.json").read_text())
    assert seen["secret"] == stored["SECRET_KEY"] != "the-users-own-secret-key"
    assert seen["control"] == "http://127.0.0.1:18001"
    assert not (tmp_path / "users-data").exists()


def test_make_demo_gives_every_command_the_demo_directory():
    done = subprocess.run(
        ["make", "-n", "demo", "PYTHON=python3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = [line for line in done.stdout.splitlines() if "manage.py" in line or "-m tests" in line]
    assert any("-m tests.fakes.demo" in line for line in lines)
    for line in lines:
        assert "data/demo" in line, line


def test_the_readme_links_only_to_files_inside_the_repository():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t[0] != "#"]
    assert local, "the README links to files of the repository"
    for target in local:
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT), f"{target} is outside the repository"
        assert path.exists(), f"{target} does not exist"
    assert "make demo" in text


# --- the demo page ----------------------------------------------------------------------------


@pytest.fixture
def control() -> Iterator[Control]:
    with controlled_emulators("prod") as switchboard:
        yield switchboard


@pytest.fixture
def demo_mode(control) -> Iterator[Control]:
    with demo_page(control.url):
        yield control


def test_without_the_setting_there_is_no_demo_page(client, superuser):
    with pytest.raises(NoReverseMatch):
        reverse("admin:routes_demo")
    client.force_login(superuser)
    assert client.get("/admin/demo/").status_code == 404
    assert b'id="demo-link"' not in client.get(reverse("admin:index")).content


def test_an_operator_stops_and_starts_cpamp_from_the_demo_page(
    client, operator, deployment, demo_mode
):
    client.force_login(operator)
    url = reverse("admin:routes_demo")
    page = client.get(url).content.decode()
    assert "Stop CPAMP" in page and demo_mode.services["cpamp"].address in page
    # The way on to the verification of the deployment the control server names.
    assert reverse("admin:routes_deployment_verify", args=[deployment.pk]) in page
    assert 'id="demo-link"' in client.get(reverse("admin:index")).content.decode()

    response = client.post(url, {"service": "cpamp", "action": "stop"}, follow=True)
    assert demo_mode.services["cpamp"].down and not demo_mode.services["cpa"].down
    text = response.content.decode()
    assert "CPAMP is stopped" in text and "Start CPAMP" in text

    client.post(url, {"service": "cpamp", "action": "start"})
    assert not demo_mode.services["cpamp"].down
    assert "Stop CPAMP" in client.get(url).content.decode()


def test_a_viewer_is_refused_and_nothing_stops(client, viewer, demo_mode):
    client.force_login(viewer)
    url = reverse("admin:routes_demo")
    assert client.get(url).status_code == 403
    assert client.post(url, {"service": "cpamp", "action": "stop"}).status_code == 403
    assert not demo_mode.services["cpamp"].down


def test_a_post_without_its_csrf_token_stops_nothing(operator, demo_mode):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post(reverse("admin:routes_demo"), {"service": "cpamp", "action": "stop"})
    assert response.status_code == 403
    assert not demo_mode.services["cpamp"].down


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"service": "nginx", "action": "stop"}, "service: nginx"),
        ({"service": "cpamp", "action": "reboot"}, "action: reboot"),
    ],
)
def test_a_bad_form_names_the_field_and_changes_nothing(client, operator, demo_mode, form, field):
    client.force_login(operator)
    response = client.post(reverse("admin:routes_demo"), form)
    assert response.status_code == 400
    assert field in response.content.decode().lower()
    assert not demo_mode.services["cpamp"].down and not demo_mode.services["cpa"].down


def test_the_page_says_so_when_the_control_server_is_gone(client, operator, demo_mode):
    demo_mode.stop()
    client.force_login(operator)
    response = client.get(reverse("admin:routes_demo"))
    assert response.status_code == 200
    assert "did not answer" in response.content.decode()


def test_get_on_the_demo_page_writes_no_row_and_starts_no_process(client, superuser, demo_mode):
    client.force_login(superuser)
    assert crawl(client, ["routes_demo"]) == []


def test_the_control_server_changes_nothing_without_its_header(control):
    request = urllib.request.Request(f"{control.url}/cpamp/stop", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403
    assert not control.services["cpamp"].down
