"""Team isolation: users of team B cannot see, change or export team A's deployments or keys."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from routes.models import AuditEvent, Deployment, Key, Membership, RouteOverride
from routes.workflows.keys import set_key
from tests.test_admin import (
    ADD_URL,
    CHANGELIST_URL,
    _rows,
    api_secret,
    change_url,
    deployment_data,
    new_deployment_data,
)

SECRET = "sk-team-a-only-secret-1"


@pytest.fixture
def team_a_deployment(deployment):
    """Team A ("ops") owns prod, with an override and an API key."""
    RouteOverride.objects.create(deployment=deployment, path="/config/", target="cpamp")
    set_key(deployment=deployment, role="cpa_api", label="team-a-ci", secret=SECRET)
    deployment.refresh_from_db()
    return deployment


@pytest.fixture
def team_b_deployment(other_team):
    return Deployment.objects.create(
        slug="b-prod", name="B production", team=other_team, server_name="b.example.com"
    )


@pytest.fixture(params=["viewer", "operator", "owner"])
def outsider(request, make_user, other_team, client):
    """A member of team B only, in each role; logged in."""
    user = make_user(f"b-{request.param}", team=other_team, role=request.param)
    client.force_login(user)
    return user


def test_team_a_deployments_are_not_in_team_b_changelists(
    client, outsider, team_a_deployment, team_b_deployment
):
    html = client.get(CHANGELIST_URL).content.decode()
    assert "b.example.com" in html
    assert "api.example.com" not in html
    assert "api.example.com" not in client.get(CHANGELIST_URL, {"q": "api"}).content.decode()
    keys = client.get("/admin/routes/key/").content.decode()
    assert "team-a-ci" not in keys
    teams = client.get("/admin/routes/team/").content.decode()
    assert "Ops" not in teams and "Other" in teams


def test_team_a_pages_are_404_for_team_b(client, outsider, team_a_deployment):
    key = team_a_deployment.keys.get()
    membership = Membership.objects.filter(team=team_a_deployment.team).first()
    for url in [
        change_url(team_a_deployment),
        reverse("admin:routes_deployment_delete", args=[team_a_deployment.pk]),
        reverse("admin:routes_deployment_history", args=[team_a_deployment.pk]),
        reverse("admin:routes_key_change", args=[key.pk]),
        reverse("admin:routes_key_delete", args=[key.pk]),
        reverse("admin:routes_team_change", args=[team_a_deployment.team_id]),
    ] + ([reverse("admin:routes_membership_change", args=[membership.pk])] if membership else []):
        assert client.get(url).status_code == 404, url


def test_team_b_cannot_change_team_a_deployments_overrides_or_keys(
    client, outsider, team_a_deployment
):
    rows = [{"role": "cpa_api", "secret": api_secret()}]
    data = deployment_data(team_a_deployment, name="Taken over", keys=rows)
    assert client.post(change_url(team_a_deployment), data).status_code == 404
    key = team_a_deployment.keys.get()
    response = client.post(
        reverse("admin:routes_key_change", args=[key.pk]),
        {"label": "stolen", "secret": api_secret(), **_rows("rotations", [])},
    )
    assert response.status_code == 404
    response = client.post(
        reverse("admin:routes_deployment_delete", args=[team_a_deployment.pk]), {"post": "yes"}
    )
    assert response.status_code == 404
    team_a_deployment.refresh_from_db()
    assert team_a_deployment.name == "Production"
    assert team_a_deployment.version == 2
    assert team_a_deployment.keys.get().reveal() == SECRET
    assert team_a_deployment.overrides.count() == 1


def test_team_b_actions_ignore_team_a_deployments(client, outsider, team_a_deployment):
    for action in ("export_definitions", "delete_selected"):
        response = client.post(
            CHANGELIST_URL,
            {"action": action, "_selected_action": [team_a_deployment.pk], "post": "yes"},
        )
        assert "attachment" not in response.get("Content-Disposition", "")
        assert SECRET not in response.content.decode()
    assert Deployment.objects.filter(pk=team_a_deployment.pk).exists()
    assert not AuditEvent.objects.filter(action="definitions.export").exists()


def test_team_b_cannot_move_deployments_into_team_a_or_add_keys_there(
    client, make_user, team, other_team, team_a_deployment, team_b_deployment
):
    owner_b = make_user("b-boss", team=other_team, role="owner")
    client.force_login(owner_b)
    response = client.post(
        change_url(team_b_deployment), deployment_data(team_b_deployment, team=team.pk)
    )
    assert response.status_code == 200
    assert "team" in response.context["adminform"].form.errors
    response = client.post(ADD_URL, new_deployment_data(team))
    assert "team" in response.context["adminform"].form.errors
    response = client.post(
        "/admin/routes/key/add/",
        {
            "deployment": team_a_deployment.pk,
            "role": "cpa_api",
            "secret": api_secret(),
            **_rows("rotations", []),
        },
    )
    assert "deployment" in response.context["adminform"].form.errors
    response = client.post(
        "/admin/routes/membership/add/",
        {"username": "b-boss", "team": team.pk, "role": "owner"},
    )
    assert "team" in response.context["adminform"].form.errors
    assert not Membership.objects.filter(user=owner_b, team=team).exists()
    team_b_deployment.refresh_from_db()
    assert team_b_deployment.team == other_team


def test_a_superuser_sees_every_team(client, make_user, team_a_deployment, team_b_deployment):
    client.force_login(make_user("root", superuser=True))
    html = client.get(CHANGELIST_URL).content.decode()
    assert "api.example.com" in html and "b.example.com" in html


def test_a_user_without_a_team_sees_nothing(client, make_user, team_a_deployment):
    client.force_login(make_user("loner"))
    assert client.get(CHANGELIST_URL).status_code == 403
    assert client.get(change_url(team_a_deployment)).status_code in (403, 404)


# --- Commands with --team ----------------------------------------------------------------------


def test_export_with_team_leaves_other_teams_out(team_a_deployment, team_b_deployment):
    out = io.StringIO()
    call_command("export_deployments", "--team", "other", stdout=out)
    payload = json.loads(out.getvalue())
    assert [d["slug"] for d in payload["deployments"]] == ["b-prod"]
    assert SECRET not in out.getvalue()
    with pytest.raises(CommandError, match="no deployment prod in team other"):
        call_command("export_deployments", "prod", "--team", "other", stdout=io.StringIO())


def test_set_key_with_team_refuses_another_teams_deployment(
    monkeypatch, team_a_deployment, team_b_deployment
):
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-intruder-key-1\n"))
    with pytest.raises(CommandError, match="no such deployment in team other"):
        call_command("set_key", "prod", "cpa_api", "--team", "other", stdout=io.StringIO())
    assert Key.objects.filter(deployment=team_a_deployment).count() == 1


def test_import_with_team_cannot_take_over_another_teams_slug(
    tmp_path, team_a_deployment, team_b_deployment
):
    path = tmp_path / "takeover.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "deployments": [{"slug": "prod", "team": "ops", "server_name": "evil.example.com"}],
            }
        )
    )
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("import_deployments", str(path), "--team", "other", stderr=err)
    assert "prod: slug: already exists" in err.getvalue()
    team_a_deployment.refresh_from_db()
    assert team_a_deployment.server_name == "api.example.com"
