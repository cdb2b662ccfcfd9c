"""The demo controls page: stop and start the demo's emulators, only while `make demo` runs.

`make demo` (tests/fakes/demo.py) sets CONSOLE_DEMO_CONTROL_URL to its loopback control server;
only then does install() add this page when the admin's URLs are built. Without the setting the
page does not exist (404). GET shows the emulators' state (one GET to the control server, nothing
written); POST stops or starts one of them. Operators of a team and superusers may use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from routes.models import Deployment
from routes.permissions import Action, can_somewhere, refusal
from routes.verification import http

if TYPE_CHECKING:
    from django.urls import URLResolver

URL_NAME = "routes_demo"
# Service names of the control server, with what the page calls them.
SERVICES = {"cpa": "CPA", "cpamp": "CPAMP"}
ACTIONS = ("stop", "start")
# The control server refuses a state change without it (tests/fakes/demo.py CONTROL_HEADER).
CONTROL_HEADER = "X-Demo-Control"
CONTROL_TIMEOUT = 5.0
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
TITLE = gettext_lazy("Demo controls")


def control_url() -> str:
    """Return the control server's URL from the settings ("" outside `make demo`)."""
    return str(getattr(settings, "CONSOLE_DEMO_CONTROL_URL", "") or "").rstrip("/")


def install(site: admin.AdminSite) -> None:
    """Make site's URLs include the demo page whenever they are built with the setting set."""
    stock_urls = site.get_urls

    def view(request: HttpRequest) -> HttpResponse:
        return demo_view(request, site=site)

    def get_urls() -> list[URLPattern | URLResolver]:
        urls = stock_urls()
        if not control_url():
            return urls
        return [path("demo/", site.admin_view(view), name=URL_NAME), *urls]

    site.get_urls = get_urls  # type: ignore[method-assign]


def _control(method: str, suffix: str) -> tuple[dict[str, Any] | None, str]:
    """Ask the control server; return (its JSON answer, "") or (None, why there is none)."""
    base = control_url()
    parts = urlsplit(base)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        return None, _(
            "CONSOLE_DEMO_CONTROL_URL must be an http:// URL on the loopback address (it is "
            "%(url)s); only make demo sets it."
        ) % {"url": base}
    probe = http.send(
        method=method,
        url=base + suffix,
        timeout=CONTROL_TIMEOUT,
        verify=False,
        headers={CONTROL_HEADER: "1"},
    )
    answer = probe.json()
    if probe.error or probe.status_code != 200 or not isinstance(answer, dict):
        why = probe.error or str(probe.status_code)
        return None, _(
            "The demo's control server at %(url)s did not answer (%(why)s). Is make demo still "
            "running?"
        ) % {"url": base, "why": why}
    return answer, ""


def _rows(answer: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Return one row per emulator: its name, label, address and whether it runs."""
    services = (answer or {}).get("services") or {}
    rows = []
    for name, label in SERVICES.items():
        state = services.get(name)
        if isinstance(state, dict):
            rows.append(
                {
                    "name": name,
                    "label": label,
                    "address": str(state.get("address", "")),
                    "up": bool(state.get("up")),
                }
            )
    return rows


def _page(request: HttpRequest, site: admin.AdminSite, *, status: int = 200) -> TemplateResponse:
    """Return the page: each emulator's state with its button, and the way to verification."""
    answer, error = _control("GET", "/status")
    slug = str((answer or {}).get("deployment", ""))
    deployment = Deployment.objects.visible_to(request.user).filter(slug=slug).first()
    verify_url = (
        reverse("admin:routes_deployment_verify", args=[deployment.pk]) if deployment else ""
    )
    context = {
        **site.each_context(request),
        "title": TITLE,
        "rows": _rows(answer),
        "error": error,
        "deployment": deployment,
        "verify_url": verify_url,
    }
    return TemplateResponse(request, "admin/routes/demo/control.html", context, status=status)


def _act(request: HttpRequest, site: admin.AdminSite) -> HttpResponse:
    """Stop or start the emulator the form names, then show the page again."""
    service, action = request.POST.get("service", ""), request.POST.get("action", "")
    if service not in SERVICES:
        messages.error(
            request,
            _("service: %(value)s is not one of the demo's emulators (%(choices)s).")
            % {"value": service or "—", "choices": ", ".join(SERVICES)},
        )
        return _page(request, site, status=400)
    if action not in ACTIONS:
        messages.error(
            request,
            _("action: %(value)s is neither stop nor start.") % {"value": action or "—"},
        )
        return _page(request, site, status=400)
    _answer, error = _control("POST", f"/{service}/{action}")
    label = SERVICES[service]
    if error:
        messages.error(request, error)
    elif action == "stop":
        messages.success(
            request,
            _(
                "%(service)s is stopped. Open the verification page and press Run verification: "
                "the run fails, and the console says why."
            )
            % {"service": label},
        )
    else:
        messages.success(
            request,
            _("%(service)s is running again; the next verification run passes.")
            % {"service": label},
        )
    return HttpResponseRedirect(reverse(f"admin:{URL_NAME}"))


@require_http_methods(["GET", "POST"])
def demo_view(request: HttpRequest, *, site: admin.AdminSite) -> HttpResponse:
    """GET: the emulators' state and buttons. POST: stop or start one (operators, superusers)."""
    if not can_somewhere(request.user, Action.VERIFY):
        raise refusal(request.user, Action.VERIFY, None)
    if request.method == "POST":
        return _act(request, site)
    return _page(request, site)
