"""Hostile inputs end in clear problems, never in a traceback or a hang (issue 9, items 6 and 8).

Broken import files, certificate paths that are FIFOs or devices, an nginx -t that never ends,
and temporary files that a killed export left behind.
"""

import io
import json
import os
import signal
import stat
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from routes.files import TEMP_NAME
from routes.management.commands.export_nginx import Command as ExportNginx
from routes.models import ConfigExport, Deployment
from routes.nginx import export, sandbox
from routes.nginx.render import COMMON_FILENAME, render_common, render_site
from tests.test_portable import snapshot_everything as snapshot

GOOD = {"slug": "x", "team": "ops", "server_name": "x.example.com"}


@contextmanager
def finishes_within(seconds: int):
    """Fail with TimeoutError instead of hanging when the block runs longer than seconds."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(source, **kwargs) -> list[str]:
    """Run import_deployments expecting refusal (exit 1); return its problem lines."""
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("import_deployments", str(source), stdout=io.StringIO(), stderr=err, **kwargs)
    assert caught.value.returncode == 1
    assert "nothing was imported" in str(caught.value)
    return err.getvalue().splitlines()


def document(*entries, **top) -> str:
    return json.dumps({"version": 1, "deployments": list(entries), **top})


def export_nginx(*argv: str) -> str:
    """Run export_nginx with command-line arguments; return its stdout."""
    # Not call_command: it would map its own stdout= keyword onto the --stdout flag.
    out = io.StringIO()
    command = ExportNginx(stdout=out, stderr=io.StringIO())
    options = vars(command.create_parser("manage.py", "export_nginx").parse_args(argv))
    command.execute(**{**options, "skip_checks": True})
    return out.getvalue()


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "in.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# --- Imports never crash -------------------------------------------------------------------------

DEEP = 100_000
HUGE = "9" * 5000

BROKEN_FILES = {
    "deep nesting": (
        '{"version": 1, "deployments": ' + "[" * DEEP + "]" * DEEP + "}",
        "file: json: nested too deeply",
    ),
    "deep nesting inside a field": (
        document({**GOOD, "notes": json.loads("[" * 500 + "]" * 500)}),
        "x: notes: must be a string",
    ),
    "an integer of thousands of digits": (
        document(GOOD).replace('"x.example.com"', f'"x.example.com", "http_port": {HUGE}'),
        "x: http_port: a number of 5000 digits is too large",
    ),
    "a version of thousands of digits": (
        '{"version": ' + HUGE + ', "deployments": []}',
        "file: version: must be 1 (got a number of 5000 digits)",
    ),
    "an integer too large for the database": (
        document({**GOOD, "proxy_read_timeout": 10**19}),
        "x: proxy_read_timeout: a number of 20 digits is too large",
    ),
    "an object as a key role": (document({**GOOD, "keys": [{}]}), "x: keys[0]: unknown key role"),
    "a list as a key role": (document({**GOOD, "keys": [[]]}), "x: keys[0]: unknown key role"),
    "keys as an object": (document({**GOOD, "keys": {}}), "x: keys: must be a list of key roles"),
    "overrides as a string": (
        document({**GOOD, "route_overrides": "x"}),
        "x: route_overrides: must be a list",
    ),
    "an override as a list": (
        document({**GOOD, "route_overrides": [[]]}),
        "x: route_overrides[0]: must be an object",
    ),
    "an override path as an object": (
        document({**GOOD, "route_overrides": [{"path": {}}]}),
        "x: route_overrides[0].path: must be a string",
    ),
    "verification as a list": (
        document({**GOOD, "verification": []}),
        "x: verification: must be an object",
    ),
    "a team as an object": (document({**GOOD, "team": {}}), "x: team: must be a string"),
    "deployments as an object": ('{"version": 1, "deployments": {}}', "file: deployments: must"),
    "a list instead of the document": ("[]", "file: file: must be a JSON object"),
    "a version of true": (
        document(GOOD).replace('"version": 1', '"version": true'),
        "file: version: must be 1 (got True)",
    ),
    "NUL in a string": (
        document({**GOOD, "notes": "a\u0000b"}),
        "x: notes: must not contain NUL characters",
    ),
    "NUL in the slug": (
        document({**GOOD, "slug": "x\u0000y"}),
        "deployments[0]: slug: must not contain NUL characters",
    ),
    "NUL in the team": (
        document({**GOOD, "team": "o\u0000ps"}),
        "x: team: must not contain NUL characters",
    ),
    "NUL in an override path": (
        document({**GOOD, "route_overrides": [{"path": "/a\u0000"}]}),
        "x: route_overrides[0].path: must not contain NUL characters",
    ),
    "NUL in the verification base URL": (
        document({**GOOD, "verification": {"base_url": "https://x.example.com\u0000"}}),
        "x: verification.base_url: must not contain NUL characters",
    ),
    "a lone surrogate": (
        document(GOOD).replace('"x.example.com"', '"x.example.com", "notes": "\\ud800"'),
        "x: notes: must be valid Unicode",
    ),
    "a duplicate top-level name": (
        document(GOOD).replace('{"version": 1', '{"version": 1, "version": 1'),
        "file: version: appears more than once in this object",
    ),
    "a duplicate deployment field": (
        document(GOOD).replace('"team": "ops"', '"team": "ops", "team": "other"'),
        "x: team: appears more than once in this object",
    ),
    "a duplicate override field": (
        document({**GOOD, "route_overrides": [{"path": "/a"}]}).replace(
            '"path": "/a"', '"path": "/a", "path": "/b"'
        ),
        "x: route_overrides[0].path: appears more than once in this object",
    ),
    "a duplicate verification field": (
        document({**GOOD, "verification": {"base_url": ""}}).replace(
            '"base_url": ""', '"base_url": "", "base_url": "https://evil.example"'
        ),
        "x: verification.base_url: appears more than once in this object",
    ),
    "an empty slug": (document({**GOOD, "slug": ""}), "deployments[0]: slug: must not be empty"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_every_broken_import_file_prints_problem_lines_and_writes_nothing(db, tmp_path, name):
    content, expected = BROKEN_FILES[name]
    before = snapshot()
    lines = refused(write(tmp_path, content))
    assert any(line.startswith(expected) for line in lines), (expected, lines)
    assert all(line.count(": ") >= 2 for line in lines), lines
    assert snapshot() == before


def test_a_file_that_is_not_utf8_is_refused_with_the_offset(db, tmp_path):
    content = json.dumps(
        {"version": 1, "deployments": [{**GOOD, "notes": "café"}]}, ensure_ascii=False
    )
    content = content.encode("latin-1")
    lines = refused(write(tmp_path, content))
    offset = content.index("é".encode("latin-1"))
    assert lines == [f"file: file: not UTF-8 text: the byte at offset {offset} cannot be decoded"]


def test_an_empty_slug_is_no_longer_skipped_silently_next_to_a_good_entry(db, tmp_path):
    lines = refused(write(tmp_path, document(GOOD, {**GOOD, "slug": ""})))
    assert lines == ["deployments[1]: slug: must not be empty"]
    assert not Deployment.objects.exists()


def test_control_characters_from_the_file_are_escaped_in_problem_lines(db, tmp_path):
    content = document({**GOOD, "col\u0000our\nx: forged: line\u001b[31m": 1})
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("import_deployments", str(write(tmp_path, content)), stderr=err)
    output = err.getvalue()
    assert "\x00" not in output and "\x1b" not in output
    assert output.splitlines() == ["x: col\\x00our\\nx: forged: line\\x1b[31m: unknown field"]


def test_an_unknown_field_name_of_a_megabyte_gives_a_short_line(db, tmp_path):
    lines = refused(write(tmp_path, document({**GOOD, "n" * 1_000_000: 1})))
    assert lines == [f"x: {'n' * 100}…: unknown field"]


@pytest.fixture
def small_limit(settings):
    settings.CONSOLE_IMPORT_MAX_BYTES = 1000
    return 1000


def test_a_file_above_the_size_limit_is_refused_unparsed(db, tmp_path, small_limit):
    content = document({**GOOD, "notes": "n" * small_limit})
    lines = refused(write(tmp_path, content))
    assert lines == ["file: file: larger than 1000 bytes (the limit is CONSOLE_IMPORT_MAX_BYTES)"]
    # Exactly at the limit it is read (and here imported).
    exact = document({**GOOD, "notes": ""})
    exact = exact.replace('"notes": ""', '"notes": "' + "n" * (small_limit - len(exact)) + '"')
    assert len(exact.encode()) == small_limit
    call_command("import_deployments", str(write(tmp_path, exact)), stdout=io.StringIO())
    assert Deployment.objects.filter(slug="x").exists()


def test_the_size_limit_has_a_50_mb_default():
    from console import settings as console_settings

    assert console_settings.CONSOLE_IMPORT_MAX_BYTES == 50 * 1024 * 1024


def test_a_device_file_is_read_no_further_than_the_limit(db, small_limit):
    # /dev/zero never ends: reading it whole would never return.
    with finishes_within(30):
        lines = refused("/dev/zero")
    assert lines == ["file: file: larger than 1000 bytes (the limit is CONSOLE_IMPORT_MAX_BYTES)"]


class EndlessStdin:
    """sys.stdin whose bytes never end; it records how much each read asked for."""

    def __init__(self) -> None:
        self.requests: list[int | None] = []
        self.buffer = self

    def read(self, size: int | None = -1) -> bytes:
        self.requests.append(size)
        if size is None or size < 0:
            raise AssertionError("stdin was read without a size limit")
        return b" " * size


def test_stdin_is_read_no_further_than_the_limit(db, monkeypatch, small_limit):
    stdin = EndlessStdin()
    monkeypatch.setattr("sys.stdin", stdin)
    lines = refused("-")
    assert stdin.requests == [small_limit + 1]
    assert lines[0].startswith("file: file: larger than 1000 bytes")


def test_non_utf8_on_stdin_is_a_problem_line(db, monkeypatch):
    data = b'{"version": 1, "deployments": [\xff]}'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    offset = data.index(b"\xff")
    assert refused("-") == [
        f"file: file: not UTF-8 text: the byte at offset {offset} cannot be decoded"
    ]


# --- Certificate paths --------------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "fullchain.pem"
    os.mkfifo(path)
    return path


def test_only_readable_regular_files_count_as_certificates(tmp_path, fifo):
    regular = tmp_path / "privkey.pem"
    regular.write_text("key")
    link_to_fifo = tmp_path / "link.pem"
    link_to_fifo.symlink_to(fifo)
    assert sandbox.readable_regular_file(str(regular)) is None
    assert sandbox.readable_regular_file(str(fifo)) == "not a regular file"
    assert sandbox.readable_regular_file(str(link_to_fifo)) == "not a regular file"
    assert sandbox.readable_regular_file("/dev/zero") == "not a regular file"
    assert sandbox.readable_regular_file(str(tmp_path)) == "not a regular file"
    assert sandbox.readable_regular_file(str(tmp_path / "missing.pem")) == "not found"
    assert sandbox.readable_regular_file("relative.pem") == "not an absolute path"
    # The checks use stat() alone: the FIFO was never opened, so nobody is blocked on it.
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def tls_deployment(team, certificate: str, key: str) -> Deployment:
    return Deployment.objects.create(
        slug="tls",
        name="TLS",
        team=team,
        server_name="tls.example.com",
        tls=True,
        ssl_certificate=certificate,
        ssl_certificate_key=key,
    )


@pytest.mark.nginx
def test_a_fifo_certificate_path_does_not_block_nginx_t(team, fifo):
    deployment = tls_deployment(team, str(fifo), "/dev/zero")
    files = {COMMON_FILENAME: render_common(), "tls.conf": render_site(deployment)}
    started = time.monotonic()
    with finishes_within(30):
        check = export.check_files(files)
    assert time.monotonic() - started < 20
    assert check.ok, check.output
    assert f"{fifo} (not a regular file)" in check.output
    assert "/dev/zero (not a regular file)" in check.output
    assert "stand-in" in check.output


@pytest.mark.nginx
def test_the_config_page_with_a_fifo_certificate_answers_and_says_so(client, make_user, team, fifo):
    deployment = tls_deployment(team, str(fifo), str(fifo))
    client.force_login(make_user("op", team=team, role="operator"))
    started = time.monotonic()
    with finishes_within(30):
        # The page shows the stored nginx -t; "Test with nginx" (a POST) runs it.
        client.post(reverse("admin:routes_deployment_config_test", args=[deployment.pk]))
        response = client.get(reverse("admin:routes_deployment_config", args=[deployment.pk]))
    assert time.monotonic() - started < 20
    assert response.status_code == 200
    page = response.content.decode()
    assert "stand-in" in page and "not a regular file" in page


@pytest.mark.nginx
def test_export_check_with_a_directory_as_certificate_key_uses_a_stand_in(
    team, tmp_path, fifo, settings
):
    tls_deployment(team, str(fifo), str(tmp_path))
    out = export_nginx("tls", "--check", "--output-dir", str(tmp_path / "out"))
    assert f"{tmp_path} (not a regular file)" in out
    # The exported file keeps the real paths: the stand-in exists only inside the check.
    assert str(fifo) in (tmp_path / "out" / "tls.conf").read_text()


# --- nginx -t that never finishes ---------------------------------------------------------------


@pytest.fixture
def hanging_nginx(tmp_path, settings) -> Path:
    binary = tmp_path / "nginx"
    binary.write_text("#!/bin/sh\nexec sleep 60\n")
    binary.chmod(0o755)
    settings.CONSOLE_NGINX_BIN = str(binary)
    settings.CONSOLE_NGINX_CHECK_TIMEOUT = 0
    return binary


def test_a_timeout_of_nginx_t_is_a_result_not_a_traceback(tmp_path, hanging_nginx):
    (tmp_path / "a.conf").write_text("")
    started = time.monotonic()
    check = sandbox.check_directory(tmp_path, timeout=0.5)
    assert time.monotonic() - started < 10
    assert (check.ok, check.timed_out, check.available) == (False, True, True)
    assert "did not finish within" in check.output
    assert "CONSOLE_NGINX_CHECK_TIMEOUT" in check.output


def test_the_timeout_grows_with_the_number_of_files(settings):
    settings.CONSOLE_NGINX_CHECK_TIMEOUT = 60
    assert sandbox.check_timeout(files=1) == pytest.approx(60.05)
    assert sandbox.check_timeout(files=500) == pytest.approx(85)


def test_export_nginx_check_reports_a_timeout_and_changes_nothing(
    deployment, tmp_path, hanging_nginx
):
    output_dir = tmp_path / "out"
    with pytest.raises(CommandError) as caught:
        export_nginx("prod", "--check", "--output-dir", str(output_dir))
    message = str(caught.value)
    assert "could not be checked; nothing was changed" in message
    assert "did not finish within" in message
    assert not (output_dir / "prod.conf").exists()
    assert not ConfigExport.objects.exists()


def test_export_nginx_stdout_check_reports_a_timeout(deployment, hanging_nginx):
    with pytest.raises(CommandError, match="could not be checked"):
        export_nginx("prod", "--stdout", "--check")


def test_the_config_page_says_nginx_t_did_not_finish(
    client, make_user, team, deployment, hanging_nginx
):
    client.force_login(make_user("op", team=team, role="operator"))
    # The page shows the stored nginx -t; "Test with nginx" (a POST) runs it.
    client.post(reverse("admin:routes_deployment_config_test", args=[deployment.pk]))
    response = client.get(reverse("admin:routes_deployment_config", args=[deployment.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "nginx -t did not finish, so this config was not checked" in page
    assert "nginx -t refuses this config" not in page


@pytest.mark.nginx
def test_large_exports_are_checked_in_parts(team, settings):
    settings.CONSOLE_NGINX_CHECK_PART = 2
    deployments = [
        Deployment.objects.create(
            slug=f"d{n}", name=f"D{n}", team=team, server_name=f"d{n}.example.com"
        )
        for n in range(5)
    ]
    files = export.render_files(deployments)
    check = export.check_files(files)
    assert check.ok, check.output
    assert "Checked in 3 parts of at most 2 site files" in check.output
    # A refused file in a later part fails the whole check and is named.
    files["d4.conf"] = files["d4.conf"].replace("server {", "server { bogus_directive on;", 1)
    check = export.check_files(files)
    assert not check.ok
    assert "bogus_directive" in check.output and "<check>/conf.d/d4.conf" in check.output


# --- Temporary files of a killed export ---------------------------------------------------------


def export_killed_after(monkeypatch, deployment, output_dir: Path, *, renames: int) -> list[str]:
    """Run an export that dies after `renames` renames, leaving its temp files; list them."""

    class Killed(BaseException):
        pass

    real_replace = os.replace
    done = []

    def replace(source, target):
        if len(done) == renames:
            raise Killed
        done.append(target)
        real_replace(source, target)

    with monkeypatch.context() as patch:
        # A SIGKILL runs no finally block: without unlink() the temp files stay, as after one.
        patch.setattr(export.os, "replace", replace)
        patch.setattr(export.os, "unlink", lambda path: None)
        with pytest.raises(Killed):
            export.write_export(deployments=[deployment], output_dir=output_dir)
    return sorted(p.name for p in output_dir.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("renames", [0, 1])
def test_a_killed_exports_temporary_files_are_gone_after_the_next_export(
    db, deployment, tmp_path, monkeypatch, renames
):
    output_dir = tmp_path / "conf.d"
    export.write_export(deployments=[deployment], output_dir=output_dir)
    changed = Deployment.objects.get(pk=deployment.pk)
    changed.server_name = "api2.example.com"  # a change, so the killed export writes prod.conf
    left = export_killed_after(monkeypatch, changed, output_dir, renames=renames)
    # renames=0: killed while replacing the manifest; 1: the manifest is done, prod.conf not.
    expected_target = export.MANIFEST if renames == 0 else "prod.conf"
    assert [TEMP_NAME.match(name).group("target") for name in left] == [expected_target]
    # Names of the same shape for files the console does not own stay where they are.
    foreign = [".nginx.conf.abcd1234.tmp", ".prod.conf.tmp", "prod.conf.abcd1234.tmp"]
    for name in foreign:
        (output_dir / name).write_text("not ours")
    out = export_nginx("prod", "--output-dir", str(output_dir))
    remaining = sorted(p.name for p in output_dir.iterdir() if p.name.endswith(".tmp"))
    assert remaining == sorted(foreign)
    for name in left:
        assert f"removed {name}, left behind by an interrupted export" in out
    assert (output_dir / "prod.conf").read_text() == render_site(deployment)


def test_a_leftover_of_the_manifest_is_removed_too(db, deployment, tmp_path):
    output_dir = tmp_path / "conf.d"
    export.write_export(deployments=[deployment], output_dir=output_dir)
    leftover = output_dir / "..console-export.json.k2_9zq0a.tmp"
    leftover.write_text("{")
    result = export.write_export(deployments=[deployment], output_dir=output_dir)
    assert result.leftovers == [leftover.name]
    assert not leftover.exists()


def test_a_refused_export_leaves_even_the_leftovers_alone(db, deployment, tmp_path, settings):
    output_dir = tmp_path / "conf.d"
    export.write_export(deployments=[deployment], output_dir=output_dir)
    leftover = output_dir / ".prod.conf.abcd1234.tmp"
    leftover.write_text("half")
    (output_dir / "intruder.conf").write_text("")
    other = Deployment.objects.create(
        slug="intruder", name="I", team=deployment.team, server_name="i.example.com"
    )
    with pytest.raises(export.ExportError):
        export.write_export(deployments=[deployment, other], output_dir=output_dir)
    assert leftover.exists()


def test_a_fifo_in_the_export_directory_never_blocks_an_export(db, deployment, tmp_path):
    output_dir = tmp_path / "conf.d"
    export.write_export(deployments=[deployment], output_dir=output_dir)
    (output_dir / "prod.conf").unlink()
    os.mkfifo(output_dir / "prod.conf")
    with finishes_within(30):
        result = export.write_export(deployments=[deployment], output_dir=output_dir)
    assert result.written == ["prod.conf"]
    assert (output_dir / "prod.conf").is_file()


def test_a_fifo_as_the_export_lock_is_a_clear_error(db, deployment, tmp_path):
    output_dir = tmp_path / "conf.d"
    output_dir.mkdir()
    os.mkfifo(output_dir / export.LOCK)
    with finishes_within(30), pytest.raises(export.ExportError, match="export lock"):
        export.write_export(deployments=[deployment], output_dir=output_dir)
