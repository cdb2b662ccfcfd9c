"""A CLI Proxy API (CPA) emulator on 127.0.0.1, built from the behaviour reference.

Every answer follows /work/shared/reference/cpa-cpamp-behaviour.md. Part 3.1 (measured on a real
v7.1.39 build) wins over Parts 1 and 2 (read from source) wherever they differ:

- 3.1: gin's text 404 for unknown paths and methods (no 405), OPTIONS 204 with
  ``Access-Control-Allow-Headers: *`` on any path before any key check, ``/management.html`` for
  GET only (HEAD is 404) and 404 with an empty body when the panel is absent, the trailing-slash
  301, the Amp 503 and the Gemini-CLI 403, no ``Server`` header;
- 3.1 "The ban": management-key failures counted per gin ``ClientIP()`` (leftmost
  ``X-Forwarded-For``, then ``X-Real-IP``, then the peer); the 6th request within the ban gets 403
  even with the right key; ``/v1/*`` is never affected;
- 1.3 / 1.4 / 1.5 / 1.6: API-key and management-key auth, the ``X-CPA-*`` headers, the
  management routes and their bodies, ``usage-statistics-enabled`` and the usage queue;
- 3.2 / 1.7 (``version`` v7.2 or later): unknown management paths authenticated first, every 404
  empty, the Amp routes and ``/v1internal:method`` gone, safe mode for template API keys,
  ``X-CPA-SUPPORT-PLUGIN`` and ``Access-Control-Expose-Headers``;
- 1.2 / 2.7 (``version`` below v6.10.8): no ``/v0/management/usage-queue``.

Like the real service it never says "X-Console-Upstream": the exported nginx config adds that
header. ``EmulatorServer`` is the shared machinery (threaded server with a 128-deep listen backlog,
delay, request log, stop/start) that the CPAMP emulator reuses.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

GIN_404 = b"404 page not found"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "*",
}
# 1.7: from v7.2 the CORS middleware also exposes these (internal/api/server_middleware.go).
EXPOSE_HEADERS_V72 = ", ".join(
    (
        "X-CPA-TRACE-ID",
        "X-CPA-VERSION",
        "X-CPA-COMMIT",
        "X-CPA-BUILD-DATE",
        "X-CPA-SUPPORT-PLUGIN",
        "X-CPA-HOME-VERSION",
        "X-CPA-HOME-BUILD-DATE",
        "X-SERVER-VERSION",
        "X-SERVER-BUILD-DATE",
        "Location",
        "Retry-After",
        "X-Request-Id",
        "OpenAI-Request-Id",
    )
)
# "1" when the build has a plugin loader (cgo or purego), "0" otherwise (internal/pluginhost).
SUPPORT_PLUGIN = "1"
BAN_AFTER = 5
BAN_SECONDS = 30 * 60
# Issue 16: the stdlib default of 5 stalls parallel test workers for a second per overflow.
LISTEN_BACKLOG = 128
TEMPLATE_API_KEYS = ("your-api-key-1", "your-api-key-2", "your-api-key-3")
SAFE_MODE_MESSAGE = (
    "Proxy API endpoints are disabled because api-keys contains template values. "
    "Open /management.html?safe-mode=configure, update api-keys in Management, then retry."
)
V72 = (7, 2, 0)
SAFE_MODE_SINCE = (7, 1, 46)  # 1.3: "from v7.1.46 on"
USAGE_QUEUE_SINCE = (6, 10, 8)  # 1.2 / 2.7
# X-CPA-COMMIT and X-CPA-BUILD-DATE of the cited builds; other versions answer Go's defaults.
BUILDS = {
    "v7.1.39": ("f353979e", "2026-06-02T00:00:00Z"),
    "v6.10.8": ("da6c599e", "2026-05-05T00:00:00Z"),
    "v7.2.140": ("a7e3596b", "2026-08-22T00:00:00Z"),
}
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?$")


@dataclass
class Answer:
    """One HTTP answer of an emulator."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedRequest:
    """What an emulator received and how it answered (tests assert on these).

    client_ip is the address the emulator keys on: gin's ClientIP() at CPA, the socket peer at
    CPAMP (Go net/http has no forwarded-header logic).
    """

    method: str
    path: str
    headers: dict[str, str]
    client_ip: str
    status: int
    # "ok", "refused", "banned" or "" (no key check): management-key outcomes at CPA, admin-key
    # outcomes at CPAMP.
    auth: str = ""


