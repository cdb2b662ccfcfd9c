"""`manage.py rotate_encryption_key`: interrupt, rerun, nothing lost, nothing revealed."""

import io
import json

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from routes import keys as keyring
from routes.models import AuditEvent, Deployment, Key

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
STRANGER = Fernet.generate_key().decode()


def api_secret(n: int) -> str:
    return f"sk-rotation-test-{n:04d}-abcdef"


@pytest.fixture
def stored_keys(settings, team):
    """Seven API keys over two deployments, written under the OLD key."""
    settings.CONSOLE_ENCRYPTION_KEYS = [OLD]
    secrets = {}
    for d in range(2):
        deployment = Deployment.objects.create(
            slug=f"d{d}", name=f"D{d}", team=team, server_name=f"d{d}.example.com"
        )
        for n in range(4 if d == 0 else 3):
            key = Key(deployment=deployment, role=keyring.CPA_API, label=f"k{n}")
            key.set_secret(api_secret(d * 10 + n))
            key.save()
            secrets[key.pk] = api_secret(d * 10 + n)
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW, OLD]
    return secrets


def rotate(*args) -> dict:
    out = io.StringIO()
    call_command("rotate_encryption_key", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def test_it_re_encrypts_every_key_under_the_new_primary_key(settings, stored_keys):
    report = rotate()
    assert report["rotated"] == 7 and report["undecryptable"] == []
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW]
    assert {k.pk: k.reveal() for k in Key.objects.all()} == stored_keys


def test_an_interrupted_run_can_be_rerun_and_no_key_is_lost(settings, stored_keys, monkeypatch):
    real = keyring.reencrypt
    calls = {"n": 0}

    def fail_on_fifth(token):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(token)

    monkeypatch.setattr(keyring, "reencrypt", fail_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        rotate("--batch-size", "2")
    # Two whole batches were committed; the interrupted batch was rolled back.
    current = [keyring.is_current(k.ciphertext) for k in Key.objects.order_by("pk")]
    assert current == [True] * 4 + [False] * 3
    # In between, every key still decrypts with the configured keys.
    assert {k.pk: k.reveal() for k in Key.objects.all()} == stored_keys

    monkeypatch.setattr(keyring, "reencrypt", real)
    report = rotate("--batch-size", "2")
    assert (report["rotated"], report["already_current"]) == (3, 4)
    assert rotate()["rotated"] == 0  # a third run has nothing left to do

    settings.CONSOLE_ENCRYPTION_KEYS = [NEW]
    assert {k.pk: k.reveal() for k in Key.objects.all()} == stored_keys


def test_an_undecryptable_key_is_reported_and_left_untouched(settings, stored_keys, deployment):
    settings.CONSOLE_ENCRYPTION_KEYS = [STRANGER]
    orphan = Key(deployment=deployment, role=keyring.CPA_API, label="orphan")
    orphan.set_secret("sk-written-with-a-lost-key")
    orphan.save()
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW, OLD]
    before = orphan.ciphertext

    out = io.StringIO()
    with pytest.raises(CommandError, match="could not be decrypted"):
        call_command("rotate_encryption_key", stdout=out)
    text = out.getvalue()
    assert f"key #{orphan.pk} (prod, cpa_api)" in text
    assert "re-encrypted: 7" in text
    orphan.refresh_from_db()
    assert orphan.ciphertext == before
    # Adding the missing key afterwards recovers it.
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW, OLD, STRANGER]
    assert rotate()["rotated"] == 1
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW]
    orphan.refresh_from_db()
    assert orphan.reveal() == "sk-written-with-a-lost-key"


def test_a_secret_replaced_during_the_run_is_not_overwritten(settings, stored_keys, monkeypatch):
    real = keyring.reencrypt
    target = min(stored_keys)

    def concurrent_edit(token):
        fresh = real(token)
        key = Key.objects.get(pk=target)
        if not keyring.is_current(key.ciphertext):
            key.set_secret("sk-set-by-a-teammate-meanwhile")
            key.save()
        return fresh

    monkeypatch.setattr(keyring, "reencrypt", concurrent_edit)
    report = rotate()
    assert report["changed_meanwhile"] == 1 and report["rotated"] == 6
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW]
    assert Key.objects.get(pk=target).reveal() == "sk-set-by-a-teammate-meanwhile"


def test_team_limits_the_rotation(settings, stored_keys, other_team):
    Deployment.objects.filter(slug="d1").update(team=other_team)
    report = rotate("--team", "ops")
    assert report["rotated"] == 4
    with pytest.raises(CommandError, match="--team: no team"):
        rotate("--team", "nope")


def test_generate_prints_a_new_key_and_the_steps_and_changes_nothing(stored_keys):
    before = list(Key.objects.values_list("ciphertext", flat=True))
    out = io.StringIO()
    call_command("rotate_encryption_key", "--generate", stdout=out)
    text = out.getvalue()
    new_key = text.split()[text.split().index("one):") + 1]
    Fernet(new_key.encode())  # a valid key
    assert "FIRST in CONSOLE_ENCRYPTION_KEYS" in text
    assert "drop the old key" in text
    assert list(Key.objects.values_list("ciphertext", flat=True)) == before


def test_a_malformed_configured_key_is_named_by_position_not_value(settings, db):
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW, "not-a-fernet-key-value"]
    with pytest.raises(CommandError) as info:
        rotate()
    assert "entry 2" in str(info.value)
    assert "not-a-fernet-key-value" not in str(info.value)


def test_the_run_is_audited_without_secrets(settings, stored_keys):
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    event = AuditEvent.objects.get(action="keys.reencrypt")
    assert event.changes["rotated"] == 7
    dump = repr(list(AuditEvent.objects.values())) + out.getvalue()
    for secret in stored_keys.values():
        assert secret not in dump
    assert OLD not in dump and NEW not in dump


def test_it_re_encrypts_notification_channel_targets_too(settings, team):
    from routes.alerts.channels import create_channel
    from routes.alerts.models import NotificationChannel

    target = "https://hooks.example.com/console/T0ken-rotation-secret"
    settings.CONSOLE_ENCRYPTION_KEYS = [OLD]
    channel = create_channel(team=team, kind="webhook", target=target, name="ops hook")
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW, OLD]
    report = rotate()
    assert report["channels_rotated"] == 1
    # With the old key dropped, the target still decrypts.
    settings.CONSOLE_ENCRYPTION_KEYS = [NEW]
    assert NotificationChannel.objects.get(pk=channel.pk).reveal_target() == target
    assert rotate()["channels_rotated"] == 0
