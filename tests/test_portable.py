"""import_deployments / export_deployments: the version-1 format, all or nothing, round trips."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from routes import portable
from routes.models import AuditEvent, Deployment, Key, RouteOverride, Team
from routes.workflows.keys import set_key

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "deployments.json"
BROKEN = DATA / "deployments-broken.json"
# The example of the issue, verbatim: the import format is a contract.
ISSUE_EXAMPLE = json.loads((DATA / "issue-example.json").read_text())


def run(*args, stdin: str | None = None, monkeypatch=None) -> tuple[str, str]:
    """Run a command, returning (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def import_failure(*args, **kwargs) -> tuple[CommandError, list[str]]:
    """Run import_deployments expecting refusal; return the error and the problem lines."""
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("import_deployments", *args, stdout=io.StringIO(), stderr=err, **kwargs)
    return caught.value, err.getvalue().splitlines()


def snapshot_everything() -> list:
    """Return every row that an import may touch, to prove that nothing changed."""
    return [
        list(Team.objects.values()),
        list(Deployment.objects.values()),
        list(RouteOverride.objects.values()),
        list(AuditEvent.objects.values()),
    ]


# --- Import --------------------------------------------------------------------------------------


def test_the_issue_example_imports_and_stores_the_verification_base_url(db, tmp_path):
    path = tmp_path / "prod.json"
    path.write_text(json.dumps(ISSUE_EXAMPLE))
    out, _err = run("import_deployments", str(path))
    assert "prod: created" in out
    assert "team ops: created" in out
    prod = Deployment.objects.get(slug="prod")
    assert prod.team.slug == "ops"
    assert prod.verification_base_url == "https://api.example.com"
    override = prod.overrides.get()
    assert (override.match, override.path, override.target, override.position) == (
        "prefix",
        "/config",
        "cpamp",
        0,
    )
    event = AuditEvent.objects.get(action="deployment.import")
    assert event.object_id == str(prod.pk)
    assert event.actor_label == "command"


def test_missing_optional_fields_take_their_defaults(db):
    report = portable.import_payload(
        payload={
            "version": 1,
            "deployments": [{"slug": "min", "team": "ops", "server_name": "min.example.com"}],
        }
    )
    assert report.created == ["min"]
    minimal = Deployment.objects.get(slug="min")
    assert minimal.name == "min"
    assert (minimal.mode, minimal.http_port, minimal.client_max_body_size) == (
        "manager_server",
        80,
        "64m",
    )
    assert minimal.cpa_upstream == "cli-proxy-api:8317"
    assert minimal.proxy_read_timeout == 3600


def test_stdin_is_read_when_the_file_is_a_dash(db, monkeypatch):
    out, _err = run("import_deployments", "-", stdin=SAMPLE.read_text(), monkeypatch=monkeypatch)
    assert "prod: created" in out and "lab: created" in out
    assert set(Team.objects.values_list("slug", flat=True)) == {"ops", "research"}


def test_import_warns_about_listed_keys_it_cannot_carry(db):
    out, _err = run("import_deployments", str(SAMPLE))
    assert "lab: keys: cpa_api is listed but secrets are never exported" in out
    assert "manage.py set_key lab cpa_api" in out


def test_a_broken_file_changes_nothing_and_names_every_problem(db, team):
    before = snapshot_everything()
    error, lines = import_failure(str(BROKEN))
    assert error.returncode == 1
    assert snapshot_everything() == before
    assert not Team.objects.filter(slug="newteam").exists()
    expected = [
        "bad: colour: unknown field",
        "bad: tls: must be true or false",
        "bad: keys[0]: unknown key role 'root_password'",
        "bad: route_overrides[2].target: Value 'elsewhere' is not a valid choice",
    ]
    for line in expected:
        assert any(found.startswith(line) for found in lines), (line, lines)
    by_field = {line.split(": ")[1]: line for line in lines}
    assert "not a valid host name label" in by_field["server_name"]
    assert "without a scheme" in by_field["cpa_upstream"]
    assert "route_overrides[0].path" in by_field
    assert "does not compile" in by_field["route_overrides[1].path"]
    assert "http:// or https://" in by_field["verification.base_url"]
    assert all(line.count(": ") >= 2 for line in lines)


@pytest.mark.parametrize(
    ("payload", "line"),
    [
        ({"version": 2, "deployments": []}, "file: version: must be 1 (got 2)"),
        ({"version": 1}, "file: deployments: must be a list"),
        ({"version": 1, "deployments": [], "extra": 1}, "file: extra: unknown field"),
        ({"version": 1, "deployments": [{"team": "ops"}]}, "deployments[0]: slug: required"),
        (
            {
                "version": 1,
                "deployments": [
                    {"slug": "x", "team": "ops", "server_name": "x.io", "http_port": True}
                ],
            },
            "x: http_port: must be an integer",
        ),
        (
            {
                "version": 1,
                "deployments": [
                    {
                        "slug": "x",
                        "team": "ops",
                        "server_name": "x.io",
                        "verification": {"url": "https://x.io"},
                    }
                ],
            },
            "x: verification.url: unknown field",
        ),
        (
            {
                "version": 1,
                "deployments": [
                    {"slug": "x", "team": "ops", "server_name": "x.io"},
                    {"slug": "x", "team": "ops", "server_name": "y.io"},
                ],
            },
            "x: slug: appears twice in the file",
        ),
        (
            {
                "version": 1,
                "deployments": [{"slug": "x", "team": "Not A Slug!", "server_name": "x.io"}],
            },
            "x: team: Enter a valid",
        ),
        (
            {
                "version": 1,
                "deployments": [
                    {
                        "slug": "x",
                        "team": "ops",
                        "server_name": "x.io",
                        "route_overrides": [
                            {"match": "exact", "path": "/a"},
                            {"match": "exact", "path": "/a"},
                        ],
                    }
                ],
            },
            "x: route_overrides[1].path: route_overrides[0] already has this match and path",
        ),
    ],
)
def test_each_problem_is_one_line_naming_slug_field_and_reason(db, tmp_path, payload, line):
    path = tmp_path / "in.json"
    path.write_text(json.dumps(payload))
    _error, lines = import_failure(str(path))
    assert any(found.startswith(line) for found in lines), lines
    assert not Deployment.objects.exists()


def test_a_file_that_is_not_json_is_refused(db, tmp_path):
    path = tmp_path / "in.json"
    path.write_text("{not json")
    _error, lines = import_failure(str(path))
    assert lines[0].startswith("file: json: not valid JSON")


def test_an_unreadable_file_is_a_clear_error(db, tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_deployments", str(tmp_path / "missing.json"))


def test_an_existing_slug_is_refused_without_update(db, deployment):
    _error, lines = import_failure(str(SAMPLE))
    assert "prod: slug: already exists; use --update to replace it" in lines
    assert not Deployment.objects.filter(slug="lab").exists()
    deployment.refresh_from_db()
    assert deployment.server_name == "api.example.com" and not deployment.tls


def test_update_replaces_fields_and_overrides_and_keeps_keys(db, deployment):
    RouteOverride.objects.create(deployment=deployment, path="/old/", target="cpamp")
    set_key(deployment=deployment, role="cpa_api", secret="sk-keep-this-key-1")
    out, _err = run("import_deployments", str(SAMPLE), "--update")
    assert "prod: updated" in out
    deployment.refresh_from_db()
    assert deployment.tls is True
    assert deployment.ssl_certificate == "/etc/nginx/ssl/api.example.com/fullchain.pem"
    assert [o.path for o in deployment.overrides.all()] == ["/config", "^/logs/.+\\.json$"]
    assert deployment.keys.get().reveal() == "sk-keep-this-key-1"
    assert deployment.version > 2
    assert AuditEvent.objects.filter(action="deployment.import", object_id=str(deployment.pk))


def test_team_puts_every_deployment_in_that_team(db):
    out, _err = run("import_deployments", str(SAMPLE), "--team", "sandbox")
    assert "team sandbox: created" in out
    assert set(Deployment.objects.values_list("team__slug", flat=True)) == {"sandbox"}
    assert not Team.objects.filter(slug__in=["ops", "research"]).exists()


# --- Export and round trip ---------------------------------------------------------------


def test_export_lists_key_roles_and_never_secrets(db, deployment, capsys):
    secrets = ["cpamp_" + "A1b2C3d4" * 4, "mgmt-secret-value-1", "sk-api-secret-value-1"]
    for role, secret in zip(["cpamp_admin", "cpa_management", "cpa_api"], secrets, strict=True):
        set_key(deployment=deployment, role=role, secret=secret)
    out, _err = run("export_deployments")
    payload = json.loads(out)
    assert payload["version"] == 1
    assert payload["deployments"][0]["keys"] == ["cpa_api", "cpa_management", "cpamp_admin"]
    for secret in secrets:
        assert secret not in out
        assert secret[-4:] not in out
    assert AuditEvent.objects.filter(action="definitions.export").exists()


def test_import_export_import_round_trips_without_loss(db, tmp_path):
    run("import_deployments", str(SAMPLE))
    first, _err = run("export_deployments")
    exported = tmp_path / "exported.json"
    exported.write_text(first)

    Key.objects.all().delete()
    Deployment.objects.all().delete()
    Team.objects.all().delete()
    run("import_deployments", str(exported))
    second, _err = run("export_deployments")
    assert json.loads(second) == json.loads(first)
    # The export is the file's content plus the defaults of the fields it left out.
    prod = next(d for d in json.loads(first)["deployments"] if d["slug"] == "prod")
    assert prod["route_overrides"][1] == {
        "match": "regex_i",
        "path": "^/logs/.+\\.json$",
        "target": "cpamp",
        "enabled": False,
        "position": 1,
        "note": "panel logs",
    }
    lab = next(d for d in json.loads(first)["deployments"] if d["slug"] == "lab")
    assert (lab["resolver"], lab["route_tracing"], lab["cpa_version"]) == (
        "1.1.1.1 9.9.9.9",
        False,
        "v7.1.39",
    )


def test_reimporting_an_export_with_update_changes_nothing(db):
    run("import_deployments", str(SAMPLE))
    exported, _err = run("export_deployments")
    versions = dict(Deployment.objects.values_list("slug", "version"))
    overrides = list(RouteOverride.objects.values_list("pk", flat=True))
    portable.import_payload(payload=json.loads(exported), update=True)
    assert list(RouteOverride.objects.values_list("pk", flat=True)) == overrides
    assert run("export_deployments")[0] == exported
    assert dict(Deployment.objects.values_list("slug", "version")) == versions


def test_export_filters_by_slug_and_team_and_writes_a_file(db, tmp_path):
    run("import_deployments", str(SAMPLE))
    out, _err = run("export_deployments", "lab")
    assert [d["slug"] for d in json.loads(out)["deployments"]] == ["lab"]
    out, _err = run("export_deployments", "--team", "ops")
    assert [d["slug"] for d in json.loads(out)["deployments"]] == ["prod"]
    target = tmp_path / "out.json"
    _out, err = run("export_deployments", "--output", str(target))
    assert "2 deployment(s) written" in err
    assert len(json.loads(target.read_text())["deployments"]) == 2


def test_export_refuses_unknown_slugs_and_teams(db, deployment):
    with pytest.raises(CommandError, match="no deployment nope"):
        call_command("export_deployments", "nope", stdout=io.StringIO())
    with pytest.raises(CommandError, match="--team: no team with slug 'nope'"):
        call_command("export_deployments", "--team", "nope", stdout=io.StringIO())
