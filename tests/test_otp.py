"""TOTP two-factor: enrolment, the login form, and teams that require it of their owners."""

import re

from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from django.urls import reverse
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from routes.admin.otp_admin import enrol_link
from routes.models import AuditEvent
from routes.permissions import Action, can, clear_cache, teams_where

PASSWORD = "pw-Str0ng-enough!"


def code_for(device: TOTPDevice, *, offset: int = 0) -> str:
    device.refresh_from_db()
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, drift=offset):06d}"


def confirmed_device(user, name="phone") -> TOTPDevice:
    return TOTPDevice.objects.create(user=user, name=name, confirmed=True)


def login(client, username, token="", **extra):
    data = {"username": username, "password": PASSWORD, "otp_token": token}
    data["next"] = reverse("admin:index")
    return client.post(reverse("admin:login"), {**data, **extra})


def verified(client) -> bool:
    return "otp_device_id" in client.session


# --- enrolment ------------------------------------------------------------------------------


def test_a_staff_user_enrols_a_device_by_proving_a_code(client, make_user):
    user = make_user("olga")
    client.force_login(user)
    url = reverse("admin:otp_totp_totpdevice_enrol")
    page = client.get(url)
    assert page.status_code == 200
    assert not TOTPDevice.objects.exists()

    assert client.post(url, {"step": "start", "name": "work phone"}).status_code == 302
    device = TOTPDevice.objects.get(user=user)
    assert not device.confirmed
    page = client.get(url)
    html = page.content.decode()
    assert "no-store" in page["Cache-Control"]
    assert "otpauth://totp/" in html
    secret = re.search(r'<code id="otp-secret">([A-Z2-7 ]+)</code>', html).group(1)
    assert secret.replace(" ", "")  # shown as text, grouped by four

    wrong = client.post(url, {"step": "confirm", "token": "000000"})
    assert wrong.status_code == 200
    assert "does not match" in wrong.content.decode()
    device.refresh_from_db()
    assert not device.confirmed

    device.throttling_failure_count = 0
    device.throttling_failure_timestamp = None
    device.save()
    done = client.post(url, {"step": "confirm", "token": code_for(device)})
    assert done.status_code == 302
    device.refresh_from_db()
    assert device.confirmed
    assert verified(client)
    event = AuditEvent.objects.get(action="otp.enrol")
    assert event.actor == user
    assert device.key not in repr(event.changes)


def test_enrolment_state_changes_need_post_and_csrf(make_user):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("olga"))
    response = client.post(reverse("admin:otp_totp_totpdevice_enrol"), {"step": "start"})
    assert response.status_code == 403
    assert not TOTPDevice.objects.exists()


def test_a_staff_user_sees_and_removes_only_their_own_devices(client, make_user):
    olga, pete = make_user("olga"), make_user("pete")
    mine, theirs = confirmed_device(olga, "mine"), confirmed_device(pete, "theirs")
    client.force_login(olga)
    listing = client.get(reverse("admin:otp_totp_totpdevice_changelist")).content.decode()
    assert "mine" in listing and "theirs" not in listing
    page = client.get(reverse("admin:otp_totp_totpdevice_change", args=[mine.pk]))
    assert page.status_code == 200
    assert mine.key not in page.content.decode()
    other = client.get(reverse("admin:otp_totp_totpdevice_change", args=[theirs.pk]))
    assert other.status_code == 302  # "does not exist": not in the user's queryset
    client.post(reverse("admin:otp_totp_totpdevice_delete", args=[theirs.pk]), {"post": "yes"})
    assert TOTPDevice.objects.filter(pk=theirs.pk).exists()
    client.post(reverse("admin:otp_totp_totpdevice_delete", args=[mine.pk]), {"post": "yes"})
    assert not TOTPDevice.objects.filter(pk=mine.pk).exists()
    assert AuditEvent.objects.filter(action="otp.remove", actor=olga).count() == 1


def test_devices_cannot_be_added_or_edited_through_the_plain_admin_forms(client, make_user):
    olga = make_user("olga")
    device = confirmed_device(olga)
    client.force_login(olga)
    assert client.get(reverse("admin:otp_totp_totpdevice_add")).status_code == 403
    client.post(
        reverse("admin:otp_totp_totpdevice_change", args=[device.pk]),
        {"name": "renamed", "key": "00" * 20},
    )
    device.refresh_from_db()
    assert device.name == "phone"


# --- login ----------------------------------------------------------------------------------


def test_a_user_without_a_device_signs_in_with_the_password_alone(client, make_user):
    make_user("olga")
    response = login(client, "olga")
    assert response.status_code == 302
    assert "_auth_user_id" in client.session
    assert not verified(client)


