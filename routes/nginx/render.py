"""Render a stored deployment into the seed's nginx site config: pure and byte-for-byte stable.

The text is built as data (lists of lines), never from a template with autoescape, and every value
that reaches it has passed the model's validators (routes/validators.py) first: an invalid
deployment raises InvalidDeployment before a single line is produced.

Like the seed, a site file sets the proxy headers and settings once per server and writes the
seed's one-line locations. It defines nothing whose name depends on the deployment: variables
($console_cpa, $console_cpamp, $console_upstream), maps, rate-limit zones and the TLS session
cache have the same names in every file, so nginx's global tables stay the same size however
many deployments one nginx serves (bench/bench_nginx_scale.py measures it).
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.utils.translation import gettext

from routes import validators as v
from routes.nginx import boundaries as b

if TYPE_CHECKING:
    from routes.models import Deployment, RouteOverride

COMMON_FILENAME = "00-console-common.conf"
SITE_SUFFIX = ".conf"
TRACE_HEADER = "X-Console-Upstream"
# Which rendered config answers: the site file's config_hash, added next to the trace header.
CONFIG_HEADER = "X-Console-Config"
OVERRIDES_SECTION = "# ===== Overrides ====="
FALLBACK_SECTION = "# ===== Fallback ====="
PANEL_SECTION = (
    "# ===== CPA panel mode: CPA itself serves /management.html, so the seed's routes all go to "
    "CPA ====="
)

# Fields that are relations: validating them would query the database for every deployment.
_SKIP_FIELDS = ("team", "created_by", "updated_by", "deployment")
# nginx's hash bucket default is one CPU cache line (64 bytes on x86-64 and arm64).
_DEFAULT_BUCKET = 64

# The seed's six headers, except that X-Forwarded-For is the address nginx sees, not the seed's
# $proxy_add_x_forwarded_for: CPA believes the leftmost entry, which a client could write itself.
HEADER_SET = (
    ("Host", "$host"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Forwarded-For", "$remote_addr"),
    ("X-Forwarded-Proto", "$scheme"),
    ("Upgrade", "$http_upgrade"),
    ("Connection", "$connection_upgrade"),
)
_HEADER_LINES = tuple(f"    proxy_set_header {name:<17} {value};" for name, value in HEADER_SET)
# The address of each upstream, set once per server; the same names in every site file.
UPSTREAM_VARIABLES = {b.CPA: "console_cpa", b.CPAMP: "console_cpamp"}
# Routes hand their requests to one named location per upstream: `return 597` goes to @cpa,
# `return 598` to @cpamp (error_page CODE = @name keeps the URI, method and body, and the
# upstream's status). nginx before 1.23.1 (Debian 12's 1.22) builds one TLS client context for
# each proxy_pass with a variable; with OpenSSL 3 those contexts were most of nginx -t's time
# and memory. Two proxy_pass lines per server instead of twenty: 4x faster and half the memory
# at 1,000 deployments (bench/bench_nginx_scale.py).
HANDOFF_CODES = {b.CPA: 597, b.CPAMP: 598}
HANDOFF_LOCATIONS = {b.CPA: "@cpa", b.CPAMP: "@cpamp"}
# Route tracing's value: cpa or cpamp, from the address a request was proxied to (the shared file).
TRACE_VARIABLE = "console_upstream"
# Mozilla's "intermediate" server-side TLS profile (ssl-config.mozilla.org, nginx, version 5.7).
TLS_PROTOCOLS = "TLSv1.2 TLSv1.3"
TLS_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
# One session cache for every console server: a shared zone is nginx-wide, named once.
TLS_SESSION_CACHE = "shared:console_tls:10m"
TLS_SETTINGS = (
    ("ssl_protocols", TLS_PROTOCOLS),
    ("ssl_ciphers", TLS_CIPHERS),
    ("ssl_prefer_server_ciphers", "off"),
    ("ssl_session_cache", TLS_SESSION_CACHE),
    ("ssl_session_timeout", "1d"),
    ("ssl_session_tickets", "off"),
)
# What nginx answers a client over the login rate limit (its default, 503, reads as an outage).
LIMIT_STATUS = 429
ACME_PREFIX = "/.well-known/acme-challenge/"
# Where the panels check a key (CPAMP's Admin Key, CPA's Management Key): the login rate limit
# applies to exact and prefix locations under these.
LOGIN_PATHS = ("/v0/management", "/usage-service", "/setup", "/status")
# A limit_req zone's size: 10 MB keeps about 80,000 client and site pairs.
_ZONE_SIZE = "10m"
_ZONE_PREFIX = "console_"
_ZONE_USE = re.compile(r"^\s*limit_req zone=console_(\d+)r_([sm]) ", re.M)
_ZONE_NAME = re.compile(r"console_([1-9][0-9]{0,3})r_([sm])")
_LISTEN_USE = re.compile(r"^\s*listen\s+(\S+?)((?:\s+\w+)*);$", re.M)
# The config hash cannot cover the lines that carry it: they are left out of what is hashed.
_CONFIG_LINE = re.compile(rf"^[ \t]*add_header[ \t]+{CONFIG_HEADER}[ \t][^\n]*(?:\n|$)", re.M)
_HASH_PLACEHOLDER = "@console-config-hash@"
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._~:@!+,=-]+")


class InvalidDeployment(ValueError):
    """A deployment or override failed validation; nothing was rendered."""

    def __init__(self, slug: str, errors: list[tuple[str, str]]):
        self.slug = slug
        self.errors = errors
        detail = "; ".join(f"{field}: {reason}" for field, reason in errors)
        super().__init__(f"Deployment {slug!r} cannot be rendered: {detail}")


@dataclass(frozen=True)
class Location:
    """One location of the effective config, in config order."""

    match: str  # exact | prefix | regex | regex_i
    path: str
    target: str  # cpa | cpamp | "" for the redirect
    origin: str  # builtin | override | redirect | fallback
    note: str = ""
    redirect: str = ""
    # Only the fallback `location /` is a plain prefix: regex locations stay reachable under it.
    plain: bool = False
    replaces: b.Route | None = None
    override_id: int | None = None
    position: int = 0
    section: str = ""
    # The operator's note on an override: shown on the routes page, never written into the config.
    override_note: str = ""

    @property
    def modifier(self) -> str:
        """Return nginx's modifier for this location ('' for the plain fallback)."""
        return "" if self.plain else b.MODIFIERS[self.match]

    @property
    def is_regex(self) -> bool:
        """Return True for a regex location (matched after the prefixes, in config order)."""
        return self.match in (b.REGEX, b.REGEX_I)

    def nginx_name(self) -> str:
        """Return the location's argument as written in the config (regexes double-quoted)."""
        if self.is_regex:
            # nginx unescapes \\ inside double quotes; the validators forbid quotes themselves.
            return '"' + self.path.replace("\\", "\\\\") + '"'
        return self.path

    def header(self) -> str:
        """Return the `location ... {` opening line's argument part."""
        return f"{self.modifier} {self.nginx_name()}".strip()

    @property
    def display(self) -> str:
        """Return the location for people: modifier and path, the regex unquoted."""
        return f"{self.modifier} {self.path}".strip()


