"""Security headers and the Content-Security-Policy on console pages; the TLS switch."""

import json
import os
import re
import subprocess
import sys

import pytest
from csp.middleware import CSPMiddleware
from django.core import checks
from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.test import override_settings
from django.urls import reverse

from routes.middleware import PermissionsPolicyMiddleware
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


# Every directive of the policy, written out: a library upgrade or a settings edit that loosens
# (or drops) any one of them fails here.
EXPECTED_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}


def assert_security_headers(response) -> None:
    directives = csp_directives(response)
    assert directives == EXPECTED_POLICY
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert "'nonce-" not in response["Content-Security-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
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
    response = client.post(reverse("admin:routes_auditevent_export_jsonl"))
    assert response.status_code == 200
    assert_security_headers(response)


def test_static_files_served_by_whitenoise_carry_the_headers_too(client, db, settings):
    # WhiteNoise answers static requests itself; the header middlewares must sit above it.
    settings.WHITENOISE_USE_FINDERS = True
    response = client.get(settings.STATIC_URL.rstrip("/") + "/admin/css/base.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert_security_headers(response)


def test_the_permissions_policy_denies_every_listed_feature(client, db):
    response = client.get(reverse("admin:login"))
    features = [part.strip() for part in response["Permissions-Policy"].split(",")]
    assert features == [
        "accelerometer=()",
        "camera=()",
        "geolocation=()",
        "gyroscope=()",
        "magnetometer=()",
        "microphone=()",
        "payment=()",
        "usb=()",
    ]


def test_a_response_that_sets_its_own_headers_keeps_them(rf):
    def view(request):
        response = HttpResponse("x")
        response["Content-Security-Policy"] = "default-src 'none'"
        response["Permissions-Policy"] = "camera=(), fullscreen=()"
        response["X-Frame-Options"] = "SAMEORIGIN"
        return response

    handler = XFrameOptionsMiddleware(CSPMiddleware(PermissionsPolicyMiddleware(view)))
    response = handler(rf.get("/"))
    assert response["Content-Security-Policy"] == "default-src 'none'"
    assert response["Permissions-Policy"] == "camera=(), fullscreen=()"
    assert response["X-Frame-Options"] == "SAMEORIGIN"


def csp_check_ids() -> list[str]:
    return [e.id for e in checks.run_checks(tags=[checks.Tags.security]) if e.id.startswith("csp.")]


def test_the_csp_settings_pass_django_csps_own_checks():
    assert csp_check_ids() == []
    # The checks do run: a django-csp 3.x style setting is reported.
    with override_settings(CSP_DEFAULT_SRC=["'self'"]):
        assert csp_check_ids() == ["csp.E001"]


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
