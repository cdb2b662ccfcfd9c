"""Admin smoke tests per role: changelists, search, add, change, inlines, write-only keys."""

from __future__ import annotations

import json
import secrets

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from routes import keys as keyring
from routes.forms import DeploymentForm
from routes.models import (
    DEFAULT_LIMIT_REQ_BURST,
    DOCKER_PRESET,
    AuditEvent,
    ConfigExport,
    Deployment,
    Key,
    KeyRotation,
    Membership,
    RouteOverride,
    Team,
)
from routes.workflows.keys import set_key

# --- Helpers shared by the admin, isolation and concurrency tests ------------------------------


def admin_secret() -> str:
    """Return a fresh CPAMP v1.10+ admin key."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "cpamp_" + "".join(secrets.choice(alphabet) for _ in range(32))


def management_secret() -> str:
    return "mgmt-" + secrets.token_hex(16)


def api_secret() -> str:
    return "sk-" + secrets.token_hex(16)


def _rows(prefix: str, rows: list[dict]) -> dict:
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": str(sum(1 for row in rows if row.get("id"))),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(rows):
        for name, value in row.items():
            if value is True:
                data[f"{prefix}-{index}-{name}"] = "on"
            elif value is not False and value is not None:
                data[f"{prefix}-{index}-{name}"] = str(value)
    return data


def override_rows(deployment: Deployment) -> list[dict]:
    """Return the inline rows of deployment's stored overrides, unchanged."""
    return [
        {
            "id": o.pk,
            "deployment": deployment.pk,
            "match": o.match,
            "path": o.path,
            "target": o.target,
            "enabled": o.enabled,
            "position": o.position,
            "note": o.note,
        }
        for o in deployment.overrides.all()
    ]


def key_rows(deployment: Deployment) -> list[dict]:
    """Return the inline rows of deployment's stored keys, secrets left blank (kept)."""
    return [
        {
            "id": k.pk,
            "deployment": deployment.pk,
            "role": k.role,
            "label": k.label,
            "custom_format": k.custom_format,
            "secret": "",
        }
        for k in deployment.keys.all()
    ]


def deployment_data(
    deployment: Deployment | None = None,
    *,
    overrides: list[dict] | None = None,
    keys: list[dict] | None = None,
    **changes,
) -> dict:
    """Return POST data for the deployment add/change form, with inline rows."""
    values: dict = {}
    if deployment is not None:
        for name in DeploymentForm.Meta.fields:
            values[name] = deployment.team_id if name == "team" else getattr(deployment, name)
        values["loaded_version"] = deployment.version
        if overrides is None:
            overrides = override_rows(deployment)
        if keys is None:
            keys = key_rows(deployment)
    values.update(changes)
    data = {}
    for name, value in values.items():
        if value is True:
            data[name] = "on"
        elif value is not False and value is not None:
            data[name] = str(value)
    data.update(_rows("overrides", overrides or []))
    data.update(_rows("keys", keys or []))
    return data


def change_url(deployment: Deployment) -> str:
    return reverse("admin:routes_deployment_change", args=[deployment.pk])


ADD_URL = "/admin/routes/deployment/add/"
CHANGELIST_URL = "/admin/routes/deployment/"


def new_deployment_data(team: Team, *, keys: list[dict] | None = None, **changes) -> dict:
    """Return POST data for the add form: a valid deployment "staging" with the Docker preset."""
    values = {
        "name": "Staging",
        "slug": "staging",
        "team": team.pk,
        "mode": "manager_server",
        "server_name": "staging.example.com",
        "http_port": 80,
        "https_port": 443,
        "http2": True,
        "resolver": "127.0.0.11",
        "client_max_body_size": "64m",
        "proxy_read_timeout": 3600,
        "proxy_send_timeout": 3600,
        "route_tracing": True,
        "client_ip": "edge",
        "limit_req_burst": DEFAULT_LIMIT_REQ_BURST,
        "topology": "docker",
        # The add form shows the Docker preset's addresses; a browser sends them back.
        **DOCKER_PRESET,
    }
    return deployment_data(keys=keys, **{**values, **changes})


