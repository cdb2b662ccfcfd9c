"""Who acts comes from routes.context: requests, commands and the worker, never a parameter."""

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import CommandError

from routes import audit
from routes.context import acting
from routes.management.base import ConsoleCommand
from routes.models import AuditEvent, Key, Membership, Role, Team
from routes.workflows.keys import set_key
from routes.workflows.teams import create_team
from tests.test_admin import change_url, deployment_data

API_SECRET = "sk-workflow-Key-4242"
COMMANDS_WITH_TEAM = [
    ("apply_nginx", "--all"),
    ("export_deployments",),
    ("export_nginx", "--all", "--stdout"),
    ("import_nginx", "tests/data/seed_http.conf", "--slug", "lab"),
    ("list_runs",),
    ("prune_audit", "--before", "2020-01-01"),
    ("prune_exports",),
    ("prune_runs",),
    ("rotate_encryption_key",),
    ("run_scheduler", "--once"),
    ("set_key", "prod", "cpa_api"),
    ("verify", "prod"),
]


def console_commands() -> list[str]:
    return sorted(name for name, app in get_commands().items() if app == "routes")


def test_an_admin_edit_is_recorded_as_the_signed_in_user_from_their_address(
    client, operator, deployment
):
    client.force_login(operator)
    data = deployment_data(deployment, name="Renamed")
    response = client.post(change_url(deployment), data, REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="deployment.change")
    assert (event.actor, event.actor_label, event.ip) == (operator, "oli", "203.0.113.7")
    assert event.changes["name"] == ["Production", "Renamed"]
    deployment.refresh_from_db()
    assert deployment.updated_by == operator


def test_a_workflow_outside_any_request_or_command_is_recorded_as_command(deployment):
    key = set_key(deployment=deployment, role="cpa_api", secret=API_SECRET)
    event = AuditEvent.objects.get(action="key.create")
    assert (event.actor, event.actor_label, event.ip) == (None, "command", None)
    assert key.created_by is None


def test_the_acting_user_is_recorded_with_the_address_they_came_from(owner, deployment):
    with acting(user=owner, ip="198.51.100.20"):
        key = set_key(deployment=deployment, role="cpa_api", secret=API_SECRET)
    event = AuditEvent.objects.get(action="key.create")
    assert (event.actor, event.actor_label, event.ip) == (owner, "ona", "198.51.100.20")
    assert key.created_by == owner
    assert API_SECRET not in json.dumps(event.changes)


def test_a_command_acts_as_command_even_where_someone_else_was_acting(
    monkeypatch, owner, deployment
):
    monkeypatch.setattr("sys.stdin", io.StringIO(API_SECRET + "\n"))
    with acting(user=owner, ip="198.51.100.20"):
        call_command("set_key", "prod", "cpa_api", stdout=io.StringIO())
    event = AuditEvent.objects.get(action="key.create")
    assert (event.actor, event.actor_label, event.ip) == (None, "command", None)
    assert Key.objects.get(deployment=deployment).created_by is None


def test_an_explicit_actor_wins_over_the_context(owner, operator):
    # The task worker names the user who queued a run; a request's own user stays the default.
    with acting(user=operator, ip="198.51.100.21"):
        named = audit.record(action="verification.run", actor=owner)
        default = audit.record(action="verification.run")
    assert (named.actor, named.ip) == (owner, "198.51.100.21")
    assert (default.actor, default.ip) == (operator, "198.51.100.21")


def test_an_explicit_actor_that_is_not_signed_in_is_recorded_as_nobody(owner):
    with acting(user=owner):
        event = audit.record(action="login.failed", actor=_SignedOut(), actor_label="gone")
    assert (event.actor, event.actor_label) == (None, "gone")


class _SignedOut:
    is_authenticated = False


def test_creating_a_team_makes_the_acting_user_its_owner_unless_told_otherwise(owner):
    with acting(user=owner):
        mine = create_team(name="Mine", slug="mine")
        imported = create_team(name="Imported", slug="imported", creator_becomes_owner=False)
    assert Membership.objects.get(team=mine).role == Role.OWNER
    assert Membership.objects.get(team=mine).user == owner
    assert not Membership.objects.filter(team=imported).exists()
    actors = set(AuditEvent.objects.filter(action="team.create").values_list("actor", flat=True))
    assert actors == {owner.pk}


def test_an_import_as_a_user_is_recorded_as_theirs_and_the_rest_as_command(tmp_path, owner, team):
    path = Path(tmp_path) / "defs.json"
    entry = {"slug": "lab", "team": team.slug, "server_name": "lab.example.com"}
    path.write_text(json.dumps({"version": 1, "deployments": [entry]}))
    call_command("import_deployments", str(path), "--as", "ona", stdout=io.StringIO())
    event = AuditEvent.objects.get(action="deployment.import")
    assert (event.actor, event.actor_label) == (owner, "ona")
    call_command("export_deployments", "lab", stdout=io.StringIO())
    exported = AuditEvent.objects.get(action="definitions.export")
    assert (exported.actor, exported.actor_label) == (None, "command")


def test_every_console_command_acts_as_command():
    names = console_commands()
    assert "set_key" in names and "import_deployments" in names
    for name in names:
        assert isinstance(load_command_class("routes", name), ConsoleCommand), name


@pytest.mark.parametrize("argv", COMMANDS_WITH_TEAM, ids=lambda argv: argv[0])
def test_every_team_option_refuses_an_unknown_team_alike(argv, deployment, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(API_SECRET + "\n"))
    with pytest.raises(CommandError, match="^--team: no team with slug 'nope'.$"):
        call_command(*argv, "--team", "nope", stdout=io.StringIO(), stderr=io.StringIO())
    assert not Key.objects.exists()
    assert not Team.objects.filter(slug="nope").exists()


def test_every_command_with_a_team_option_is_checked_above():
    with_team = set()
    for name in console_commands():
        parser = load_command_class("routes", name).create_parser("manage.py", name)
        if any("--team" in action.option_strings for action in parser._actions):
            with_team.add(name)
    # import_deployments puts deployments into --team (creating it): it looks no team up.
    assert with_team - {"import_deployments"} == {argv[0] for argv in COMMANDS_WITH_TEAM}
