"""Every value that can reach an nginx config passes through here.

Forms, the importer and the models share these validators, so a value refused in one place is
refused everywhere. Each raises ``ValidationError`` with a message that names the reason.
"""

import ipaddress
import re

from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

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
    pythonic = re.sub(r"\(\?<(?![=!])", "(?P<", value)
    pythonic = re.sub(r"\\k<(\w+)>", r"(?P=\1)", pythonic)
    try:
        re.compile(pythonic)
    except re.error as exc:
        raise ValidationError(
            _("The regular expression does not compile: %(error)s."),
            code="invalid",
            params={"error": str(exc)},
        ) from exc


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
    parts = (value or "").split()
    if not parts:
        raise ValidationError(_("Give at least one resolver address."), code="required")
    for part in parts:
        host = part[1:-1] if part.startswith("[") and part.endswith("]") else part
        if not is_ip_literal(host):
            raise ValidationError(
                _("%(value)s is not an IP address."), code="invalid", params={"value": part}
            )


def validate_cpa_version(value: str) -> None:
    """Accept a version such as v7.1.39 or 7.1.39."""
    if value and not re.match(r"^v?\d+\.\d+\.\d+\Z", value):
        raise ValidationError(_("Give a version such as v7.1.39."), code="invalid")


def parse_version(value: str) -> tuple[int, int, int] | None:
    """Return the version as a tuple, or None when it is empty or malformed."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)\Z", value or "")
    return tuple(int(x) for x in match.groups()) if match else None  # type: ignore[return-value]


def validate_listen_address(value: str) -> None:
    """Accept an empty value (all interfaces) or one IPv4/IPv6 address for ``listen``."""
    if value and not is_ip_literal(value.strip("[]")):
        raise ValidationError(
            _("%(value)s is not an IP address."), code="invalid", params={"value": value}
        )