def messages_of(errors) -> str:
    """Return the plain messages of an ErrorList (str() would give escaped HTML)."""
    return " ".join(str(message) for message in errors)


# --- Changelist and search ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "operator", "owner", "superuser"])
def test_each_role_sees_the_changelist_and_can_search(client, users, deployment, role):
    client.force_login(users[role])
    response = client.get(CHANGELIST_URL)
    assert response.status_code == 200
    assert "api.example.com" in response.content.decode()
    found = client.get(CHANGELIST_URL, {"q": "api.example"})
    assert "prod" in found.content.decode()
    missing = client.get(CHANGELIST_URL, {"q": "no-such-thing"})
    assert "api.example.com" not in missing.content.decode()


# Status of each core admin page per role: 200 where the role may open it, 403 where not.
PAGE_MATRIX = {
    #  page                               viewer operator owner superuser
    "deployment_changelist": (200, 200, 200, 200),
    "deployment_add": (403, 200, 200, 200),
    "deployment_change": (200, 200, 200, 200),
    "deployment_delete": (403, 403, 200, 200),
    "deployment_history": (200, 200, 200, 200),
    "key_changelist": (200, 200, 200, 200),
    "key_add": (403, 403, 200, 200),
    "key_change": (200, 200, 200, 200),
    "key_delete": (403, 403, 200, 200),
    "team_changelist": (200, 200, 200, 200),
    "team_add": (403, 403, 200, 200),
    "team_change": (200, 200, 200, 200),
    "team_delete": (403, 403, 403, 200),
    "membership_changelist": (200, 200, 200, 200),
    "membership_add": (403, 403, 200, 200),
    "membership_change": (200, 200, 200, 200),
}


@pytest.mark.parametrize("page", sorted(PAGE_MATRIX))
def test_each_role_opens_exactly_the_core_pages_it_may(client, users, deployment, team, page):
    key = Key(deployment=deployment, role="cpa_api")
    key.set_secret(api_secret())
    key.save()
    membership = Membership.objects.get(user=users["viewer"], team=team)
    args = {
        "deployment": deployment.pk,
        "key": key.pk,
        "team": team.pk,
        "membership": membership.pk,
    }[page.split("_")[0]]
    view = page.split("_", 1)[1]
    url = reverse(f"admin:routes_{page}", args=[] if view in ("changelist", "add") else [args])
    roles = ("viewer", "operator", "owner", "superuser")
    for role, expected in zip(roles, PAGE_MATRIX[page], strict=True):
        client.force_login(users[role])
        assert client.get(url).status_code == expected, (role, url)


def test_the_changelist_shows_which_key_roles_are_present(client, users, deployment):
    Key.objects.create(deployment=deployment, role=keyring.CPAMP_ADMIN)
    for label in ("a", "b"):
        key = Key(deployment=deployment, role=keyring.CPA_API, label=label)
        key.set_secret(api_secret())
        key.save()
    client.force_login(users["viewer"])
    html = client.get(CHANGELIST_URL).content.decode()
    assert "CPAMP admin" in html
    assert "CPA API ×2" in html
    assert "CPA management" not in html


def test_the_changelist_makes_no_query_per_deployment(client, users, team):
    client.force_login(users["viewer"])

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(CHANGELIST_URL).status_code == 200
        return len(ctx.captured_queries)

    def add(n: int) -> None:
        for i in range(n):
            d = Deployment.objects.create(
                slug=f"d{Deployment.objects.count()}-{i}",
                name="D",
                team=team,
                server_name=f"d{i}-{Deployment.objects.count()}.example.com",
            )
            for role, secret in ((keyring.CPAMP_ADMIN, admin_secret()), ("cpa_api", api_secret())):
                key = Key(deployment=d, role=role)
                key.set_secret(secret)
                key.save()

    add(2)
    few = count_queries()
    add(6)
    assert count_queries() == few