def _messages(exc: ValidationError) -> list[tuple[str, str]]:
    if hasattr(exc, "error_dict"):
        return [
            (field, " ".join(str(m) for m in ValidationError(errs).messages))
            for field, errs in sorted(exc.error_dict.items())
        ]
    return [("__all__", " ".join(str(m) for m in exc.messages))]


def validate_deployment(
    deployment: Deployment, overrides: Sequence[RouteOverride] | None = None
) -> None:
    """Raise InvalidDeployment unless the deployment and its overrides pass every validator."""
    errors: list[tuple[str, str]] = []
    try:
        deployment.clean_fields(exclude=list(_SKIP_FIELDS))
        deployment.clean()
    except ValidationError as exc:
        errors.extend(_messages(exc))
    if deployment.slug == COMMON_FILENAME.removesuffix(SITE_SUFFIX):
        errors.append(
            (
                "slug",
                gettext("%(slug)s is reserved for the shared file.") % {"slug": deployment.slug},
            )
        )
    seen: set[tuple[str, str]] = set()
    for override in overrides or ():
        label = f"overrides[{override.match} {override.path}]"
        try:
            override.clean_fields(exclude=list(_SKIP_FIELDS))
            override.clean()
        except ValidationError as exc:
            errors.extend((f"{label}.{field}", reason) for field, reason in _messages(exc))
            continue
        key = (override.match, override.path)
        if key in seen:
            errors.append((label, gettext("The same match and path appear twice.")))
        seen.add(key)
    if errors:
        raise InvalidDeployment(deployment.slug or "?", errors)


