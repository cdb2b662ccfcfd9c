"""Key rules per role, encryption at rest, and proof that no secret is stored in clear."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.db import IntegrityError, connection, transaction
from django.urls import resolve, reverse
from django.views.debug import SafeExceptionReporterFilter

from routes import keys as keyring
from routes.models import AuditEvent, Deployment, Key, KeyRotation, Team
from routes.workflows.keys import check_key, delete_key, set_key

ADMIN_NEW = "cpamp_" + "aB3dE5gH" * 4
ADMIN_OLD = "cmp_admin_" + "A" * 42 + "_"


def codes(role: str, secret: str, **kwargs) -> set[str]:
    return {refusal.code for refusal in keyring.check_shape(role, secret, **kwargs)}


# --- Rules per role ------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [ADMIN_NEW, ADMIN_OLD])
def test_both_cpamp_admin_key_generations_are_accepted(secret):
    assert codes(keyring.CPAMP_ADMIN, secret) == set()


@pytest.mark.parametrize(
    "secret",
    [
        "cpamp_" + "a" * 31,  # one short
        "cpamp_" + "a" * 31 + "-",  # not alphanumeric
        "cmp_admin_" + "A" * 42,  # one short
        "admin-key-from-env",
    ],
)
def test_other_admin_key_shapes_are_refused_unless_marked_custom(secret):
    assert "admin_format" in codes(keyring.CPAMP_ADMIN, secret)
    assert "admin_format" not in codes(keyring.CPAMP_ADMIN, secret, custom_format=True)


@pytest.mark.parametrize("role", [keyring.CPA_API, keyring.CPA_MANAGEMENT])
@pytest.mark.parametrize("secret", [ADMIN_NEW, ADMIN_OLD, "CPAMP_typed-in-capitals"])
def test_keys_shaped_like_an_admin_key_are_refused_for_cpa_roles(role, secret):
    assert "looks_like_admin_key" in codes(role, secret)


@pytest.mark.parametrize("placeholder", ["your-api-key-1", "your-api-key-2", "your-api-key-3"])
def test_cpa_template_placeholders_are_refused_as_api_keys(placeholder):
    assert codes(keyring.CPA_API, placeholder) == {"placeholder"}
    # The placeholder rule is about the API key list; a management key is not checked for it.
    assert codes(keyring.CPA_MANAGEMENT, placeholder) == set()


@pytest.mark.parametrize("role", [keyring.CPAMP_ADMIN, keyring.CPA_MANAGEMENT, keyring.CPA_API])
@pytest.mark.parametrize(
    ("secret", "code"),
    [
        # Issue 11: CPA takes any non-empty key; only empty and over 512 are refused.
        ("", "length"),
        ("x" * 513, "length"),
        ("with space 123", "whitespace"),
        ("tab\tinside12", "whitespace"),
        ("nul\x00inside1", "whitespace"),
    ],
)
def test_every_role_refuses_bad_lengths_and_whitespace(role, secret, code):
    assert code in codes(role, secret, custom_format=True)


@pytest.mark.parametrize("role", [keyring.CPA_MANAGEMENT, keyring.CPA_API])
@pytest.mark.parametrize("secret", ["Q", "zQ9xW", "x" * 15])
def test_a_short_key_is_accepted_with_a_short_key_warning(role, secret):
    assert keyring.check_shape(role, secret) == []
    warnings = keyring.shape_warnings(role, secret)
    assert [w.code for w in warnings] == ["short_key"]
    assert str(warnings[0].message).startswith(f"{keyring.ROLE_LABELS[role]}: short key")
    assert secret not in str(warnings[0].message)


def test_a_key_of_sixteen_characters_has_no_warning_and_shows_no_end_when_short():
    assert keyring.shape_warnings(keyring.CPA_API, "x" * 16) == []
    # Four last characters of a seven-character key would be most of it.
    assert keyring.last4("abcdefg") == "" and keyring.last4("abcdefgh") == "efgh"


def test_every_other_role_rule_still_refuses_a_short_key():
    assert codes(keyring.CPA_API, "a b") == {"whitespace"}
    assert codes(keyring.CPAMP_ADMIN, "cpamp_x") == {"admin_format"}
    assert codes(keyring.CPA_MANAGEMENT, "cpamp_") == {"looks_like_admin_key"}


def test_every_refusal_names_the_role():
    for role, label in keyring.ROLE_LABELS.items():
        for refusal in keyring.check_shape(role, "x y"):
            assert str(refusal.message).startswith(f"{label}:")


def test_check_key_refuses_reuse_across_roles_and_a_second_single_role_key(deployment):
    set_key(deployment=deployment, role=keyring.CPAMP_ADMIN, secret=ADMIN_NEW)
    set_key(deployment=deployment, role=keyring.CPA_MANAGEMENT, secret="mgmt-secret-1")
    reuse = check_key(deployment=deployment, role=keyring.CPA_API, secret="mgmt-secret-1")
    assert [r.code for r in reuse] == ["reuse"]
    assert "CPA API Key" in reuse[0].message and "CPA Management Key" in reuse[0].message
    second = check_key(deployment=deployment, role=keyring.CPA_MANAGEMENT, secret="mgmt-secret-2")
    assert [r.code for r in second] == ["single_role"]
    # Replacing the stored key itself is a rotation, not a second key.
    stored = deployment.keys.get(role=keyring.CPA_MANAGEMENT)
    assert (
        check_key(
            deployment=deployment,
            role=keyring.CPA_MANAGEMENT,
            secret="mgmt-secret-2",
            replacing=stored,
        )
        == []
    )


def test_the_same_secret_may_live_in_two_deployments(deployment, team):
    other = Deployment.objects.create(
        slug="other", name="O", team=team, server_name="o.example.com"
    )
    set_key(deployment=deployment, role=keyring.CPA_API, secret="sk-shared-1234")
    set_key(deployment=other, role=keyring.CPA_API, secret="sk-shared-1234")
    assert Key.objects.count() == 2


def test_the_database_refuses_a_second_single_role_key(deployment):
    first = Key(deployment=deployment, role=keyring.CPA_MANAGEMENT)
    first.set_secret("mgmt-first-secret")
    first.save()
    second = Key(deployment=deployment, role=keyring.CPA_MANAGEMENT)
    second.set_secret("mgmt-second-secret")
    with pytest.raises(IntegrityError), transaction.atomic():
        second.save()


def test_deleting_a_key_is_recorded_without_its_value(deployment):
    key = set_key(deployment=deployment, role=keyring.CPA_API, secret="sk-delete-me-1")
    delete_key(key=key)
    assert not Key.objects.exists()
    event = AuditEvent.objects.get(action="key.delete")
    assert event.changes["secret"] == "changed"


# --- Encryption ----------------------------------------------------------------------------------


def test_secrets_round_trip_and_keep_their_fingerprint_across_encryption_keys(settings):
    token = keyring.encrypt("sk-round-trip-1")
    assert keyring.decrypt(token) == "sk-round-trip-1"
    fingerprint = keyring.fingerprint("sk-round-trip-1")
    settings.CONSOLE_ENCRYPTION_KEYS = [
        Fernet.generate_key().decode(),
        *settings.CONSOLE_ENCRYPTION_KEYS,
    ]
    assert keyring.decrypt(token) == "sk-round-trip-1"  # old tokens still decrypt
    assert not keyring.is_current(token)
    assert keyring.is_current(keyring.reencrypt(token))
    assert keyring.fingerprint("sk-round-trip-1") == fingerprint


def test_a_token_from_an_unknown_key_raises_without_the_value(settings):
    token = keyring.encrypt("sk-lost-key-123")
    settings.CONSOLE_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(keyring.DecryptionError) as caught:
        keyring.decrypt(token)
    assert "sk-lost" not in str(caught.value) and token not in str(caught.value)


# --- Nothing in clear at rest ---------------------------------------------------------------------

SECRETS = {
    keyring.CPAMP_ADMIN: "cpamp_" + "Zq9Xw8Vu" * 4,
    keyring.CPA_MANAGEMENT: "mgmt-Very-Secret-Management-7731",
    keyring.CPA_API: "sk-Very-Secret-Api-Key-4410",
}
ROTATED_AWAY = "sk-Old-Rotated-Away-Key-9921"


def store_every_role() -> Deployment:
    team = Team.objects.create(name="Rest", slug="rest")
    deployment = Deployment.objects.create(
        slug="rest", name="Rest", team=team, server_name="rest.example.com"
    )
    set_key(deployment=deployment, role=keyring.CPA_API, label="ci", secret=ROTATED_AWAY)
    for role, secret in SECRETS.items():
        set_key(deployment=deployment, role=role, label="ci", secret=secret)
    assert KeyRotation.objects.count() == 1
    return deployment


def every_stored_text() -> str:
    """Return every value of every row of the key, rotation and audit tables, as text."""
    parts = []
    with connection.cursor() as cursor:
        for table in (
            Key._meta.db_table,
            KeyRotation._meta.db_table,
            AuditEvent._meta.db_table,
            Deployment._meta.db_table,
        ):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            parts.extend(str(value) for row in cursor.fetchall() for value in row)
    return "\n".join(parts)


@pytest.mark.django_db
def test_the_raw_columns_never_hold_a_secret_in_clear():
    deployment = store_every_role()
    text = every_stored_text()
    for secret in [*SECRETS.values(), ROTATED_AWAY]:
        assert secret not in text
    # The rows are there, encrypted: the check would see a clear value.
    for key in deployment.keys.all():
        assert key.ciphertext in text
        assert key.reveal() in SECRETS.values()


@pytest.mark.django_db(transaction=True)
def test_the_raw_sqlite_file_never_holds_a_secret_in_clear(tmp_path: Path):
    if connection.vendor != "sqlite":
        pytest.skip("the raw-column test covers server databases")
    deployment = store_every_role()
    connection.ensure_connection()
    # The test database may live in memory; the backup API writes its exact pages to a file.
    copy = tmp_path / "copy.sqlite3"
    target = sqlite3.connect(copy)
    connection.connection.backup(target)
    target.close()
    files = [copy]
    name = str(connection.settings_dict["NAME"])
    if name and "memory" not in name and Path(name).exists():
        files += [p for p in (Path(name), Path(name + "-wal")) if p.exists()]
    for path in files:
        raw = path.read_bytes()
        for secret in [*SECRETS.values(), ROTATED_AWAY]:
            assert secret.encode() not in raw
        for key in deployment.keys.all():
            assert key.ciphertext.encode() in raw or path != copy


@pytest.mark.parametrize(
    ("url_name", "takes_pk"),
    [
        ("admin:routes_deployment_change", True),
        ("admin:routes_deployment_wizard_keys", True),
        ("admin:routes_key_add", False),
    ],
)
def test_forms_that_take_keys_hide_their_post_data_from_error_reports(
    rf, make_user, deployment, url_name, takes_pk
):
    match = resolve(reverse(url_name, args=[deployment.pk] if takes_pk else []))
    request = rf.post("/", {"secret": "cpamp_" + "Z" * 32})
    request._dont_enforce_csrf_checks = True
    request.user = make_user("root", superuser=True)
    request.session = {}
    try:
        match.func(request, *match.args, **match.kwargs)
    except Exception:  # noqa: BLE001 - only how the request was marked matters here
        pass
    assert request.sensitive_post_parameters == "__ALL__"
    cleansed = SafeExceptionReporterFilter().get_post_parameters(request)
    assert "cpamp_" not in str(cleansed.get("secret"))