def test_the_team_filter_lists_only_the_users_teams(client, users, team, other_team):
    third = Team.objects.create(name="Third", slug="third")
    Membership.objects.create(user=users["viewer"], team=third, role="viewer")
    client.force_login(users["viewer"])
    html = client.get(CHANGELIST_URL).content.decode()
    assert f"team__id__exact={team.pk}" in html
    assert f"team__id__exact={other_team.pk}" not in html


# --- Add: presets and refusals ----------------------------------------------------------------


def test_an_operator_adds_a_deployment_with_the_host_preset(client, users, team):
    client.force_login(users["operator"])
    data = new_deployment_data(team, topology="host")
    response = client.post(ADD_URL, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    created = Deployment.objects.get(slug="staging")
    assert created.cpa_upstream == "127.0.0.1:8317"
    assert created.cpamp_upstream == "127.0.0.1:18317"
    assert created.cpamp_cpa_url == "http://127.0.0.1:8317"
    assert created.created_by == users["operator"]
    assert AuditEvent.objects.filter(action="deployment.create", object_id=str(created.pk)).exists()


def test_an_owner_creates_a_deployment_with_overrides_and_three_keys_at_once(client, users, team):
    client.force_login(users["owner"])
    admin_key, management_key, api_key = admin_secret(), management_secret(), api_secret()
    data = new_deployment_data(
        team,
        keys=[
            {"role": "cpamp_admin", "secret": admin_key},
            {"role": "cpa_management", "secret": management_key},
            {"role": "cpa_api", "label": "ci", "secret": api_key},
        ],
    )
    data.update(
        {
            "overrides-TOTAL_FORMS": "1",
            "overrides-0-match": "prefix",
            "overrides-0-path": "/config/",
            "overrides-0-target": "cpamp",
            "overrides-0-enabled": "on",
            "overrides-0-position": "0",
        }
    )
    response = client.post(ADD_URL, data, follow=True)
    assert response.status_code == 200
    created = Deployment.objects.get(slug="staging")
    assert created.overrides.get().path == "/config/"
    assert sorted(created.keys.values_list("role", flat=True)) == [
        "cpa_api",
        "cpa_management",
        "cpamp_admin",
    ]
    for secret in (admin_key, management_key, api_key):
        assert secret not in response.content.decode()


def test_without_a_preset_a_blank_upstream_is_refused_by_name(client, users, team):
    client.force_login(users["operator"])
    response = client.post(ADD_URL, new_deployment_data(team, topology="", cpa_upstream=""))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "cpa_upstream" in form.errors
    assert "topology preset" in messages_of(form.errors["cpa_upstream"])
    assert not Deployment.objects.filter(slug="staging").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("server_name", "bad_name.example.com", "not a valid host name label"),
        ("cpa_upstream", "http://cli-proxy-api:8317", "without a scheme"),
        ("cpamp_cpa_url", "https://staging.example.com", "loop"),
        ("client_max_body_size", "64 MB", "size such as 64m"),
        ("ssl_certificate", "/etc/ssl/a b.pem", "may only contain"),
    ],
)
def test_refused_inputs_are_explained_on_their_field(client, users, team, field, value, message):
    client.force_login(users["operator"])
    response = client.post(ADD_URL, new_deployment_data(team, **{field: value}))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in messages_of(errors[field])


def test_an_idn_server_name_is_stored_as_punycode(client, users, team):
    client.force_login(users["operator"])
    response = client.post(ADD_URL, new_deployment_data(team, server_name="bücher.example"))
    assert response.status_code == 302
    assert Deployment.objects.get(slug="staging").server_name == "xn--bcher-kva.example"


