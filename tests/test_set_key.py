"""manage.py set_key: the secret comes from stdin, role rules apply, replacing is a rotation."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from routes.models import AuditEvent, Key, KeyRotation

ADMIN_KEY = "cpamp_" + "Q7w8E9r0" * 4
OTHER_ADMIN_KEY = "cpamp_" + "Z1x2C3v4" * 4


def set_key(monkeypatch, *args, secret: str) -> tuple[str, str]:
    """Run set_key with secret on stdin; return (stdout, stderr)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(secret))
    out, err = io.StringIO(), io.StringIO()
    call_command("set_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_stores_the_secret_from_stdin_and_prints_only_the_masked_value(monkeypatch, deployment):
    out, err = set_key(monkeypatch, "prod", "cpamp_admin", secret=ADMIN_KEY + "\n")
    key = Key.objects.get(deployment=deployment)
    assert key.reveal() == ADMIN_KEY  # one trailing newline stripped
    assert out.strip() == f"prod: CPAMP Admin Key ••••{ADMIN_KEY[-4:]}"
    assert ADMIN_KEY not in out + err
    event = AuditEvent.objects.get(action="key.create")
    assert ADMIN_KEY not in str(event.changes) + event.object_repr


def test_only_one_trailing_newline_is_stripped(monkeypatch, deployment):
    with pytest.raises(CommandError, match="may not contain whitespace"):
        set_key(monkeypatch, "prod", "cpa_api", secret="sk-abcdefgh12\n\n")
    assert not Key.objects.exists()


def test_replacing_a_single_role_key_is_a_recorded_rotation(monkeypatch, deployment):
    set_key(monkeypatch, "prod", "cpamp_admin", secret=ADMIN_KEY)
    first = Key.objects.get()
    set_key(monkeypatch, "prod", "cpamp_admin", secret=OTHER_ADMIN_KEY)
    key = Key.objects.get()
    assert key.pk == first.pk
    assert key.reveal() == OTHER_ADMIN_KEY
    assert key.rotated_at is not None
    rotation = KeyRotation.objects.get(key=key)
    assert (rotation.previous_last4, rotation.reason) == (ADMIN_KEY[-4:], "set_key")
    assert rotation.previous_fingerprint == first.fingerprint
    assert AuditEvent.objects.filter(action="key.rotate").count() == 1
    deployment.refresh_from_db()
    assert deployment.version == 3


def test_setting_the_same_secret_again_changes_nothing(monkeypatch, deployment):
    set_key(monkeypatch, "prod", "cpamp_admin", secret=ADMIN_KEY)
    set_key(monkeypatch, "prod", "cpamp_admin", secret=ADMIN_KEY)
    assert not KeyRotation.objects.exists()
    deployment.refresh_from_db()
    assert deployment.version == 2


def test_api_keys_are_added_unless_the_label_matches(monkeypatch, deployment):
    set_key(monkeypatch, "prod", "cpa_api", "--label", "ci", secret="sk-ci-first-0001")
    set_key(monkeypatch, "prod", "cpa_api", "--label", "bot", secret="sk-bot-first-001")
    set_key(monkeypatch, "prod", "cpa_api", secret="sk-unlabelled-01")
    assert Key.objects.filter(role="cpa_api").count() == 3
    set_key(monkeypatch, "prod", "cpa_api", "--label", "ci", secret="sk-ci-second-002")
    assert Key.objects.filter(role="cpa_api").count() == 3
    assert Key.objects.get(label="ci").reveal() == "sk-ci-second-002"
    assert KeyRotation.objects.count() == 1


@pytest.mark.parametrize(
    ("role", "secret", "message"),
    [
        ("cpamp_admin", "not-an-admin-key-at-all", "CPAMP Admin Key: expected cpamp_"),
        ("cpa_api", "your-api-key-2", "CPA API Key: your-api-key-2 is CPA's template placeholder"),
        ("cpa_api", ADMIN_KEY, "CPA API Key: this looks like a CPAMP Admin Key"),
        ("cpa_management", ADMIN_KEY, "CPA Management Key: this looks like a CPAMP Admin Key"),
        ("cpa_management", "k" * 513, "CPA Management Key: a key must be 1 to 512"),
    ],
)
def test_role_rules_refuse_with_the_rule_and_the_role(
    monkeypatch, deployment, role, secret, message
):
    with pytest.raises(CommandError) as caught:
        set_key(monkeypatch, "prod", role, secret=secret)
    assert message in str(caught.value)
    assert not Key.objects.exists()


def test_a_custom_admin_key_needs_the_flag(monkeypatch, deployment):
    with pytest.raises(CommandError):
        set_key(monkeypatch, "prod", "cpamp_admin", secret="my-env-admin-key")
    set_key(monkeypatch, "prod", "cpamp_admin", "--custom-format", secret="my-env-admin-key")
    assert Key.objects.get().custom_format


def test_a_secret_used_by_another_role_is_refused(monkeypatch, deployment):
    set_key(monkeypatch, "prod", "cpa_management", secret="shared-secret-123")
    with pytest.raises(CommandError, match="already stored as the CPA Management Key"):
        set_key(monkeypatch, "prod", "cpa_api", secret="shared-secret-123")
    assert Key.objects.count() == 1


def test_the_secret_is_never_taken_from_the_command_line(monkeypatch, deployment):
    with pytest.raises(CommandError):
        set_key(monkeypatch, "prod", "cpa_api", "sk-on-the-command-line", secret="")
    assert not Key.objects.exists()


def test_empty_stdin_is_refused(monkeypatch, deployment):
    with pytest.raises(CommandError, match="nothing was read from stdin"):
        set_key(monkeypatch, "prod", "cpa_api", secret="")


def test_unknown_deployments_and_roles_are_refused(monkeypatch, deployment):
    with pytest.raises(CommandError, match="nope: no such deployment"):
        set_key(monkeypatch, "nope", "cpa_api", secret="sk-abcdefgh12")
    with pytest.raises(CommandError, match="invalid choice"):
        set_key(monkeypatch, "prod", "root", secret="sk-abcdefgh12")


def test_team_limits_which_deployments_it_touches(monkeypatch, deployment, other_team):
    with pytest.raises(CommandError, match="no such deployment in team other"):
        set_key(monkeypatch, "prod", "cpa_api", "--team", "other", secret="sk-abcdefgh12")
    set_key(monkeypatch, "prod", "cpa_api", "--team", "ops", secret="sk-abcdefgh12")
    assert Key.objects.count() == 1


def test_ensure_superuser_prints_a_generated_password_once(db, django_user_model):
    out = io.StringIO()
    call_command("ensure_superuser", stdout=out)
    text = out.getvalue()
    password = text.split("password: ")[1].strip()
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    again = io.StringIO()
    call_command("ensure_superuser", stdout=again)
    assert "A superuser exists (admin)" in again.getvalue()
    assert password not in again.getvalue()
    assert django_user_model.objects.count() == 1
