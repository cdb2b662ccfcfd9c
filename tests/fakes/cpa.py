"""A CLI Proxy API (CPA) emulator on 127.0.0.1, built from the behaviour reference.

Every answer follows /work/shared/reference/cpa-cpamp-behaviour.md, Part 1 ([CPA@7.1.39]):
section 1.1 (gin 404 text, OPTIONS 204 with CORS), 1.2 (public routes), 1.3 (API-key auth and its
401 bodies), 1.4 (management-key auth, X-CPA-* headers, decision order and the 5-strikes IP ban)
and 1.6 (the /v1/models shape). Like the real service it never says "X-Console-Upstream": the
exported nginx config adds that header.

``EmulatorServer`` is the shared machinery (threaded server, delay, request log, stop/start) that
the CPAMP emulator reuses.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GIN_404 = b"404 page not found"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "*",
}
BAN_AFTER = 5
BAN_SECONDS = 30 * 60


@dataclass
class Answer:
    """One HTTP answer of an emulator."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedRequest:
    """What an emulator received and how it answered (tests assert on these)."""

    method: str
    path: str
    headers: dict[str, str]
    client_ip: str
    status: int
    # "ok", "refused" or "" (no key check): management-key outcomes at CPA, admin-key at CPAMP.
    auth: str = ""


def json_answer(status: int, payload, *, newline: bool = False, headers=None) -> Answer:
    """Return a JSON answer; newline=True mimics Go's json.Encoder (CPAMP)."""
    body = json.dumps(payload, separators=(",", ":")).encode() + (b"\n" if newline else b"")
    ctype = "application/json" if newline else "application/json; charset=utf-8"
    return Answer(status, body, {"Content-Type": ctype, **(headers or {})})


def text_answer(status: int, body: bytes, ctype: str = "text/plain") -> Answer:
    return Answer(status, body, {"Content-Type": ctype})


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

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

        httpd = _QuietServer(("127.0.0.1", self.port), Handler)
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

    def _serve(self) -> None:
        arrived = time.monotonic()
        emulator = self.server_emulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        # gin's ClientIP with its default "trust every proxy": the first X-Forwarded-For entry.
        forwarded = headers.get("x-forwarded-for", "")
        client_ip = forwarded.split(",")[0].strip() if forwarded else self.client_address[0]
        try:
            answer, auth = emulator.handle(
                self.command, parts.path, parse_qs(parts.query), headers, body, client_ip
            )
        except Exception as exc:  # an emulator bug must show up as a 500, not a hang
            answer, auth = text_answer(500, repr(exc).encode()), ""
        emulator.record(
            LoggedRequest(self.command, parts.path, headers, client_ip, answer.status, auth)
        )
        wait = arrived + emulator.delay - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.send_response(answer.status)
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


