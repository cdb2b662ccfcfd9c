"""Every value that can reach an nginx config passes through here.

Forms, the importer and the models share these validators, so a value refused in one place is
refused everywhere. Each raises ``ValidationError`` with a message that names the reason.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from routes.nginx import regexes

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# RFC 1123 label: letters, digits and inner hyphens, 1..63 characters.
# \Z, not $: $ also matches before a trailing newline, which would let "name\n" through.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_SIZE = re.compile(r"^\d{1,9}[kKmMgG]?\Z")
# Characters that would end a directive, open or close a block, start a comment or a quote.
_PATH_FORBIDDEN = re.compile(r"[\s\"';{}#\\\x00-\x1f\x7f]")
_FILE_PATH = re.compile(r"^/[A-Za-z0-9._/@+=-]*\Z")
_HOST_NAME_MAX = 253


def normalize_server_name(value: str) -> str:
    """Return the server name lower-cased, with IDN labels as punycode."""
    value = (value or "").strip().rstrip(".")
    try:
        return value.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValidationError(
            _("%(value)s is not a valid domain name (IDN encoding failed)."),
            code="invalid",
            params={"value": value},
        ) from exc


def validate_host_name(value: str) -> None:
    """Accept an RFC 1123 host name (ASCII, already punycode)."""
    if not value:
        raise ValidationError(_("A host name is required."), code="required")
    if len(value) > _HOST_NAME_MAX:
        raise ValidationError(
            _("The host name is longer than %(max)d characters."),
            code="invalid",
            params={"max": _HOST_NAME_MAX},
        )
    for label in value.split("."):
        if not _LABEL.match(label):
            raise ValidationError(
                _(
                    "%(label)r is not a valid host name label: use 1 to 63 letters, digits and "
                    "inner hyphens."
                ),
                code="invalid",
                params={"label": label},
            )


def validate_server_name(value: str) -> None:
    """Accept a public domain name: RFC 1123 labels, IDN as punycode, at most 253 characters."""
    if value != normalize_server_name(value):
        raise ValidationError(
            _("Use the lower-case punycode form: %(value)s."),
            code="invalid",
            params={"value": normalize_server_name(value)},
        )
    if value.startswith("*."):
        validate_host_name(value[2:])
        return
    validate_host_name(value)


def split_host_port(value: str) -> tuple[str, int]:
    """Return (host, port) from ``host:port`` or ``[v6]:port``; raise ValidationError otherwise."""
    if "://" in value:
        raise ValidationError(
            _("Give host:port without a scheme, for example cli-proxy-api:8317."), code="invalid"
        )
    match = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})\Z", value) or re.match(
        r"^([^:\[\]]+):(\d{1,5})\Z", value
    )
    if not match:
        raise ValidationError(
            _("Give host:port, for example cli-proxy-api:8317 or 127.0.0.1:8317."),
            code="invalid",
        )
    host, port = match.group(1), int(match.group(2))
    if not 1 <= port <= 65535:
        raise ValidationError(_("The port must be between 1 and 65535."), code="invalid")
    return host, port


def is_ip_literal(host: str) -> bool:
    """Return True when host is an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def validate_upstream(value: str) -> None:
    """Accept ``host:port``: a host name or IPv4/IPv6 literal (v6 in brackets), port 1..65535."""
    host, _port = split_host_port(value or "")
    if value.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValidationError(
                _("%(host)s is not a valid IPv6 address."), code="invalid", params={"host": host}
            ) from exc
        return
    if re.match(r"^[0-9.]+$", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise ValidationError(
                _("%(host)s is not a valid IPv4 address."), code="invalid", params={"host": host}
            ) from exc
        return
    validate_host_name(host)


def validate_url(value: str) -> None:
    """Accept an http or https URL with a valid host and no whitespace or credentials."""
    match = re.match(r"^(https?)://([^/?#]+)([^\s]*)$", value or "")
    if not match:
        raise ValidationError(
            _("Give an http:// or https:// URL, for example http://cli-proxy-api:8317."),
            code="invalid",
        )
    authority = match.group(2)
    if "@" in authority:
        raise ValidationError(_("The URL may not contain credentials."), code="invalid")
    if re.search(r"[\"'<>\\\x00-\x1f\x7f]", value):
        raise ValidationError(
            _("The URL contains characters that are not allowed."), code="invalid"
        )
    if re.match(r"^\[.*\](:\d+)?$", authority) or ":" in authority:
        validate_upstream(authority)
    else:
        validate_host_name(authority.lower())


def url_host(value: str) -> str:
    """Return the lower-cased host of an http(s) URL, without port or brackets."""
    authority = re.sub(r"^https?://", "", value).split("/")[0].split("?")[0].split("#")[0]
    if authority.startswith("["):
        return authority[1:].split("]")[0].lower()
    return authority.split(":")[0].lower()


def validate_size(value: str) -> None:
    r"""Accept an nginx size: ``\d+[kKmMgG]?``, for example 64m."""
    if not _SIZE.match(value or ""):
        raise ValidationError(
            _("Give a size such as 64m, 512k or 1g (digits, then k, m or g)."), code="invalid"
        )


def validate_location_path(value: str) -> None:
    """Accept a path for an ``exact`` or ``prefix`` location."""
    if not value or not value.startswith("/"):
        raise ValidationError(_("The path must start with /."), code="invalid")
    if len(value) > 1024:
        raise ValidationError(_("The path is longer than 1024 characters."), code="invalid")
    bad = _PATH_FORBIDDEN.search(value)
    if bad:
        raise ValidationError(
            _(
                "The path may not contain whitespace, quotes, backslashes, ;, {, }, # or control "
                "characters (found %(char)r)."
            ),
            code="invalid",
            params={"char": bad.group(0)},
        )


def validate_location_regex(value: str) -> None:
    """Accept a regex for a ``regex`` or ``regex_i`` location: it compiles and is safe to quote."""
    if not value:
        raise ValidationError(_("The regular expression is empty."), code="required")
    if len(value) > 1024:
        raise ValidationError(
            _("The regular expression is longer than 1024 characters."), code="invalid"
        )
    bad = re.search(r"[\s\"';\x00-\x1f\x7f]", value)
    if bad:
        raise ValidationError(
            _(
                "The regular expression may not contain whitespace, quotes, ; or control "
                "characters (found %(char)r)."
            ),
            code="invalid",
            params={"char": bad.group(0)},
        )
    # nginx compiles with PCRE; Python's re is close enough to refuse broken patterns early.
    # PCRE's own named-group spellings are translated so that they are not refused here.
    try:
        re.compile(regexes.pythonic(value))
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValidationError(
            _("The regular expression does not compile: %(error)s."),
            code="invalid",
            params={"error": str(exc)},
        ) from exc
    if regexes.nesting_depth(value) > regexes.MAX_NESTING:
        raise ValidationError(
            _("The regular expression nests groups or repeats more than %(max)d deep."),
            code="invalid",
            params={"max": regexes.MAX_NESTING},
        )
    overlap = regexes.catastrophic_overlap(value)
    if overlap is not None:
        raise ValidationError(
            _(
                "The regular expression nests repeats that can both match %(char)r, such as "
                "(a+)+ or (.*a){2,}: a path that almost matches makes nginx try exponentially "
                "many ways to split it. Let only one of them repeat, for example a+ instead of "
                "(a+)+."
            ),
            code="catastrophic",
            params={"char": overlap},
        )


def validate_file_path(value: str) -> None:
    """Accept an absolute file path made of safe characters (letters, digits, ._/@+=-)."""
    if not value or not value.startswith("/"):
        raise ValidationError(_("Give an absolute path that starts with /."), code="invalid")
    if not _FILE_PATH.match(value) or "/../" in value or value.endswith("/.."):
        raise ValidationError(
            _("The path may only contain letters, digits and . _ / @ + = - (no ..)."),
            code="invalid",
        )


def validate_resolver(value: str) -> None:
    """Accept one or more IP addresses, space-separated, for nginx's ``resolver`` directive."""
    parts = (value or "").split(" ")
    if not any(parts):
        raise ValidationError(_("Give at least one resolver address."), code="required")
    for part in parts:
        if part:
            _validate_address(part)


def validate_cpa_version(value: str) -> None:
    """Accept a version such as v7.1.39 or 7.1.39."""
    if value and not re.match(r"^v?\d+\.\d+\.\d+\Z", value):
        raise ValidationError(_("Give a version such as v7.1.39."), code="invalid")


def parse_version(value: str) -> tuple[int, int, int] | None:
    """Return the version as a tuple, or None when it is empty or malformed."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)\Z", value or "")
    if match is None:
        return None
    major, minor, patch = (int(x) for x in match.groups())
    return major, minor, patch


def validate_listen_address(value: str) -> None:
    """Accept an empty value (all interfaces) or one IPv4/IPv6 address for ``listen``."""
    if value:
        _validate_address(value)


# --- listen and resolver addresses: IP literals only, nothing nginx reads as syntax -------------

# An address is written into the directive as it is: only these characters can never end the
# directive, open a block, start a comment, a quote or a variable.
_ADDRESS_FORBIDDEN = re.compile(r"[^0-9A-Fa-f:.\[\]]")


def _validate_address(value: str) -> None:
    """Accept an IPv4 address or an IPv6 address, the latter with or without brackets."""
    if "%" in value:
        raise ValidationError(
            _(
                "The address has an IPv6 zone id (the part after %%, as in %(example)s), which "
                "nginx cannot use here; give the address without it."
            ),
            code="invalid",
            params={"example": "fe80::1%eth0"},
        )
    bad = _ADDRESS_FORBIDDEN.search(value)
    if bad:
        raise ValidationError(
            _(
                "An address may only contain digits, a-f, colons, dots and the brackets around "
                "an IPv6 address (found %(char)r)."
            ),
            code="invalid",
            params={"char": bad.group(0)},
        )
    bracketed = value.startswith("[") and value.endswith("]")
    host = value[1:-1] if bracketed else value
    try:
        if "[" in host or "]" in host:
            raise ValueError
        if bracketed or ":" in host:
            ipaddress.IPv6Address(host)
        else:
            ipaddress.IPv4Address(host)
    except ValueError:
        raise ValidationError(
            _(
                "%(value)s is not an IP address: give an IPv4 address such as 127.0.0.1 or an "
                "IPv6 address such as ::1 or [::1]."
            ),
            code="invalid",
            params={"value": value},
        ) from None


# --- Edge hardening: trusted proxies and request rates ------------------------------------------

# A trusted proxy list longer than this is not a list of proxies in front of one site.
MAX_TRUSTED_PROXIES = 64
_PROXY_SEPARATORS = re.compile(r"[\s,]+")
_RATE = re.compile(r"^([1-9][0-9]{0,3})r/([sm])\Z")


def trusted_proxies(value: str) -> list[str]:
    """Return the entries of a trusted proxy list (separated by spaces, commas or new lines)."""
    return [part for part in _PROXY_SEPARATORS.split(value or "") if part]


def validate_trusted_proxies(value: str) -> None:
    """Accept IP addresses or CIDR networks of proxies in front of nginx, for set_real_ip_from."""
    parts = trusted_proxies(value)
    if len(parts) > MAX_TRUSTED_PROXIES:
        raise ValidationError(
            _("Give at most %(max)d addresses or networks."),
            code="invalid",
            params={"max": MAX_TRUSTED_PROXIES},
        )
    for part in parts:
        if "%" in part or not re.fullmatch(r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?", part):
            raise ValidationError(
                _(
                    "%(value)s is not an IP address or network: give one such as 10.0.0.0/8, "
                    "203.0.113.7 or 2001:db8::/32."
                ),
                code="invalid",
                params={"value": part},
            )
        try:
            network = ipaddress.ip_network(part, strict=True)
        except ValueError as exc:
            raise ValidationError(
                _("%(value)s is not a valid network: %(error)s."),
                code="invalid",
                params={"value": part, "error": str(exc)},
            ) from None
        if network.prefixlen == 0:
            raise ValidationError(
                _(
                    "%(value)s trusts every address, so any client could choose the address "
                    "CPA sees; list only the proxies in front of nginx."
                ),
                code="everyone",
                params={"value": part},
            )


def validate_rate(value: str) -> None:
    """Accept an nginx request rate: 1 to 9999 requests per second or minute, e.g. 5r/s."""
    if value and not _RATE.match(value):
        raise ValidationError(
            _("Give a rate such as 5r/s or 300r/m (1 to 9999 requests per second or minute)."),
            code="invalid",
        )


def rate_per_second(value: str) -> float:
    """Return a validated rate (5r/s, 300r/m) in requests per second."""
    match = _RATE.match(value)
    if match is None:
        raise ValueError(value)
    count = int(match.group(1))
    return float(count) if match.group(2) == "s" else count / 60


# --- Where keys may go: a base URL is an origin ----------------------------------------------

# Link-local and cloud-metadata addresses: a check sent there reads the host's own metadata
# service (instance credentials), so they are refused unless CONSOLE_ALLOW_LINK_LOCAL is on.
_LINK_LOCAL_NETWORKS = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
# Hosts that the C resolver reads as IPv4 in a short or non-decimal form: 2852039166,
# 0xa9fea9fe, 169.254.43518, 0251.0376.0251.0376.
_NUMERIC_HOST = re.compile(r"^(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}\Z", re.I)


def host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the IP address a literal host stands for (any IPv4 spelling), or None for a name."""
    host = host.strip("[]").split("%")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _NUMERIC_HOST.match(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_link_local(host: str) -> bool:
    """Return True when host is a link-local or cloud-metadata address (also IPv4-mapped)."""
    address = host_address(host)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _LINK_LOCAL_NETWORKS)


def validate_not_link_local(host: str) -> None:
    """Refuse a link-local or cloud-metadata host unless CONSOLE_ALLOW_LINK_LOCAL allows it."""
    if is_link_local(host) and not settings.CONSOLE_ALLOW_LINK_LOCAL:
        raise ValidationError(
            _(
                "%(host)s is a link-local or cloud-metadata address (169.254.0.0/16, fe80::/10, "
                "fd00:ec2::254); checks are never sent there unless CONSOLE_ALLOW_LINK_LOCAL is "
                "on."
            ),
            code="link_local",
            params={"host": host},
        )


def validate_origin(value: str) -> None:
    """Accept an origin: http(s)://host[:port], at most a trailing /; never a link-local host."""
    # validate_url wants a port with a bracketed IPv6 host; an origin such as http://[::1] may
    # leave it out, so that one form is checked here and given the scheme's port for the rest.
    bare_v6 = re.match(r"^(https?)://(\[[0-9A-Fa-f:.]+\])(?=[/?#]|\Z)", value or "")
    if bare_v6:
        port = "443" if bare_v6.group(1) == "https" else "80"
        validate_url(f"{bare_v6.group(0)}:{port}{value[bare_v6.end() :]}")
    else:
        validate_url(value)
    authority = re.match(r"^https?://([^/?#]+)", value)
    rest = value[authority.end() :] if authority else ""
    if rest not in ("", "/"):
        part: StrOrPromise
        if "?" in rest:
            part, code = _("a query (?…)"), "query"
        elif "#" in rest:
            part, code = _("a fragment (#…)"), "fragment"
        else:
            part, code = _("a path (%(path)s)") % {"path": rest}, "path"
        raise ValidationError(
            _(
                "A base URL is an origin: scheme, host and optional port, such as "
                "https://api.example.com or http://127.0.0.1:8080. Remove %(part)s."
            ),
            code=code,
            params={"part": part},
        )
    validate_not_link_local(url_host(value))
