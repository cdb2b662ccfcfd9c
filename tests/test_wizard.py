"""The guided "New deployment" flow: deployment, keys, then config and first-setup values."""

from django.urls import reverse

from routes.models import AuditEvent, Deployment, Key
from routes.nginx.render import render_site

ADMIN_KEY = "cpamp_" + "A1b2C3d4" * 4
MANAGEMENT_KEY = "mgmt-Secret-4711"
API_KEY = "sk-client-Key-0815"
START = "admin:routes_deployment_wizard"


def step1(team, **overrides):
    data = {
        "team": team.pk,
        "name": "Production",
        "slug": "prod",
        "mode": "manager_server",
        "topology": "docker",
        "server_name": "api.example.com",
        "cpa_upstream": "",
        "cpamp_upstream": "",
        "cpamp_cpa_url": "",
        "listen_address": "",
        "http_port": "80",
        "https_port": "443",
        "verification_base_url": "",
        "ssl_certificate": "",
        "ssl_certificate_key": "",
    }
    data.update(overrides)
    return data


def keys_url(deployment):
    return reverse("admin:routes_deployment_wizard_keys", args=[deployment.pk])


def finish_url(deployment):
    return reverse("admin:routes_deployment_wizard_finish", args=[deployment.pk])


def test_it_refuses_a_viewer(client, make_user, team):
    client.force_login(make_user("vera", team=team, role="viewer"))
    assert client.get(reverse(START)).status_code == 403
    assert client.post(reverse(START), step1(team)).status_code == 403
    assert not Deployment.objects.exists()


def test_it_offers_only_teams_where_the_user_may_create(client, make_user, team, other_team):
    user = make_user("otto", team=team, role="operator")
    other_team.memberships.create(user=user, role="viewer")
    client.force_login(user)
    page = client.get(reverse(START)).content.decode()
    assert f'<option value="{team.pk}"' in page
    assert f'<option value="{other_team.pk}"' not in page


def test_it_refuses_to_create_in_a_team_where_the_user_is_a_viewer(
    client, make_user, team, other_team
):
    user = make_user("otto", team=team, role="operator")
    other_team.memberships.create(user=user, role="viewer")
    client.force_login(user)
    response = client.post(reverse(START), step1(other_team))
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not Deployment.objects.exists()


def test_it_explains_both_modes_and_both_topologies(client, operator):
    client.force_login(operator)
    page = client.get(reverse(START)).content.decode()
    assert "CPA itself serves /management.html" in page
    assert "/v0/resource/plugins/*" in page
    assert "cli-proxy-api:8317" in page
    assert "cpa-manager-plus:18317" in page
    assert "127.0.0.1:18317" in page
    assert "http://127.0.0.1:8317" in page


def test_it_creates_the_deployment_with_the_docker_preset(client, operator, team):
    client.force_login(operator)
    response = client.post(reverse(START), step1(team, cpa_upstream="ignored:1"))
    deployment = Deployment.objects.get(slug="prod")
    assert response.status_code == 302
    assert response["Location"] == keys_url(deployment)
    assert deployment.cpa_upstream == "cli-proxy-api:8317"
    assert deployment.cpamp_upstream == "cpa-manager-plus:18317"
    assert deployment.cpamp_cpa_url == "http://cli-proxy-api:8317"
    assert deployment.created_by == operator
    assert AuditEvent.objects.filter(action="deployment.create", object_id=str(deployment.pk))
    assert client.session["console_wizard"] == {"deployment": deployment.pk, "step": 2}


def test_it_fills_the_host_preset(client, operator, team):
    client.force_login(operator)
    client.post(reverse(START), step1(team, topology="host"))
    deployment = Deployment.objects.get(slug="prod")
    assert deployment.cpa_upstream == "127.0.0.1:8317"
    assert deployment.cpamp_upstream == "127.0.0.1:18317"
    assert deployment.cpamp_cpa_url == "http://127.0.0.1:8317"


def test_a_custom_topology_takes_the_given_addresses(client, owner, team):
    # An owner: the CPA URL used by CPAMP is where cpa_direct sends the CPA Management Key.
    client.force_login(owner)
    client.post(
        reverse(START),
        step1(
            team,
            topology="custom",
            cpa_upstream="10.0.0.5:8317",
            cpamp_upstream="10.0.0.6:18317",
            cpamp_cpa_url="http://10.0.0.5:8317",
            listen_address="127.0.0.1",
            http_port="8080",
        ),
    )
    deployment = Deployment.objects.get(slug="prod")
    assert deployment.cpa_upstream == "10.0.0.5:8317"
    assert deployment.listen_address == "127.0.0.1"
    assert deployment.http_port == 8080


