"""The console's own middleware: who is acting, and the Permissions-Policy header.

ActorMiddleware sets routes.context's acting user and client address for each request.

Django's SecurityMiddleware sets X-Content-Type-Options, Referrer-Policy,
Cross-Origin-Opener-Policy and HSTS; XFrameOptionsMiddleware sets X-Frame-Options; django-csp
sets Content-Security-Policy (see console/settings.py). Django has no Permissions-Policy setting,
so PermissionsPolicyMiddleware adds it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from routes.audit import client_ip
from routes.context import RequestUser, acting

# Nothing in the console needs a sensor, camera or payment API.
PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "camera",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "payment",
        "usb",
    )
)


class ActorMiddleware:
    """Set the acting user and client address for the rest of each request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # The user is read lazily: django-otp and axes may still replace request.user.
        with acting(user=RequestUser(request), ip=client_ip(request)):
            return self.get_response(request)


class PermissionsPolicyMiddleware:
    """Add the console's Permissions-Policy to every response that does not set its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # setdefault, as Django's own header middleware does: a view with its own need keeps it.
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