def enabled_overrides(deployment: Deployment) -> list[RouteOverride]:
    """Return the deployment's enabled overrides in position order (uses a prefetch if present)."""
    # .all() then filtering in Python keeps prefetch_related("overrides") effective.
    return sorted(
        (o for o in deployment.overrides.all() if o.enabled), key=lambda o: (o.position, o.pk or 0)
    )


def chosen_overrides(
    deployment: Deployment, overrides: Sequence[RouteOverride] | None
) -> list[RouteOverride]:
    """Return the enabled ones of the given overrides, or the deployment's own when none given."""
    if overrides is None:
        return enabled_overrides(deployment)
    return [o for o in overrides if o.enabled]


def _from_override(
    override: RouteOverride,
    *,
    section: str,
    note: str = "",
    plain: bool = False,
    replaces: b.Route | None = None,
) -> Location:
    """Return the location an override makes, placed in section of the config."""
    return Location(
        match=override.match,
        path=override.path,
        target=override.target,
        origin="override",
        note=note,
        plain=plain,
        replaces=replaces,
        override_id=override.pk,
        position=override.position,
        section=section,
        override_note=override.note,
    )


def effective_locations(
    deployment: Deployment, overrides: Sequence[RouteOverride] | None = None
) -> list[Location]:
    """Return the deployment's locations in config order: built-ins, overrides, fallback."""
    overrides = sorted(chosen_overrides(deployment, overrides), key=lambda o: o.position)
    panel = deployment.mode == "cpa_panel"

    def builtin_target(route: b.Route) -> str:
        # CPA panel mode: CPA itself serves /management.html, so every built-in goes to CPA.
        return b.CPA if panel else route.target

    by_key = {(o.match, o.path): o for o in overrides}
    used: set[tuple[str, str]] = set()

    def replace(route: b.Route, default: Location) -> Location:
        found = by_key.get((route.match, route.path))
        if found is None:
            return default
        used.add((route.match, route.path))
        return _from_override(
            found, section=default.section, note=default.note, plain=default.plain, replaces=route
        )

    root = Location(
        b.EXACT, "/", "", "redirect", b.ROOT_REDIRECT.note, redirect=b.ROOT_REDIRECT_TARGET
    )
    locations = [replace(b.ROOT_REDIRECT, root)]
    for route in b.BUILTIN_ROUTES:
        default = Location(
            route.match,
            route.path,
            builtin_target(route),
            "builtin",
            "" if panel else route.note,
            section=PANEL_SECTION if panel else route.section,
        )
        locations.append(replace(route, default))
    for override in overrides:
        if (override.match, override.path) in used or (override.match, override.path) == (
            b.PREFIX,
            "/",
        ):
            continue
        locations.append(_from_override(override, section=OVERRIDES_SECTION))
    fallback = Location(
        b.PREFIX, "/", b.CPA, "fallback", b.FALLBACK.note, plain=True, section=FALLBACK_SECTION
    )
    locations.append(replace(b.FALLBACK, fallback))
    return locations


def variable_name(target: str) -> str:
    """Return the nginx variable that holds target's address (the same in every site file)."""
    return UPSTREAM_VARIABLES[target]


def upstream_address(deployment: Deployment, target: str) -> str:
    """Return the host:port that serves target for the deployment."""
    return deployment.cpa_upstream if target == b.CPA else deployment.cpamp_upstream


