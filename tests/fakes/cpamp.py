"""A CPA Manager Plus (CPAMP) Manager Server emulator on 127.0.0.1, built from the reference.

Every answer follows /work/shared/reference/cpa-cpamp-behaviour.md, Part 2 ([CPAMP] v1.12.2):
section 2.2 (Bearer-only admin key, ``{"error","code"}`` JSON with a trailing newline, 405 JSON),
2.3 (routes: /health GET only, /usage-service/info, /management.html, 404 text for the rest),
2.4 (POST /setup and the calls it makes to CPA) and 2.5 (proxying: 428 before setup, admin key
swapped for the saved CPA Management Key, admin-only heads, plugin resources, 502
request_failed). Like the real service it never sends "X-Console-Upstream".
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

from tests.fakes.cpa import Answer, EmulatorServer, LoggedRequest, json_answer, text_answer

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
}
GO_404 = b"404 page not found\n"
# 2.3: /v0/management heads CPAMP serves itself from SQLite.
LOCAL_HEADS = {
    "usage",
    "model-prices",
    "api-key-aliases",
    "account-action-candidates",
    "codex-inspection",
    "dashboard",
    "monitoring",
    "quota-snapshots",
}
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


def cpamp_error(status: int, message: str, code: str) -> Answer:
    return json_answer(status, {"error": message, "code": code}, newline=True, headers=CORS_HEADERS)


class FakeCPAMP(EmulatorServer):
    """CPA Manager Plus v1.12.2 in Manager Server mode (reference Part 2)."""

    name = "cpamp"

    def __init__(
        self,
        *,
        admin_key: str = "cpamp_" + "A1b2C3d4" * 4,
        cpa_url: str = "",
        management_key: str = "cpa-management-secret",
        setup_done: bool = True,
        delay: float = 0.0,
        port: int = 0,
    ) -> None:
        super().__init__(delay=delay, port=port)
        self.admin_key = admin_key
        self.cpa_url = cpa_url.rstrip("/")
        self.management_key = management_key
        self.setup_done = setup_done
        self.started_at = int(time.time() * 1000)

    def admin_refusals(self) -> list[LoggedRequest]:
        """Return requests whose admin key CPAMP refused."""
        return [r for r in self.log if r.auth == "refused"]

    def _admin_ok(self, headers: dict) -> bool:
        # 2.2: only "Authorization: Bearer <key>", scheme case-insensitive, trimmed.
        value = headers.get("authorization", "").strip()
        if not value.lower().startswith("bearer "):
            return False
        return value[7:].strip() == self.admin_key

    def handle(self, method, path, query, headers, body, client_ip):
        if path == "/management.html":
            # Go 1.22 ServeMux: a GET pattern also answers HEAD; no CORS wrapper here.
            if method in ("GET", "HEAD"):
                return text_answer(
                    200,
                    b"<!doctype html><title>CPA Manager Plus</title>",
                    "text/html; charset=utf-8",
                ), ""
            return cpamp_error(405, "method not allowed", "method_not_allowed"), ""
        if method == "OPTIONS":
            return Answer(204, b"", dict(CORS_HEADERS)), ""
        if path == "/health":
            if method != "GET":
                return cpamp_error(405, "method not allowed", "method_not_allowed"), ""
            return json_answer(
                200, {"ok": True, "service": "cpa-manager-plus"}, newline=True, headers=CORS_HEADERS
            ), ""
        if path == "/usage-service/info" and method == "GET":
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
                    "migrationStatus": "ready" if self.setup_done else "needs_setup",
                    "dataKeyReady": True,
                    "hasHistoricalData": False,
                },
                newline=True,
                headers=CORS_HEADERS,
            ), ""
        if path == "/status" and method == "GET":
            if not self._admin_ok(headers):
                return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
            return json_answer(
                200, {"service": "cpa-manager-plus", "events": 0, "deadLetters": 0}, newline=True
            ), "ok"
        if path == "/setup" and method == "POST":
            return self._setup(headers, body)
        if path == "/" and method == "GET":
            return Answer(307, b"", {"Location": "/management.html"}), ""
        if path in ("/v1/models", "/v1/models/", "/models", "/models/"):
            if method != "GET":
                return cpamp_error(405, "method not allowed", "method_not_allowed"), ""
            if not self.setup_done:
                return self._not_configured(), ""
            # 2.5: passthrough, the caller's Authorization (a CPA API key) unchanged.
            return self._forward(method, path.rstrip("/"), headers, body, client_ip), ""
        if path.startswith("/v0/management/"):
            return self._management(method, path, headers, body, client_ip)
        if path == "/v0/resource/plugins" or path.startswith("/v0/resource/plugins/"):
            if method not in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
                return cpamp_error(405, "method not allowed", "method_not_allowed"), ""
            if not self.setup_done:
                return self._not_configured(), ""
            if self._admin_ok(headers):
                headers = {**headers, "authorization": f"Bearer {self.management_key}"}
            return self._forward(method, path, headers, body, client_ip), ""
        return text_answer(404, GO_404, "text/plain; charset=utf-8"), ""

    def _not_configured(self) -> Answer:
        return cpamp_error(428, "usage service is not configured", "usage_service_not_configured")

    def _management(self, method, path, headers, body, client_ip) -> tuple[Answer, str]:
        head = path[len("/v0/management/") :].split("/")[0]
        admin = self._admin_ok(headers)
        if head in LOCAL_HEADS:
            if not admin:
                return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
            return json_answer(200, {"usage": {}}, newline=True), "ok"
        if not admin and head in ADMIN_ONLY_HEADS:
            return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
        if not self.setup_done:
            return self._not_configured(), "ok" if admin else ""
        if admin:
            # The admin key never reaches CPA: CPAMP swaps in its saved CPA Management Key.
            headers = {**headers, "authorization": f"Bearer {self.management_key}"}
        return self._forward(method, path, headers, body, client_ip), "ok" if admin else ""

    def _setup(self, headers, body) -> tuple[Answer, str]:
        if not self._admin_ok(headers):
            return cpamp_error(401, "invalid admin key", "invalid_admin_key"), "refused"
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return cpamp_error(400, "invalid JSON", "request_failed"), "ok"
        url = (payload.get("cpaBaseUrl") or "").rstrip("/")
        key = payload.get("managementKey") or payload.get("cpaManagementKey") or ""
        if not url or not key:
            return cpamp_error(
                400, "cpaBaseUrl and managementKey are required", "cpa_connection_required"
            ), "ok"
        if "://" not in url:
            url = "http://" + url
        for suffix in ("/v0/management", "/v0"):
            if url.endswith(suffix):
                url = url[: -len(suffix)]
        previous = (self.cpa_url, self.management_key)
        self.cpa_url, self.management_key = url, key
        check = self._forward(
            "GET", "/v0/management/config", {"authorization": f"Bearer {key}"}, b"", ""
        )
        if check.status >= 300:
            self.cpa_url, self.management_key = previous
            if check.status == 502:
                return check, "ok"
            reason = http.client.responses.get(check.status, "")
            return cpamp_error(
                502,
                f"management API validation failed: {check.status} {reason}",
                "management_api_validation_failed",
            ), "ok"
        self.setup_done = True
        return json_answer(200, {"ok": True, "upstream": url}, newline=True), "ok"

    def _forward(self, method, path, headers, body, client_ip) -> Answer:
        """Reverse-proxy to CPA like httputil.NewSingleHostReverseProxy (2.5)."""
        target = urlsplit(self.cpa_url or "http://127.0.0.1:1")
        out = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
        peer = "127.0.0.1"
        prior = headers.get("x-forwarded-for")
        out["x-forwarded-for"] = f"{prior}, {peer}" if prior else (client_ip or peer)
        try:
            conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
            conn.request(method, path, body=body or None, headers=out)
            response = conn.getresponse()
            data = response.read()
            passed = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            conn.close()
        except OSError as exc:
            return cpamp_error(
                502,
                f'{method.capitalize()} "{self.cpa_url}{path}": dial tcp '
                f"{target.hostname}:{target.port}: {exc.strerror or exc}",
                "request_failed",
            )
        return Answer(response.status, data, passed)
