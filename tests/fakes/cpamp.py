"""A CPA Manager Plus (CPAMP) Manager Server emulator on 127.0.0.1, built from the reference.

Every answer follows /work/shared/reference/cpa-cpamp-behaviour.md. Part 3.3 (measured on a real
v1.12.2 build) wins over Part 2 (read from source) wherever they differ:

- 3.3: ``/management.html`` answers 200 to every method with no CORS headers; OPTIONS on any
  other path answers 204 with ``Access-Control-Allow-Headers: Authorization, Content-Type``
  before any key check; ``/`` is a 307 for any method; GET ``/setup`` is 405;
  ``/usage-service/info`` says ``migrationStatus:"fresh"`` before setup; ``/usage-service/config``
  is open while no CPA connection exists and returns the saved Management Key in clear to the
  admin afterwards;
  ``/models`` and ``/v1/models`` are 428 before setup; the empty head ``/v0/management/`` is 401;
- 2.2: the Bearer-only admin key and ``{"error","code"}`` JSON with a trailing newline;
- 2.4 / 3.3: POST ``/setup`` makes its three calls to CPA (GET config, GET config for the
  retention check, PUT usage-statistics-enabled) with their error codes;
- 2.5 / 3.4: proxying with the admin key swapped for the saved CPA Management Key, CPA's answer
  passed back unchanged, and CPAMP's own 502 ``request_failed`` when its CPA URL is unreachable;
- 2.6 / 3.3: the usage collector, one poll of CPA's HTTP usage queue per ``collect_once()``.

Like the real service it never sends "X-Console-Upstream" and no ``Server`` header.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from tests.fakes.cpa import Answer, EmulatorServer, LoggedRequest, json_answer, text_answer

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
}
GO_404 = b"404 page not found\n"
# 2.3 (router.go rootHandler): /v0/management prefixes CPAMP serves itself from SQLite.
LOCAL_PREFIXES = (
    "/v0/management/model-prices",
    "/v0/management/api-key-aliases",
    "/v0/management/account-action-candidates",
    "/v0/management/codex-inspection",
    "/v0/management/dashboard/",
    "/v0/management/monitoring/",
)
# 2.5: heads refused with 401 when the admin key is missing or wrong.
ADMIN_ONLY_HEADS = {
    "account-action-candidates",
    "accounts",
    "api-call",
    "api-key-aliases",
    "api-key-usage",
    "auth-files",
    "codex-inspection",
    "config",
    "dashboard",
    "model-prices",
    "monitoring",
    "plugin-store",
    "plugins",
    "reload",
    "usage",
    "usage-statistics-enabled",
}
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
    "content-length",
    "host",
}
DEFAULT_ADMIN_KEY = "cpamp_" + "A1b2C3d4" * 4
USAGE_BATCH = 100  # USAGE_BATCH_SIZE's default (2.1)


def cpamp_error(status: int, message: str, code: str) -> Answer:
    """Return CPAMP's error body (2.2): {"error","code"} + newline, with the CORS headers."""
    return json_answer(status, {"error": message, "code": code}, newline=True, headers=CORS_HEADERS)


def _not_found() -> Answer:
    # Go's http.NotFound goes through http.Error, which adds nosniff.
    answer = text_answer(404, GO_404, "text/plain; charset=utf-8")
    answer.headers["X-Content-Type-Options"] = "nosniff"
    return answer


def _method_not_allowed() -> Answer:
    return cpamp_error(405, "method not allowed", "method_not_allowed")


def go_dial_error(exc: OSError, host: str, port: int) -> str:
    """Return the Go net error a failed connection to host:port reads as (2.4, 2.5)."""
    if isinstance(exc, socket.gaierror):
        return f"dial tcp: lookup {host}: no such host"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"dial tcp {host}:{port}: i/o timeout"
    if isinstance(exc, ConnectionRefusedError):
        return f"dial tcp {host}:{port}: connect: connection refused"
    reason = (exc.strerror or str(exc)).lower()
    return f"dial tcp {host}:{port}: connect: {reason}"


