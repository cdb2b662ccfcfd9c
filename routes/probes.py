"""The one HTTP seam: every request the console sends to a deployment goes through here.

Each request has explicit (connect, read) timeouts and an overall deadline, follows no redirect
(the Location is reported instead) and reads at most MAX_BODY bytes. Network failures come back
as data (refused, dns, tls, timeout, connection), never as exceptions. Redactor and mask_json
remove secrets from whatever is kept of an answer.

Who answered: the exported config adds ``X-Console-Upstream: cpa|cpamp``. Without it the
fingerprints of the behaviour reference decide (CPAMP's ``{"error","code"}`` JSON and its
``"service":"cpa-manager-plus"`` bodies, CPA's ``X-CPA-VERSION`` header); otherwise "unknown".
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3

CPA = "cpa"
CPAMP = "cpamp"
UNKNOWN = "unknown"
MAX_BODY = 64 * 1024
REDACTED = "[redacted]"
USER_AGENT = "cpa-gateway-console-verify/1"

# Turning TLS verification off is the operator's explicit choice on the job (or --insecure);
# urllib3's warning on every such request would only flood the worker's log.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
# Key shapes worth hiding even when the console does not know the value (reference 2.1).
_KEY_SHAPES = re.compile(r"\b(?:cpamp_[0-9A-Za-z]{32}|cmp_admin_[A-Za-z0-9_-]{43})\b")
_SENSITIVE_NAME = re.compile(r"(?i)(key|secret|token|password|passwd|authorization|credential)")


class Redactor:
    """Remove known secrets, Bearer tokens and key-shaped values from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        return _KEY_SHAPES.sub(REDACTED, text)


def mask_json(value: Any, *, secret: bool = False) -> Any:
    """Return value with the text under secret-looking names (api-keys, secret-key) masked."""
    if isinstance(value, dict):
        return {
            k: mask_json(item, secret=secret or bool(_SENSITIVE_NAME.search(str(k))))
            for k, item in value.items()
        }
    if isinstance(value, list):
        return [mask_json(item, secret=secret) for item in value]
    # Flags and counts such as "dataKeyReady": true say nothing secret; text may be a key.
    if secret and isinstance(value, str):
        return REDACTED
    return value


# --- the HTTP seam --------------------------------------------------------------------------


@dataclass
class Probe:
    """What one request got back (or why it got nothing)."""

    method: str
    url: str
    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    latency_ms: int | None = None
    error: str = ""  # refused | dns | tls | timeout | connection | "" (answered)
    error_detail: str = ""  # never stored without redaction

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def json(self) -> Any:
        """Return the parsed JSON body, or None."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None


def classify(exc: BaseException) -> str:
    """Return refused, dns, tls, timeout or connection for a network failure."""
    if isinstance(exc, requests.exceptions.SSLError | ssl.SSLError):
        return "tls"
    if isinstance(exc, requests.exceptions.Timeout | socket.timeout | TimeoutError):
        return "timeout"
    # requests wraps urllib3 wraps the socket error: walk the chain of causes and reasons.
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ConnectionRefusedError):
            return "refused"
        if isinstance(item, socket.gaierror) or type(item).__name__ == "NameResolutionError":
            return "dns"
        if isinstance(item, ssl.SSLError):
            return "tls"
        if isinstance(item, BaseException):
            stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
            stack.extend(a for a in item.args if isinstance(a, BaseException))
    text = str(exc)
    if "Connection refused" in text:
        return "refused"
    if "Name or service not known" in text or "Failed to resolve" in text:
        return "dns"
    return "connection"


def send(
    *,
    method: str,
    url: str,
    timeout: float,
    verify: bool,
    headers: dict[str, str] | None = None,
) -> Probe:
    """Send one bounded request and return what came back; never raises for network failures."""
    probe = Probe(method=method, url=url)
    started = time.monotonic()
    deadline = started + timeout * 2
    with requests.Session() as session:
        # Verification talks to the deployment itself: no proxies or .netrc from the environment.
        session.trust_env = False
        try:
            response = session.request(
                method,
                url,
                headers={"User-Agent": USER_AGENT, **(headers or {})},
                timeout=(min(timeout, 10.0), timeout),
                allow_redirects=False,
                stream=True,
                verify=verify,
            )
        except requests.exceptions.RequestException as exc:
            probe.error = classify(exc)
            probe.error_detail = str(exc)
            probe.latency_ms = int((time.monotonic() - started) * 1000)
            return probe
        try:
            probe.status_code = response.status_code
            probe.headers = {k.lower(): v for k, v in response.headers.items()}
            chunks, size = [], 0
            if method != "HEAD":
                for chunk in response.iter_content(8192):
                    chunks.append(chunk)
                    size += len(chunk)
                    # Bounded: a huge or endless body is cut, never read whole.
                    if size >= MAX_BODY or time.monotonic() > deadline:
                        break
            probe.body = b"".join(chunks)[:MAX_BODY]
        except requests.exceptions.RequestException as exc:
            probe.error_detail = str(exc)
        finally:
            response.close()
    probe.latency_ms = int((time.monotonic() - started) * 1000)
    return probe


def who_answered(probe: Probe) -> str:
    """Return cpa, cpamp or unknown: the trace header first, then the reference's fingerprints."""
    header = probe.headers.get("x-console-upstream", "").strip().lower()
    if header in (CPA, CPAMP):
        return header
    data = probe.json()
    if isinstance(data, dict):
        if isinstance(data.get("error"), str) and isinstance(data.get("code"), str):
            return CPAMP  # reference 2.2: every CPAMP error is {"error","code"}
        if data.get("service") == "cpa-manager-plus":
            return CPAMP  # /health and /usage-service/info
    if "x-cpa-version" in probe.headers:
        return CPA  # reference 1.4: on every management answer
    return UNKNOWN


def fetch_certificate(*, host: str, port: int, sni: str, timeout: float) -> bytes:
    """Return the DER certificate served at host:port for sni, without judging it.

    Raises OSError or ssl.SSLError; callers turn them into data with classify().
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=sni) as tls:
            return tls.getpeercert(binary_form=True)


def chain_error(*, host: str, port: int, sni: str, timeout: float) -> str:
    """Return why the system trust store refuses the served chain for sni, or "" if it trusts it."""
    try:
        strict = ssl.create_default_context()
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with strict.wrap_socket(sock, server_hostname=sni):
                return ""
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
    except (OSError, ssl.SSLError) as exc:
        return str(exc)[:200]