def go_json(payload: Any, *, sort_keys: bool = False) -> bytes:
    """Return payload encoded like Go's encoding/json: compact, raw UTF-8, HTML-escaped."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text.encode()


def json_answer(
    status: int,
    payload: Any,
    *,
    newline: bool = False,
    sort_keys: bool = False,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Return a JSON answer.

    newline=True mimics Go's json.Encoder (CPAMP: trailing newline, ``application/json``);
    otherwise gin's ``c.JSON`` (``application/json; charset=utf-8``). sort_keys=True for a gin.H
    map, which encoding/json writes in key order (3.1 measured ``{"data":[],"object":"list"}``).
    """
    body = go_json(payload, sort_keys=sort_keys) + (b"\n" if newline else b"")
    ctype = "application/json" if newline else "application/json; charset=utf-8"
    return Answer(status, body, {**(headers or {}), "Content-Type": ctype})


def gin_json(status: int, payload: dict, headers: dict[str, str] | None = None) -> Answer:
    """Return gin's ``c.JSON(status, gin.H{...})``: keys sorted, as encoding/json writes a map."""
    return json_answer(status, payload, sort_keys=True, headers=headers)


def text_answer(status: int, body: bytes, ctype: str = "text/plain") -> Answer:
    return Answer(status, body, {"Content-Type": ctype})


