"""Security headers and the Content-Security-Policy on console pages; the TLS switch."""

import json
import os
import re
import subprocess
import sys

import pytest
from django.test import override_settings
from django.urls import reverse

from routes.models import AuditEvent

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_STYLE = re.compile(r"<style\b|\sstyle\s*=", re.IGNORECASE)
EVENT_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)


def csp_directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    directives = {}
    for part in policy.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def assert_security_headers(response) -> None:
    directives = csp_directives(response)
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert "'unsafe-inline'" not in directives.get("style-src", [])
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert directives["img-src"] == ["'self'", "data:"]
    assert directives["object-src"] == ["'none'"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert "camera=()" in response["Permissions-Policy"]
    assert response["X-Frame-Options"] == "DENY"


def assert_no_inline_code(html: str) -> None:
    assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html).group(0)
    assert not INLINE_STYLE.search(html), INLINE_STYLE.search(html).group(0)
    assert not EVENT_HANDLER.search(html), EVENT_HANDLER.search(html).group(0)


def test_the_login_page_sends_the_policy_and_needs_no_inline_code(client, db):
    response = client.get(reverse("admin:login"))
    assert response.status_code == 200
    assert_security_headers(response)
    assert_no_inline_code(response.content.decode())


@pytest.mark.parametrize(
    "name",
    [
        "admin:index",
        "admin:routes_auditevent_changelist",
        "admin:otp_totp_totpdevice_changelist",
        "admin:otp_totp_totpdevice_enrol",
        "admin:password_change",
    ],
)
def test_admin_pages_send_the_policy_and_need_no_inline_code(client, make_user, team, name):
    client.force_login(make_user("olga", team=team, role="owner"))
    response = client.get(reverse(name))
    assert response.status_code == 200
    assert_security_headers(response)
    assert_no_inline_code(response.content.decode())


def test_an_audit_event_page_sends_the_policy(client, make_user, team):
    owner = make_user("olga", team=team, role="owner")
    event = AuditEvent.objects.create(action="deployment.change", team=team, actor=owner)
    client.force_login(owner)
    response = client.get(reverse("admin:routes_auditevent_change", args=[event.pk]))
    assert response.status_code == 200
    assert_security_headers(response)
    assert_no_inline_code(response.content.decode())


def test_errors_and_redirects_carry_the_headers_too(client, db):
    assert_security_headers(client.get("/no-such-page/"))
    assert_security_headers(client.get(reverse("admin:index")))  # redirect to login


def test_json_and_downloads_carry_the_headers(client, make_user, team):
    client.force_login(make_user("olga", team=team, role="owner"))
    response = client.get(reverse("admin:routes_auditevent_export_jsonl"))
    assert response.status_code == 200
    assert_security_headers(response)


@override_settings(
    SECURE_SSL_REDIRECT=True,
    SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
    SECURE_HSTS_SECONDS=31536000,
)
def test_behind_tls_plain_http_is_redirected_and_https_gets_hsts(client, db):
    plain = client.get(reverse("admin:login"))
    assert plain.status_code == 301
    assert plain["Location"].startswith("https://")
    secure = client.get(reverse("admin:login"), HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000"


SETTINGS_PROBE = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({
    "redirect": getattr(s, "SECURE_SSL_REDIRECT", False),
    "proxy": list(s.SECURE_PROXY_SSL_HEADER or []),
    "hsts": s.SECURE_HSTS_SECONDS,
    "session": s.SESSION_COOKIE_SECURE,
    "csrf": s.CSRF_COOKIE_SECURE,
    "origins": s.CSRF_TRUSTED_ORIGINS,
}))
"""


def probe_settings(**env) -> dict:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "console.settings", **env}
    environment.pop("CONSOLE_BEHIND_TLS", None)
    environment.update(env)
    out = subprocess.run(
        [sys.executable, "-c", SETTINGS_PROBE],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_environment_setting_switches_on_the_https_settings():
    on = probe_settings(
        CONSOLE_BEHIND_TLS="true", CSRF_TRUSTED_ORIGINS="https://console.example.com"
    )
    assert on == {
        "redirect": True,
        "proxy": ["HTTP_X_FORWARDED_PROTO", "https"],
        "hsts": 31536000,
        "session": True,
        "csrf": True,
        "origins": ["https://console.example.com"],
    }


def test_without_the_switch_local_http_keeps_working():
    off = probe_settings()
    assert off["redirect"] is False
    assert off["hsts"] == 0
    assert off["session"] is False
    assert off["csrf"] is False
