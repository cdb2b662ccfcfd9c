"""A run's remarks (keys left out or held back, why it stopped) as codes plus parameters.

Stored on VerificationRun.remarks as ``[{"code": ..., "params": {...}}]`` and turned into words
in the reader's language when a page, the progress JSON or a command shows them, the way
diagnoses are. The run's ``error`` keeps the English words (list_runs, grep, old readers);
a run without remarks (stored before there were any, or ended by an exception) shows ``error``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.utils import translation
from django.utils.translation import gettext as _

from routes import validators as v
from routes.models import STORED_LANGUAGE
from routes.verification import destinations

if TYPE_CHECKING:
    from routes.models import VerificationRun

Remark = dict[str, Any]
Params = Mapping[str, Any]

KEYS_UNREADABLE = "keys_unreadable"
KEYS_WITHHELD = "keys_withheld"
BASE_URL_REFUSED = "base_url_refused"
WORKER_STOPPED = "worker_stopped"
NEVER_QUEUED = "never_queued"


def remark(code: str, **params: Any) -> Remark:
    """Return one remark as it is stored: its code and plain parameters (never a secret)."""
    return {"code": code, "params": params}


def origin_problem(base_url: str) -> str:
    """Return why checks may not go to base_url (not an origin, link-local), or ""."""
    try:
        v.validate_origin(base_url)
    except ValidationError as exc:
        return _("Base URL %(url)s: %(reason)s") % {
            "url": base_url,
            "reason": " ".join(exc.messages),
        }
    return ""


def _keys_unreadable(p: Params) -> str:
    return _("Keys that cannot be decrypted were left out: %(roles)s.") % {
        "roles": ", ".join(p["roles"])
    }


def _worker_stopped(p: Params) -> str:
    return _("The worker stopped before the run finished (no result after %(s)d s).") % {
        "s": p["seconds"]
    }


TEXTS: dict[str, Callable[[Params], str]] = {
    KEYS_UNREADABLE: _keys_unreadable,
    KEYS_WITHHELD: lambda p: destinations.pending_message(p["origins"]),
    # Asked again in the reader's language; "" (the URL passes today) falls back to `error`.
    BASE_URL_REFUSED: lambda p: origin_problem(p["url"]),
    WORKER_STOPPED: _worker_stopped,
    NEVER_QUEUED: lambda p: _("The run never reached a worker: whatever queued it stopped first."),
}


def render(remarks: Iterable[Any]) -> str | None:
    """Return the remarks' words in the active language, or None when one cannot be rendered."""
    texts = []
    for item in remarks:
        if not isinstance(item, dict) or item.get("code") not in TEXTS:
            return None
        params = item.get("params")
        try:
            text = TEXTS[item["code"]](params if isinstance(params, dict) else {})
        except (KeyError, TypeError, ValueError):
            return None
        if not text:
            return None
        texts.append(text)
    return " ".join(texts)


def english(remarks: Iterable[Remark]) -> str:
    """Return the remarks' English words, as the run's ``error`` column keeps them."""
    with translation.override(STORED_LANGUAGE):
        return render(remarks) or ""


def run_text(run: VerificationRun) -> str:
    """Return what the run has to say beyond its checks, in the active language ("" if nothing).

    Its remarks in words; a run without remarks, or with one this version cannot render,
    says its stored ``error`` (older rows, an exception's text).
    """
    stored = run.remarks if isinstance(run.remarks, list) else []
    if not stored:
        return run.error
    text = render(stored)
    return run.error if text is None else text
