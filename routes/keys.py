"""Secrets at rest and the rules of the three key roles.

The seed says "Do not mix these three keys": the CPAMP Admin Key logs into the panel, the CPA
Management Key is what CPAMP uses to reach CPA, and CPA API Keys call the model API. Each role has
its own validator. Keys are encrypted with MultiFernet (the first configured key encrypts, every
configured key decrypts) and fingerprinted with a keyed HMAC, so reuse is found without decrypting.
"""

import hashlib
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

CPAMP_ADMIN = "cpamp_admin"
CPA_MANAGEMENT = "cpa_management"
CPA_API = "cpa_api"

# CPAMP >= v1.10: `cpamp_` + 32 alphanumerics (internal/security/security.go, GenerateAdminKey).
CPAMP_ADMIN_NEW = re.compile(r"^cpamp_[0-9A-Za-z]{32}$")
# CPAMP < v1.10: `cmp_admin_` + base64url(32 bytes) = 43 characters.
CPAMP_ADMIN_OLD = re.compile(r"^cmp_admin_[A-Za-z0-9_-]{43}$")
# Anything that looks like an attempt at a CPAMP admin key, even a mistyped one.
CPAMP_ADMIN_LIKE = re.compile(r"^(cpamp_|cmp_admin_)", re.IGNORECASE)
# CPA's config.example.yaml placeholders; CPA >= v7.1.46 answers 403 unsafe_example_api_key.
CPA_PLACEHOLDERS = frozenset({"your-api-key-1", "your-api-key-2", "your-api-key-3"})
# CPA accepts any non-empty api-keys entry and secret-key (reference 3.5): so does the console,
# and a key shorter than SHORT_KEY gets a warning instead of a refusal.
MIN_LENGTH = 1
MAX_LENGTH = 512
SHORT_KEY = 16
# Keys shorter than this show no last characters: four of them would be half the key or all of it.
SHOWN_FROM = 8
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")

ROLE_LABELS = {
    CPAMP_ADMIN: _("CPAMP Admin Key"),
    CPA_MANAGEMENT: _("CPA Management Key"),
    CPA_API: _("CPA API Key"),
}


class DecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key (the value is never shown)."""


def fernet(key: str | bytes) -> Fernet:
    """Return the Fernet of one configured key; ValueError when it is not a Fernet key."""
    return Fernet(key.encode() if isinstance(key, str) else key)


def _fernet() -> MultiFernet:
    return MultiFernet([fernet(k) for k in settings.CONSOLE_ENCRYPTION_KEYS])


@contextmanager
def _refusing_bad_tokens() -> Iterator[None]:
    """Turn a token no configured key opens into DecryptionError (which never shows it)."""
    try:
        yield
    except (InvalidToken, ValueError):
        raise DecryptionError(
            "the stored key cannot be decrypted with the configured keys"
        ) from None


def encrypt(secret: str) -> str:
    """Return the Fernet token of secret under the current primary key."""
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    """Return the clear secret; raise DecryptionError (never with the token or value)."""
    with _refusing_bad_tokens():
        return _fernet().decrypt(token.encode()).decode()


def reencrypt(token: str) -> str:
    """Return token re-encrypted under the primary key (MultiFernet.rotate)."""
    with _refusing_bad_tokens():
        return _fernet().rotate(token.encode()).decode()


def is_current(token: str) -> bool:
    """Return True when token decrypts with the primary key alone."""
    try:
        fernet(settings.CONSOLE_ENCRYPTION_KEYS[0]).decrypt(token.encode())
    except (InvalidToken, ValueError):
        return False
    return True


def rotate_stored(queryset: QuerySet[Any], *, pk: int, field: str, token: str) -> str:
    """Re-encrypt one stored token under the primary key; return what happened to it.

    "current" (nothing to do), "rotated", "changed" (replaced meanwhile: the conditional update
    keeps the newer value, already under the primary key) or "undecryptable" (left untouched).
    """
    if is_current(token):
        return "current"
    try:
        fresh = reencrypt(token)
    except DecryptionError:
        return "undecryptable"
    updated = queryset.filter(pk=pk, **{field: token}).update(**{field: fresh})
    return "rotated" if updated else "changed"


def fingerprint(secret: str) -> str:
    """Return the keyed HMAC-SHA256 of secret, as hex; equal secrets give equal fingerprints."""
    key = settings.CONSOLE_FINGERPRINT_KEY.encode()
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def last4(secret: str) -> str:
    """Return the last four characters kept for display ("" for a key shorter than SHOWN_FROM)."""
    return secret[-4:] if len(secret) >= SHOWN_FROM else ""


def masked(last_four: str) -> str:
    """Return the display form of a stored key, such as ••••1234."""
    return "••••" + (last_four or "")


@dataclass(frozen=True)
class Refusal:
    """Why a secret was refused: the rule's code and its message (never the secret)."""

    code: str
    message: str


