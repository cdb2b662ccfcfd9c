"""Issue 9, item 9: safe GETs, the scoped "view on site" shortcut, impossible action ids, and
login lockouts that nobody can aim at another user."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.models import Session
from django.urls import reverse
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from routes.models import (
    AuditEvent,
    ConfigExport,
    Deployment,
    Team,
    VerificationJob,
    VerificationRun,
)

PASSWORD = "pw-Str0ng-enough!"


# --- A GET never records an export or an audit event ---------------------------------------------


def test_no_get_of_a_deployments_pages_records_an_export_or_an_event(
    client, make_user, team, deployment
):
    client.force_login(make_user("op", team=team, role="operator"))
    before = AuditEvent.objects.count()
    pages = [
        reverse("admin:routes_deployment_change", args=[deployment.pk]),
        reverse("admin:routes_deployment_config", args=[deployment.pk]),
        reverse("admin:routes_deployment_routes", args=[deployment.pk]) + "?path=/v1/models",
        reverse("admin:routes_deployment_config_download", args=[deployment.pk]),
        reverse("admin:routes_deployment_config_download", args=[deployment.pk]) + "?file=common",
        reverse("admin:routes_deployment_changelist"),
        reverse("admin:routes_configexport_changelist"),
    ]
    for url in pages:
        assert client.get(url).status_code == 200, url
    assert not ConfigExport.objects.exists()
    assert AuditEvent.objects.count() == before


def test_a_post_download_is_recorded_once(client, make_user, team, deployment):
    client.force_login(make_user("op", team=team, role="operator"))
    url = reverse("admin:routes_deployment_config_download", args=[deployment.pk])
    assert client.post(url).status_code == 200
    assert ConfigExport.objects.count() == 1
    assert AuditEvent.objects.filter(action="config.export").count() == 1


def test_the_archive_action_still_records_its_download(client, make_user, team, deployment):
    client.force_login(make_user("op", team=team, role="operator"))
    response = client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": "download_archive", "_selected_action": [deployment.pk]},
    )
    assert response["Content-Type"] == "application/gzip"
    assert ConfigExport.objects.get().source == "archive"


# --- /admin/r/<content type>/<id>/ ----------------------------------------------------------------


def shortcut(model, pk) -> str:
    return f"/admin/r/{ContentType.objects.get_for_model(model).pk}/{pk}/"


def test_view_on_site_leads_to_an_own_deployment(client, make_user, team, deployment):
    client.force_login(make_user("viewer", team=team))
    response = client.get(shortcut(Deployment, deployment.pk))
    assert response.status_code == 302
    assert response["Location"].endswith(
        reverse("admin:routes_deployment_change", args=[deployment.pk])
    )


def test_view_on_site_answers_404_for_another_teams_objects_like_for_missing_ones(
    client, make_user, team, deployment, theirs
):
    client.force_login(make_user("viewer", team=team))
    job = VerificationJob.objects.create(deployment=theirs)
    run = VerificationRun.objects.create(job=job)

    def page(url: str) -> bytes:
        # The framed 404 repeats the URL asked for and carries a fresh CSRF token.
        content = client.get(url).content.replace(url.encode(), b"URL")
        return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"TOKEN", content)

    missing_url = shortcut(Deployment, 987654)
    assert client.get(missing_url).status_code == 404
    missing = page(missing_url)
    for model, pk in [(Deployment, theirs.pk), (VerificationRun, run.pk), (Team, theirs.team_id)]:
        response = client.get(shortcut(model, pk))
        assert response.status_code == 404, model
        # Nothing tells an object of another team from one that does not exist.
        assert page(shortcut(model, pk)) == missing
        assert "Location" not in response


@pytest.mark.parametrize("pk", ["99999999999999999999", "abc", "-1"])
def test_view_on_site_answers_404_for_impossible_ids(client, make_user, team, pk):
    client.force_login(make_user("viewer", team=team))
    assert client.get(shortcut(Deployment, pk)).status_code == 404


def test_view_on_site_answers_404_for_models_without_a_page_for_the_user(
    client, make_user, team, deployment
):
    user = make_user("viewer", team=team)
    client.force_login(user)
    other = make_user("someone", team=team)
    session = Session.objects.first()
    assert client.get(shortcut(get_user_model(), other.pk)).status_code == 404
    assert client.get(shortcut(Session, session.pk)).status_code == 404
    assert client.get("/admin/r/999999/1/").status_code == 404
    assert client.get("/admin/r/99999999999999999999/1/").status_code == 404


def test_view_on_site_still_needs_a_staff_login(client, deployment):
    response = client.get(shortcut(Deployment, deployment.pk))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


# --- Impossible ids in an action's POST -----------------------------------------------------------

CHANGELISTS = [
    "admin:routes_deployment_changelist",
    "admin:routes_key_changelist",
    "admin:routes_team_changelist",
    "admin:routes_membership_changelist",
    "admin:routes_auditevent_changelist",
    "admin:routes_configexport_changelist",
    "admin:routes_verificationrun_changelist",
    "admin:otp_totp_totpdevice_changelist",
    "admin:auth_user_changelist",
]


@pytest.mark.parametrize("url", CHANGELISTS)
@pytest.mark.parametrize(
    "selected", ["99999999999999999999", "-99999999999999999999", "abc", "1.5", ""]
)
def test_an_impossible_id_in_an_action_is_a_400_not_a_500(
    client, make_user, team, deployment, url, selected
):
    client.force_login(make_user("root", superuser=True))
    client.raise_request_exception = False
    response = client.post(
        reverse(url),
        {"action": "delete_selected", "_selected_action": [str(deployment.pk), selected]},
    )
    assert response.status_code == 400
    assert Deployment.objects.filter(pk=deployment.pk).exists()


def test_an_impossible_id_is_refused_for_team_members_too(client, make_user, team, deployment):
    client.force_login(make_user("owner", team=team, role="owner"))
    client.raise_request_exception = False
    response = client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": "download_archive", "_selected_action": ["99999999999999999999"]},
    )
    assert response.status_code == 400
    assert not ConfigExport.objects.exists()


def test_ordinary_ids_still_reach_the_action(client, make_user, team, deployment):
    client.force_login(make_user("owner", team=team, role="owner"))
    response = client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": "download_archive", "_selected_action": [str(deployment.pk)]},
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"


# --- Login lockouts -----------------------------------------------------------------------------

LIMIT = 5


@pytest.fixture
def throttling(settings):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


def attempt(client, username, password, ip, token=None):
    data = {"username": username, "password": password, "next": reverse("admin:index")}
    if token is not None:
        data["otp_token"] = token
    return client.post(reverse("admin:login"), data, REMOTE_ADDR=ip)


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == reverse("admin:index")


def test_nobody_can_lock_another_user_out_from_everywhere(client, make_user, throttling):
    make_user("alice")
    for _ in range(LIMIT):
        attempt(client, "alice", "wrong", ip="203.0.113.9")
    # The guessing address is locked for alice ...
    assert attempt(client, "alice", PASSWORD, ip="203.0.113.9").status_code == 429
    # ... and alice, from her own address, is not.
    assert logged_in(attempt(client, "alice", PASSWORD, ip="198.51.100.4"))


def test_guesses_spread_over_addresses_do_not_lock_the_user(client, make_user, throttling):
    make_user("alice")
    for n in range(LIMIT * 2):
        attempt(client, "alice", "wrong", ip=f"203.0.113.{n + 1}")
    assert logged_in(attempt(client, "alice", PASSWORD, ip="198.51.100.4"))


def test_the_lockout_counts_the_pair_and_the_address_alone(settings):
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"], "ip_address"]


def test_django_otp_throttles_wrong_codes_itself(client, make_user, settings):
    # With axes off, the device's own back-off still refuses the right code after a wrong one.
    settings.AXES_ENABLED = False
    user = make_user("olga")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    right = f"{totp(device.bin_key, step=device.step, t0=device.t0, drift=0):06d}"
    wrong = f"{(int(right) + 1) % 1000000:06d}"
    assert attempt(client, "olga", PASSWORD, ip="198.51.100.4", token=wrong).status_code == 200
    device.refresh_from_db()
    assert device.throttling_failure_count == 1
    assert device.verify_is_allowed()[0] is False
    assert not logged_in(attempt(client, "olga", PASSWORD, ip="198.51.100.4", token=right))
