"""Logging filters named in settings.LOGGING (imported before the apps load: no models here)."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied


class OneLinePermissionDenied(logging.Filter):
    """Log a refused request as one line with its reason, without Django's traceback.

    django.request logs every PermissionDenied with exc_info; a refusal is an expected answer
    (routes.permissions.RoleRequired says why), not a fault worth a stack trace.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Return True (keep the record), stripped of the traceback of a PermissionDenied."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PermissionDenied):
            reason = " ".join(str(exc).split())
            message = record.getMessage()
            record.msg = f"{message} ({reason})" if reason else message
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True