def test_a_user_with_a_device_must_give_a_code(client, make_user):
    user = make_user("olga")
    confirmed_device(user)
    response = login(client, "olga")
    assert response.status_code == 200
    assert "authenticator app" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_wrong_code_is_refused_and_recorded(client, make_user):
    user = make_user("olga")
    device = confirmed_device(user)
    wrong = f"{(int(code_for(device)) + 1) % 1000000:06d}"
    response = login(client, "olga", wrong)
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    event = AuditEvent.objects.get(action="login.failed")
    assert event.changes == {"username": "olga", "locked_out": False, "reason": "otp"}
    assert event.object_id == str(user.pk)


def test_guessing_codes_locks_the_account_like_guessing_passwords(client, make_user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    user = make_user("olga")
    device = confirmed_device(user)
    for n in range(3):
        device.throttling_failure_count = 0  # django-otp's own back-off aside
        device.save()
        login(client, "olga", f"{(int(code_for(device)) + 1 + n) % 1000000:06d}")
    device.throttling_failure_count = 0
    device.save()
    response = login(client, "olga", code_for(device))
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_right_code_signs_in_and_verifies_the_session(client, make_user):
    user = make_user("olga")
    device = confirmed_device(user)
    response = login(client, "olga", code_for(device))
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)
    assert verified(client)
    assert AuditEvent.objects.get(action="login").changes == {"otp": True}


def test_a_code_cannot_be_replayed(client, make_user):
    user = make_user("olga")
    device = confirmed_device(user)
    code = code_for(device)
    assert login(client, "olga", code).status_code == 302
    client.logout()
    assert login(client, "olga", code).status_code == 200


def test_with_two_devices_the_user_picks_one(client, make_user):
    user = make_user("olga")
    first, second = confirmed_device(user, "one"), confirmed_device(user, "two")
    ask = login(client, "olga", code_for(second))
    assert ask.status_code == 200
    assert 'name="otp_device"' in ask.content.decode()
    response = login(client, "olga", code_for(second), otp_device=second.persistent_id)
    assert response.status_code == 302
    assert first.persistent_id != client.session["otp_device_id"]


# --- teams that require two-factor of their owners -------------------------------------------


def test_owners_of_a_2fa_team_are_refused_owner_actions_until_verified(make_user, team):
    team.require_owner_2fa = True
    team.save()
    owner = make_user("olga", team=team, role="owner")
    assert not can(owner, Action.MANAGE_KEYS, team)
    assert not can(owner, Action.MANAGE_MEMBERS, team)
    # Operator-level work stays allowed.
    assert can(owner, Action.EDIT, team)
    assert can(owner, Action.EXPORT, team)
    assert team not in teams_where(owner, Action.MANAGE_KEYS)
    owner.is_verified = lambda: True
    clear_cache(owner)
    assert can(owner, Action.MANAGE_KEYS, team)
    assert team in teams_where(owner, Action.MANAGE_KEYS)


def test_owners_of_other_teams_are_not_affected(make_user, team, other_team):
    team.require_owner_2fa = True
    team.save()
    owner = make_user("olga", team=other_team, role="owner")
    assert can(owner, Action.MANAGE_KEYS, other_team)


def test_an_owner_signed_in_with_a_code_may_manage_keys(client, make_user, team):
    team.require_owner_2fa = True
    team.save()
    owner = make_user("olga", team=team, role="owner")
    device = confirmed_device(owner)
    login(client, "olga", code_for(device))
    request = RequestFactory().get("/")
    request.session = client.session
    from django.contrib.auth import get_user
    from django_otp.middleware import OTPMiddleware

    request.user = get_user(request)
    OTPMiddleware(lambda r: None)(request)
    assert can(request.user, Action.MANAGE_KEYS, team)


def test_an_unverified_owner_is_told_to_enrol_at_login(client, make_user, team):
    team.require_owner_2fa = True
    team.save()
    make_user("olga", team=team, role="owner")
    response = login(client, "olga")
    assert response.status_code == 302
    page = client.get(reverse("admin:index"))
    assert "require owners to use two-factor authentication" in page.content.decode()


def test_the_deployment_page_points_an_unverified_owner_to_enrolment(make_user, deployment):
    deployment.team.require_owner_2fa = True
    deployment.team.save()
    request = RequestFactory().get("/")
    request.user = make_user("olga", team=deployment.team, role="owner")
    assert enrol_link(request, deployment) == [
        ("Enrol two-factor to manage keys", reverse("admin:otp_totp_totpdevice_enrol"))
    ]
    request.user = make_user("victor", team=deployment.team, role="viewer")
    assert enrol_link(request, deployment) == []
    request.user = AnonymousUser()
    assert enrol_link(request, deployment) == []