def test_a_regex_override_that_does_not_compile_is_refused_on_its_row(client, users, deployment):
    client.force_login(users["operator"])
    data = deployment_data(
        deployment,
        overrides=[
            {
                "match": "regex",
                "path": "^/v1/(unclosed",
                "target": "cpa",
                "enabled": True,
                "position": 0,
            }
        ],
    )
    response = client.post(change_url(deployment), data)
    assert response.status_code == 200
    inline = response.context["inline_admin_formsets"][0].formset
    assert "does not compile" in str(inline.errors[0]["path"])
    assert not deployment.overrides.exists()


def test_a_viewer_cannot_open_the_add_page(client, users):
    client.force_login(users["viewer"])
    assert client.get(ADD_URL).status_code == 403


# --- Change: overrides, versions -----------------------------------------------------------------


def test_an_operator_edits_a_deployment_and_its_overrides(client, users, deployment):
    client.force_login(users["operator"])
    data = deployment_data(
        deployment,
        name="Prod EU",
        overrides=[
            {
                "match": "prefix",
                "path": "/config/",
                "target": "cpamp",
                "enabled": True,
                "position": 1,
                "note": "panel",
            }
        ],
    )
    response = client.post(change_url(deployment), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    deployment.refresh_from_db()
    assert deployment.name == "Prod EU"
    assert deployment.version == 2  # one save, one version, however many rows changed
    override = deployment.overrides.get()
    assert (override.match, override.path, override.target) == ("prefix", "/config/", "cpamp")
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"deployment.change", "override.create"} <= actions
    change = AuditEvent.objects.get(action="deployment.change")
    assert change.changes["name"] == ["Production", "Prod EU"]
    assert change.changes["version"] == [1, 2]


def test_deleting_an_override_is_recorded_and_moves_the_version(client, users, deployment):
    override = RouteOverride.objects.create(deployment=deployment, path="/logs/", target="cpamp")
    client.force_login(users["operator"])
    rows = override_rows(deployment)
    rows[0]["DELETE"] = True
    response = client.post(change_url(deployment), deployment_data(deployment, overrides=rows))
    assert response.status_code == 302
    assert not RouteOverride.objects.filter(pk=override.pk).exists()
    deployment.refresh_from_db()
    assert deployment.version == 2
    assert AuditEvent.objects.filter(action="override.delete").exists()


def test_a_viewer_sees_a_read_only_page_and_cannot_post(client, users, deployment):
    client.force_login(users["viewer"])
    page = client.get(change_url(deployment))
    assert page.status_code == 200
    assert 'name="server_name"' not in page.content.decode()
    response = client.post(change_url(deployment), deployment_data(deployment, name="Hacked"))
    assert response.status_code == 403
    deployment.refresh_from_db()
    assert deployment.name == "Production"


def test_the_change_page_warns_about_an_old_cpa_version(client, users, deployment):
    deployment.cpa_version = "v6.9.0"
    deployment.save()
    client.force_login(users["viewer"])
    html = client.get(change_url(deployment)).content.decode()
    assert "CPA below v6.10.8" in html


def test_page_links_and_actions_of_the_deployment_admin_appear(
    client, users, deployment, monkeypatch
):
    from django.contrib import admin as django_admin

    @django_admin.action(description="Frobnicate")
    def frobnicate(modeladmin, request, queryset):
        return None

    model_admin = django_admin.site.get_model_admin(Deployment)
    monkeypatch.setattr(
        type(model_admin),
        "page_links",
        lambda self, request, d: [("Console link", f"/x/{d.slug}/")],
    )
    monkeypatch.setattr(model_admin, "actions", [*model_admin.actions, frobnicate])
    client.force_login(users["operator"])
    assert "/x/prod/" in client.get(change_url(deployment)).content.decode()
    assert "frobnicate" in client.get(CHANGELIST_URL).content.decode()


# --- Keys: write-only, rules, rotation -----------------------------------------------------------