def go_duration(seconds: float) -> str:
    """Return seconds, truncated, as Go's time.Duration prints them (29m57s, 45s, 1h0m0s)."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def parse_version(version: str) -> tuple[int, int, int]:
    """Return (major, minor, patch) of "v7.1.39" or "v7.2"; ValueError names the field."""
    match = _VERSION.match(version or "")
    if not match:
        raise ValueError(f"version: {version!r} is not a CPA version such as 'v7.1.39' or 'v7.2'")
    return int(match[1]), int(match[2]), int(match[3] or 0)


class EmulatorHTTPServer(ThreadingHTTPServer):
    """The emulators' listening server: threaded, a 128-deep backlog, quiet about hang-ups."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def handle_error(self, request, client_address) -> None:
        # A client (nginx, a timed-out check) that hangs up early is normal, not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class EmulatorServer:
    """A threaded HTTP server on 127.0.0.1 with a per-answer delay and a request log.

    ``delay``: no answer leaves sooner than this many seconds after its request arrived. A proxied
    answer (CPAMP forwarding to CPA) waits for the later of the two, not their sum: the emulator
    forwards at once and only holds its own reply.
    """

    name = "emulator"
    server_class = EmulatorHTTPServer

    def __init__(self, *, delay: float = 0.0, port: int = 0) -> None:
        self.delay = delay
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> EmulatorServer:
        """Listen on 127.0.0.1 (the same port again after stop()) and serve in a thread."""
        emulator = self

        class Handler(_Handler):
            server_emulator = emulator

        httpd = self.server_class(("127.0.0.1", self.port), Handler)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        # A short poll interval: stop() (shutdown) waits for the next poll.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: the port refuses connections (the service is down)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def down(self) -> bool:
        return self._httpd is None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- log -------------------------------------------------------------------------------
    def record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.log.append(entry)

    def requests_to(self, prefix: str) -> list[LoggedRequest]:
        """Return logged requests whose path starts with prefix."""
        with self._lock:
            return [r for r in self.log if r.path.startswith(prefix)]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- behaviour (subclasses) ------------------------------------------------------------
    def client_ip(self, headers: dict[str, str], peer: str) -> str:
        """Return the address this service attributes a request to (default: the peer)."""
        return peer

    def handle(
        self, method: str, path: str, query: dict, headers: dict, body: bytes, client_ip: str
    ) -> tuple[Answer, str]:
        """Return (answer, auth outcome) for one request."""
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server_emulator: EmulatorServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # noqa: A002 - keep test output quiet
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        # Neither gin nor Go's net/http sends a Server header (3.1); both send Date.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _serve(self) -> None:
        arrived = time.monotonic()
        emulator = self.server_emulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        client_ip = emulator.client_ip(headers, self.client_address[0])
        try:
            answer, auth = emulator.handle(
                self.command,
                parts.path,
                parse_qs(parts.query, keep_blank_values=True),
                headers,
                body,
                client_ip,
            )
        except Exception as exc:  # an emulator bug must show up as a 500, not a hang
            answer, auth = text_answer(500, repr(exc).encode()), ""
        emulator.record(
            LoggedRequest(self.command, parts.path, headers, client_ip, answer.status, auth)
        )
        wait = arrived + emulator.delay - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.log_request(answer.status)
        self.send_response_only(answer.status)
        if not any(name.lower() == "date" for name in answer.headers):
            # A proxied answer keeps CPA's Date, as Go's ReverseProxy does.
            self.send_header("Date", self.date_time_string())
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD" and answer.body:
            self.wfile.write(answer.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve


def bearer_or_raw(value: str) -> str:
    """Return the key in an Authorization value: after "Bearer " (any case) or the raw value."""
    value = (value or "").strip()
    if value.lower().startswith("bearer "):
        return value[7:].strip()
    return value


def _header_ip(value: str) -> str:
    """Return gin's pick from a forwarded header when every proxy is trusted, or ""."""
    items = [item.strip() for item in value.split(",")] if value else []
    # gin walks right to left and stops at an entry that is not an IP; with every proxy trusted
    # it only returns when it reaches the leftmost entry.
    for index in range(len(items) - 1, -1, -1):
        try:
            ipaddress.ip_address(items[index])
        except ValueError:
            return ""
        if index == 0:
            return items[0]
    return ""


def _match(pattern: str, path: str) -> bool:
    """Return whether a gin route pattern (``:param``, ``*rest``) matches path."""
    want, got = pattern.split("/"), path.split("/")
    for index, segment in enumerate(want):
        if segment.startswith("*"):
            return len(got) > index  # a catch-all takes the rest, "/" included
        if index >= len(got):
            return False
        if segment.startswith(":"):
            if not got[index]:
                return False
        elif segment != got[index]:
            return False
    return len(want) == len(got)


def _routes(prefix: str, methods: Iterable[str], names: Iterable[str]) -> set[tuple[str, str]]:
    return {(method, f"{prefix}{name}") for method in methods for name in names}


GPP = ("GET", "PUT", "PATCH")
GPPD = ("GET", "PUT", "PATCH", "DELETE")
# 1.2: the management routes registered at v7.1.39, relative to /v0/management/.
MANAGEMENT_ROUTES_V71 = (
    _routes(
        "",
        GPP,
        (
            "debug",
            "logging-to-file",
            "logs-max-total-size-mb",
            "error-logs-max-files",
            "usage-statistics-enabled",
            "quota-exceeded/switch-project",
            "quota-exceeded/switch-preview-model",
            "request-log",
            "ws-auth",
            "request-retry",
            "max-retry-interval",
            "force-model-prefix",
            "routing/strategy",
            "ampcode/restrict-management-to-localhost",
            "ampcode/force-model-mappings",
        ),
    )
    | _routes(
        "",
        GPPD,
        (
            "proxy-url",
            "api-keys",
            "gemini-api-key",
            "claude-api-key",
            "codex-api-key",
            "openai-compatibility",
            "vertex-api-key",
            "oauth-excluded-models",
            "oauth-model-alias",
            "ampcode/upstream-url",
            "ampcode/upstream-api-key",
            "ampcode/model-mappings",
            "ampcode/upstream-api-keys",
        ),
    )
    | _routes(
        "",
        ("GET",),
        (
            "config",
            "config.yaml",
            "latest-version",
            "ampcode",
            "api-key-usage",
            "usage-queue",
            "logs",
            "request-error-logs",
            "request-error-logs/:name",
            "request-log-by-id/:id",
            "auth-files",
            "auth-files/models",
            "auth-files/download",
            "model-definitions/:channel",
            "anthropic-auth-url",
            "codex-auth-url",
            "gemini-cli-auth-url",
            "antigravity-auth-url",
            "kimi-auth-url",
            "xai-auth-url",
            "get-auth-status",
        ),
    )
    | {
        ("PUT", "config.yaml"),
        ("POST", "api-call"),
        ("DELETE", "logs"),
        ("POST", "auth-files"),
        ("DELETE", "auth-files"),
        ("PATCH", "auth-files/status"),
        ("PATCH", "auth-files/fields"),
        ("POST", "vertex/import"),
        ("POST", "oauth-callback"),
    }
)
# 1.7: v7.2 adds these (the reference names them, not their methods: GET is assumed, plus the
# documented DELETE oauth-session), drops gemini-cli-auth-url, and moves oauth-callback outside
# the key middleware.
MANAGEMENT_ROUTES_V72 = (
    MANAGEMENT_ROUTES_V71 - {("GET", "gemini-cli-auth-url"), ("POST", "oauth-callback")}
    | _routes(
        "",
        ("GET",),
        (
            "plugins",
            "plugin-store",
            "reset-quota",
            "max-retry-credentials",
            "xai-api-key",
            "interactions-api-key",
            "oauth-request-scoped-errors",
        ),
    )
    | {("DELETE", "oauth-session")}
)
# 1.2: API-key routes (POST handlers answer 502 "unknown provider": the emulator has none).
API_POST = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
    "/v1/videos/generations",
    "/v1/videos/edits",
    "/v1/videos/extensions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/responses/compact",
    "/backend-api/codex/responses",
    "/backend-api/codex/responses/compact",
)
CALLBACKS_V71 = (
    "/anthropic/callback",
    "/codex/callback",
    "/google/callback",
    "/antigravity/callback",
    "/xai/callback",
)
CALLBACKS_V72 = ("/anthropic/callback", "/codex/callback", "/antigravity/callback")
# 1.2: the Amp module's proxy routes (gone in v7.2, 3.2).
AMP_PREFIXES = ("/api", "/threads", "/docs", "/settings", "/auth")
AMP_EXACT = ("/threads.rss", "/news.rss")
SAFE_MODE_PREFIXES = ("/v1", "/v1beta", "/openai/v1", "/backend-api/codex")
SAFE_MODE_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    "<title>Example API key detected</title></head><body><main><h1>Example API key detected</h1>"
    "<p>Proxy API endpoints are disabled because the top-level <code>api-keys</code> "
    "configuration still contains template values.</p>{keys}"
    "<p>Set strong random API keys, then retry the proxy endpoint.</p>"
    '<a href="/management.html?safe-mode=configure">Open Management</a></main></body></html>'
)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class FakeCPA(EmulatorServer):
    """CLI Proxy API as seen over HTTP: v7.1.39 by default (reference Parts 1 and 3.1).

    Options (constructor keywords; each is also an attribute tests may flip at run time):

    - ``api_keys``: CPA's ``api-keys``; empty lets every API request through (1.3).
    - ``management_key``: ``remote-management.secret-key``. None at construction: no management
      routes at all (gin 404 text). Set to None later: the hot-reload case, 404 with an empty body.
    - ``allow_remote``: ``allow-remote``; False refuses a non-local ClientIP with 403.
    - ``version``: the ``X-CPA-VERSION``; "v7.2" or later switches to 3.2's behaviour, below
      "v6.10.8" there is no usage queue.
    - ``panel_available``: False when ``disable-control-panel`` is on or the panel download
      failed: GET /management.html answers 404 with an empty body.
    - ``usage_statistics_enabled``: ``usage-statistics-enabled`` (CPA's default is off; CPAMP's
      setup turns it on).
    - ``usage_queue_retention_seconds``: ``redis-usage-queue-retention-seconds``.
    - ``logging_to_file``: ``logging-to-file``; off, GET /v0/management/logs answers 400.
    - ``models``: the ids GET /v1/models lists (3.1: empty without providers).

    ``usage_queue`` holds the records GET /v0/management/usage-queue pops, oldest first.
    ``management_registered`` says whether the management routes exist (a secret at startup).
    ``unban()`` forgets failures and bans, as a restart or the 30 minutes would.
    """

    name = "cpa"

    def __init__(
        self,
        *,
        api_keys: list[str] | None = None,
        management_key: str | None = "cpa-management-secret",
        allow_remote: bool = True,
        version: str = "v7.1.39",
        panel_available: bool = True,
        usage_statistics_enabled: bool = False,
        usage_queue_retention_seconds: int = 60,
        logging_to_file: bool = False,
        models: Iterable[str] = (),
        delay: float = 0.0,
        port: int = 0,
    ) -> None:
        super().__init__(delay=delay, port=port)
        parse_version(version)
        self.api_keys = list(api_keys if api_keys is not None else ["sk-client-0001"])
        self.management_key = management_key
        # 1.4: routes exist only if a secret existed at startup.
        self.management_registered = bool(management_key)
        self.allow_remote = allow_remote
        self.version = version
        self.panel_available = panel_available
        self.usage_statistics_enabled = usage_statistics_enabled
        self.usage_queue_retention_seconds = usage_queue_retention_seconds
        self.logging_to_file = logging_to_file
        self.models = list(models)
        self.usage_queue: list[dict] = []
        self._failures: dict[str, int] = {}
        self._banned_until: dict[str, float] = {}
        self._ban_lock = threading.Lock()

    # -- version switches ------------------------------------------------------------------
    @property
    def release(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    @property
    def v72(self) -> bool:
        """Whether this build has the v7.2 differences of reference 3.2."""
        return self.release >= V72

    @property
    def safe_mode(self) -> bool:
        """Whether example-key safe mode is on (1.3, 3.2): a template key in api-keys."""
        return self.release >= SAFE_MODE_SINCE and any(
            key.strip() in TEMPLATE_API_KEYS for key in self.api_keys
        )

    # -- the ban (3.1) ---------------------------------------------------------------------
    def client_ip(self, headers: dict[str, str], peer: str) -> str:
        """Return gin's ClientIP() with its default "trust every proxy" (3.1, 1.4)."""
        return (
            _header_ip(headers.get("x-forwarded-for", ""))
            or _header_ip(headers.get("x-real-ip", ""))
            or peer
        )

    def failures(self, ip: str = "127.0.0.1") -> int:
        return self._failures.get(ip, 0)

    def banned(self, ip: str = "127.0.0.1") -> bool:
        return self._banned_until.get(ip, 0) > time.monotonic()

    def unban(self, ip: str | None = None) -> None:
        """Forget the failures and bans of ip (or of everyone): CPA restarted or 30 min passed."""
        with self._ban_lock:
            for table in (self._failures, self._banned_until):
                if ip is None:
                    table.clear()
                else:
                    table.pop(ip, None)

    def management_refusals(self) -> list[LoggedRequest]:
        """Return management requests whose key CPA refused (what counts toward the ban)."""
        return [r for r in self.requests_to("/v0/management/") if r.auth == "refused"]

    # -- routing ---------------------------------------------------------------------------
    def _cors(self) -> dict[str, str]:
        if self.v72:
            return {**CORS_HEADERS, "Access-Control-Expose-Headers": EXPOSE_HEADERS_V72}
        return dict(CORS_HEADERS)

    def _not_found(self) -> Answer:
        # 3.2: from v7.2 a NoRoute handler answers every 404 with an empty body.
        if self.v72:
            return Answer(404, b"", self._cors())
        return Answer(404, GIN_404, {**self._cors(), "Content-Type": "text/plain"})

    def _public_routes(self) -> set[tuple[str, str]]:
        routes = {("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/"), ("GET", "/v1/models")}
        routes |= {("GET", "/management.html"), ("GET", "/v1beta/models")}
        routes |= {("GET", "/v1beta/models/*action"), ("POST", "/v1beta/models/*action")}
        routes |= {("POST", path) for path in API_POST}
        routes |= {("GET", path) for path in (CALLBACKS_V72 if self.v72 else CALLBACKS_V71)}
        if self.v72:
            routes |= {("GET", "/v0/management/oauth-callback")}
            routes |= {("POST", "/v0/management/oauth-callback")}
        else:
            routes.add(("POST", "/v1internal:method"))
        if self.management_registered:
            table = MANAGEMENT_ROUTES_V72 if self.v72 else MANAGEMENT_ROUTES_V71
            routes |= {
                (method, "/v0/management/" + name)
                for method, name in table
                if name != "usage-queue" or self.release >= USAGE_QUEUE_SINCE
            }
        return routes

    def _route(self, method: str, path: str) -> str | None:
        """Return the pattern gin matches for method and path, or None."""
        for route_method, pattern in self._public_routes():
            if route_method == method and _match(pattern, path):
                return pattern
        return None

    def handle(self, method, path, query, headers, body, client_ip):
        cors = self._cors()
        # 3.1 / 1.1: the CORS middleware answers every OPTIONS with 204, before any route or key.
        if method == "OPTIONS":
            return Answer(204, b"", cors), ""
        if self.safe_mode:
            answer = self._safe_mode(method, path, query)
            if answer is not None:
                return answer, ""
        if not self.v72:
            if path.startswith("/api/provider/"):
                # 1.2: /api/provider/<p>/v1/... mirrors the /v1 and /v1beta endpoints.
                rest = "/" + "/".join(path.split("/")[4:])
                if rest.startswith(("/v1/", "/v1beta/")):
                    path = rest
            elif path in AMP_EXACT or any(_under(path, prefix) for prefix in AMP_PREFIXES):
                # 3.1: the Amp proxy answers before any key check when no upstream is set.
                return gin_json(503, {"error": "amp upstream proxy not available"}, cors), ""
        pattern = self._route(method, path)
        if pattern is None:
            return self._no_route(method, path, query, headers, client_ip)
        if pattern.startswith("/v0/management/") and pattern != "/v0/management/oauth-callback":
            return self._management(method, pattern, query, headers, body, client_ip)
        return self._public(method, pattern, path, query, headers, body), ""

    def _no_route(self, method, path, query, headers, client_ip) -> tuple[Answer, str]:
        toggled = path[:-1] if path.endswith("/") else path + "/"
        if len(path) > 1 and self._route(method, toggled):
            # gin's RedirectTrailingSlash (3.1: GET /v1/models/ is a 301 to /v1/models). It runs
            # before any middleware, so no CORS headers.
            location = toggled + ("?" + _query_string(query) if query else "")
            if method == "GET":
                body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
                headers = {"Location": location, "Content-Type": "text/html; charset=utf-8"}
                return Answer(301, body, headers), ""
            return Answer(307, b"", {"Location": location}), ""
        if self.v72 and path.startswith("/v0/management/") and self.management_registered:
            if not self.management_key:
                return Answer(404, b"", self._cors()), ""
            # 3.2: unknown management paths are authenticated first: they count toward the ban.
            refusal, auth = self._authenticate(headers, client_ip)
            if refusal is not None:
                return refusal, auth
            return Answer(404, b"", self._management_headers()), auth
        return self._not_found(), ""

    def _safe_mode(self, method: str, path: str, query: dict) -> Answer | None:
        # 3.2 / 1.3, internal/api/server_middleware.go (exampleAPIKeySafeModeMiddleware).
        if path == "/management.html" and (query.get("safe-mode") or [""])[0] == "configure":
            return None
        if path in ("/", "/management.html") and method in ("GET", "HEAD"):
            keys = "".join(
                f"<li><code>{k.strip()}</code></li>"
                for k in dict.fromkeys(self.api_keys)
                if k.strip() in TEMPLATE_API_KEYS
            )
            page = SAFE_MODE_PAGE.replace("{keys}", f"<ul>{keys}</ul>" if keys else "")
            return Answer(
                200,
                page.encode(),
                {
                    **self._cors(),
                    "Content-Type": "text/html; charset=utf-8",
                    "Cache-Control": "no-store",
                },
            )
        if any(_under(path, prefix) for prefix in SAFE_MODE_PREFIXES):
            return gin_json(
                403,
                {"error": "unsafe_example_api_key", "message": SAFE_MODE_MESSAGE},
                {**self._cors(), "X-CPA-SAFE-MODE": "example-api-key"},
            )
        return None

    def _public(self, method, pattern, path, query, headers, body) -> Answer:
        cors = self._cors()
        if pattern == "/healthz":
            return gin_json(200, {"status": "ok"}, cors)
        if pattern == "/":
            return gin_json(
                200,
                {
                    "message": "CLI Proxy API Server",
                    "endpoints": [
                        "POST /v1/chat/completions",
                        "POST /v1/completions",
                        "GET /v1/models",
                    ],
                },
                cors,
            )
        if pattern == "/management.html":
            if not self.panel_available:
                # 3.1: disable-control-panel, home mode or a failed panel download.
                return Answer(404, b"", cors)
            return Answer(
                200,
                b"<!doctype html><title>CPA panel</title>",
                {**cors, "Content-Type": "text/html; charset=utf-8"},
            )
        if pattern in CALLBACKS_V71:
            return Answer(
                200,
                b"<html>Authentication successful</html>",
                {**cors, "Content-Type": "text/html; charset=utf-8"},
            )
        if pattern == "/v1internal:method":
            return gin_json(
                403,
                {"error": {"message": "Gemini CLI endpoint is disabled", "type": "forbidden"}},
                cors,
            )
        if pattern == "/v0/management/oauth-callback":
            return gin_json(200, {}, cors)  # v7.2, outside the key middleware; body not modelled
        # Everything else is an API-key route (1.3).
        refused = self._api_key_refusal(headers, query)
        if refused is not None:
            return refused
        if pattern == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "cpa"} for m in self.models]
            return gin_json(200, {"data": data, "object": "list"}, cors)
        if pattern == "/v1beta/models" and method == "GET":
            return gin_json(200, {"models": [{"name": f"models/{m}"} for m in self.models]}, cors)
        if method == "POST":
            model = path.rsplit("/", 1)[-1].split(":")[0] if "/v1beta/" in pattern else ""
            try:
                model = model or str(json.loads(body or b"{}").get("model") or "")
            except (ValueError, AttributeError):
                model = ""
            # 3.1 / 1.6: with no providers configured every model is unknown.
            return gin_json(
                502,
                {
                    "error": {
                        "message": f"unknown provider for model {model}",
                        "type": "server_error",
                        "code": "internal_server_error",
                    }
                },
                cors,
            )
        return self._not_found()

    def _api_key_refusal(self, headers: dict, query: dict) -> Answer | None:
        # 1.3: every location is checked; an empty api-keys list lets everything through.
        if not self.api_keys:
            return None
        offered = [
            bearer_or_raw(headers.get("authorization", "")),
            headers.get("x-goog-api-key", ""),
            headers.get("x-api-key", ""),
            *(query.get("key") or []),
            *(query.get("auth_token") or []),
        ]
        offered = [k for k in offered if k]
        if not offered:
            return gin_json(401, {"error": "Missing API key"}, self._cors())
        if any(k in self.api_keys for k in offered):
            return None
        return gin_json(401, {"error": "Invalid API key"}, self._cors())

    # -- management (1.4, 3.1) -------------------------------------------------------------
    def _management_headers(self) -> dict[str, str]:
        commit, built = BUILDS.get(self.version, ("none", "unknown"))
        headers = {
            **self._cors(),
            "X-CPA-VERSION": self.version,
            "X-CPA-COMMIT": commit,
            "X-CPA-BUILD-DATE": built,
        }
        if self.v72:
            headers["X-CPA-SUPPORT-PLUGIN"] = SUPPORT_PLUGIN
        return headers

    def _authenticate(self, headers: dict, client_ip: str) -> tuple[Answer | None, str]:
        """Run the management key middleware; return (refusal or None, auth outcome)."""
        version = self._management_headers()
        with self._ban_lock:
            now = time.monotonic()
            until = self._banned_until.get(client_ip, 0)
            if until > now:
                return gin_json(
                    403,
                    {
                        "error": "IP banned due to too many failed attempts. "
                        f"Try again in {go_duration(until - now)}"
                    },
                    version,
                ), "banned"
            if client_ip not in ("127.0.0.1", "::1") and not self.allow_remote:
                # Not a failed attempt (1.4 step 2).
                return gin_json(403, {"error": "remote management disabled"}, version), ""
            key = bearer_or_raw(headers.get("authorization", "")) or headers.get(
                "x-management-key", ""
            )
            if key != self.management_key:
                count = self._failures.get(client_ip, 0) + 1
                self._failures[client_ip] = count
                if count >= BAN_AFTER:
                    # The 5th failure still gets its 401; the ban starts with the next request.
                    self._failures.pop(client_ip, None)
                    self._banned_until[client_ip] = now + BAN_SECONDS
                message = "invalid management key" if key else "missing management key"
                return gin_json(401, {"error": message}, version), "refused"
            self._failures.pop(client_ip, None)
        return None, "ok"

    def _management(self, method, pattern, query, headers, body, client_ip):
        if not self.management_key:
            # 1.4: the secret was removed by hot reload (managementAvailabilityMiddleware).
            return Answer(404, b"", self._cors()), ""
        refusal, auth = self._authenticate(headers, client_ip)
        if refusal is not None:
            return refusal, auth
        version = self._management_headers()
        sub = pattern[len("/v0/management/") :]
        if sub == "config":
            return json_answer(200, self.config(), headers=version), auth
        if sub == "usage-queue":
            raw = (query.get("count") or ["1"])[0]
            if not raw.isdigit() or int(raw) < 1:
                return gin_json(400, {"error": "count must be a positive integer"}, version), auth
            with self._lock:
                popped = self.usage_queue[: int(raw)]
                del self.usage_queue[: int(raw)]
            return json_answer(200, popped, headers=version), auth
        if sub in ("usage-statistics-enabled", "logging-to-file"):
            attribute = sub.replace("-", "_")
            if method == "GET":
                return gin_json(200, {sub: getattr(self, attribute)}, version), auth
            try:
                value = json.loads(body or b"{}")["value"]
                if not isinstance(value, bool):
                    raise TypeError(value)
            except (ValueError, KeyError, TypeError):
                return gin_json(400, {"error": "invalid body"}, version), auth
            setattr(self, attribute, value)
            return gin_json(200, {"status": "ok"}, version), auth
        if sub == "logs" and method == "GET":
            if not self.logging_to_file:
                return gin_json(400, {"error": "logging to file disabled"}, version), auth
            return gin_json(
                200, {"latest-timestamp": 0, "line-count": 0, "lines": []}, version
            ), auth
        if sub == "api-keys" and method == "GET":
            return gin_json(200, {"api-keys": list(self.api_keys)}, version), auth
        if sub == "auth-files" and method == "GET":
            return gin_json(200, {"files": []}, version), auth
        if sub == "latest-version":
            # The emulator is offline: CPA cannot ask GitHub (1.4; the other fields are elided).
            return gin_json(502, {"error": "request_failed"}, version), auth
        # A registered route whose body the emulator does not model.
        return gin_json(200, {}, version), auth

    def config(self) -> dict:
        """Return GET /v0/management/config: the runtime config, kebab-case, no host/port (1.4)."""
        return {
            "debug": False,
            "logging-to-file": self.logging_to_file,
            "usage-statistics-enabled": self.usage_statistics_enabled,
            "redis-usage-queue-retention-seconds": self.usage_queue_retention_seconds,
            "request-retry": 3,
            "ws-auth": False,
            "proxy-url": "",
            "api-keys": list(self.api_keys),
            "gemini-api-key": [{"api-key": "AIza-provider-secret"}],
        }


def _query_string(query: dict) -> str:
    return "&".join(f"{name}={value}" for name, values in query.items() for value in values)
