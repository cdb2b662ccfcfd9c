"""The seed's route boundaries as data: which path goes to CPAMP and which to CPA, and why.

The renderer, the simulator, the routes page and the lint all read this one table, so the seed's
routing ("Route Boundaries" and the "Nginx HTTP Example" of the reverse-proxy guide) lives in
exactly one place. Order is the seed's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.utils.translation import gettext_lazy as _
from django.utils.translation import gettext_noop

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

EXACT = "exact"
PREFIX = "prefix"
REGEX = "regex"
REGEX_I = "regex_i"
MATCH_TYPES = (EXACT, PREFIX, REGEX, REGEX_I)

CPA = "cpa"
CPAMP = "cpamp"
TARGETS = (CPA, CPAMP)

# nginx's modifier for each match type. The fallback `location /` is a plain prefix (no ^~) so
# that regex overrides are still tried for paths only it matches.
MODIFIERS = {EXACT: "=", PREFIX: "^~", REGEX: "~", REGEX_I: "~*"}


@dataclass(frozen=True)
class Route:
    """One location of the seed: how it matches, which upstream owns it and why."""

    match: str
    path: str
    target: str
    # English, because it is also written into the config as a comment (the config must not
    # change with the viewer's language); pages show it through gettext.
    note: str = ""
    # What breaks when this route is sent to the other upstream (shown by the lint, translated
    # when it is shown: lazy).
    consequence: StrOrPromise = ""
    section: str = ""


_PANEL = _("the CPAMP panel, its setup and its health check stop working")
_MANAGEMENT = _(
    "the panel's management APIs (usage, model prices, aliases, dashboard, monitoring) bypass "
    "CPAMP and fail"
)
_PLUGINS = _("plugin pages stay blank or their assets return 404")
_USAGE_SERVICE = _("CPAMP's mode detection and config APIs are lost, so the panel misbehaves")
_MODELS = _("/models loses CPAMP's compatibility proxy")
_API = _("model API requests reach CPAMP, which does not serve them, so the API breaks")
_CALLBACK = _("OAuth logins never reach CPA and fail")

CPAMP_SECTION = "# ===== CPA Manager Plus ====="
CPA_SECTION = "# ===== CPA / CLI Proxy API ====="

BUILTIN_ROUTES: tuple[Route, ...] = (
    Route(
        EXACT,
        "/management.html",
        CPAMP,
        gettext_noop("Manager Server-hosted management panel."),
        _PANEL,
        CPAMP_SECTION,
    ),
    Route(EXACT, "/health", CPAMP, gettext_noop("CPAMP health check."), _PANEL, CPAMP_SECTION),
    Route(
        EXACT,
        "/status",
        CPAMP,
        gettext_noop("CPAMP status (needs the Admin Key)."),
        _PANEL,
        CPAMP_SECTION,
    ),
    Route(EXACT, "/setup", CPAMP, gettext_noop("CPAMP first setup."), _PANEL, CPAMP_SECTION),
    Route(
        PREFIX,
        "/usage-service/",
        CPAMP,
        gettext_noop("CPAMP compatibility and runtime APIs."),
        _USAGE_SERVICE,
        CPAMP_SECTION,
    ),
    Route(
        PREFIX,
        "/v0/management/",
        CPAMP,
        gettext_noop(
            "CPAMP handles usage, model prices, aliases, dashboard, monitoring and codex "
            "inspection, and proxies other management APIs to CPA. Keep the trailing slash: "
            "not location = /v0/management."
        ),
        _MANAGEMENT,
        CPAMP_SECTION,
    ),
    Route(
        PREFIX,
        "/v0/resource/plugins/",
        CPAMP,
        gettext_noop("CPAMP plugin page resources; without this rule plugin pages may be blank."),
        _PLUGINS,
        CPAMP_SECTION,
    ),
    Route(
        EXACT,
        "/models",
        CPAMP,
        gettext_noop("CPAMP's compatibility proxy to CPA; 412/428 until first setup is done."),
        _MODELS,
        CPAMP_SECTION,
    ),
    Route(
        PREFIX,
        "/v1/",
        CPA,
        gettext_noop("OpenAI / Claude Code / Codex API requests go to CPA."),
        _API,
        CPA_SECTION,
    ),
    Route(PREFIX, "/v1beta/", CPA, gettext_noop("Gemini API requests."), _API, CPA_SECTION),
    Route(
        PREFIX, "/backend-api/codex/", CPA, gettext_noop("Codex API requests."), _API, CPA_SECTION
    ),
    Route(PREFIX, "/api/", CPA, gettext_noop("Amp routes and provider APIs."), _API, CPA_SECTION),
    Route(
        EXACT,
        "/v1internal:method",
        CPA,
        gettext_noop("Gemini CLI internal endpoint."),
        _API,
        CPA_SECTION,
    ),
    Route(
        EXACT,
        "/healthz",
        CPA,
        gettext_noop("CPA health check."),
        _("CPA's health check is answered by CPAMP (404)"),
        CPA_SECTION,
    ),
    Route(
        EXACT, "/anthropic/callback", CPA, gettext_noop("OAuth callback."), _CALLBACK, CPA_SECTION
    ),
    Route(EXACT, "/codex/callback", CPA, gettext_noop("OAuth callback."), _CALLBACK, CPA_SECTION),
    Route(EXACT, "/google/callback", CPA, gettext_noop("OAuth callback."), _CALLBACK, CPA_SECTION),
    Route(
        EXACT, "/antigravity/callback", CPA, gettext_noop("OAuth callback."), _CALLBACK, CPA_SECTION
    ),
)

# `location = /` answers 302 to /management.html: served by CPAMP (manager_server) or by CPA
# itself (cpa_panel).
ROOT_REDIRECT = Route(EXACT, "/", "", gettext_noop("Default entry point: the management panel."))
ROOT_REDIRECT_TARGET = "/management.html"

# Fallback to CPA: CPA root routes, Amp routes and future CPA endpoints.
FALLBACK = Route(
    PREFIX,
    "/",
    CPA,
    gettext_noop("Fallback to CPA: CPA root routes, Amp routes and future CPA endpoints."),
    _("new CPA endpoints without an explicit route are sent to CPAMP and break"),
)

# Paths that only the fallback owns, used to tell whether an override swallows "every uncertain
# path" (the seed warns against sending those to CPAMP by default).
FALLBACK_SAMPLES = ("/threads", "/docs/guide", "/a-future-cpa-endpoint", "/xai/callback")


def builtin_key(match: str, path: str) -> tuple[str, str]:
    """Return the key under which an override replaces a built-in route."""
    return (match, path)


BUILTIN_BY_KEY = {builtin_key(r.match, r.path): r for r in BUILTIN_ROUTES}


def sample_paths(route: Route) -> tuple[str, ...]:
    """Return request paths that the route owns in the seed (for shadowing checks)."""
    if route.match == EXACT:
        return (route.path,)
    return (route.path, route.path + "models", route.path + "a/b")
