"""Keys: the checks a secret must pass in its deployment, saves, rotations and deletes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone, translation
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from routes import audit
from routes import keys as keyring
from routes.context import current_actor
from routes.models import STORED_LANGUAGE, Deployment, Key, KeyRotation
from routes.workflows.versions import record_part_edit


def _role_label(role: str) -> str:
    return str(keyring.ROLE_LABELS.get(role, role))


def _key_label(key: Key) -> str:
    """Return how the trail names key, in the stored language (AuditEvent.object_text maps it)."""
    label = f" ({key.label})" if key.label else ""
    with translation.override(STORED_LANGUAGE):
        return f"{key.deployment.slug}: {_role_label(key.role)}{label}"


def check_key(
    *,
    deployment: Deployment,
    role: str,
    secret: str,
    custom_format: bool = False,
    replacing: Key | None = None,
    ignore: Iterable[int] = (),
) -> list[keyring.Refusal]:
    """Return every rule that storing secret as role in deployment breaks (empty when none).

    Besides the role's shape rules: the same secret may not be stored twice in one deployment
    (fingerprints are compared, nothing is decrypted), and single-role keys are unique.
    ``ignore`` lists key ids being deleted in the same edit.
    """
    problems = keyring.check_shape(role, secret, custom_format=custom_format)
    if deployment.pk is None:
        return problems
    label = _role_label(role)
    skip = {*ignore, *([replacing.pk] if replacing is not None and replacing.pk else [])}
    fingerprint = keyring.fingerprint(secret)
    for other in deployment.keys.filter(fingerprint=fingerprint).exclude(pk__in=skip):
        if other.role == role:
            message = gettext(
                "%(role)s: this secret is already stored as another %(role)s of this deployment"
                "%(label)s."
            ) % {"role": label, "label": f" ({other.label})" if other.label else ""}
        else:
            message = gettext(
                "%(role)s: this secret is already stored as the %(other)s of this deployment. "
                "Do not mix the three keys: each role needs its own secret."
            ) % {"role": label, "other": _role_label(other.role)}
        problems.append(keyring.Refusal("reuse", message))
    if role in Key.SINGLE_ROLES and (replacing is None or replacing.role != role):
        if deployment.keys.filter(role=role).exclude(pk__in=skip).exists():
            problems.append(
                keyring.Refusal(
                    "single_role",
                    gettext(
                        "%(role)s: a deployment holds only one %(role)s; give the existing key a "
                        "new secret to rotate it."
                    )
                    % {"role": label},
                )
            )
    return problems


def _refusal_error(problems: list[keyring.Refusal]) -> ValidationError:
    return ValidationError({"secret": [ValidationError(p.message, code=p.code) for p in problems]})


def _check_new_secret(*, key: Key, stored: Key | None, secret: str | None) -> None:
    """Raise ValidationError unless key may be saved with secret (None keeps the stored one)."""
    if stored is not None and stored.role != key.role:
        raise ValidationError(
            {
                "role": ValidationError(
                    _("The role of a stored key cannot change; add a new key and delete this one."),
                    code="invalid",
                )
            }
        )
    if secret is not None:
        problems = check_key(
            deployment=key.deployment,
            role=key.role,
            secret=secret,
            custom_format=key.custom_format,
            replacing=stored,
        )
        if problems:
            raise _refusal_error(problems)
    elif stored is None:
        raise ValidationError(
            {"secret": ValidationError(_("A new key needs its secret."), code="required")}
        )
    elif stored.custom_format and not key.custom_format:
        # Turning the custom-format allowance off must not leave a key its role refuses.
        problems = keyring.check_shape(key.role, stored.reveal(), custom_format=False)
        if problems:
            raise _refusal_error(problems)


def save_key(
    *, key: Key, secret: str | None = None, reason: str = "admin", bump_version: bool = True
) -> Key:
    """Validate and save key; a new secret for an existing key is a recorded rotation.

    ``secret=None`` keeps the stored secret (only the label or custom format change). Refusals
    raise ValidationError on the ``secret`` field, each naming the rule and the role.
    """
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=key.deployment_id)
        key.deployment = deployment
        stored = Key.objects.filter(pk=key.pk).first() if key.pk else None
        _check_new_secret(key=key, stored=stored, secret=secret)

        actor = current_actor()
        changes: dict[str, Any] = {"role": key.role}
        action = "key.change"
        # _check_new_secret refused a new key without a secret.
        if stored is None and secret is not None:
            key.set_secret(secret)
            key.created_by = actor
            action = "key.create"
            changes["secret"] = audit.CHANGED
        elif (
            stored is not None
            and secret is not None
            and stored.fingerprint != (keyring.fingerprint(secret))
        ):
            KeyRotation.objects.create(
                key=stored,
                previous_fingerprint=stored.fingerprint,
                previous_last4=stored.last4,
                rotated_by=actor,
                reason=reason,
            )
            key.set_secret(secret)
            key.rotated_at = timezone.now()
            key.rotated_by = actor
            action = "key.rotate"
            changes["secret"] = audit.CHANGED
        for name in ("label", "custom_format"):
            old = getattr(stored, name) if stored is not None else None
            if old != getattr(key, name):
                changes[name] = [old, getattr(key, name)]
        if stored is not None and len(changes) == 1:
            return stored
        try:
            with transaction.atomic():
                key.save()
        except IntegrityError:
            # A concurrent save took the single-role slot or stored the same secret.
            raise _refusal_error(
                check_key(
                    deployment=deployment,
                    role=key.role,
                    secret=secret or "",
                    custom_format=key.custom_format,
                    replacing=stored,
                )
                or [keyring.Refusal("conflict", gettext("The key changed meanwhile; try again."))]
            ) from None
        record_part_edit(
            deployment=deployment,
            action=action,
            object_repr=_key_label(key),
            changes=changes,
            bump_version=bump_version,
        )
    return key


def set_key(
    *,
    deployment: Deployment,
    role: str,
    secret: str,
    label: str = "",
    custom_format: bool = False,
    reason: str = "set_key",
) -> Key:
    """Store secret as role: replace the single-role key, or the API key with the same label.

    Any other API key is added. Replacing a secret is a rotation and is recorded.
    """
    if role not in keyring.ROLE_LABELS:
        raise ValidationError(
            {
                "role": ValidationError(
                    _("Unknown key role %(role)s; use one of %(roles)s."),
                    code="invalid",
                    params={"role": role, "roles": ", ".join(keyring.ROLE_LABELS)},
                )
            }
        )
    with transaction.atomic():
        Deployment.objects.select_for_update().filter(pk=deployment.pk).first()
        key = None
        if role in Key.SINGLE_ROLES:
            key = deployment.keys.filter(role=role).first()
        elif label:
            key = deployment.keys.filter(role=role, label=label).order_by("id").first()
        if key is None:
            key = Key(deployment=deployment, role=role, label=label)
        elif label:
            key.label = label
        key.custom_format = custom_format
        return save_key(key=key, secret=secret, reason=reason)


def delete_key(*, key: Key, bump_version: bool = True) -> None:
    """Delete a key; counts as an edit of its deployment. The secret is gone for good."""
    with transaction.atomic():
        deployment = key.deployment
        label = _key_label(key)
        changes: dict[str, Any] = {"role": key.role, "secret": audit.CHANGED}
        key.delete()
        record_part_edit(
            deployment=deployment,
            action="key.delete",
            object_repr=label,
            changes=changes,
            bump_version=bump_version,
        )