def resolves_at_request_time(address: str) -> bool:
    """Return True when the upstream host is a name (resolved per request), not an IP literal."""
    host, _port = v.split_host_port(address)
    return not v.is_ip_literal(host)


def site_filename(deployment: Deployment) -> str:
    """Return the file name of the deployment's site config."""
    return f"{deployment.slug}{SITE_SUFFIX}"


def limit_zone(rate: str) -> str:
    """Return the limit_req zone of a rate (5r/s -> console_5r_s): one zone per rate in use."""
    return _ZONE_PREFIX + rate.replace("/", "_")


def zone_rate(zone: str) -> str:
    """Return the rate of a console limit_req zone name (console_5r_s -> 5r/s), or ""."""
    found = _ZONE_NAME.fullmatch(zone)
    return f"{found[1]}r/{found[2]}" if found else ""


def login_path(match: str, path: str) -> bool:
    """Return True when the login rate limit applies to a location of this match and path."""
    return match in (b.EXACT, b.PREFIX) and path.startswith(LOGIN_PATHS)


def is_login_path(location: Location) -> bool:
    """Return True when the login rate limit applies to the location."""
    return login_path(location.match, location.path)


def _listen(address: str, port: int) -> str:
    address = address.strip().strip("[]")
    if not address:
        return str(port)
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _resolver(value: str) -> str:
    parts = []
    for part in value.split():
        bare = part.strip("[]")
        parts.append(f"[{bare}]" if ":" in bare else bare)
    return " ".join(parts)


def config_hash(text: str) -> str:
    """Return the SHA-256 of a site file with its ``add_header X-Console-Config`` line left out.

    The same as ``grep -v 'add_header X-Console-Config' prod.conf | sha256sum``: the hash a
    rendered file carries in X-Console-Config (one line per server, inherited by every location)
    is the hash of the rest of that file, so it can be checked from the file alone, and a file
    written before the header existed has one too.
    """
    return hashlib.sha256(without_config_hash(text).encode("utf-8")).hexdigest()


def without_config_hash(text: str) -> str:
    """Return a site file without its X-Console-Config lines: what config_hash covers."""
    return _CONFIG_LINE.sub("", text)


def _with_hash(text: str) -> str:
    """Return text with the placeholder of the config hash replaced by the hash itself."""
    if _HASH_PLACEHOLDER not in text:
        return text
    return text.replace(_HASH_PLACEHOLDER, config_hash(text))


@lru_cache(maxsize=256)
def _comment(note: str) -> tuple[str, ...]:
    return tuple(f"    # {line}" for line in textwrap.wrap(note, 92))


def _location(location: Location, limit: str) -> list[str]:
    """Return a location's lines: one, like the seed's, unless the login rate limit applies."""
    if location.redirect:
        body = [f"return 302 {location.redirect};"]
    elif hands_off(location, limit):
        body = [f"return {HANDOFF_CODES[location.target]};"]
    else:
        # limit_req acts after the rewrite phase, where `return` hands off: a limited location
        # proxies by itself, as does one whose 301 nginx must write (_redirects_by_itself).
        body = [f"proxy_pass http://${variable_name(location.target)};"]
        if limit and is_login_path(location):
            body.insert(0, limit)
    opening = f"    location {location.header()} {{"
    if len(body) == 1:
        return [f"{opening} {body[0]} }}"]
    return [opening, *(f"        {line}" for line in body), "    }"]


def _redirects_by_itself(location: Location) -> bool:
    """Return True for a location /x/ whose 301 (/x -> /x/) cannot be written as `return`.

    nginx's own 301 carries the URI-escaped name; a name of plain characters is its own escape,
    and only such a name can stand in a `return` line (no $, quote, space or brace).
    """
    slash = not location.is_regex and location.path.endswith("/") and len(location.path) > 1
    return slash and _PLAIN_PATH.fullmatch(location.path) is None


def hands_off(location: Location, limit: str) -> bool:
    """Return True when the location hands its request to a named location (`return 59x`)."""
    limited = bool(limit) and is_login_path(location)
    if not location.target or location.redirect or limited:
        return False
    return not _redirects_by_itself(location)