class FakeCPA(EmulatorServer):
    """CLI Proxy API v7.1.39 as seen over HTTP (reference Part 1)."""

    name = "cpa"

    def __init__(
        self,
        *,
        api_keys: list[str] | None = None,
        management_key: str | None = "cpa-management-secret",
        allow_remote: bool = True,
        version: str = "v7.1.39",
        delay: float = 0.0,
        port: int = 0,
    ) -> None:
        super().__init__(delay=delay, port=port)
        self.api_keys = list(api_keys if api_keys is not None else ["sk-client-0001"])
        self.management_key = management_key
        self.allow_remote = allow_remote
        self.version = version
        self.usage_statistics_enabled = False
        self._failures: dict[str, int] = {}
        self._banned_until: dict[str, float] = {}

    # Reference 1.4: counted per client IP; tests read these.
    def failures(self, ip: str = "127.0.0.1") -> int:
        return self._failures.get(ip, 0)

    def banned(self, ip: str = "127.0.0.1") -> bool:
        return self._banned_until.get(ip, 0) > time.monotonic()

    def management_refusals(self) -> list[LoggedRequest]:
        """Return management requests whose key CPA refused (what counts toward the ban)."""
        return [r for r in self.requests_to("/v0/management/") if r.auth == "refused"]

    def handle(self, method, path, query, headers, body, client_ip):
        # 1.1: the CORS middleware answers every OPTIONS with 204 before routing.
        if method == "OPTIONS":
            return Answer(204, b"", dict(CORS_HEADERS)), ""
        if path == "/healthz" and method in ("GET", "HEAD"):
            return json_answer(200, {"status": "ok"}, headers=CORS_HEADERS), ""
        if path == "/" and method == "GET":
            return json_answer(
                200,
                {
                    "message": "CLI Proxy API Server",
                    "endpoints": [
                        "POST /v1/chat/completions",
                        "POST /v1/completions",
                        "GET /v1/models",
                    ],
                },
                headers=CORS_HEADERS,
            ), ""
        # 1.2: CPA serves its own panel at /management.html (GET only: gin maps no HEAD).
        if path == "/management.html" and method == "GET":
            return text_answer(
                200, b"<!doctype html><title>CPA panel</title>", "text/html; charset=utf-8"
            ), ""
        if (
            path
            in (
                "/anthropic/callback",
                "/codex/callback",
                "/google/callback",
                "/antigravity/callback",
                "/xai/callback",
            )
            and method == "GET"
        ):
            return text_answer(
                200, b"<html>Authentication successful</html>", "text/html; charset=utf-8"
            ), ""
        if path in ("/v1/models", "/v1beta/models") and method == "GET":
            refused = self._api_key_refusal(headers, query)
            if refused:
                return refused, ""
            if path == "/v1/models":
                return json_answer(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": "gpt-5",
                                "object": "model",
                                "created": 1750000000,
                                "owned_by": "openai",
                            }
                        ],
                    },
                    headers=CORS_HEADERS,
                ), ""
            return json_answer(200, {"models": [{"name": "models/gemini-2.5-pro"}]}), ""
        if path.startswith("/v0/management/") and self.management_key:
            return self._management(method, path, headers, body, client_ip)
        return text_answer(404, GIN_404), ""

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
            return json_answer(401, {"error": "Missing API key"})
        if any(k in self.api_keys for k in offered):
            return None
        return json_answer(401, {"error": "Invalid API key"})

    def _management(self, method, path, headers, body, client_ip) -> tuple[Answer, str]:
        version = {
            "X-CPA-VERSION": self.version,
            "X-CPA-COMMIT": "f353979e",
            "X-CPA-BUILD-DATE": "2026-06-02T00:00:00Z",
            **CORS_HEADERS,
        }
        sub = path[len("/v0/management/") :]
        known = {
            "config",
            "usage-queue",
            "usage-statistics-enabled",
            "api-keys",
            "logs",
            "auth-files",
            "debug",
            "latest-version",
        }
        if sub not in known:
            return text_answer(404, GIN_404), ""  # gin: unknown route, no middleware ran
        now = time.monotonic()
        if self._banned_until.get(client_ip, 0) > now:
            left = int(self._banned_until[client_ip] - now)
            return json_answer(
                403,
                {
                    "error": "IP banned due to too many failed attempts. "
                    f"Try again in {left // 60}m{left % 60}s"
                },
                headers=version,
            ), "banned"
        if client_ip not in ("127.0.0.1", "::1") and not self.allow_remote:
            return json_answer(403, {"error": "remote management disabled"}, headers=version), ""
        key = bearer_or_raw(headers.get("authorization", "")) or headers.get("x-management-key", "")
        if key != self.management_key:
            count = self._failures.get(client_ip, 0) + 1
            self._failures[client_ip] = count
            if count >= BAN_AFTER:
                self._banned_until[client_ip] = now + BAN_SECONDS
            message = "missing management key" if not key else "invalid management key"
            return json_answer(401, {"error": message}, headers=version), "refused"
        self._failures.pop(client_ip, None)
        if sub == "config" and method == "GET":
            return json_answer(
                200,
                {
                    "debug": False,
                    "usage-statistics-enabled": self.usage_statistics_enabled,
                    "redis-usage-queue-retention-seconds": 60,
                    "request-retry": 3,
                    "proxy-url": "",
                    "api-keys": list(self.api_keys),
                    "gemini-api-key": [{"api-key": "AIza-provider-secret"}],
                    "ws-auth": False,
                },
                headers=version,
            ), "ok"
        if sub == "usage-queue" and method == "GET":
            return json_answer(200, [], headers=version), "ok"
        if sub == "usage-statistics-enabled":
            if method == "GET":
                return json_answer(
                    200,
                    {"usage-statistics-enabled": self.usage_statistics_enabled},
                    headers=version,
                ), "ok"
            try:
                self.usage_statistics_enabled = bool(json.loads(body or b"{}")["value"])
            except (ValueError, KeyError, TypeError):
                return json_answer(400, {"error": "invalid body"}, headers=version), "ok"
            return json_answer(200, {"status": "ok"}, headers=version), "ok"
        if sub == "api-keys" and method == "GET":
            return json_answer(200, {"api-keys": list(self.api_keys)}, headers=version), "ok"
        return json_answer(200, {}, headers=version), "ok"