def test_a_custom_topology_needs_every_address(client, operator, team):
    client.force_login(operator)
    response = client.post(reverse(START), step1(team, topology="custom", cpa_upstream="a:1"))
    assert response.status_code == 200
    assert response.content.decode().count("Required with the Custom topology.") == 2
    assert not Deployment.objects.exists()


def test_it_refuses_the_public_domain_as_cpa_url(client, operator, team):
    client.force_login(operator)
    response = client.post(
        reverse(START),
        step1(
            team,
            topology="custom",
            cpa_upstream="cli-proxy-api:8317",
            cpamp_upstream="cpa-manager-plus:18317",
            cpamp_cpa_url="https://api.example.com",
        ),
    )
    assert "a loop" in response.content.decode()
    assert not Deployment.objects.exists()


def test_https_needs_both_certificate_paths(client, operator, team):
    client.force_login(operator)
    response = client.post(reverse(START), step1(team, tls="on"))
    assert response.content.decode().count("Required when HTTPS is on.") == 2
    client.post(
        reverse(START),
        step1(
            team,
            tls="on",
            ssl_certificate="/etc/nginx/ssl/api.example.com/fullchain.pem",
            ssl_certificate_key="/etc/nginx/ssl/api.example.com/privkey.pem",
        ),
    )
    assert Deployment.objects.get(slug="prod").tls


def test_it_names_the_field_of_a_bad_domain(client, operator, team):
    client.force_login(operator)
    response = client.post(reverse(START), step1(team, server_name="bad domain;"))
    page = response.content.decode()
    assert "not a valid host name label" in page
    assert not Deployment.objects.exists()


def test_it_offers_to_resume_an_unfinished_setup(client, operator, team):
    client.force_login(operator)
    client.post(reverse(START), step1(team))
    deployment = Deployment.objects.get(slug="prod")
    page = client.get(reverse(START)).content.decode()
    assert "You have not finished setting up Production." in page
    assert keys_url(deployment) in page