def slash_redirects(locations: Sequence[Location], limit: str) -> dict[str, str]:
    """Return {path: target} of the 301s nginx would add itself, written out as locations.

    nginx answers /v1 with a 301 to /v1/ when a proxy_pass location is named /v1/ and no
    location is named /v1 (its auto_redirect). A location that hands off with `return` has no
    proxy_pass, so the same 301 is written as `location = /v1`, which nginx matches the same way:
    exactly, ahead of every regex.
    """
    named = {loc.path for loc in locations if not loc.is_regex}
    out: dict[str, str] = {}
    for loc in locations:
        short = loc.path[:-1]
        if hands_off(loc, limit) and not loc.is_regex and loc.path.endswith("/") and short:
            if short not in named:
                out.setdefault(short, loc.path)
    return out


def _slash_redirect(short: str, path: str) -> str:
    return f"    location = {short} {{ return 301 {path}$is_args$args; }}"


def login_limit(deployment: Deployment) -> str:
    """Return the login locations' limit_req line, or "" when the rate limit is off."""
    rate = deployment.limit_req_rate
    if not rate:
        return ""
    return f"limit_req zone={limit_zone(rate)} burst={deployment.limit_req_burst} nodelay;"


def _locations(out: list[str], deployment: Deployment, locations: list[Location]) -> None:
    limit = login_limit(deployment)
    redirects = slash_redirects(locations, limit)
    section, note = "", ""
    for location in locations:
        if location.section and location.section != section:
            out += ["", f"    {location.section}", ""]
            section, note = location.section, ""
        elif not section and out[-1] != "":
            out.append("")
        # A note shared by consecutive routes (the OAuth callbacks) is written once.
        if location.note and location.note != note:
            out.extend(_comment(location.note))
        note = location.note
        if location.origin == "override":
            if location.replaces is not None:
                out.append("    # Override: replaces the built-in route above.")
            else:
                out.append(f"    # Override (position {location.position}).")
            note = ""
        out.extend(_location(location, limit))
        short = location.path[:-1]
        if redirects.get(short) == location.path:
            out.append(_slash_redirect(short, redirects.pop(short)))


def _tls(out: list[str], deployment: Deployment) -> None:
    out += [
        f"    ssl_certificate     {deployment.ssl_certificate};",
        f"    ssl_certificate_key {deployment.ssl_certificate_key};",
        "    # Mozilla's intermediate TLS profile; one session cache for every console server.",
        *(f"    {name} {value};" for name, value in TLS_SETTINGS),
        "",
    ]


def _client_address(out: list[str], deployment: Deployment) -> None:
    if deployment.client_ip == "behind_proxy":
        out.append(
            "    # Behind trusted proxies: the client is the rightmost X-Forwarded-For address "
            "not listed here."
        )
        out += [
            f"    set_real_ip_from {cidr};"
            for cidr in v.trusted_proxies(deployment.trusted_proxies)
        ]
        out += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;", ""]


