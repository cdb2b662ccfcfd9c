"""CPAMP first-setup values: owner-only, POST-only reveal, not cached, audited."""

import pytest
from django.test import Client, RequestFactory
from django.urls import reverse

from routes import keys as keyring
from routes.admin.first_setup import cpa_config_snippet, first_setup_link
from routes.models import AuditEvent, Key

ADMIN_KEY = "cpamp_" + "A1b2C3d4" * 4
MANAGEMENT_KEY = "mgmt-Key-for-first-setup-9876"


@pytest.fixture
def keys(deployment):
    stored = {}
    for role, secret in (
        (keyring.CPAMP_ADMIN, ADMIN_KEY),
        (keyring.CPA_MANAGEMENT, MANAGEMENT_KEY),
    ):
        key = Key(deployment=deployment, role=role)
        key.set_secret(secret)
        key.save()
        stored[role] = key
    return stored


def url(deployment):
    return reverse("admin:routes_deployment_first_setup", args=[deployment.pk])


def test_get_explains_what_will_be_shown_without_showing_it(client, make_user, deployment, keys):
    client.force_login(make_user("olga", team=deployment.team, role="owner"))
    response = client.get(url(deployment))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Reveal the first-setup values" in html
    assert deployment.cpamp_cpa_url in html
    assert ADMIN_KEY not in html and MANAGEMENT_KEY not in html
    assert not AuditEvent.objects.filter(action="key.reveal").exists()


def test_an_owner_reveals_the_values_with_a_post_and_it_is_audited(
    client, make_user, deployment, keys
):
    owner = make_user("olga", team=deployment.team, role="owner")
    client.force_login(owner)
    response = client.post(url(deployment), REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 200
    html = response.content.decode()
    assert ADMIN_KEY in html
    assert MANAGEMENT_KEY in html
    assert "http://cli-proxy-api:8317" in html
    assert f"secret-key: &quot;{MANAGEMENT_KEY}&quot;" in html
    assert "allow-remote: true" in html
    assert "no-store" in response["Cache-Control"]
    event = AuditEvent.objects.get(action="key.reveal")
    assert (event.actor, event.team, event.object_id, event.ip) == (
        owner,
        deployment.team,
        str(deployment.pk),
        "10.1.2.3",
    )
    assert event.changes["revealed"] == [keyring.CPAMP_ADMIN, keyring.CPA_MANAGEMENT]
    dump = repr(list(AuditEvent.objects.values()))
    assert ADMIN_KEY not in dump and MANAGEMENT_KEY not in dump


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_viewers_and_operators_are_refused_and_nothing_is_recorded(
    client, make_user, deployment, keys, role
):
    client.force_login(make_user("someone", team=deployment.team, role=role))
    assert client.get(url(deployment)).status_code == 403
    response = client.post(url(deployment))
    assert response.status_code == 403
    assert ADMIN_KEY not in response.content.decode()
    assert not AuditEvent.objects.filter(action="key.reveal").exists()


def test_an_owner_of_another_team_does_not_even_see_the_deployment(
    client, make_user, deployment, keys, other_team
):
    client.force_login(make_user("mallory", team=other_team, role="owner"))
    assert client.post(url(deployment)).status_code == 404
    assert not AuditEvent.objects.filter(action="key.reveal").exists()


def test_anonymous_users_are_sent_to_the_login(deployment, keys):
    response = Client().post(url(deployment))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_the_reveal_needs_a_csrf_token(make_user, deployment, keys):
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("olga", team=deployment.team, role="owner"))
    assert client.post(url(deployment)).status_code == 403
    assert not AuditEvent.objects.filter(action="key.reveal").exists()


def test_missing_keys_are_named_plainly(client, make_user, deployment):
    client.force_login(make_user("olga", team=deployment.team, role="owner"))
    html = client.post(url(deployment)).content.decode()
    assert "No CPAMP Admin Key is stored for this deployment" in html
    assert "No CPA Management Key is stored for this deployment" in html
    event = AuditEvent.objects.get(action="key.reveal")
    assert event.changes["missing"] == [keyring.CPAMP_ADMIN, keyring.CPA_MANAGEMENT]


def test_an_undecryptable_key_is_explained_not_shown(client, make_user, deployment, keys, settings):
    from cryptography.fernet import Fernet

    settings.CONSOLE_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    client.force_login(make_user("olga", team=deployment.team, role="owner"))
    html = client.post(url(deployment)).content.decode()
    assert "cannot be decrypted with the configured encryption keys" in html


def test_a_superuser_may_reveal(client, make_user, deployment, keys):
    client.force_login(make_user("root", superuser=True))
    assert MANAGEMENT_KEY in client.post(url(deployment)).content.decode()


def test_an_owner_of_a_2fa_team_without_a_verified_session_is_told_to_enrol(
    client, make_user, deployment, keys
):
    deployment.team.require_owner_2fa = True
    deployment.team.save()
    client.force_login(make_user("olga", team=deployment.team, role="owner"))
    response = client.post(url(deployment))
    assert response.status_code == 403
    html = response.content.decode()
    assert "requires owners to use two-factor authentication" in html
    assert reverse("admin:otp_totp_totpdevice_enrol") in html
    assert ADMIN_KEY not in html and MANAGEMENT_KEY not in html
    assert not AuditEvent.objects.filter(action="key.reveal").exists()


def test_the_deployment_page_links_to_it_for_owners_only(make_user, deployment):
    request = RequestFactory().get("/")
    request.user = make_user("olga", team=deployment.team, role="owner")
    assert first_setup_link(request, deployment) == [("CPAMP first-setup values", url(deployment))]
    request.user = make_user("otto", team=deployment.team, role="operator")
    assert first_setup_link(request, deployment) == []


def test_the_owner_sees_the_link_on_the_deployment_page(client, make_user, deployment):
    client.force_login(make_user("olga", team=deployment.team, role="owner"))
    html = client.get(reverse("admin:routes_deployment_change", args=[deployment.pk])).content
    assert url(deployment) in html.decode()


def test_the_cpa_snippet_quotes_any_key_safely():
    assert cpa_config_snippet('we"ird\\key') == (
        'remote-management:\n  secret-key: "we\\"ird\\\\key"\n  allow-remote: true\n'
    )
