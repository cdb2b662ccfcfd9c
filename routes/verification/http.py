"""The one HTTP seam: every request the console sends to a deployment goes through here.

Each request has one deadline, its timeout, that covers DNS, connect, TLS, the request, the
headers and the body together: every socket operation gets only what is left of it, so a server
that drips one byte at a time cannot hold a check past its timeout. A request follows no redirect
(the Location is reported instead) and reads at most MAX_BODY bytes. Network failures come back
as data (refused, dns, tls, timeout, connection), never as exceptions. Redactor and mask_json
remove secrets from whatever is kept of an answer; Redactor.cut is the only way stored text is
shortened.

Who answered: the exported config adds ``X-Console-Upstream: cpa|cpamp``. Without it the
fingerprints of the behaviour reference decide (CPAMP's ``{"error","code"}`` JSON and its
``"service":"cpa-manager-plus"`` bodies, CPA's ``X-CPA-VERSION`` header); otherwise "unknown".
``options_fingerprint`` reads the answer to a credential-free ``OPTIONS`` (reference 3.4).

Library exception text never leaves this module as words: a failure is a kind (classify) and a
reason code (reason); error_detail keeps the text for nobody but a debugger.
"""

from __future__ import annotations

import errno
import functools
import http.client
import io
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

CPA = "cpa"
CPAMP = "cpamp"
UNKNOWN = "unknown"
MAX_BODY = 64 * 1024
REDACTED = "[redacted]"
USER_AGENT = "cpa-gateway-console-verify/1"
# A secret's prefix this long left at a cut is masked too: shorter ones say too little to matter
# and would mask ordinary words.
MIN_PREFIX = 8

_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
# Key shapes worth hiding even when the console does not know the value (reference 2.1).
_KEY_SHAPES = re.compile(r"\b(?:cpamp_[0-9A-Za-z]{32}|cmp_admin_[A-Za-z0-9_-]{43})\b")
# The start of such a key cut short at the end of a text.
_KEY_SHAPE_TAIL = re.compile(r"\b(?:cpamp_[0-9A-Za-z]{2,31}|cmp_admin_[A-Za-z0-9_-]{2,42})$")
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

    def cut(self, text: str, limit: int, *, marker: str = "") -> str:
        """Return text redacted whole, then cut to limit chars (plus marker when cut).

        Redacting first means a secret is never split by the cut into two unrecognisable
        halves. The end is checked after cutting: a secret's prefix of MIN_PREFIX or more
        characters there (the cut, or an upstream that cut its own echo) is masked too.
        """
        text = self(text)
        cut = len(text) > limit
        if cut:
            text = text[:limit]
        return self._mask_tail(text) + (marker if cut else "")

    def _mask_tail(self, text: str) -> str:
        for secret in self._secrets:
            for size in range(min(len(secret), len(text)), MIN_PREFIX - 1, -1):
                if text.endswith(secret[:size]):
                    text = text[:-size] + REDACTED
                    break
        return _KEY_SHAPE_TAIL.sub(REDACTED, text)


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
    # Why, as a code (reason()): self_signed, hostname_mismatch, closed, reset, ... or "".
    error_reason: str = ""
    error_detail: str = ""  # library text: never stored, never shown

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
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, TimeoutError):
        return "timeout"
    # Wrapped errors (a library's own exception around the socket's): walk causes and reasons.
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
        if isinstance(item, TimeoutError):
            return "timeout"
        if isinstance(item, BaseException):
            stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
            stack.extend(a for a in item.args if isinstance(a, BaseException))
    text = str(exc)
    if "Connection refused" in text:
        return "refused"
    if "Name or service not known" in text or "Failed to resolve" in text:
        return "dns"
    return "connection"


# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code) by what they mean.
_VERIFY_REASONS = {
    18: "self_signed",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "self_signed",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "unknown_issuer",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "unknown_issuer",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    2: "unknown_issuer",  # UNABLE_TO_GET_ISSUER_CERT
    9: "not_yet_valid",  # CERT_NOT_YET_VALID
    10: "expired",  # CERT_HAS_EXPIRED
    62: "hostname_mismatch",  # HOSTNAME_MISMATCH
    64: "hostname_mismatch",  # IP_ADDRESS_MISMATCH
}
# Kinds whose reason says the certificate was refused by the trust store.
CERTIFICATE_REASONS = frozenset({*_VERIFY_REASONS.values(), "untrusted"})


def reason(exc: BaseException) -> str:
    """Return a code for why a request failed, never the library's words.

    Certificates: self_signed, unknown_issuer, expired, not_yet_valid, hostname_mismatch,
    untrusted; other TLS failures: handshake. Connections: closed, reset, not_http,
    unreachable; anything else: "".
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "untrusted")
    if isinstance(exc, ssl.SSLError):
        return "handshake"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, http.client.HTTPException):
        return "not_http"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    return ""


class Deadline:
    """One check's clock: each network operation may use only what is left of the timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.at = time.monotonic() + timeout

    def remaining(self) -> float:
        """Return the seconds left; raise TimeoutError once the deadline has passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {self.timeout:g} s")
        return left


class _DeadlineSocket:
    """A connected socket whose every send and receive is bounded by one Deadline.

    http.client reads the status line, the headers and the body through makefile(); each of
    those reads is one recv_into() here, which may wait only for what is left of the deadline.
    A per-operation timeout alone would restart with every byte a slow server drips.
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def _arm(self) -> None:
        self._sock.settimeout(self._deadline.remaining())

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def fileno(self) -> int:
        return self._sock.fileno()

    def _decref_socketios(self) -> None:
        """SocketIO calls this on close; the real socket is closed once, by send()."""

    def close(self) -> None:
        """http.client closes its socket when a response ends; send() closes the real one."""


