"""Concurrent edits: a save based on an old version is refused, shows what changed, keeps both."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from routes.context import acting
from routes.models import Deployment, RouteOverride
from routes.workflows.deployments import save_deployment
from routes.workflows.keys import set_key
from routes.workflows.versions import StaleVersion, claim_version
from tests.test_admin import api_secret, change_url, deployment_data, override_rows


@pytest.fixture
def alice(make_user, team):
    return make_user("alice", team=team, role="owner")


@pytest.fixture
def bob(make_user, team):
    return make_user("bob", team=team, role="operator")


def loaded_form_data(client, deployment: Deployment, **changes) -> dict:
    """Open the change page like a browser would and return its POST data with changes."""
    page = client.get(change_url(deployment))
    assert page.status_code == 200
    assert page.context["adminform"].form["loaded_version"].value() == deployment.version
    return deployment_data(deployment, **changes)


def test_a_second_save_based_on_an_old_version_is_refused_and_both_versions_are_kept(
    client, alice, bob, deployment
):
    alice_client, bob_client = client, client.__class__()
    alice_client.force_login(alice)
    bob_client.force_login(bob)
    alice_data = loaded_form_data(alice_client, deployment, server_name="alice.example.com")
    bob_data = loaded_form_data(bob_client, deployment, name="Bob's production")

    assert bob_client.post(change_url(deployment), bob_data).status_code == 302
    refused = alice_client.post(change_url(deployment), alice_data)

    assert refused.status_code == 200
    html = refused.content.decode()
    assert "Someone else saved this deployment after you opened it" in html
    # What changed, and who changed it.
    conflict = refused.context["conflict"]
    assert (conflict.loaded_version, conflict.current_version) == (1, 2)
    assert [c.actor for c in conflict.changes] == ["bob"]
    assert "name: Production → Bob&#x27;s production" in html
    # Both versions kept: the stored row is Bob's, the form still holds Alice's edit.
    deployment.refresh_from_db()
    assert (deployment.name, deployment.server_name) == ("Bob's production", "api.example.com")
    form = refused.context["adminform"].form
    assert form["server_name"].value() == "alice.example.com"
    assert 'value="alice.example.com"' in html
    differences = {d.label: (d.current, d.submitted) for d in conflict.differences}
    assert differences["Server name"] == ("api.example.com", "alice.example.com")
    assert differences["Name"] == ("Bob's production", "Production")


def test_saving_again_after_seeing_the_conflict_is_a_deliberate_overwrite(
    client, alice, bob, deployment
):
    client.force_login(alice)
    stale = loaded_form_data(client, deployment, server_name="alice.example.com")
    theirs = Deployment.objects.get(pk=deployment.pk)
    theirs.notes = "bob was here"
    with acting(user=bob):
        save_deployment(deployment=theirs, expected_version=1)

    refused = client.post(change_url(deployment), stale)
    assert refused.status_code == 200
    # The re-rendered form carries the version the user has now seen.
    assert refused.context["adminform"].form["loaded_version"].value() == 2
    again = dict(stale, loaded_version="2")
    assert client.post(change_url(deployment), again).status_code == 302
    deployment.refresh_from_db()
    assert deployment.server_name == "alice.example.com"
    assert deployment.version == 3


def test_an_override_added_meanwhile_refuses_a_stale_deployment_save(
    client, alice, bob, deployment
):
    alice_client, bob_client = client, client.__class__()
    alice_client.force_login(alice)
    bob_client.force_login(bob)
    alice_data = loaded_form_data(alice_client, deployment, name="Alice's")
    bob_data = loaded_form_data(
        bob_client,
        deployment,
        overrides=[
            {"match": "prefix", "path": "/logs/", "target": "cpamp", "enabled": True, "position": 0}
        ],
    )
    assert bob_client.post(change_url(deployment), bob_data).status_code == 302

    refused = alice_client.post(change_url(deployment), alice_data)
    assert refused.status_code == 200
    assert [c.action for c in refused.context["conflict"].changes] == ["override.create"]
    deployment.refresh_from_db()
    assert deployment.name == "Production"
    assert RouteOverride.objects.filter(deployment=deployment, path="/logs/").exists()


def test_an_override_edit_on_an_old_version_is_refused_too(client, alice, bob, deployment):
    RouteOverride.objects.create(deployment=deployment, path="/config/", target="cpamp")
    client.force_login(alice)
    rows = override_rows(deployment)
    rows[0]["target"] = "cpa"
    stale = loaded_form_data(client, deployment, overrides=rows)
    with acting(user=bob):
        set_key(deployment=deployment, role="cpa_api", secret=api_secret())

    refused = client.post(change_url(deployment), stale)
    assert refused.status_code == 200
    assert [c.action for c in refused.context["conflict"].changes] == ["key.create"]
    assert RouteOverride.objects.get(deployment=deployment).target == "cpamp"


def test_a_key_rotated_meanwhile_refuses_a_stale_key_edit(client, alice, bob, deployment):
    first = set_key(deployment=deployment, role="cpa_api", label="ci", secret=api_secret())
    deployment.refresh_from_db()
    client.force_login(alice)
    stale = loaded_form_data(client, deployment)
    stale["keys-0-label"] = "renamed"
    rotated = api_secret()
    with acting(user=bob):
        set_key(deployment=deployment, role="cpa_api", label="ci", secret=rotated)

    refused = client.post(change_url(deployment), stale)
    assert refused.status_code == 200
    assert [c.action for c in refused.context["conflict"].changes] == ["key.rotate"]
    first.refresh_from_db()
    assert (first.label, first.reveal()) == ("ci", rotated)
    assert rotated not in refused.content.decode()


def test_save_deployment_refuses_an_expected_version_that_moved_on(deployment):
    mine = Deployment.objects.get(pk=deployment.pk)
    theirs = Deployment.objects.get(pk=deployment.pk)
    theirs.name = "Theirs"
    save_deployment(deployment=theirs, expected_version=1)
    mine.name = "Mine"
    with pytest.raises(StaleVersion):
        save_deployment(deployment=mine, expected_version=1)
    deployment.refresh_from_db()
    assert (deployment.name, deployment.version) == ("Theirs", 2)


def test_claim_version_lets_only_one_of_two_claims_on_a_version_through(deployment):
    assert claim_version(deployment=deployment, expected_version=1) == 2
    with pytest.raises(StaleVersion):
        claim_version(deployment=Deployment.objects.get(pk=deployment.pk), expected_version=1)


@pytest.mark.django_db(transaction=True)
def test_two_threads_saving_the_same_version_never_both_win():
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers itself; the race needs a server database")
    from routes.models import Team

    team = Team.objects.create(name="T", slug="t")
    deployment = Deployment.objects.create(
        slug="race", name="Race", team=team, server_name="race.example.com"
    )
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def save(name: str) -> None:
        try:
            copy = Deployment.objects.get(pk=deployment.pk)
            copy.name = name
            barrier.wait(timeout=10)
            save_deployment(deployment=copy, expected_version=1)
            outcomes.append("saved")
        except StaleVersion:
            outcomes.append("stale")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=save, args=(n,)) for n in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["saved", "stale"]
    assert Deployment.objects.get(pk=deployment.pk).version == 2


def test_the_conflict_table_names_what_happened_in_the_readers_language(
    client, alice, bob, deployment
):
    client.force_login(alice)
    stale = loaded_form_data(client, deployment, name="Alice's")
    with acting(user=bob):
        set_key(deployment=deployment, role="cpa_api", label="ci", secret=api_secret())

    client.cookies["django_language"] = "zh-hans"
    refused = client.post(change_url(deployment), stale)
    assert refused.status_code == 200
    conflict = refused.content.decode().split('id="edit-conflict"', 1)[1].split("</table>", 1)[0]
    # The action's human name (its code in the title), the key by its role in Chinese.
    assert 'title="key.create"' in conflict and "密钥已添加" in conflict
    assert "CPA API 密钥" in conflict and "CPA API Key" not in conflict
