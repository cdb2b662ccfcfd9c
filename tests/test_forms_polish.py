"""Issue 15's forms: the wizard derives the slug and keeps the keys it accepts, the plain add form
offers the wizard's presets and never fills a blank upstream, and a verification job has no
"Save and add another" and goes back to the verification page it was opened from."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from django.urls import reverse

from routes.admin.wizard import DeploymentStepForm
from routes.models import DOCKER_PRESET, HOST_PRESET, PRESETS, Deployment, Key, VerificationJob
from tests.test_wizard import ADMIN_KEY, API_KEY, MANAGEMENT_KEY, START, keys_url, step1

ADD_URL = reverse("admin:routes_deployment_add")


def form_values(form) -> dict:
    """Return what a browser sends back for an unbound form: each field's shown value."""
    data: dict = {}
    for name in form.fields:
        value = form[name].value()
        if isinstance(value, list | tuple):
            data[name] = [str(item) for item in value]
        elif value is True:
            data[name] = "on"
        elif value not in (None, False):
            data[name] = str(value)
    return data


def add_form_data(client, team, **changes) -> dict:
    """Return the add form's POST data as the page shows it (no inline rows), with changes."""
    page = client.get(ADD_URL)
    assert page.status_code == 200
    data = form_values(page.context["adminform"].form)
    for formset in page.context["inline_admin_formsets"]:
        prefix = formset.formset.prefix
        data.update(
            {
                f"{prefix}-TOTAL_FORMS": "0",
                f"{prefix}-INITIAL_FORMS": "0",
                f"{prefix}-MIN_NUM_FORMS": "0",
                f"{prefix}-MAX_NUM_FORMS": "1000",
            }
        )
    data.update(
        {"name": "Staging", "slug": "staging", "team": str(team.pk)},
        server_name="staging.example.com",
    )
    data.update({name: str(value) for name, value in changes.items()})
    return data


def errors_of(response, field: str) -> str:
    return " ".join(str(e) for e in response.context["adminform"].form.errors.get(field, []))


# --- The wizard: slug and keys ----------------------------------------------------------------


def test_the_wizard_slug_follows_the_name_as_on_the_plain_form(client, operator, team):
    client.force_login(operator)
    page = client.get(reverse(START)).content.decode()
    slug_input = re.search(r'<input[^>]*name="slug"[^>]*>', page).group(0)
    assert 'data-slug-from="#id_name"' in slug_input
    # The script that reads it, and the plain form's own prepopulated slug.
    assert "console/console.js" in page
    add_page = client.get(ADD_URL).content.decode()
    assert "prepopulate" in add_page


def test_the_wizard_derives_a_blank_slug_from_the_name(client, operator, team):
    client.force_login(operator)
    response = client.post(reverse(START), step1(team, name="Gateway Zürich 2", slug=""))
    assert response.status_code == 302
    assert Deployment.objects.get(name="Gateway Zürich 2").slug == "gateway-zurich-2"


def test_the_wizard_keeps_a_slug_the_user_gave(client, operator, team):
    client.force_login(operator)
    client.post(reverse(START), step1(team, name="Gateway", slug="gw_1"))
    assert Deployment.objects.get(name="Gateway").slug == "gw_1"


def test_a_name_without_letters_to_derive_from_asks_for_the_slug(client, operator, team):
    client.force_login(operator)
    response = client.post(reverse(START), step1(team, name="生产网关", slug=""))
    assert response.status_code == 200
    errors = response.context["form"].errors["slug"]
    assert "cannot be derived from this name" in " ".join(errors)
    assert not Deployment.objects.exists()


def test_one_refused_key_of_three_leaves_the_two_others_stored_and_the_page_says_so(
    client, owner, team
):
    client.force_login(owner)
    client.post(reverse(START), step1(team))
    deployment = Deployment.objects.get(slug="prod")
    response = client.post(
        keys_url(deployment),
        # The admin key where the management key goes: refused by the key rules.
        {"cpamp_admin": ADMIN_KEY, "cpa_management": ADMIN_KEY, "cpa_api": API_KEY},
    )
    assert response.status_code == 200
    stored = {key.role: key.reveal() for key in deployment.keys.all()}
    assert stored == {"cpamp_admin": ADMIN_KEY, "cpa_api": API_KEY}
    page = unescape(response.content.decode())
    callout = page.split('id="keys-partly-stored"', 1)[1].split("</div>", 1)[0]
    assert "Not stored: CPA Management Key." in callout
    assert "Stored: CPAMP Admin Key, CPA API Key." in callout
    assert "2 keys stored encrypted: CPAMP Admin Key, CPA API Key." in page
    # The stored keys are listed masked; no secret is ever written back into the page.
    assert "••••" + ADMIN_KEY[-4:] in page and "••••" + API_KEY[-4:] in page
    for secret in (ADMIN_KEY, API_KEY):
        assert secret not in page
    for name in ("cpamp_admin", "cpa_management", "cpa_api"):
        field = re.search(rf'<input[^>]*name="{name}"[^>]*>', page).group(0)
        assert "value=" not in field
    # The step is not done: the next visit still lands on the keys.
    assert client.session["console_wizard"]["step"] == 2