def test_an_owner_adds_three_keys_and_no_page_renders_them(client, users, deployment):
    client.force_login(users["owner"])
    admin_key, management_key, api_key = admin_secret(), management_secret(), api_secret()
    data = deployment_data(
        deployment,
        keys=[
            {"role": "cpamp_admin", "secret": admin_key},
            {"role": "cpa_management", "secret": management_key},
            {"role": "cpa_api", "label": "ci", "secret": api_key},
        ],
    )
    response = client.post(change_url(deployment), data, follow=True)
    assert response.status_code == 200
    assert deployment.keys.count() == 3
    pages = [
        response,
        client.get(change_url(deployment)),
        client.get(CHANGELIST_URL),
        client.get("/admin/routes/key/"),
        *[client.get(f"/admin/routes/key/{key.pk}/change/") for key in deployment.keys.all()],
    ]
    for page in pages:
        html = page.content.decode()
        for secret in (admin_key, management_key, api_key):
            assert secret not in html
    html = client.get(change_url(deployment)).content.decode()
    assert "••••" + api_key[-4:] in html
    assert {k.reveal() for k in deployment.keys.all()} == {admin_key, management_key, api_key}


def test_a_refused_key_is_never_rendered_back(client, users, deployment):
    client.force_login(users["owner"])
    bad = "cpamp_" + "x" * 20 + "-not-shaped"
    data = deployment_data(deployment, keys=[{"role": "cpamp_admin", "secret": bad}])
    response = client.post(change_url(deployment), data)
    assert response.status_code == 200
    assert bad not in response.content.decode()
    assert "expected cpamp_ followed by 32" in response.content.decode()


@pytest.mark.parametrize(
    ("role", "secret", "message"),
    [
        ("cpa_api", "your-api-key-1", "CPA API Key: your-api-key-1 is CPA's template placeholder"),
        ("cpa_management", "cpamp_" + "a" * 32, "CPA Management Key: this looks like a CPAMP"),
        ("cpa_api", "k" * 513, "CPA API Key: a key must be 1 to 512 characters"),
        ("cpa_api", "has space inside", "CPA API Key: a key may not contain whitespace"),
    ],
)
def test_each_key_refusal_names_the_rule_and_the_role(
    client, users, deployment, role, secret, message
):
    client.force_login(users["owner"])
    response = client.post(
        change_url(deployment), deployment_data(deployment, keys=[{"role": role, "secret": secret}])
    )
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][1].formset.errors
    assert message in messages_of(errors[0]["secret"])
    assert not deployment.keys.exists()


def test_a_secret_reused_across_roles_is_refused(client, users, deployment):
    shared = management_secret()
    client.force_login(users["owner"])
    response = client.post(
        change_url(deployment),
        deployment_data(
            deployment,
            keys=[
                {"role": "cpa_management", "secret": shared},
                {"role": "cpa_api", "secret": shared},
            ],
        ),
    )
    errors = response.context["inline_admin_formsets"][1].formset.errors
    assert "Do not mix the three keys" in str(errors[1]["secret"])
    # Against a stored key too.
    key = Key(deployment=deployment, role="cpa_management")
    key.set_secret(shared)
    key.save()
    response = client.post(
        change_url(deployment),
        deployment_data(
            deployment, keys=[*key_rows(deployment), {"role": "cpa_api", "secret": shared}]
        ),
    )
    errors = response.context["inline_admin_formsets"][1].formset.errors
    assert "already stored as the CPA Management Key" in str(errors[1]["secret"])
    assert deployment.keys.count() == 1


