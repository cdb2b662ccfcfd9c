"""Login throttling per user and per IP (django-axes), login audit, and the client address."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.test import RequestFactory, override_settings
from django.urls import reverse
from django.utils import timezone

from routes.audit import client_ip
from routes.models import AuditEvent

PASSWORD = "pw-Str0ng-enough!"
LIMIT = 5


@pytest.fixture(autouse=True)
def _throttling_on(settings):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


def attempt(client, username, password, ip="10.0.0.1"):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": reverse("admin:index")},
        REMOTE_ADDR=ip,
    )


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == reverse("admin:index")


def test_a_right_password_after_a_few_mistakes_still_logs_in(client, make_user):
    make_user("alice")
    for _ in range(LIMIT - 1):
        assert attempt(client, "alice", "wrong").status_code == 200
    assert logged_in(attempt(client, "alice", PASSWORD))


def test_it_locks_a_username_at_the_address_that_guessed_it(client, make_user):
    make_user("alice")
    for _ in range(LIMIT):
        attempt(client, "alice", "wrong", ip="10.0.1.1")
    response = attempt(client, "alice", PASSWORD, ip="10.0.1.1")
    assert response.status_code == 429
    assert "Sign-in temporarily blocked" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # The lockout page is a console page too.
    assert "default-src 'self'" in response["Content-Security-Policy"]


def test_it_locks_an_address_that_tries_many_usernames(client, make_user):
    make_user("bob")
    for n in range(LIMIT):
        attempt(client, f"guess{n}", "wrong", ip="10.9.9.9")
    blocked = attempt(client, "bob", PASSWORD, ip="10.9.9.9")
    assert blocked.status_code == 429
    assert "_auth_user_id" not in client.session
    # The same account from another address is not affected by that address's lockout.
    assert logged_in(attempt(client, "bob", PASSWORD, ip="10.9.9.10"))


def test_a_lockout_ends_after_the_cool_off(client, make_user):
    make_user("alice")
    for _ in range(LIMIT):
        attempt(client, "alice", "wrong")
    assert attempt(client, "alice", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert logged_in(attempt(client, "alice", PASSWORD))


def test_the_test_client_helpers_keep_working_with_throttling_on(client, make_user):
    make_user("carol")
    assert client.login(username="carol", password=PASSWORD)
    assert client.get(reverse("admin:index")).status_code == 200
    client.logout()
    assert not client.login(username="carol", password="wrong")


def test_failed_logins_are_recorded_with_the_username_and_never_the_password(client, make_user):
    user = make_user("alice")
    attempt(client, "alice", "Sup3r-secret-guess", ip="10.0.0.7")
    attempt(client, "nobody", "An0ther-secret-guess", ip="10.0.0.8")
    events = list(AuditEvent.objects.filter(action="login.failed").order_by("id"))
    assert [(e.object_repr, e.ip, e.actor_label) for e in events] == [
        ("alice", "10.0.0.7", "anonymous"),
        ("nobody", "10.0.0.8", "anonymous"),
    ]
    assert events[0].object_id == str(user.pk)
    assert events[0].actor is None
    dump = repr(list(AuditEvent.objects.values()))
    assert "secret-guess" not in dump


def test_logins_and_logouts_are_recorded(client, make_user):
    user = make_user("alice")
    assert logged_in(attempt(client, "alice", PASSWORD, ip="10.0.0.9"))
    client.post(reverse("admin:logout"), REMOTE_ADDR="10.0.0.9")
    events = list(AuditEvent.objects.order_by("id").values_list("action", "actor", "ip"))
    assert events == [("login", user.pk, "10.0.0.9"), ("logout", user.pk, "10.0.0.9")]


def test_a_locked_out_attempt_is_recorded_as_locked_out(client, make_user):
    make_user("alice")
    for _ in range(LIMIT):
        attempt(client, "alice", "wrong")
    attempt(client, "alice", PASSWORD)
    failures = list(AuditEvent.objects.filter(action="login.failed").order_by("id"))
    # The right password during the lockout is a failed login too, marked as locked out.
    assert len(failures) == LIMIT + 1
    assert failures[-1].changes == {"username": "alice", "locked_out": True}
    assert not AuditEvent.objects.filter(action="login").exists()


def test_passwords_must_be_strong(db):
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    for weak in ("short1!", "password1234", "123456789012"):
        with pytest.raises(ValidationError):
            validate_password(weak)
    validate_password("correct-Horse-battery-st4ple")


@override_settings(CONSOLE_TRUSTED_PROXIES=["127.0.0.1"])
def test_client_ip_believes_forwarded_for_only_from_a_trusted_proxy():
    rf = RequestFactory()
    via_proxy = rf.get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.5")
    assert client_ip(via_proxy) == "203.0.113.5"
    direct = rf.get("/", REMOTE_ADDR="198.51.100.2", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert client_ip(direct) == "198.51.100.2"
    junk = rf.get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="not-an-ip")
    assert client_ip(junk) == "127.0.0.1"


def test_client_ip_ignores_forwarded_for_without_trusted_proxies():
    request = RequestFactory().get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6")
    assert client_ip(request) == "127.0.0.1"


@override_settings(CONSOLE_TRUSTED_PROXIES=["127.0.0.1"])
def test_behind_a_trusted_proxy_each_client_address_is_throttled_separately(client, make_user):
    make_user("bob")
    for n in range(LIMIT):
        client.post(
            reverse("admin:login"),
            {"username": f"guess{n}", "password": "wrong"},
            REMOTE_ADDR="127.0.0.1",
            HTTP_X_FORWARDED_FOR="203.0.113.66",
        )
    response = client.post(
        reverse("admin:login"),
        {"username": "bob", "password": PASSWORD, "next": reverse("admin:index")},
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="203.0.113.77",
    )
    assert logged_in(response)