def check_shape(role: str, secret: str, *, custom_format: bool = False) -> list[Refusal]:
    """Return the rules of role that secret breaks, empty when it is acceptable."""
    label = ROLE_LABELS.get(role)
    if label is None:
        return [Refusal("unknown_role", f"unknown key role {role!r}")]
    problems: list[Refusal] = []
    if _FORBIDDEN.search(secret):
        problems.append(
            Refusal(
                "whitespace",
                _("%(role)s: a key may not contain whitespace or control characters.")
                % {"role": label},
            )
        )
    if not MIN_LENGTH <= len(secret) <= MAX_LENGTH:
        problems.append(
            Refusal(
                "length",
                _("%(role)s: a key must be %(min)d to %(max)d characters long (got %(n)d).")
                % {"role": label, "min": MIN_LENGTH, "max": MAX_LENGTH, "n": len(secret)},
            )
        )
    if role == CPAMP_ADMIN:
        if not (CPAMP_ADMIN_NEW.match(secret) or CPAMP_ADMIN_OLD.match(secret) or custom_format):
            problems.append(
                Refusal(
                    "admin_format",
                    _(
                        "%(role)s: expected cpamp_ followed by 32 letters and digits "
                        "(CPAMP v1.10+) or cmp_admin_ followed by 43 base64url characters "
                        "(older CPAMP). If your CPAMP takes its key from CPA_MANAGER_ADMIN_KEY in "
                        "any format, mark the key as a custom key."
                    )
                    % {"role": label},
                )
            )
    else:
        if CPAMP_ADMIN_LIKE.match(secret):
            problems.append(
                Refusal(
                    "looks_like_admin_key",
                    _(
                        "%(role)s: this looks like a CPAMP Admin Key (cpamp_… or cmp_admin_…). "
                        "The admin key logs into the CPAMP panel only; do not mix the three keys."
                    )
                    % {"role": label},
                )
            )
        if role == CPA_API and secret in CPA_PLACEHOLDERS:
            problems.append(
                Refusal(
                    "placeholder",
                    _(
                        "%(role)s: %(value)s is CPA's template placeholder; CPA v7.1.46+ disables "
                        "the API with 403 unsafe_example_api_key while it is configured."
                    )
                    % {"role": label, "value": secret},
                )
            )
    return problems


def short_key_message(role: str) -> str:
    """Return the "short key" warning for a key of role."""
    return _(
        "%(role)s: short key (fewer than %(n)d characters). CPA accepts it, but a short key is "
        "easy to guess; use a long random one."
    ) % {"role": ROLE_LABELS.get(role, role), "n": SHORT_KEY}


def shape_warnings(role: str, secret: str) -> list[Refusal]:
    """Return what a key of role that check_shape accepts should still warn about (short_key)."""
    if role in ROLE_LABELS and 0 < len(secret) < SHORT_KEY:
        return [Refusal("short_key", short_key_message(role))]
    return []


class ReuseTracker:
    """Finds a secret given twice in one submission (any roles), without keeping the secrets."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def refusal(self, role: str, secret: str) -> Refusal | None:
        """Return the refusal when secret was already given under a role, else remember it."""
        found = fingerprint(secret)
        other = self._seen.get(found)
        if other is None:
            self._seen[found] = role
            return None
        return Refusal(
            "reuse",
            _(
                "%(role)s: the same secret is given for the %(other)s in this form. Do not mix "
                "the three keys: each role needs its own secret."
            )
            % {"role": ROLE_LABELS[role], "other": ROLE_LABELS[other]},
        )