def _server_body(
    out: list[str], deployment: Deployment, targets: list[str], handed: list[str]
) -> None:
    out += [
        f"    client_max_body_size {deployment.client_max_body_size};",
        "",
        "    proxy_http_version 1.1;",
        f"    proxy_read_timeout {deployment.proxy_read_timeout}s;",
        f"    proxy_send_timeout {deployment.proxy_send_timeout}s;",
        "    proxy_buffering off;",
        "",
        "    # X-Forwarded-For and X-Real-IP: the address nginx sees, never one a client wrote.",
        *_HEADER_LINES,
        "",
    ]
    if deployment.route_tracing:
        out += [
            f"    # Route tracing: who answered (${TRACE_VARIABLE}, see {COMMON_FILENAME}) and",
            "    # this file's config hash.",
            f"    add_header {TRACE_HEADER} ${TRACE_VARIABLE} always;",
            f"    add_header {CONFIG_HEADER} {_HASH_PLACEHOLDER} always;",
            "",
        ]
    if deployment.limit_req_rate:
        out += [
            f"    # Login paths: over {deployment.limit_req_rate} per client address, nginx "
            "answers 429.",
            f"    limit_req_status {LIMIT_STATUS};",
            "",
        ]
    addresses = {t: upstream_address(deployment, t) for t in targets}
    if any(resolves_at_request_time(a) for a in addresses.values()):
        out += [
            "    # The upstreams, set once for every location below. Host names resolve per",
            "    # request, so nginx starts (and answers 502) while a container is down.",
            f"    resolver {_resolver(deployment.resolver)} valid=10s ipv6=off;",
        ]
    else:
        out.append("    # The upstreams, set once for every location below.")
    width = max(len(variable_name(t)) for t in targets)
    out += [f"    set ${variable_name(t):<{width}} {a};" for t, a in addresses.items()]
    if not handed:
        return
    handoffs = ", ".join(f"return {HANDOFF_CODES[t]}: {HANDOFF_LOCATIONS[t]}" for t in handed)
    named = max(len(HANDOFF_LOCATIONS[t]) for t in handed)
    out += [
        "",
        f"    # Routes hand off to one proxy_pass per upstream ({handoffs}):",
        "    # nginx before 1.23.1 makes a TLS context for each proxy_pass with a variable. The",
        "    # 301 nginx adds for a proxy_pass location /x/ (/x -> /x/) is written out below.",
        *(f"    error_page {HANDOFF_CODES[t]} = {HANDOFF_LOCATIONS[t]};" for t in handed),
        *(
            f"    location {HANDOFF_LOCATIONS[t]:<{named}} "
            f"{{ proxy_pass http://${variable_name(t)}; }}"
            for t in handed
        ),
    ]


def _redirect_server(out: list[str], deployment: Deployment) -> None:
    port = "" if deployment.https_port == 443 else f":{deployment.https_port}"
    redirect = f"return 301 https://$host{port}$request_uri;"
    out += [
        "",
        "server {",
        f"    listen {_listen(deployment.listen_address, deployment.http_port)};",
        f"    server_name {deployment.server_name};",
        "    server_tokens off;",
    ]
    if deployment.acme_webroot:
        out += [
            "",
            "    # certbot --webroot: the challenge files; every other path goes to HTTPS.",
            f"    location ^~ {ACME_PREFIX} {{ root {deployment.acme_webroot}; }}",
            f"    location / {{ {redirect} }}",
        ]
    else:
        out.append(f"    {redirect}")
    out.append("}")


def render_site(deployment: Deployment, overrides: Sequence[RouteOverride] | None = None) -> str:
    """Return the site config of the deployment; raise InvalidDeployment before rendering."""
    overrides = chosen_overrides(deployment, overrides)
    validate_deployment(deployment, overrides)
    locations = effective_locations(deployment, overrides)
    targets = sorted({loc.target for loc in locations if loc.target})
    limit = login_limit(deployment)
    handed = sorted({loc.target for loc in locations if hands_off(loc, limit)})
    out = [
        f"# CPA gateway console: site of deployment {deployment.slug} (mode {deployment.mode}).",
        "# Generated: the next export overwrites edits. Include it inside http {} next to",
        f"# {COMMON_FILENAME}.",
        "",
        "server {",
    ]
    port = deployment.https_port if deployment.tls else deployment.http_port
    flags = (" ssl http2" if deployment.http2 else " ssl") if deployment.tls else ""
    out += [
        f"    listen {_listen(deployment.listen_address, port)}{flags};",
        f"    server_name {deployment.server_name};",
        "    server_tokens off;",
        "",
    ]
    if deployment.tls:
        _tls(out, deployment)
    _client_address(out, deployment)
    _server_body(out, deployment, targets, handed)
    _locations(out, deployment, locations)
    out.append("}")
    if deployment.tls:
        _redirect_server(out, deployment)
    return _with_hash("\n".join(out) + "\n")


def rendered_hash(deployment: Deployment) -> str:
    """Return the config hash of the deployment's site file as rendered now."""
    return config_hash(render_site(deployment))