def test_a_second_single_role_key_is_refused(client, users, deployment):
    client.force_login(users["owner"])
    response = client.post(
        change_url(deployment),
        deployment_data(
            deployment,
            keys=[
                {"role": "cpamp_admin", "secret": admin_secret()},
                {"role": "cpamp_admin", "secret": admin_secret()},
            ],
        ),
    )
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][1].formset.errors
    assert "CPAMP Admin Key: a deployment holds only one" in messages_of(errors[1]["role"])
    assert not deployment.keys.exists()
    # Against the stored key too: a new row may not take the slot of an existing key.
    set_key(deployment=deployment, role="cpamp_admin", secret=admin_secret())
    deployment.refresh_from_db()
    rows = [*key_rows(deployment), {"role": "cpamp_admin", "secret": admin_secret()}]
    response = client.post(change_url(deployment), deployment_data(deployment, keys=rows))
    errors = response.context["inline_admin_formsets"][1].formset.errors
    assert "holds only one" in messages_of(errors[1]["role"])
    assert deployment.keys.count() == 1


def test_a_custom_admin_key_needs_the_explicit_mark(client, users, deployment):
    client.force_login(users["owner"])
    custom = "my-own-admin-key-123"
    refused = client.post(
        change_url(deployment),
        deployment_data(deployment, keys=[{"role": "cpamp_admin", "secret": custom}]),
    )
    assert refused.status_code == 200
    accepted = client.post(
        change_url(deployment),
        deployment_data(
            deployment, keys=[{"role": "cpamp_admin", "secret": custom, "custom_format": True}]
        ),
    )
    assert accepted.status_code == 302
    assert deployment.keys.get().custom_format is True


def test_a_blank_secret_keeps_the_key_and_a_new_one_rotates_it(client, users, deployment):
    first, second = admin_secret(), admin_secret()
    key = Key(deployment=deployment, role="cpamp_admin")
    key.set_secret(first)
    key.save()
    client.force_login(users["owner"])
    rows = key_rows(deployment)
    rows[0]["label"] = "panel"
    assert (
        client.post(change_url(deployment), deployment_data(deployment, keys=rows)).status_code
        == 302
    )
    key.refresh_from_db()
    assert (key.reveal(), key.label) == (first, "panel")
    assert not KeyRotation.objects.exists()

    deployment.refresh_from_db()
    rows = key_rows(deployment)
    rows[0]["secret"] = second
    assert (
        client.post(change_url(deployment), deployment_data(deployment, keys=rows)).status_code
        == 302
    )
    key.refresh_from_db()
    assert key.reveal() == second
    assert key.rotated_by == users["owner"]
    rotation = KeyRotation.objects.get(key=key)
    assert rotation.previous_last4 == first[-4:]
    event = AuditEvent.objects.get(action="key.rotate")
    assert event.changes["secret"] == "changed"
    assert first not in json.dumps(event.changes) and second not in json.dumps(event.changes)


def test_an_owner_deletes_a_key_in_the_inline(client, users, deployment):
    key = Key(deployment=deployment, role="cpa_api")
    key.set_secret(api_secret())
    key.save()
    client.force_login(users["owner"])
    rows = key_rows(deployment)
    rows[0]["DELETE"] = True
    assert (
        client.post(change_url(deployment), deployment_data(deployment, keys=rows)).status_code
        == 302
    )
    assert not Key.objects.exists()
    assert AuditEvent.objects.filter(action="key.delete").exists()


def test_an_operator_sees_keys_masked_but_cannot_change_them(client, users, deployment):
    key = Key(deployment=deployment, role="cpa_api", label="ci")
    key.set_secret(api_secret())
    key.save()
    client.force_login(users["operator"])
    html = client.get(change_url(deployment)).content.decode()
    assert key.masked in html
    assert 'name="keys-0-secret"' not in html
    rows = key_rows(deployment)
    rows[0]["secret"] = api_secret()
    rows[0]["label"] = "changed"
    rows.append({"role": "cpa_api", "secret": api_secret()})
    response = client.post(change_url(deployment), deployment_data(deployment, keys=rows))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.label == "ci"
    assert deployment.keys.count() == 1