def test_the_keys_step_stores_the_three_keys_encrypted(client, owner, deployment):
    client.force_login(owner)
    response = client.post(
        keys_url(deployment),
        {
            "cpamp_admin": ADMIN_KEY,
            "cpa_management": MANAGEMENT_KEY,
            "cpa_api": API_KEY,
            "api_label": "verification",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == finish_url(deployment)
    stored = {key.role: key for key in deployment.keys.all()}
    assert stored["cpamp_admin"].reveal() == ADMIN_KEY
    assert stored["cpa_management"].reveal() == MANAGEMENT_KEY
    assert stored["cpa_api"].reveal() == API_KEY
    assert stored["cpa_api"].label == "verification"
    assert all(MANAGEMENT_KEY not in key.ciphertext for key in stored.values())
    for event in AuditEvent.objects.all():
        assert MANAGEMENT_KEY not in str(event.changes)


def test_a_mixed_key_is_refused_with_the_rule_named(client, owner, deployment):
    client.force_login(owner)
    response = client.post(
        keys_url(deployment),
        {"cpamp_admin": "", "cpa_management": ADMIN_KEY, "cpa_api": API_KEY},
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "this looks like a CPAMP Admin Key" in page
    assert "do not mix the three keys" in page
    assert ADMIN_KEY not in page
    assert API_KEY not in page
    # The refused key is not stored; the valid API key is (tests/test_forms_polish.py).
    assert list(Key.objects.values_list("role", flat=True)) == ["cpa_api"]


def test_the_same_secret_under_two_roles_is_refused(client, owner, deployment):
    client.force_login(owner)
    response = client.post(
        keys_url(deployment),
        {"cpamp_admin": ADMIN_KEY, "cpa_management": MANAGEMENT_KEY, "cpa_api": MANAGEMENT_KEY},
    )
    page = response.content.decode()
    assert "the same secret is given for the CPA Management Key" in page
    assert MANAGEMENT_KEY not in page
    # The second use of the secret is refused; the keys before it are stored.
    assert sorted(Key.objects.values_list("role", flat=True)) == ["cpa_management", "cpamp_admin"]


def test_a_secret_already_stored_under_another_role_is_refused(client, owner, deployment):
    client.force_login(owner)
    client.post(keys_url(deployment), {"cpa_management": MANAGEMENT_KEY})
    response = client.post(keys_url(deployment), {"cpa_api": MANAGEMENT_KEY})
    assert "already stored as the CPA Management Key" in response.content.decode()
    assert deployment.keys.count() == 1


def test_an_odd_admin_key_needs_the_custom_format_box(client, owner, deployment):
    client.force_login(owner)
    response = client.post(keys_url(deployment), {"cpamp_admin": "my-own-admin-key"})
    assert "mark the key as a custom key" in response.content.decode()
    client.post(keys_url(deployment), {"cpamp_admin": "my-own-admin-key", "custom_format": "on"})
    assert deployment.keys.get().custom_format


def test_a_new_admin_key_replaces_the_stored_one(client, owner, deployment):
    client.force_login(owner)
    client.post(keys_url(deployment), {"cpamp_admin": ADMIN_KEY})
    client.post(keys_url(deployment), {"cpamp_admin": "cpamp_" + "Z9" * 16})
    key = deployment.keys.get()
    assert key.reveal() == "cpamp_" + "Z9" * 16
    assert key.rotations.count() == 1


def test_an_operator_sees_why_keys_need_an_owner_and_cannot_post_them(client, operator, deployment):
    client.force_login(operator)
    page = client.get(keys_url(deployment)).content.decode()
    assert "Only an owner of Ops can store keys." in page
    assert 'name="cpa_management"' not in page
    assert client.post(keys_url(deployment), {"cpa_api": API_KEY}).status_code == 403
    assert not Key.objects.exists()


def test_a_deployment_of_another_team_is_not_found(client, make_user, other_team, deployment):
    client.force_login(make_user("stranger", team=other_team, role="owner"))
    assert client.get(keys_url(deployment)).status_code == 404
    assert client.post(keys_url(deployment), {"cpa_api": API_KEY}).status_code == 404
    assert client.get(finish_url(deployment)).status_code == 404


def test_the_end_page_shows_config_masked_values_and_the_cpa_snippet(client, owner, deployment):
    client.force_login(owner)
    client.post(
        keys_url(deployment),
        {"cpamp_admin": ADMIN_KEY, "cpa_management": MANAGEMENT_KEY, "cpa_api": API_KEY},
    )
    page = client.get(finish_url(deployment)).content.decode()
    assert "server_name api.example.com;" in page
    assert "location ^~ /v0/resource/plugins/" in page
    assert "map $http_upgrade $connection_upgrade" in page
    assert "••••" + ADMIN_KEY[-4:] in page
    assert "••••" + MANAGEMENT_KEY[-4:] in page
    assert "http://cli-proxy-api:8317" in page
    assert "secret-key: &quot;&lt;your CPA Management Key&gt;&quot;" in page
    assert "allow-remote: true" in page
    assert reverse("admin:routes_deployment_first_setup", args=[deployment.pk]) in page
    for secret in (ADMIN_KEY, MANAGEMENT_KEY, API_KEY):
        assert secret not in page
    assert 'data-copy-target="#wizard-site-config"' in page


def test_the_end_page_shows_the_config_render_site_produces(client, owner, deployment):
    client.force_login(owner)
    page = client.get(finish_url(deployment)).content.decode()
    first_line = render_site(deployment).splitlines()[0]
    from django.utils.html import escape

    assert escape(first_line) in page


def test_the_end_page_offers_no_reveal_to_an_operator(client, operator, deployment):
    client.force_login(operator)
    page = client.get(finish_url(deployment)).content.decode()
    assert reverse("admin:routes_deployment_first_setup", args=[deployment.pk]) not in page
    assert reverse("admin:routes_deployment_verify", args=[deployment.pk]) in page


def test_the_end_page_of_a_cpa_panel_deployment_skips_the_cpamp_setup(client, owner, deployment):
    deployment.mode = Deployment.Mode.CPA_PANEL
    deployment.save()
    client.force_login(owner)
    page = client.get(finish_url(deployment)).content.decode()
    assert "there is no CPAMP first setup" in page


def test_the_session_never_holds_a_secret(client, owner, team):
    client.force_login(owner)
    client.post(reverse(START), step1(team))
    deployment = Deployment.objects.get(slug="prod")
    client.post(keys_url(deployment), {"cpa_management": ADMIN_KEY})  # refused
    client.post(
        keys_url(deployment),
        {"cpamp_admin": ADMIN_KEY, "cpa_management": MANAGEMENT_KEY, "cpa_api": API_KEY},
    )
    raw = client.session.session_key
    from django.contrib.sessions.models import Session

    stored = str(Session.objects.get(session_key=raw).get_decoded())
    for secret in (ADMIN_KEY, MANAGEMENT_KEY, API_KEY):
        assert secret not in stored
    assert client.session["console_wizard"] == {"deployment": deployment.pk, "step": 3}
    client.get(finish_url(deployment))
    assert "console_wizard" not in client.session


def test_the_dashboard_links_to_the_wizard(client, operator):
    client.force_login(operator)
    assert reverse(START) in client.get(reverse("admin:index")).content.decode()
