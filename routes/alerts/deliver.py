"""One attempt of one delivery: by Django's email backend, a webhook JSON POST, or Apprise.

deliver() claims a pending row, sends, and records the outcome on that row: result, response
code and an error redacted of the channel's target (URLs carry tokens) and of key shapes. A
failed attempt is followed by a new pending row while CONSOLE_NOTIFY_RETRY_DELAYS has a delay for
it; deliver() returns that row and its delay, and routes.tasks queues it. Nothing here raises:
a channel that fails never fails the worker, and never touches the run.
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import apprise
import requests
from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import timezone
from django.utils.translation import gettext as _

from routes import keys as keyring
from routes.alerts.channels import secret_parts
from routes.alerts.events import message_of
from routes.alerts.models import NotificationChannel, NotificationDelivery
from routes.verification.http import Redactor

logger = logging.getLogger(__name__)

Kind = NotificationChannel.Kind
Result = NotificationDelivery.Result
USER_AGENT = "cpa-gateway-console-notify/1"
# Bytes of a refusing receiver's answer kept for the error (after redaction).
MAX_EXCERPT = 300
ERROR_LENGTH = 500
# Apprise's HTTP services end their failure line with "error=<status>".
_APPRISE_STATUS = re.compile(r"\berror=(\d{3})\b")


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to; retry False when trying again cannot help."""

    ok: bool
    response_code: int | None = None
    error: str = ""
    retry: bool = True


@dataclass(frozen=True)
class Retry:
    """The next attempt of a delivery, to be queued after delay seconds."""

    delivery_id: int
    delay: float


def retry_delay(attempt: int) -> float | None:
    """Return the seconds to wait before the attempt after attempt, or None after the last one."""
    delays = settings.CONSOLE_NOTIFY_RETRY_DELAYS
    return float(delays[attempt - 1]) if attempt <= len(delays) else None


# --- senders ----------------------------------------------------------------------------------


def send_email(target: str, payload: Mapping[str, Any]) -> Outcome:
    """Send payload's message to the address target through Django's email backend."""
    message = message_of(payload)
    email = EmailMessage(
        subject=message.subject,
        body=message.text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[target],
    )
    try:
        email.send()
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()), (None, b""))
        return Outcome(False, code, f"SMTP {code}: {_text(reply)}")
    except smtplib.SMTPResponseException as exc:
        return Outcome(False, exc.smtp_code, f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}")
    except (smtplib.SMTPException, OSError) as exc:
        return Outcome(
            False,
            error=_("The mail server (EMAIL_URL) could not be reached: %(error)s.")
            % {"error": type(exc).__name__},
        )
    return Outcome(True)


def send_webhook(target: str, payload: Mapping[str, Any]) -> Outcome:
    """POST payload as JSON to target; a 2xx answer is success, redirects are not followed."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    timeout = settings.CONSOLE_NOTIFY_TIMEOUT
    # Library exception texts quote the URL, token and all: each failure gets its own words.
    try:
        with requests.post(
            target,
            data=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        ) as response:
            excerpt = response.raw.read(MAX_EXCERPT, decode_content=True) or b""
            status, reason = response.status_code, response.reason or ""
    except requests.Timeout:
        return Outcome(False, error=_("No answer within %(s)s s.") % {"s": timeout})
    except requests.exceptions.SSLError:
        return Outcome(False, error=_("The TLS handshake failed (certificate or protocol)."))
    except requests.ConnectionError:
        return Outcome(False, error=_("The connection was refused or broken."))
    except requests.RequestException as exc:
        return Outcome(False, error=type(exc).__name__)
    if 200 <= status < 300:
        return Outcome(True, status)
    error = f"HTTP {status} {reason}".strip()
    if 300 <= status < 400:
        error += " " + _("(redirects are not followed)")
    detail = _text(excerpt)
    return Outcome(False, status, f"{error}: {detail}" if detail else error)


def send_apprise(target: str, payload: Mapping[str, Any]) -> Outcome:
    """Send payload's message through the Apprise service target names."""
    message = message_of(payload)
    notifier = apprise.Apprise()
    if not notifier.add(target):
        return Outcome(False, error=_("Apprise no longer accepts this channel's URL."), retry=False)
    result = notifier.notify(body=message.text, title=message.subject)
    if result:
        return Outcome(True)
    lines = [e.message for e in result.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
    detail = " ".join(lines) or _("Apprise could not send the notification.")
    status = _APPRISE_STATUS.search(detail)
    return Outcome(False, int(status.group(1)) if status else None, detail)


SENDERS: dict[str, Callable[[str, Mapping[str, Any]], Outcome]] = {
    Kind.EMAIL: send_email,
    Kind.WEBHOOK: send_webhook,
    Kind.APPRISE: send_apprise,
}


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(value.split())


# --- one attempt ------------------------------------------------------------------------------


def _send(delivery: NotificationDelivery) -> Outcome:
    channel = delivery.channel
    try:
        target = channel.reveal_target()
    except keyring.DecryptionError:
        return Outcome(
            False,
            error=_("The channel's target cannot be decrypted with the configured keys."),
            retry=False,
        )
    redact = Redactor([*secret_parts(channel.kind, target), settings.EMAIL_HOST_PASSWORD or ""])
    try:
        outcome = SENDERS[channel.kind](target, delivery.payload)
    except Exception as exc:  # a sender's bug must not reach the worker; its text may hold the URL
        outcome = Outcome(
            False, error=_("Unexpected error: %(error)s.") % {"error": type(exc).__name__}
        )
    return replace(outcome, error=redact.cut(outcome.error, ERROR_LENGTH, marker="…"))


def deliver(*, delivery_id: int) -> Retry | None:
    """Make the attempt that delivery_id is; return the next attempt when one is due, else None.

    A row that is not pending (sent already, or taken by another worker) is left alone.
    """
    claimed = NotificationDelivery.objects.filter(pk=delivery_id, result=Result.PENDING).update(
        result=Result.SENDING
    )
    if not claimed:
        return None
    delivery = NotificationDelivery.objects.select_related("channel").get(pk=delivery_id)
    outcome = _send(delivery)
    delay = None if outcome.ok or not outcome.retry else retry_delay(delivery.attempt)
    if outcome.ok:
        result = Result.SENT
    else:
        result = Result.RETRIED if delay is not None else Result.FAILED
    NotificationDelivery.objects.filter(pk=delivery.pk).update(
        result=result,
        response_code=outcome.response_code,
        error=outcome.error,
        finished_at=timezone.now(),
    )
    if outcome.ok:
        logger.info(
            "notification %s (%s) delivered to channel %s",
            delivery.pk,
            delivery.event,
            delivery.channel_id,
        )
        return None
    logger.warning(
        "notification %s (%s) to channel %s, attempt %s: %s",
        delivery.pk,
        delivery.event,
        delivery.channel_id,
        delivery.attempt,
        outcome.error,
    )
    if delay is None:
        return None
    following = NotificationDelivery.objects.create(
        channel_id=delivery.channel_id,
        deployment_id=delivery.deployment_id,
        run_id=delivery.run_id,
        event=delivery.event,
        attempt=delivery.attempt + 1,
        payload=delivery.payload,
    )
    return Retry(delivery_id=following.pk, delay=delay)
