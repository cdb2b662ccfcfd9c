"""Exports: atomic writes, file ownership, nginx -t before replacing, history, the command."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from routes.management.commands.export_nginx import Command
from routes.models import AuditEvent, ConfigExport, Deployment, RouteOverride
from routes.nginx import export as export_module
from routes.nginx.export import (
    MANIFEST,
    ExportError,
    build_archive,
    render_compose,
    sha256,
    write_export,
)
from routes.nginx.render import COMMON_FILENAME, render_site

GOLDEN = Path(__file__).parent / "data" / "golden"


@pytest.fixture
def second(team):
    return Deployment.objects.create(
        slug="staging", name="Staging", team=team, server_name="staging.example.com"
    )


def manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())["files"]


def export(*argv: str) -> tuple[str, str]:
    """Run the command with command-line arguments; return (stdout, stderr)."""
    # Not call_command: it would map its own stdout= keyword onto the --stdout flag.
    out, err = io.StringIO(), io.StringIO()
    command = Command(stdout=out, stderr=err)
    options = vars(command.create_parser("manage.py", "export_nginx").parse_args(argv))
    command.execute(**{**options, "skip_checks": True})
    return out.getvalue(), err.getvalue()


# --- write_export ---------------------------------------------------------------------------


def test_it_writes_the_shared_file_and_one_site_file_per_deployment(deployment, second, tmp_path):
    result = write_export(deployments=Deployment.objects.all(), output_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.conf")) == [
        COMMON_FILENAME,
        "prod.conf",
        "staging.conf",
    ]
    assert (tmp_path / "prod.conf").read_text() == render_site(deployment)
    assert (tmp_path / COMMON_FILENAME).read_text().count(
        "map $http_upgrade $connection_upgrade {"
    ) == 1
    assert sorted(result.written) == [COMMON_FILENAME, "prod.conf", "staging.conf"]
    assert set(manifest(tmp_path)) == {COMMON_FILENAME, "prod.conf", "staging.conf"}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_every_export_is_stored_with_its_hash_and_audited(deployment, tmp_path):
    write_export(deployments=[deployment], output_dir=tmp_path)
    row = ConfigExport.objects.get(deployment=deployment)
    text = (tmp_path / "prod.conf").read_text()
    assert (row.text, row.content_hash, row.source, row.created_by) == (
        text,
        sha256(text),
        "command",
        None,
    )
    event = AuditEvent.objects.get(action="config.export")
    assert event.team_id == deployment.team_id
    assert event.object_id == str(deployment.pk)
    assert event.changes["content_hash"] == sha256(text)
    assert event.actor_label == "command"


def test_an_unchanged_file_is_not_rewritten_nor_recorded_again(deployment, tmp_path):
    write_export(deployments=[deployment], output_dir=tmp_path)
    before = (tmp_path / "prod.conf").stat().st_mtime_ns
    result = write_export(deployments=[deployment], output_dir=tmp_path)
    assert "prod.conf" in result.unchanged
    assert (tmp_path / "prod.conf").stat().st_mtime_ns == before
    assert ConfigExport.objects.filter(deployment=deployment).count() == 1
    assert result.exports == []
    assert AuditEvent.objects.filter(action="config.export").count() == 1


def test_an_all_export_that_changes_nothing_adds_no_history(deployment, second, tmp_path):
    export("--all", "--output-dir", str(tmp_path))
    rows = ConfigExport.objects.count()
    events = AuditEvent.objects.filter(action="config.export").count()
    assert (rows, events) == (2, 1)
    export("--all", "--output-dir", str(tmp_path))
    assert ConfigExport.objects.count() == rows
    assert AuditEvent.objects.filter(action="config.export").count() == events
    # A change records the one deployment that changed, and only it.
    deployment.client_max_body_size = "128m"
    deployment.save()
    export("--all", "--output-dir", str(tmp_path))
    latest = ConfigExport.objects.order_by("-id").first()
    assert ConfigExport.objects.count() == rows + 1 and latest.deployment == deployment
    event = AuditEvent.objects.filter(action="config.export").order_by("-id").first()
    assert set(event.changes["exports"]) == {"prod"}


def test_a_failed_write_keeps_the_old_file_whole_and_leaves_no_temporary_file(
    deployment, tmp_path, monkeypatch
):
    write_export(deployments=[deployment], output_dir=tmp_path)
    old = (tmp_path / "prod.conf").read_text()
    deployment.server_name = "new.example.com"
    deployment.save()
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("prod.conf"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(export_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_export(deployments=Deployment.objects.all(), output_dir=tmp_path)
    assert (tmp_path / "prod.conf").read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_it_never_touches_files_it_does_not_own(deployment, second, tmp_path):
    (tmp_path / "default.conf").write_text("server { listen 8081; }\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    write_export(deployments=Deployment.objects.all(), output_dir=tmp_path, prune=True)
    second.delete()
    result = write_export(deployments=Deployment.objects.all(), output_dir=tmp_path, prune=True)
    assert result.removed == ["staging.conf"]
    assert (tmp_path / "default.conf").read_text() == "server { listen 8081; }\n"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert "default.conf" not in manifest(tmp_path)


def test_it_refuses_to_overwrite_a_file_it_does_not_own(deployment, tmp_path):
    (tmp_path / "prod.conf").write_text("# the operator's own file\n")
    with pytest.raises(ExportError, match="not written by the console"):
        write_export(deployments=[deployment], output_dir=tmp_path)
    assert (tmp_path / "prod.conf").read_text() == "# the operator's own file\n"
    assert not (tmp_path / COMMON_FILENAME).exists()
    assert not ConfigExport.objects.exists()


def test_exporting_named_deployments_removes_nothing(deployment, second, tmp_path):
    write_export(deployments=Deployment.objects.all(), output_dir=tmp_path)
    result = write_export(deployments=[deployment], output_dir=tmp_path)
    assert result.removed == []
    assert (tmp_path / "staging.conf").exists()


def test_a_team_export_prunes_only_that_teams_files(deployment, theirs, tmp_path):
    write_export(deployments=Deployment.objects.all(), output_dir=tmp_path)
    deployment.delete()
    result = write_export(
        deployments=Deployment.objects.filter(team__slug="ops"),
        output_dir=tmp_path,
        prune=True,
        prune_team="ops",
    )
    assert result.removed == ["prod.conf"]
    assert (tmp_path / "theirs.conf").exists()


@pytest.mark.nginx
def test_a_failed_check_changes_nothing_and_reports_nginxs_message(deployment, second, tmp_path):
    write_export(deployments=Deployment.objects.all(), output_dir=tmp_path)
    # An owned file that stays in the directory was broken by hand: the merged check sees it.
    (tmp_path / "staging.conf").write_text("server { listen 80\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    deployment.server_name = "changed.example.com"
    deployment.save()
    with pytest.raises(ExportError) as raised:
        write_export(deployments=[deployment], output_dir=tmp_path, check=True)
    assert "nothing was changed" in str(raised.value)
    assert "unexpected end of file" in raised.value.check.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert ConfigExport.objects.count() == 2  # the first export only


@pytest.mark.nginx
def test_a_passing_check_replaces_the_files(deployment, tmp_path):
    result = write_export(deployments=[deployment], output_dir=tmp_path, check=True)
    assert result.check.ok, result.check.output
    assert (tmp_path / "prod.conf").exists()


def test_a_hand_edited_owned_file_is_reported_before_it_is_replaced(deployment, tmp_path):
    write_export(deployments=[deployment], output_dir=tmp_path)
    (tmp_path / "prod.conf").write_text("# edited\n")
    result = write_export(deployments=[deployment], output_dir=tmp_path)
    assert [w.code for _slug, w in result.warnings] == ["edited_by_hand"]
    assert (tmp_path / "prod.conf").read_text() == render_site(deployment)


def test_deployments_that_clash_in_one_nginx_are_warned_about(deployment, team, tmp_path):
    Deployment.objects.create(
        slug="twin", name="Twin", team=team, server_name=deployment.server_name
    )
    Deployment.objects.create(
        slug="tls",
        name="TLS",
        team=team,
        server_name="tls.example.com",
        tls=True,
        https_port=80,
        http_port=8080,
        ssl_certificate="/etc/nginx/ssl/a.pem",
        ssl_certificate_key="/etc/nginx/ssl/a.key",
    )
    result = write_export(deployments=Deployment.objects.all(), output_dir=tmp_path)
    codes = {w.code for _slug, w in result.warnings}
    assert {"conflicting_server_name", "port_ssl_conflict"} <= codes


def test_the_number_of_queries_does_not_grow_with_the_number_of_deployments(team, tmp_path):
    def make(count: int, start: int) -> None:
        for index in range(start, start + count):
            d = Deployment.objects.create(
                slug=f"d{index}", name=f"D{index}", team=team, server_name=f"d{index}.example.com"
            )
            for position in range(5):
                RouteOverride.objects.create(
                    deployment=d, match="prefix", path=f"/p{position}/", position=position
                )

    make(2, 0)
    with CaptureQueriesContext(connection) as small:
        write_export(deployments=Deployment.objects.all(), output_dir=tmp_path / "a")
    make(10, 2)
    with CaptureQueriesContext(connection) as large:
        write_export(deployments=Deployment.objects.all(), output_dir=tmp_path / "b")
    assert len(small.captured_queries) == len(large.captured_queries)


def test_the_compose_files_match_their_golden_files():
    from tests.test_render import VARIANTS, make_deployment

    for variant in ("docker-https", "host-http"):
        deployment = make_deployment(**VARIANTS[f"{variant}.conf"])
        assert render_compose(deployment) == (GOLDEN / f"docker-compose.{variant}.yml").read_text()


def test_the_archive_holds_the_shared_file_and_every_site_and_is_recorded(deployment, second):
    data, rows = build_archive(deployments=Deployment.objects.all(), source="archive")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        names = archive.getnames()
        site = archive.extractfile("conf.d/prod.conf").read().decode()
    assert names == ["conf.d/00-console-common.conf", "conf.d/prod.conf", "conf.d/staging.conf"]
    assert site == render_site(deployment)
    assert {r.source for r in rows} == {"archive"}
    assert ConfigExport.objects.count() == 2


# --- The command ----------------------------------------------------------------------------


def test_the_command_exports_named_deployments(deployment, tmp_path):
    out, err = export("prod", "--output-dir", str(tmp_path))
    assert "Exported 1 deployment(s)" in out
    assert "wrote prod.conf" in out
    assert err == ""
    assert (tmp_path / "prod.conf").exists() and (tmp_path / COMMON_FILENAME).exists()


def test_the_command_writes_to_the_configured_directory_by_default(deployment, tmp_path, settings):
    settings.CONSOLE_EXPORT_DIR = tmp_path / "conf.d"
    export("prod")
    assert (tmp_path / "conf.d" / "prod.conf").exists()


def test_the_command_names_unknown_slugs(deployment, tmp_path):
    with pytest.raises(CommandError, match="no deployment nope, missing"):
        export("prod", "nope", "missing", "--output-dir", str(tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "slugs, or --all"),
        (("prod", "--all"), "not both"),
        (("prod", "--team", "ops"), "--team only works with --all"),
        (("--all", "--team", "nope"), "--team: no team with slug 'nope'"),
        (("prod", "--stdout", "--compose"), "--compose"),
        (("prod", "--stdout", "--output-dir", "/tmp/x"), "--output-dir"),
    ],
)
def test_the_command_refuses_contradictory_arguments(deployment, argv, message):
    with pytest.raises(CommandError, match=message):
        export(*argv)


def test_a_command_error_exits_non_zero_with_the_message(deployment, capsys):
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "export_nginx", "nope"])
    assert exited.value.code == 1
    assert "no deployment nope." in capsys.readouterr().err


def test_the_command_prints_to_stdout_without_writing(deployment, tmp_path, settings):
    settings.CONSOLE_EXPORT_DIR = tmp_path
    out, _err = export("prod", "--stdout")
    assert out.startswith("# CPA gateway console: shared by every site file")
    assert "map $http_upgrade $connection_upgrade" in out
    assert render_site(deployment) in out
    assert not any(tmp_path.iterdir())
    assert ConfigExport.objects.filter(deployment=deployment, source="command").count() == 1


def test_the_command_prints_lint_warnings_on_stderr(deployment, tmp_path):
    RouteOverride.objects.create(deployment=deployment, match="prefix", path="/v1/", target="cpamp")
    _out, err = export("prod", "--output-dir", str(tmp_path))
    assert "warning: prod: Override ^~ /v1/ moves the seed's route from CPA to CPAMP" in err
    assert "[boundary_moved]" in err


def test_the_command_refuses_an_invalid_deployment_and_writes_nothing(deployment, tmp_path):
    Deployment.objects.filter(pk=deployment.pk).update(cpa_upstream="cpa:8317; evil")
    with pytest.raises(CommandError, match="cpa_upstream"):
        export("prod", "--output-dir", str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_all_with_a_team_exports_only_that_team(deployment, theirs, tmp_path):
    export("--all", "--team", "other", "--output-dir", str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.conf")) == [COMMON_FILENAME, "theirs.conf"]


def test_all_removes_the_files_of_deleted_deployments(deployment, second, tmp_path):
    export("--all", "--output-dir", str(tmp_path))
    second.delete()
    out, _err = export("--all", "--output-dir", str(tmp_path))
    assert "removed staging.conf" in out
    assert not (tmp_path / "staging.conf").exists()


def test_the_command_writes_the_compose_file_when_asked(deployment, tmp_path):
    export("prod", "--compose", "--output-dir", str(tmp_path))
    text = (tmp_path / "docker-compose.prod.yml").read_text()
    assert text == render_compose(deployment)
    assert "docker-compose.prod.yml" in manifest(tmp_path)


def test_all_keeps_the_compose_file_of_a_deployment_still_exported(deployment, second, tmp_path):
    export("--all", "--compose", "--output-dir", str(tmp_path))
    second.delete()
    out, _err = export("--all", "--output-dir", str(tmp_path))
    assert (tmp_path / "docker-compose.prod.yml").exists()
    assert not (tmp_path / "docker-compose.staging.yml").exists()
    assert "removed docker-compose.staging.yml" in out


@pytest.mark.nginx
def test_the_command_checks_with_nginx_before_writing(deployment, tmp_path):
    out, _err = export("prod", "--check", "--output-dir", str(tmp_path))
    assert "nginx -t: ok" in out


@pytest.mark.nginx
def test_a_failing_check_fails_the_command_with_nginxs_message(deployment, tmp_path):
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    Deployment.objects.filter(pk=deployment.pk).update(
        tls=True, ssl_certificate=str(broken), ssl_certificate_key=str(broken)
    )
    out_dir = tmp_path / "out"
    with pytest.raises(CommandError, match="cannot load certificate"):
        export("prod", "--check", "--output-dir", str(out_dir))
    assert not (out_dir / "prod.conf").exists()


def test_check_without_nginx_fails_plainly(deployment, tmp_path, settings):
    settings.CONSOLE_NGINX_BIN = ""
    with pytest.raises(CommandError, match="nginx is not installed"):
        export("prod", "--check", "--output-dir", str(tmp_path))
    assert not (tmp_path / "prod.conf").exists()


@pytest.mark.nginx
def test_default_server_adds_a_catch_all_on_the_sites_ports_to_the_shared_file(
    deployment, second, tmp_path, settings
):
    out, _err = export("--all", "--check", "--default-server", "--output-dir", str(tmp_path))
    assert "nginx -t: ok" in out
    shared = (tmp_path / COMMON_FILENAME).read_text()
    assert "    listen 80 default_server;\n    server_name _;" in shared
    assert "return 444;" in shared
    # Without the flag the setting decides, and it is off by default.
    export("--all", "--output-dir", str(tmp_path))
    assert "default_server" not in (tmp_path / COMMON_FILENAME).read_text()
    settings.CONSOLE_NGINX_DEFAULT_SERVER = True
    export("--all", "--output-dir", str(tmp_path))
    assert "default_server" in (tmp_path / COMMON_FILENAME).read_text()