class UpstreamError(Exception):
    """CPAMP could not exchange a request with CPA; str() is the Go transport error."""


class FakeCPAMP(EmulatorServer):
    """CPA Manager Plus v1.12.2 in Manager Server mode (reference Parts 2 and 3.3).

    Options (constructor keywords; each is also an attribute tests may flip at run time):

    - ``admin_key``: the CPAMP Admin Key (Bearer only, no lockout).
    - ``cpa_url`` / ``management_key``: the CPA connection saved by setup. Point ``cpa_url`` at a
      port where nothing listens for "CPAMP cannot reach CPA"; a stale ``management_key`` is
      refused by CPA and passed through byte for byte.
    - ``setup_done``: whether a CPA connection exists. False: 428 on proxied paths,
      ``/usage-service/info`` says fresh, ``/usage-service/config`` is open and shows no key.
    - ``collector_enabled``: request monitoring (``collector.enabled`` in its config).
    - ``poll_interval_ms``: ``collector.pollIntervalMs``, checked against CPA's retention by setup.
    - ``reveals_management_key``: v1.12.2 returns the saved key in clear in
      ``/usage-service/config`` (3.3); False answers ``managementKeyConfigured`` instead, as later
      source does.
    - ``source_address``: the address CPAMP's own connections to CPA come from (setup, the config
      read, the collector). "127.0.0.2" makes CPA see CPAMP as a separate, remote host, as in the
      Docker topology; proxied requests are still keyed on their X-Forwarded-For.

    Collector state (``/status``): ``collector_error`` (the last poll's error, "" when fine),
    ``collector_transport``, ``usage_records`` (what the polls collected).
    """

    name = "cpamp"

    def __init__(
        self,
        *,
        admin_key: str = DEFAULT_ADMIN_KEY,
        cpa_url: str = "",
        management_key: str = "cpa-management-secret",
        setup_done: bool = True,
        collector_enabled: bool = True,
        poll_interval_ms: int = 500,
        reveals_management_key: bool = True,
        source_address: str = "127.0.0.1",
        delay: float = 0.0,
        port: int = 0,
    ) -> None:
        super().__init__(delay=delay, port=port)
        self.admin_key = admin_key
        self.cpa_url = cpa_url.rstrip("/")
        self.management_key = management_key
        self.setup_done = setup_done
        self.collector_enabled = collector_enabled
        self.poll_interval_ms = poll_interval_ms
        self.reveals_management_key = reveals_management_key
        self.source_address = source_address
        self.started_at = int(time.time() * 1000)
        self.updated_at = self.started_at
        self.collector_error = ""
        self.collector_transport = ""
        self.usage_records: list[Any] = []

    def admin_refusals(self) -> list[LoggedRequest]:
        """Return requests whose admin key CPAMP refused."""
        return [r for r in self.log if r.auth == "refused"]

    def _admin_ok(self, headers: dict) -> bool:
        # 2.2: only "Authorization: Bearer <key>", scheme case-insensitive, trimmed.
        value = headers.get("authorization", "").strip()
        if not value.lower().startswith("bearer "):
            return False
        return value[7:].strip() == self.admin_key

    @property
    def collector_state(self) -> str:
        """Return /status's collector state: stopped, error or running (2.3)."""
        if not self.setup_done or not self.collector_enabled:
            return "stopped"
        return "error" if self.collector_error else "running"

    # -- routing (router.go) ---------------------------------------------------------------
    def handle(self, method, path, query, headers, body, client_ip):
        if path == "/management.html":
            # 3.3: 200 for every method; the panel handler has no CORS wrapper.
            return text_answer(
                200, b"<!doctype html><title>CPA Manager Plus</title>", "text/html; charset=utf-8"
            ), ""
        # 3.3 / 2.3: every other path answers OPTIONS itself, before any route or key check.
        if method == "OPTIONS":
            return Answer(204, b"", dict(CORS_HEADERS)), ""
        if path == "/health":
            if method != "GET":
                return _method_not_allowed(), ""
            return json_answer(
                200, {"ok": True, "service": "cpa-manager-plus"}, newline=True, headers=CORS_HEADERS
            ), ""
        if path == "/usage-service/info":
            if method != "GET":
                return _method_not_allowed(), ""
            return self._info(), ""
        if path == "/usage-service/config":
            return self._usage_config(method, headers, body)
        if path == "/status":
            if method != "GET":
                return _method_not_allowed(), ""
            if not self._admin_ok(headers):
                return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
            return self._status(), "ok"
        if path == "/setup":
            if method != "POST":
                return _method_not_allowed(), ""  # 3.3: GET /setup is 405
            return self._setup(headers, body)
        if path.startswith("/v0/management/"):
            return self._management(method, path, query, headers, body, client_ip)
        if path in ("/v1/models", "/v1/models/", "/models", "/models/"):
            if method != "GET":
                return _method_not_allowed(), ""
            if not self.setup_done:
                return self._not_configured(), ""
            # 2.5 / 3.3: passthrough, the caller's Authorization (a CPA API key) unchanged.
            return self._forward(method, path.rstrip("/"), query, headers, body, client_ip), ""
        if path == "/v0/resource/plugins" or path.startswith("/v0/resource/plugins/"):
            if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
                return _method_not_allowed(), ""
            if not self.setup_done:
                return self._not_configured(), ""
            if self._admin_ok(headers):
                headers = {**headers, "authorization": f"Bearer {self.management_key}"}
            return self._forward(method, path, query, headers, body, client_ip), ""
        if path == "/":
            # 3.3: any method. Go's http.Redirect writes a small body for GET and HEAD only.
            body = b'<a href="/management.html">Temporary Redirect</a>.\n\n'
            answer = Answer(307, b"", {"Location": "/management.html"})
            if method in ("GET", "HEAD"):
                answer = Answer(
                    307,
                    body,
                    {"Location": "/management.html", "Content-Type": "text/html; charset=utf-8"},
                )
            return answer, ""
        return _not_found(), ""

    def _not_configured(self) -> Answer:
        return cpamp_error(428, "usage service is not configured", "usage_service_not_configured")

    def _info(self) -> Answer:
        return json_answer(
            200,
            {
                "service": "cpa-manager-plus",
                "mode": "embedded",
                "startedAt": self.started_at,
                "configured": self.setup_done,
                "adminReady": True,
                "projectInitialized": self.setup_done,
                "setupRequired": not self.setup_done,
                "migrationStatus": "ready" if self.setup_done else "fresh",
                "dataKeyReady": True,
                "hasHistoricalData": bool(self.usage_records),
            },
            newline=True,
            headers=CORS_HEADERS,
        )

    def _status(self) -> Answer:
        collector = {
            "collector": self.collector_state,
            "upstream": self.cpa_url if self.setup_done else "",
            "mode": "auto",
            "transport": self.collector_transport,
            "queue": "usage",
            "totalInserted": len(self.usage_records),
            "totalSkipped": 0,
            "deadLetters": 0,
        }
        if self.collector_error:
            collector["lastError"] = self.collector_error
        return json_answer(
            200,
            {
                "service": "cpa-manager-plus",
                "dbPath": "/data/usage.sqlite",
                "events": len(self.usage_records),
                "deadLetters": 0,
                "collector": collector,
            },
            newline=True,
            headers=CORS_HEADERS,
        )

    def _management(self, method, path, query, headers, body, client_ip) -> tuple[Answer, str]:
        head = path[len("/v0/management/") :].split("/")[0]
        admin = self._admin_ok(headers)
        trimmed = path.rstrip("/")
        local = path.startswith(LOCAL_PREFIXES) or trimmed in (
            "/v0/management/quota-snapshots",
            "/v0/management/quota-snapshots/query",
            "/v0/management/usage",
        )
        if local or trimmed.startswith("/v0/management/usage/"):
            if not admin:
                return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
            return json_answer(200, {"usage": {}}, newline=True, headers=CORS_HEADERS), "ok"
        # 3.3: the empty head is refused like an admin-only one.
        if not admin and (head in ADMIN_ONLY_HEADS or not head):
            return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
        if not self.setup_done:
            return self._not_configured(), "ok" if admin else ""
        if admin:
            # The admin key never reaches CPA: CPAMP swaps in its saved CPA Management Key.
            headers = {**headers, "authorization": f"Bearer {self.management_key}"}
        return self._forward(method, path, query, headers, body, client_ip), "ok" if admin else ""

    # -- /usage-service/config (2.3, 3.3) --------------------------------------------------
    def _config_body(self, *, cpa_usage: dict | None) -> dict:
        connection: dict[str, Any] = {"cpaBaseUrl": self.cpa_url if self.setup_done else ""}
        if self.setup_done and self.reveals_management_key:
            connection["managementKey"] = self.management_key
        elif not self.reveals_management_key:
            connection["managementKeyConfigured"] = self.setup_done and bool(self.management_key)
        body: dict[str, Any] = {
            "config": {
                "cpaConnection": connection,
                "collector": {
                    "enabled": self.collector_enabled,
                    "collectorMode": "auto",
                    "queue": "usage",
                    "popSide": "right",
                    "batchSize": USAGE_BATCH,
                    "pollIntervalMs": self.poll_interval_ms,
                    "queryLimit": 50000,
                },
                # Shapes the reference does not record; present, as in the real answer.
                "codexInspection": {},
                "externalUsageService": {"enabled": False},
                "updatedAtMs": self.updated_at,
            },
            "source": "db" if self.setup_done else "",
        }
        if cpa_usage is not None:
            body["cpaUsage"] = cpa_usage
        return body

    def _usage_config(self, method: str, headers: dict, body: bytes) -> tuple[Answer, str]:
        if method not in ("GET", "PUT"):
            return _method_not_allowed(), ""
        admin = self._admin_ok(headers)
        if method == "GET":
            if not self.setup_done:
                # 3.3: open without auth while no CPA connection exists.
                return json_answer(
                    200, self._config_body(cpa_usage=None), newline=True, headers=CORS_HEADERS
                ), "ok" if admin else ""
            if not admin:
                return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
            # managerconfig.Get reads CPA's config with the saved key for cpaUsage: one more
            # management request at CPA, refused (and counted) when the saved key is stale.
            return json_answer(
                200,
                self._config_body(cpa_usage=self._cpa_usage()),
                newline=True,
                headers=CORS_HEADERS,
            ), "ok"
        if not admin:
            return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
        try:
            submitted = json.loads(body or b"{}")["config"]
            connection = submitted.get("cpaConnection") or {}
            collector = submitted.get("collector") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return cpamp_error(400, "invalid request body", "request_failed"), "ok"
        url = _normalize_url(connection.get("cpaBaseUrl") or self.cpa_url)
        key = (connection.get("managementKey") or self.management_key or "").strip()
        enabled = collector.get("enabled", self.collector_enabled)
        interval = int(collector.get("pollIntervalMs") or self.poll_interval_ms)
        failure = self._connect(url, key, monitoring=bool(enabled), poll_interval_ms=interval)
        if failure is not None:
            return failure, "ok"
        self.collector_enabled, self.poll_interval_ms = bool(enabled), interval
        self.setup_done = True  # a complete connection is saved as the setup too
        self.updated_at = int(time.time() * 1000)
        return json_answer(
            200, self._config_body(cpa_usage=None), newline=True, headers=CORS_HEADERS
        ), "ok"

    def _cpa_usage(self) -> dict | None:
        try:
            status, _reason, _headers, data = self._call("GET", "/v0/management/config")
        except UpstreamError:
            return None
        if not 200 <= status < 300:
            return None
        try:
            config = json.loads(data)
        except ValueError:
            return None
        retention = config.get("redis-usage-queue-retention-seconds")
        return {
            "usageStatisticsEnabled": config.get("usage-statistics-enabled") is True,
            "redisUsageQueueRetentionSeconds": 60 if retention is None else int(retention),
            "retentionSourceDefault": retention is None,
        }

    # -- setup (2.4, 3.3) ------------------------------------------------------------------
    def _setup(self, headers, body) -> tuple[Answer, str]:
        if not self._admin_ok(headers):
            return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
        try:
            payload = json.loads(body or b"{}")
            if not isinstance(payload, dict):
                raise ValueError(payload)
        except ValueError:
            return cpamp_error(400, "invalid JSON body", "request_failed"), "ok"
        url = _normalize_url(payload.get("cpaBaseUrl") or "")
        key = (payload.get("managementKey") or payload.get("cpaManagementKey") or "").strip()
        if not url or not key:
            return cpamp_error(
                400, "cpaBaseUrl and managementKey are required", "cpa_connection_required"
            ), "ok"
        monitoring = payload.get("requestMonitoringEnabled", True) is not False
        interval = int(payload.get("pollIntervalMs") or self.poll_interval_ms)
        failure = self._connect(url, key, monitoring=monitoring, poll_interval_ms=interval)
        if failure is not None:
            return failure, "ok"
        self.setup_done = True
        self.collector_enabled, self.poll_interval_ms = monitoring, interval
        self.updated_at = int(time.time() * 1000)
        return json_answer(
            200, {"ok": True, "upstream": url}, newline=True, headers=CORS_HEADERS
        ), ("ok")

    def _connect(
        self, url: str, key: str, *, monitoring: bool, poll_interval_ms: int
    ) -> Answer | None:
        """Validate a CPA connection the way setup does and save it; return the refusal or None."""
        previous = (self.cpa_url, self.management_key)
        self.cpa_url, self.management_key = url, key
        failure = self._validate(monitoring=monitoring, poll_interval_ms=poll_interval_ms)
        if failure is not None:
            self.cpa_url, self.management_key = previous
        return failure

    def _validate(self, *, monitoring: bool, poll_interval_ms: int) -> Answer | None:
        try:
            # 1. The key works: any 2xx.
            status, reason, _headers, _data = self._call("GET", "/v0/management/config")
            if not 200 <= status < 300:
                return cpamp_error(
                    502,
                    f"management API validation failed: {status} {reason}",
                    "management_api_validation_failed",
                )
            if not monitoring:
                return None
            # 2. The retention check: CPA keeps queued records long enough for one poll.
            status, reason, _headers, data = self._call("GET", "/v0/management/config")
            if not 200 <= status < 300:
                return cpamp_error(
                    502,
                    f"management API config request failed: {status} {reason}",
                    "management_api_validation_failed",
                )
            try:
                retention = json.loads(data).get("redis-usage-queue-retention-seconds", 60)
            except (ValueError, AttributeError):
                retention = 60
            if int(retention) <= 0:
                return cpamp_error(
                    400,
                    "CPA redis-usage-queue-retention-seconds must be greater than 0",
                    "cpa_usage_retention_invalid",
                )
            if poll_interval_ms > int(retention) * 1000:
                return cpamp_error(
                    400,
                    "pollIntervalMs must be less than or equal to CPA "
                    f"redis-usage-queue-retention-seconds ({int(retention)} seconds)",
                    "poll_interval_exceeds_retention",
                )
            # 3. Turn usage publishing on at CPA.
            status, reason, _headers, _data = self._call(
                "PUT",
                "/v0/management/usage-statistics-enabled",
                body=b'{"value":true}',
                content_type="application/json",
            )
            if not 200 <= status < 300:
                return cpamp_error(
                    502,
                    f"enable CPA usage statistics failed: {status} {reason}",
                    "enable_cpa_usage_statistics_failed",
                )
        except UpstreamError as exc:
            return cpamp_error(502, str(exc), "request_failed")
        return None

    # -- the collector (2.6, 3.3) ----------------------------------------------------------
    def collect_once(self) -> int | None:
        """Poll CPA's HTTP usage queue once, as the collector does; return CPA's status.

        Returns None when the collector is stopped (no setup, or monitoring off) or CPA could not
        be reached. Every poll with a stale saved key is one more failure toward CPA's ban of
        ``source_address``.
        """
        if self.collector_state == "stopped":
            return None
        path = f"/v0/management/usage-queue?count={USAGE_BATCH}"
        try:
            status, reason, _headers, data = self._call("GET", path)
        except UpstreamError as exc:
            self.collector_transport, self.collector_error = "http", str(exc)
            return None
        if status in (404, 405, 501):
            # CPA older than v6.10.8: auto mode falls back to RESP pop, which an HTTP-only CPA
            # answers with "HTTP/1.1 400" (2.6).
            self.collector_transport = "resp"
            self.collector_error = "unsupported RESP prefix 'H'"
            return status
        self.collector_transport = "http"
        if status != 200:
            text = data.decode("utf-8", "replace").strip()
            self.collector_error = f"http: usage queue request failed: {status} {reason}: {text}"
            return status
        try:
            records = json.loads(data)
            if not isinstance(records, list):
                raise ValueError(records)
        except ValueError:
            self.collector_error = "http: usage queue response is not a JSON array"
            return status
        self.usage_records.extend(r for r in records if r is not None)
        self.collector_error = ""
        return status

    # -- talking to CPA --------------------------------------------------------------------
    def _exchange(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send one request to the saved CPA URL from source_address; raise UpstreamError."""
        base = urlsplit(self.cpa_url or "http://127.0.0.1:1")
        host = base.hostname or ""
        port = base.port or (443 if base.scheme == "https" else 80)
        kind = http.client.HTTPSConnection if base.scheme == "https" else http.client.HTTPConnection
        source = (self.source_address, 0) if self.source_address else None
        try:
            conn = kind(host, port, timeout=30, source_address=source)
            try:
                conn.request(method, target, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                return response.status, response.reason, response.getheaders(), data
            finally:
                conn.close()
        except OSError as exc:
            raise UpstreamError(go_dial_error(exc, host, port)) from exc

    def _call(
        self, method: str, target: str, *, body: bytes = b"", content_type: str = ""
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """CPAMP's own http.Client call with the saved key; errors read like Go's url.Error."""
        headers = {"Authorization": f"Bearer {self.management_key}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return self._exchange(method, target, headers, body)
        except UpstreamError as exc:
            url = self.cpa_url + target.split("?")[0]
            raise UpstreamError(f'{method.capitalize()} "{url}": {exc}') from exc

    def _forward(self, method, path, query, headers, body, client_ip) -> Answer:
        """Reverse-proxy to CPA like httputil.NewSingleHostReverseProxy (2.5, 3.3)."""
        out = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
        prior = headers.get("x-forwarded-for")
        # Go appends the socket peer to whatever X-Forwarded-For arrived.
        out["x-forwarded-for"] = f"{prior}, {client_ip}" if prior else client_ip
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        try:
            status, _reason, received, data = self._exchange(method, target, out, body)
        except UpstreamError as exc:
            # 2.5: the proxy's ErrorHandler writes the bare transport error.
            return cpamp_error(502, str(exc), "request_failed")
        passed = {k: v for k, v in received if k.lower() not in HOP_BY_HOP}
        return Answer(status, data, passed)


def _normalize_url(raw: str) -> str:
    """Return a CPA URL as setup saves it (2.4): scheme added, trailing / and /v0 suffix gone."""
    url = (raw or "").strip()
    if not url:
        return ""
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    for suffix in ("/v0/management", "/v0"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url