def test_fixing_the_refused_key_then_finishes_the_step(client, owner, deployment):
    client.force_login(owner)
    client.post(
        keys_url(deployment),
        {"cpamp_admin": ADMIN_KEY, "cpa_management": ADMIN_KEY, "cpa_api": API_KEY},
    )
    response = client.post(keys_url(deployment), {"cpa_management": MANAGEMENT_KEY})
    assert response.status_code == 302
    assert sorted(deployment.keys.values_list("role", flat=True)) == [
        "cpa_api",
        "cpa_management",
        "cpamp_admin",
    ]


def test_an_api_key_whose_label_is_refused_is_not_stored(client, owner, deployment):
    client.force_login(owner)
    response = client.post(
        keys_url(deployment),
        {"cpa_management": MANAGEMENT_KEY, "cpa_api": API_KEY, "api_label": "x" * 101},
    )
    assert response.status_code == 200
    assert list(deployment.keys.values_list("role", flat=True)) == ["cpa_management"]
    assert "Not stored: CPA API Key." in unescape(response.content.decode())


def test_a_viewer_stores_no_key_in_the_wizard(client, viewer, deployment):
    client.force_login(viewer)
    response = client.post(keys_url(deployment), {"cpa_api": API_KEY})
    assert response.status_code == 403
    assert not Key.objects.exists()


# --- The plain add form: the wizard's presets, no silent fill ---------------------------------


def test_the_plain_add_form_offers_the_wizards_topology_presets(client, operator, team):
    client.force_login(operator)
    page = client.get(ADD_URL)
    html = page.content.decode()
    offered = set(re.findall(r'<input[^>]*name="topology"[^>]*value="([a-z]*)"', html))
    wizard = {value for value, _ in DeploymentStepForm.base_fields["topology"].choices}
    assert offered == wizard == {"docker", "host", "custom"}
    presets = json.loads(unescape(re.search(r'data-wizard-presets="([^"]*)"', html).group(1)))
    assert presets == {name: dict(values) for name, values in PRESETS.items()}
    # The fields show the addresses that will be saved: nothing is filled in behind the page.
    form = page.context["adminform"].form
    assert {name: form[name].value() for name in DOCKER_PRESET} == DOCKER_PRESET
    assert form["topology"].value() == "docker"


def test_choosing_a_preset_without_javascript_sets_the_preset_addresses(client, operator, team):
    client.force_login(operator)
    response = client.post(ADD_URL, add_form_data(client, team, topology="host"))
    assert response.status_code == 302, response.content.decode()[:3000]
    created = Deployment.objects.get(slug="staging")
    assert {name: getattr(created, name) for name in HOST_PRESET} == HOST_PRESET


def test_a_typed_upstream_is_kept_whatever_the_preset(client, operator, team):
    client.force_login(operator)
    data = add_form_data(client, team, topology="docker", cpa_upstream="10.0.0.5:8317")
    response = client.post(ADD_URL, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    created = Deployment.objects.get(slug="staging")
    assert created.cpa_upstream == "10.0.0.5:8317"
    assert created.cpamp_upstream == DOCKER_PRESET["cpamp_upstream"]


@pytest.mark.parametrize("topology", ["docker", "host", "custom"])
def test_a_blank_upstream_is_refused_by_name_never_filled_in(client, operator, team, topology):
    client.force_login(operator)
    data = add_form_data(client, team, topology=topology, cpamp_upstream="")
    response = client.post(ADD_URL, data)
    assert response.status_code == 200
    assert "Required: type the address, or choose a topology preset to fill it in." in errors_of(
        response, "cpamp_upstream"
    )
    assert not Deployment.objects.filter(slug="staging").exists()


# --- Verification jobs: one per deployment, and back to the verification page ----------------


@pytest.fixture
def job(deployment):
    return VerificationJob.objects.create(deployment=deployment)


def job_form_data(client, url: str, **changes) -> dict:
    page = client.get(url)
    assert page.status_code == 200
    data = form_values(page.context["adminform"].form)
    data.pop("deployment", None)  # read-only on a stored job
    data.update({name: str(value) for name, value in changes.items()})
    return data


def test_a_job_page_offers_no_save_and_add_another(client, operator, job, other_team):
    client.force_login(operator)
    for url in (
        reverse("admin:routes_verificationjob_change", args=[job.pk]),
        reverse("admin:routes_verificationjob_add"),
    ):
        page = client.get(url).content.decode()
        assert 'name="_save"' in page
        assert 'name="_addanother"' not in page


def test_saving_a_job_goes_back_to_the_verification_page_it_was_opened_from(
    client, operator, deployment, job
):
    client.force_login(operator)
    verify_url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    page = client.get(verify_url).content.decode()
    edit = unescape(re.search(r'href="([^"]*verificationjob/\d+/change/[^"]*)"', page).group(1))
    assert edit.startswith(reverse("admin:routes_verificationjob_change", args=[job.pk]) + "?")
    response = client.post(edit, job_form_data(client, edit, timeout_seconds="7.5"))
    assert response.status_code == 302
    assert response["Location"] == verify_url
    job.refresh_from_db()
    assert job.timeout_seconds == 7.5


def test_save_and_continue_keeps_the_way_back(client, operator, deployment, job):
    client.force_login(operator)
    verify_url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    edit = reverse("admin:routes_verificationjob_change", args=[job.pk]) + f"?next={verify_url}"
    data = {**job_form_data(client, edit), "_continue": "1"}
    response = client.post(edit, data)
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith(reverse("admin:routes_verificationjob_change", args=[job.pk]))
    assert f"next={verify_url.replace('/', '%2F')}" in location
    again = client.post(location, job_form_data(client, location))
    assert again["Location"] == verify_url


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/phish", "//evil.example/phish", "javascript:alert(1)", "http:///x"],
)
def test_a_job_never_sends_the_user_to_another_site(client, operator, job, target):
    client.force_login(operator)
    edit = reverse("admin:routes_verificationjob_change", args=[job.pk])
    response = client.post(f"{edit}?next={target}", job_form_data(client, edit))
    assert response.status_code == 302
    assert "evil.example" not in response["Location"]
    assert response["Location"] == reverse("admin:routes_verificationjob_changelist")