def test_an_operator_cannot_add_keys_on_the_add_page_of_a_team_they_do_not_own(
    client, make_user, team, other_team
):
    user = make_user("mixed", team=team, role="operator")
    Membership.objects.create(user=user, team=other_team, role="owner")
    client.force_login(user)
    data = new_deployment_data(team, keys=[{"role": "cpa_api", "secret": api_secret()}])
    response = client.post(ADD_URL, data)
    assert response.status_code == 200
    assert "Only owners of team ops manage its keys" in response.content.decode()
    assert not Deployment.objects.filter(slug="staging").exists()


def test_the_test_key_button_posts_to_the_verification_view(client, users, deployment):
    key = Key(deployment=deployment, role="cpa_api")
    key.set_secret(api_secret())
    key.save()
    client.force_login(users["operator"])
    html = client.get(change_url(deployment)).content.decode()
    try:
        url = reverse("admin:routes_deployment_test_key", args=[deployment.pk, key.pk])
    except Exception:  # the verification module is not installed in this checkout
        assert "Test this key" not in html
    else:
        assert f'formaction="{url}"' in html
        assert 'formmethod="post"' in html


# --- Actions -----------------------------------------------------------------------------------


def test_an_operator_downloads_definitions_without_secrets(client, users, deployment):
    secret = api_secret()
    key = Key(deployment=deployment, role="cpa_api")
    key.set_secret(secret)
    key.save()
    client.force_login(users["operator"])
    response = client.post(
        CHANGELIST_URL, {"action": "export_definitions", "_selected_action": [deployment.pk]}
    )
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    payload = json.loads(response.content)
    assert payload["deployments"][0]["slug"] == "prod"
    assert payload["deployments"][0]["keys"] == ["cpa_api"]
    assert secret not in response.content.decode()
    assert AuditEvent.objects.filter(action="definitions.export").exists()


def test_a_viewer_downloads_definitions_but_has_no_delete_action(client, users, deployment):
    client.force_login(users["viewer"])
    html = client.get(CHANGELIST_URL).content.decode()
    assert "delete_selected" not in html
    response = client.post(
        CHANGELIST_URL, {"action": "export_definitions", "_selected_action": [deployment.pk]}
    )
    assert response["Content-Disposition"] == 'attachment; filename="deployments.json"'


