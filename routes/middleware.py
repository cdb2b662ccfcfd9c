"""Permissions-Policy on every console response: the one security header Django cannot set.

Django's SecurityMiddleware sets X-Content-Type-Options, Referrer-Policy,
Cross-Origin-Opener-Policy and HSTS; XFrameOptionsMiddleware sets X-Frame-Options; django-csp
sets Content-Security-Policy (see console/settings.py). Django has no Permissions-Policy setting,
so this small middleware adds it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

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


class PermissionsPolicyMiddleware:
    """Add the console's Permissions-Policy to every response that does not set its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # setdefault, as Django's own header middleware does: a view with its own need keeps it.
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