# --- Layout helpers: columns, addresses, the check rows the page redraws ----------------------


def test_the_deployment_list_keeps_the_columns_an_operator_decides_by(client, viewer, deployment):
    client.force_login(viewer)
    page = client.get(reverse("admin:routes_deployment_changelist")).content.decode()
    columns = re.findall(r'<th scope="col" class="[^"]*column-([a-z_]+)', page)
    assert columns == ["title", "domain", "key_roles", "last_run", "drift"]
    for moved in ("column-mode", "column-updated_at", "column-team"):
        assert moved not in page


def test_a_member_of_several_teams_sees_which_team_a_deployment_is_in(
    client, make_user, team, other_team, deployment
):
    user = make_user("multi", team=team)
    other_team.memberships.create(user=user, role="viewer")
    client.force_login(user)
    page = client.get(reverse("admin:routes_deployment_changelist")).content.decode()
    assert "column-team" in page


def test_urls_break_after_slashes_and_domains_only_between_labels():
    from routes.templatetags.console_wrap import domain_breaks, url_breaks

    assert str(url_breaks("http://a.example/v0/x?y=1&z=<2>")) == (
        '<span class="console-url" title="http://a.example/v0/x?y=1&amp;z=&lt;2&gt;">'
        "http://<wbr>a.example/<wbr>v0/<wbr>x<wbr>?y=1<wbr>&amp;z=&lt;2&gt;</span>"
    )
    assert str(domain_breaks("api.my-gateway.example")) == (
        '<span class="console-domain" title="api.my-gateway.example">'
        '<span class="console-label">api.</span><wbr>'
        '<span class="console-label">my-gateway.</span><wbr>'
        '<span class="console-label">example</span></span>'
    )


def test_the_progress_json_carries_what_the_reloaded_rows_show(client, viewer, deployment):
    from tests.test_verification_page import cpa_down_run

    run = cpa_down_run(deployment)
    run.results.filter(check_id="api_models").update(excerpt="x" * 400)
    client.force_login(viewer)
    data = client.get(reverse("admin:routes_verificationrun_progress", args=[run.pk])).json()
    page = client.get(reverse("admin:routes_deployment_verify", args=[deployment.pk]))
    row = next(r for r in data["rows"] if r["id"] == "api_models")
    assert row["excerpt"] == "x" * 299 + "…"
    assert f'title="{row["excerpt"]}"' in page.content.decode()
    # Each cell names its column, which a phone shows as the card's labels.
    html = page.content.decode()
    for label in ("Result", "Check", "Request", "Status", "Latency", "Note"):
        assert f'data-label="{label}"' in html


def test_the_run_queued_message_names_its_run_for_the_page_script(client, operator, deployment):
    client.force_login(operator)
    url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    response = client.post(url, follow=True)
    run = VerificationJob.objects.get(deployment=deployment).runs.get()
    page = response.content.decode()
    assert f'class="console-run-flash console-run-flash-{run.pk} success"' in page
    assert f"Verification run #{run.pk} queued." in page
    box = page.split('id="verify-run"', 1)[1].split(">", 1)[0]
    assert f'data-run-id="{run.pk}"' in box
    for outcome in ("passed", "failed", "error"):
        assert f"data-flash-{outcome}=" in box
