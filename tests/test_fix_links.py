"""Issue 15: a cause's fix link that opens an edit form brings the user back to the page they came
from once the form is saved, the verification page (of that run) or the run's own page, as saving
the job from the verification page does; a return path to another site is never followed."""

from __future__ import annotations

from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse

from routes.models import Deployment, VerificationRun
from tests.test_admin import deployment_data
from tests.test_forms_polish import form_values
from tests.test_verification_page import (
    EDIT_FORM_FIXES,
    FIXES,
    fix_links,
    make_run,
    plugin_override,
    run_page,
    verify_page,
)


def split_link(link: str) -> tuple[str, str, str]:
    """Return a fix link's path, its ?next= value and its fragment."""
    parts = urlsplit(unescape(link))
    (back,) = parse_qs(parts.query)["next"]
    return f"{parts.path}?{parts.query}", back, parts.fragment


def form_data(client, url: str, deployment: Deployment) -> dict:
    """Return the POST data of the form at url as the page shows it, the upstream changed."""
    page = client.get(url)
    assert page.status_code == 200
    if "verificationjob" in url:
        data = form_values(page.context["adminform"].form)
        data.pop("deployment", None)  # read-only on a stored job
        return {**data, "timeout_seconds": "7.5"}
    return deployment_data(deployment, cpa_upstream="127.0.0.1:8318")


def fix_run(deployment: Deployment, kind: str) -> VerificationRun:
    if kind == "override":
        plugin_override(deployment)
    run = make_run(deployment, [FIXES[kind][0]])
    assert run.causes[0]["fix"]["kind"] == kind
    return run


@pytest.mark.parametrize("kind", EDIT_FORM_FIXES)
def test_saving_the_form_of_a_fix_link_goes_back_to_the_verification_page(
    client, users, deployment, kind
):
    run = fix_run(deployment, kind)
    client.force_login(users[FIXES[kind][1]])
    here = reverse("admin:routes_deployment_verify", args=[deployment.pk]) + f"?run={run.pk}"
    url, back, anchor = split_link(fix_links(verify_page(client, deployment, run))[0])
    assert back == here
    form = client.get(url)
    assert form.status_code == 200 and f'id="{anchor}"' in form.content.decode()
    response = client.post(url, form_data(client, url, deployment))
    assert response.status_code == 302
    assert response["Location"] == here
    deployment.refresh_from_db()
    if kind == "base_url":
        assert deployment.verification_job.timeout_seconds == 7.5
    else:
        assert deployment.cpa_upstream == "127.0.0.1:8318"


@pytest.mark.parametrize("kind", EDIT_FORM_FIXES)
def test_a_fix_link_on_a_runs_page_goes_back_to_that_page(client, users, deployment, kind):
    run = fix_run(deployment, kind)
    client.force_login(users[FIXES[kind][1]])
    url, back, _anchor = split_link(fix_links(run_page(client, run))[0])
    assert back == reverse("admin:routes_verificationrun_change", args=[run.pk])
    response = client.post(url, form_data(client, url, deployment))
    assert response["Location"] == back


def test_the_live_redraw_links_back_to_the_page_that_polls(client, users, deployment):
    run = fix_run(deployment, "upstreams")
    client.force_login(users["operator"])
    page = verify_page(client, deployment, run)
    progress = unescape(page.split('data-progress-url="', 1)[1].split('"', 1)[0])
    live = client.get(progress).json()["cause_views"][0]["fixes"][0]["url"]
    assert live == unescape(fix_links(page)[0])


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/phish", "//evil.example/phish", "javascript:alert(1)", "http:///x"],
)
def test_a_return_path_to_another_site_is_never_followed(client, users, deployment, target):
    run = fix_run(deployment, "upstreams")
    client.force_login(users["operator"])
    progress = reverse("admin:routes_verificationrun_progress", args=[run.pk])
    live = client.get(progress, {"next": target}).json()["cause_views"][0]["fixes"][0]["url"]
    assert "evil.example" not in live and "javascript" not in live
    _url, back, _anchor = split_link(live)
    assert back == reverse("admin:routes_deployment_verify", args=[deployment.pk]) + (
        f"?run={run.pk}"
    )
    change = reverse("admin:routes_deployment_change", args=[deployment.pk])
    response = client.post(f"{change}?next={target}", deployment_data(deployment))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:routes_deployment_changelist")


def test_save_and_continue_on_the_deployment_keeps_the_way_back(client, users, deployment):
    client.force_login(users["operator"])
    here = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    change = reverse("admin:routes_deployment_change", args=[deployment.pk])
    data = {**deployment_data(deployment), "_continue": "1"}
    response = client.post(f"{change}?next={here}", data)
    location = response["Location"]
    assert location.startswith(change) and parse_qs(urlsplit(location).query)["next"] == [here]
    deployment.refresh_from_db()
    again = client.post(location, deployment_data(deployment))
    assert again["Location"] == here