def _bucket_size(server_names: Iterable[str]) -> int:
    # nginx refuses a server name whose hash element does not fit a bucket: pointer + name + 2,
    # aligned to 8, plus a terminating pointer (ngx_hash_init, NGX_HASH_ELT_SIZE).
    need = max((16 + (len(n) + 2 + 7) // 8 * 8 for n in server_names), default=0)
    if need <= _DEFAULT_BUCKET:
        return 0
    return (need + _DEFAULT_BUCKET - 1) // _DEFAULT_BUCKET * _DEFAULT_BUCKET


def _zones(sites: Iterable[str]) -> list[str]:
    """Return the limit_req_zone lines for the rates the site files use, sorted."""
    rates = {(int(n), unit) for text in sites for n, unit in _ZONE_USE.findall(text)}
    return [
        f"limit_req_zone $binary_remote_addr$server_name zone={limit_zone(rate)}:{_ZONE_SIZE} "
        f"rate={rate};"
        for rate in (f"{n}r/{unit}" for n, unit in sorted(rates, key=lambda r: (r[1], r[0])))
    ]


def _default_server(sites: Iterable[str]) -> list[str]:
    """Return a catch-all server on every address and port the site files listen on."""
    sockets: dict[str, bool] = {}
    for text in sites:
        for address, flags in _LISTEN_USE.findall(text):
            sockets[address] = sockets.get(address, False) or "ssl" in flags.split()
    if not sockets:
        return []

    def order(address: str) -> tuple[int, str]:
        return (int(address.rsplit(":", 1)[-1]), address)

    out = [
        "",
        "# Catch-all for Host names no site here serves (the export's default server): nginx",
        "# closes the connection (444) instead of answering with the first site of a port.",
        "server {",
        *(
            f"    listen {address}{' ssl' if ssl else ''} default_server;"
            for address, ssl in sorted(sockets.items(), key=lambda item: order(item[0]))
        ),
        "    server_name _;",
        "    server_tokens off;",
    ]
    if any(sockets.values()):
        out.append("    ssl_reject_handshake on;")
    out += ["    return 444;", "}"]
    return out


def render_common(
    server_names: Iterable[str] = (), *, sites: Iterable[str] = (), default_server: bool = False
) -> str:
    """Return the shared file of an export directory; sites: the site files it goes with.

    It holds the seed's map block, route tracing's maps, one limit_req zone per rate the sites
    use, a larger server-name hash bucket when a name needs it and, with default_server, a
    catch-all server on every address and port the sites listen on.
    """
    sites = list(sites)
    out = [
        "# CPA gateway console: shared by every site file in this directory (include inside",
        "# http {}). The seed's own map $http_upgrade block may stay in nginx.conf: nginx takes",
        "# the last of two maps of a variable, and both say the same.",
        "map $http_upgrade $connection_upgrade {",
        "    default upgrade;",
        "    ''      close;",
        "}",
        "",
        f"# Route tracing: ${TRACE_VARIABLE} is cpamp when nginx proxied to the server's",
        f"# ${UPSTREAM_VARIABLES[b.CPAMP]} ($proxy_host leaves out a :80), cpa for any other",
        "# address, and empty (no header) when nginx answered itself. A server that sets no",
        f"# ${UPSTREAM_VARIABLES[b.CPAMP]} (CPA panel mode) gets the empty default.",
        f"map $host ${UPSTREAM_VARIABLES[b.CPAMP]} {{",
        '    default "";',
        "}",
        f'map "$proxy_host ${UPSTREAM_VARIABLES[b.CPAMP]}" ${TRACE_VARIABLE} {{',
        '    default "";',
        '    "~^(\\S+) \\1(:80)?$" cpamp;',
        '    "~^\\S+ " cpa;',
        "}",
    ]
    zones = _zones(sites)
    if zones:
        out += ["", "# Login rate limits: one zone per rate in use, per client address and site."]
        out += zones
    bucket = _bucket_size(server_names)
    if bucket:
        out += [
            "",
            "# A server name is too long for nginx's default hash bucket (64 bytes); without",
            "# this nginx refuses to start. Remove any other server_names_hash_bucket_size line.",
            f"server_names_hash_bucket_size {bucket};",
        ]
    if default_server:
        out += _default_server(sites)
    return "\n".join(out) + "\n"
