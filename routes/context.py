"""Who is acting, and from where: one context variable instead of actor= and ip= everywhere.

routes.middleware.ActorMiddleware sets it for each request; management commands set it for their
run with ``acting(label="command")``; the task worker sets it from the run's triggering user.
Workflows and the audit trail read it with current_actor() and current_ip().
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.http import HttpRequest


class RequestUser:
    """request.user as it is when read, not as it was when the middleware ran."""

    def __init__(self, request: HttpRequest) -> None:
        self._request = request

    def resolve(self) -> User | None:
        """Return request.user as it is now when it is signed in, else None."""
        # Imported here, so that this leaf module stays importable from anywhere (models
        # included) before the app registry is ready; auth.models needs a ready registry.
        from django.contrib.auth.models import AnonymousUser

        user = getattr(self._request, "user", None)
        if user is None or isinstance(user, AnonymousUser) or not user.is_authenticated:
            return None
        return user


@dataclass(frozen=True)
class Acting:
    """The acting user (None for a command or the worker), their address and a label."""

    user: User | RequestUser | None = None
    ip: str | None = None
    label: str = ""


_NOBODY = Acting()
_acting: ContextVar[Acting | None] = ContextVar("console_acting", default=None)


def current() -> Acting:
    """Return who is acting now (an empty Acting outside any request or command)."""
    return _acting.get() or _NOBODY


def current_actor() -> User | None:
    """Return the acting authenticated user, or None."""
    user = current().user
    if isinstance(user, RequestUser):
        return user.resolve()
    return user if user is not None and user.is_authenticated else None


def current_ip() -> str | None:
    """Return the acting client's address, or None."""
    return current().ip


@contextmanager
def acting(
    *, user: User | RequestUser | None = None, ip: str | None = None, label: str = ""
) -> Iterator[Acting]:
    """Make user (from ip, named label when it is no user) the actor inside the block."""
    token = _acting.set(Acting(user=user, ip=ip, label=label))
    try:
        yield current()
    finally:
        _acting.reset(token)