def test_an_owner_deletes_a_deployment_through_the_action(client, users, deployment):
    client.force_login(users["owner"])
    response = client.post(
        CHANGELIST_URL,
        {"action": "delete_selected", "_selected_action": [deployment.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not Deployment.objects.exists()
    assert AuditEvent.objects.filter(action="deployment.delete").exists()


def test_history_rows_do_not_block_the_owner_from_deleting_a_deployment(client, users, deployment):
    ConfigExport.objects.create(
        deployment=deployment, content_hash="0" * 64, text="x", source="admin"
    )
    key = Key(deployment=deployment, role="cpa_api")
    key.set_secret(api_secret())
    key.save()
    client.force_login(users["owner"])
    url = reverse("admin:routes_deployment_delete", args=[deployment.pk])
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Deployment.objects.exists()
    assert not ConfigExport.objects.exists()


def test_an_operator_may_not_delete_a_deployment(client, users, deployment):
    client.force_login(users["operator"])
    assert client.get(f"{change_url(deployment)[:-7]}delete/").status_code == 403
    client.post(
        CHANGELIST_URL,
        {"action": "delete_selected", "_selected_action": [deployment.pk], "post": "yes"},
    )
    assert Deployment.objects.exists()


# --- Teams, memberships, the key admin -----------------------------------------------------------


def test_an_owner_creates_a_team_and_becomes_its_owner(client, users):
    client.force_login(users["owner"])
    response = client.post("/admin/routes/team/add/", {"name": "Research", "slug": "research"})
    assert response.status_code == 302
    team = Team.objects.get(slug="research")
    assert Membership.objects.get(team=team, user=users["owner"]).role == "owner"
    assert AuditEvent.objects.filter(action="team.create", object_id=str(team.pk)).exists()


def test_a_viewer_cannot_create_teams(client, users):
    client.force_login(users["viewer"])
    assert client.get("/admin/routes/team/add/").status_code == 403


def test_an_owner_adds_a_member_by_username_who_becomes_staff(
    client, users, team, django_user_model
):
    newcomer = django_user_model.objects.create_user("nina", password="pw-Str0ng-enough!")
    client.force_login(users["owner"])
    response = client.post(
        "/admin/routes/membership/add/", {"username": "nina", "team": team.pk, "role": "viewer"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    newcomer.refresh_from_db()
    assert newcomer.is_staff
    assert Membership.objects.filter(user=newcomer, team=team, role="viewer").exists()
    assert AuditEvent.objects.filter(action="membership.add").exists()


def test_adding_an_unknown_username_is_explained(client, users, team):
    client.force_login(users["owner"])
    response = client.post(
        "/admin/routes/membership/add/", {"username": "ghost", "team": team.pk, "role": "viewer"}
    )
    assert response.status_code == 200
    assert "No account is called ghost" in response.content.decode()


def test_the_last_owner_cannot_be_demoted(client, users, team):
    membership = Membership.objects.get(user=users["owner"], team=team)
    client.force_login(users["owner"])
    response = client.post(f"/admin/routes/membership/{membership.pk}/change/", {"role": "viewer"})
    assert response.status_code == 200
    assert "needs at least one owner" in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == "owner"


def test_an_owner_changes_and_removes_members(client, users, team):
    membership = Membership.objects.get(user=users["viewer"], team=team)
    client.force_login(users["owner"])
    url = f"/admin/routes/membership/{membership.pk}/change/"
    assert client.post(url, {"role": "operator"}).status_code == 302
    membership.refresh_from_db()
    assert membership.role == "operator"
    response = client.post(f"/admin/routes/membership/{membership.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    users["viewer"].refresh_from_db()
    assert not users["viewer"].is_staff
    assert {"membership.change", "membership.remove"} <= set(
        AuditEvent.objects.values_list("action", flat=True)
    )


def test_an_operator_cannot_manage_members(client, users, team):
    membership = Membership.objects.get(user=users["viewer"], team=team)
    client.force_login(users["operator"])
    assert client.get("/admin/routes/membership/add/").status_code == 403
    assert (
        client.post(
            f"/admin/routes/membership/{membership.pk}/change/", {"role": "owner"}
        ).status_code
        == 403
    )


def test_the_key_admin_adds_and_rotates_keys_write_only(client, users, deployment):
    client.force_login(users["owner"])
    first, second = api_secret(), api_secret()
    response = client.post(
        "/admin/routes/key/add/",
        {
            "deployment": deployment.pk,
            "role": "cpa_api",
            "label": "ci",
            "secret": first,
            **_rows("rotations", []),
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    key = Key.objects.get()
    page = client.get(f"/admin/routes/key/{key.pk}/change/").content.decode()
    assert first not in page and key.masked in page
    response = client.post(
        f"/admin/routes/key/{key.pk}/change/",
        {"label": "ci", "secret": second, **_rows("rotations", [])},
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.reveal() == second
    assert KeyRotation.objects.filter(key=key).count() == 1


def test_the_key_admin_refuses_reuse_on_the_secret_field(client, users, deployment):
    shared = management_secret()
    key = Key(deployment=deployment, role="cpa_management")
    key.set_secret(shared)
    key.save()
    client.force_login(users["owner"])
    response = client.post(
        "/admin/routes/key/add/",
        {
            "deployment": deployment.pk,
            "role": "cpa_api",
            "secret": shared,
            **_rows("rotations", []),
        },
    )
    assert response.status_code == 200
    assert "already stored as the CPA Management Key" in str(
        response.context["adminform"].form.errors["secret"]
    )


def test_an_operator_cannot_use_the_key_admin_to_write(client, users, deployment):
    client.force_login(users["operator"])
    assert client.get("/admin/routes/key/").status_code == 200
    assert client.get("/admin/routes/key/add/").status_code == 403