def _resolve(host: str, port: int, deadline: Deadline) -> list[tuple[Any, ...]]:
    """Return getaddrinfo() results for host, looked up within the deadline."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    # getaddrinfo() takes no timeout and may wait on a slow resolver for many seconds: run it
    # aside and stop waiting at the deadline (the lookup ends on its own, bounded by resolv.conf).
    found: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            found["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name="verify-dns", daemon=True).start()
    if not done.wait(deadline.remaining()):
        raise TimeoutError(f"DNS lookup of {host} took longer than {deadline.timeout:g} s")
    if "error" in found:
        raise found["error"]
    return found["infos"]


def connect(*, host: str, port: int, deadline: Deadline) -> socket.socket:
    """Return a TCP connection to host:port opened before the deadline (DNS included)."""
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _name, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error


def _handshake(
    sock: socket.socket, *, context: ssl.SSLContext, sni: str, deadline: Deadline
) -> ssl.SSLSocket:
    """Return sock wrapped in TLS; the whole handshake must finish before the deadline."""
    try:
        # CPython bounds one do_handshake() by the socket's timeout as a whole, not per read.
        sock.settimeout(deadline.remaining())
        return context.wrap_socket(sock, server_hostname=sni)
    except BaseException:
        sock.close()
        raise


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """Return the TLS context for requests (built once: loading the trust store is slow)."""
    if verify:
        # The system trust store, as the certificate check uses: one answer to "trusted?".
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _target(url: str) -> tuple[str, str, int, str]:
    """Return (scheme, host, port, path with query) of an http(s) URL; raise ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def send(
    *,
    method: str,
    url: str,
    timeout: float,
    verify: bool,
    headers: dict[str, str] | None = None,
) -> Probe:
    """Send one request bounded in total by timeout and return what came back.

    Never raises for network failures: they come back as probe.error. An answer whose body has
    not arrived by the deadline is a timeout too (its status is kept in error_detail only), so a
    check never judges half a body.
    """
    probe = Probe(method=method, url=url)
    started = time.monotonic()
    deadline = Deadline(timeout)
    raw: socket.socket | None = None
    response: http.client.HTTPResponse | None = None
    try:
        scheme, host, port, path = _target(url)
        raw = connect(host=host, port=port, deadline=deadline)
        if scheme == "https":
            context = _tls_context(verify)
            raw = _handshake(raw, context=context, sni=host, deadline=deadline)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, context=context
            )
        else:
            conn = http.client.HTTPConnection(host, port)
        # The connection is already open: http.client only writes the request and parses the
        # answer, through a socket that enforces the deadline. It follows no redirect.
        conn.sock = _DeadlineSocket(raw, deadline)
        conn.request(method, path, headers={"User-Agent": USER_AGENT, **(headers or {})})
        response = conn.getresponse()
        probe.status_code = response.status
        for name, value in response.getheaders():
            name = name.lower()
            probe.headers[name] = (
                f"{probe.headers[name]}, {value}" if name in probe.headers else value
            )
        chunks: list[bytes] = []
        size = 0
        while method != "HEAD" and size < MAX_BODY:
            # Bounded: a huge or endless body is cut, never read whole.
            chunk = response.read(min(8192, MAX_BODY - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        probe.body = b"".join(chunks)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        kind = classify(exc)
        if probe.status_code is None or kind == "timeout":
            if probe.status_code is not None:
                detail = f"status {probe.status_code}, body unfinished at the deadline: {exc}"
            else:
                detail = str(exc) or type(exc).__name__
            probe.status_code, probe.headers, probe.body = None, {}, b""
            probe.error, probe.error_detail = kind, detail
            probe.error_reason = reason(exc)
        else:
            # The answer arrived but its body broke off (the server closed early): keep it.
            probe.error_detail = str(exc) or type(exc).__name__
    finally:
        if response is not None:
            response.close()
        if raw is not None:
            raw.close()
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


def options_fingerprint(probe: Probe) -> str:
    """Return who answered a credential-free OPTIONS: cpa, cpamp or unknown (reference 3.4).

    Both answer 204 before any key check; CPA allows every header (``*``), CPAMP only
    ``Authorization, Content-Type``. CPAMP's /management.html answers OPTIONS with its page and
    no CORS headers, so that path tells nothing at CPAMP.
    """
    allowed = probe.headers.get("access-control-allow-headers", "")
    names = {name.strip().lower() for name in allowed.split(",") if name.strip()}
    if probe.status_code != 204 or not names:
        return UNKNOWN
    if names == {"*"}:
        return CPA
    if names == {"authorization", "content-type"}:
        return CPAMP
    return UNKNOWN


def fetch_certificate(*, host: str, port: int, sni: str, timeout: float) -> bytes:
    """Return the DER certificate served at host:port for sni, without judging it.

    DNS, connect and handshake share one deadline of timeout seconds. Raises OSError or
    ssl.SSLError; callers turn them into data with classify().
    """
    deadline = Deadline(timeout)
    sock = connect(host=host, port=port, deadline=deadline)
    with _handshake(sock, context=_tls_context(False), sni=sni, deadline=deadline) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError(f"{host}:{port} sent no certificate")
    return der


def chain_error(*, host: str, port: int, sni: str, timeout: float) -> str:
    """Return why the system trust store refuses the served chain for sni, or "" if it trusts it.

    The answer is a code of reason() (self_signed, unknown_issuer, ...), or the kind of the
    network failure when the second handshake could not be made at all.
    """
    deadline = Deadline(timeout)
    try:
        sock = connect(host=host, port=port, deadline=deadline)
        with _handshake(sock, context=_tls_context(True), sni=sni, deadline=deadline):
            return ""
    except (OSError, ssl.SSLError) as exc:
        return reason(exc) or classify(exc)
