"""Read a hand-written nginx site config of the seed's shape into a proposed deployment.

``propose(text, source=...)`` is pure: crossplane parses the text (includes are never followed,
certificates never opened) and the result is a Proposal: the deployment's fields, the locations
that are the seed's built-in routes, the others as overrides, what the console adds that the file
lacks, and every line that cannot be mapped, each with its line. A proposal counts as mapped
only when the simulator finds that its locations send every sample path where the file's do.
routes/adoption.py saves it.

Findings never repeat a header value or the arguments of a directive that could carry a secret
(``proxy_set_header Authorization "Bearer …"``): they name the directive only.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crossplane
from django.core.exceptions import ValidationError
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from routes import validators as v
from routes.models import (
    CPA_PORT,
    CPAMP_PORT,
    DEPLOYMENT_FIELD_GROUPS,
    PRESETS,
    Deployment,
    RouteOverride,
)
from routes.nginx import boundaries as b
from routes.nginx import render
from routes.nginx.regexes import RegexTimeout
from routes.nginx.render import HEADER_SET, Location, effective_locations
from routes.nginx.simulate import Router, Simulation

# The routing check simulates every location against the others' sample paths.
MAX_LOCATIONS = 200
# Problems listed for one file; a file with more is hardly a site of the seed's shape.
MAX_FINDINGS = 200
# Headers the console's route tracing adds (X-Console-Upstream, …): the console writes its own.
CONSOLE_HEADER_PREFIX = "x-console-"
TARGET_LABELS = {b.CPA: "CPA", b.CPAMP: "CPAMP"}
# The deployment fields a site config describes: an import sets each of them (a field the file
# leaves out takes nginx's or the model's default); an update keeps the others as stored.
_GROUPS = DEPLOYMENT_FIELD_GROUPS
DESCRIBED_FIELDS = (
    "mode",
    "server_name",
    *_GROUPS["listening"],
    # The CPA URL is CPAMP's own setting and tracing the console's: no site file holds them.
    *(name for name in _GROUPS["upstreams"] if name != "cpamp_cpa_url"),
    *(name for name in _GROUPS["proxy"] if name != "route_tracing"),
    # realip, the login rate limit and the ACME webroot are all lines of the site file.
    *_GROUPS["edge"],
)
# nginx's own values where a file sets none: importing must not change what the site does.
NGINX_DEFAULTS = {"client_max_body_size": "1m", "proxy_read_timeout": 60, "proxy_send_timeout": 60}

# Why a line cannot be mapped, by code (tests and the page match on codes).
UNMAPPED = {
    "syntax": _("nginx cannot parse this: %(error)s"),
    "directive": _("directive %(name)s: not part of the seed's shape; the console cannot keep it"),
    "include": _("include %(path)s: included files are not read; paste what they hold here"),
    "header": _(
        "proxy_set_header %(name)s: the console sends the seed's six headers with the seed's "
        "values only (this value is not shown)"
    ),
    "add_header": _("add_header %(name)s: the console does not add it (its value is not shown)"),
    "second_server": _("a second server {}: import one site (one deployment) per file"),
    "no_server": _("no server {} that proxies to CPA or CPAMP"),
    "no_proxy": _("no location proxies to CPA or CPAMP"),
    "server_name": _("server_name: the console serves exactly one name"),
    "no_server_name": _("server {} without server_name"),
    "listen": _("%(what)s: the console listens on one [address:]port, with ssl and http2 only"),
    "no_listen": _("server {} without listen"),
    "certificate_without_ssl": _("%(name)s in a server that does not listen with ssl"),
    "redirect": _(
        "server {}: not the seed's HTTP -> HTTPS redirect (listen on the HTTP port and the same "
        "address, the same server_name, return 301 https://$host$request_uri)"
    ),
    "upgrade_map": _("map $http_upgrade $connection_upgrade differs from the seed's"),
    "upstream": _("upstream %(name)s: the console writes one server without parameters"),
    "time": _("%(name)s: give a time in whole seconds"),
    "location_time": _("%(name)s differs from the server's: the console writes one per server"),
    "resolver": _("resolver parameter %(name)s: the console does not write it"),
    "location_kind": _("%(location)s: a named or unknown kind of location"),
    "location_path": _("%(location)s: %(reason)s"),
    "duplicate": _("%(location)s appears twice"),
    "some_headers": _(
        "%(location)s sets only some of the seed's headers, so nginx drops the server's there; "
        "the console sends all six"
    ),
    "one_proxy_pass": _("%(location)s: the console proxies a location with one proxy_pass"),
    "proxy_pass": _("proxy_pass: the console proxies to http://host:port or an upstream only"),
    "proxy_pass_uri": _(
        "proxy_pass with a path (%(uri)s) rewrites the request path; the console passes it as is"
    ),
    "variable": _("proxy_pass http://$%(name)s: the variable is not set in this file"),
    "no_port": _("proxy_pass http://%(name)s: no upstream of that name here, and no port"),
    "which_upstream": _(
        "proxy_pass to %(address)s: cannot tell whether it is CPA or CPAMP (ports 8317 and "
        "18317 or names such as cpa_api and cpamp tell them apart)"
    ),
    "caret_root": _("location ^~ /: regex locations never run behind it"),
    "plain_prefix": _(
        "%(location)s: a prefix without ^~ lets regex locations win, the console's prefixes "
        "(^~) do not; write ^~ if that is meant"
    ),
    "too_many": _("more than %(max)d locations: not a site of the seed's shape"),
    "routing": _(
        "%(path)s: this file sends it to %(was)s, the deployment would send it to %(now)s"
    ),
    "regex_timeout": _("%(reason)s"),
    "tls_setting": _(
        "%(name)s: the console writes Mozilla's intermediate TLS settings and cannot keep "
        "other values"
    ),
    "realip": _(
        "%(name)s: the console trusts X-Forwarded-For from the listed proxies only as "
        "set_real_ip_from …; real_ip_header X-Forwarded-For; real_ip_recursive on"
    ),
    "limit_req": _(
        "%(location)s: the console limits /v0/management/ and the panel's login paths with "
        "limit_req zone=console_<rate> burst=<n> nodelay, one rate for all"
    ),
    "limit_status": _("limit_req_status: the console answers 429"),
    "more": _("… and %(n)d more lines that cannot be mapped"),
}

Stmt = dict[str, Any]
# The seed's six proxy_set_header lines, as its guide writes them. A line the console writes
# itself (render.HEADER_SET, which may harden a value) is recognised as well.
SEED_HEADERS = (
    ("Host", "$host"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ("X-Forwarded-Proto", "$scheme"),
    ("Upgrade", "$http_upgrade"),
    ("Connection", "$connection_upgrade"),
)
_KNOWN_HEADERS = frozenset(f"{n.lower()} {value}" for n, value in (*SEED_HEADERS, *HEADER_SET))
# nginx time units (ngx_parse_time), in milliseconds.
_TIME_UNITS = {"ms": 1, "": 1000, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_TIME = re.compile(r"\s*(\d{1,9})(ms|s|m|h|d)?\s*")
_REDIRECT = re.compile(r"https://(\$host|\$server_name|[A-Za-z0-9.-]+)(?::(\d{1,5}))?\$request_uri")
_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+|\*))(?::(?P<port>\d{1,5}))?")
_MODIFIERS = {"=": b.EXACT, "^~": b.PREFIX, "~": b.REGEX, "~*": b.REGEX_I, "": b.PREFIX}
_REGEX_META = frozenset(".^$*+?()[]{}|\\")
_ESCAPE = re.compile(r"\\([\"'\\tnr])")
_ESCAPED = {"t": "\t", "n": "\n", "r": "\r"}
# Directives the console writes into every server with these arguments.
_CONSOLE_WRITES = {
    "proxy_http_version": ["1.1"],
    "proxy_buffering": ["off"],
    "server_tokens": ["off"],
}
_TLS_SETTINGS = dict(render.TLS_SETTINGS)
_REALIP = ("set_real_ip_from", "real_ip_header", "real_ip_recursive")
_LIMIT = re.compile(r"zone=(console_\w+) burst=(\d{1,4}) nodelay")
_TIMEOUTS = ("proxy_read_timeout", "proxy_send_timeout")
# Arguments shown in findings: only where they are structure, never a value.
_SHOWN_ARGS = frozenset({"listen", "server_name", "location", "upstream", "include"})


@dataclass(frozen=True)
class Finding:
    """One line of a proposal: where in the file (0: the file as a whole) and what it says."""

    line: int
    text: str
    code: str = ""


@dataclass
class Proposal:
    """What a config file becomes: deployment fields, built-in routes, overrides, leftovers."""

    source: str
    fields: dict[str, Any] = field(default_factory=dict)
    field_lines: dict[str, int] = field(default_factory=dict)
    # match, path, target, enabled, position, note: the definitions format's override entries.
    overrides: list[dict[str, Any]] = field(default_factory=list)
    override_lines: list[int] = field(default_factory=list)
    recognised: list[Finding] = field(default_factory=list)
    builtins: list[Finding] = field(default_factory=list)
    added: list[Finding] = field(default_factory=list)
    unmapped: list[Finding] = field(default_factory=list)

    @property
    def mapped(self) -> bool:
        """Return True when every line of the file maps onto the deployment."""
        return not self.unmapped

    def where(self, line: int) -> str:
        """Return "file:line" (the file alone for line 0)."""
        return f"{self.source}:{line}" if line else self.source

    def deployment(self, slug: str = "") -> Deployment:
        """Return an unsaved deployment with the proposal's fields (for the lint and checks)."""
        return Deployment(slug=slug, name=slug, **self.fields)

    def route_overrides(self) -> list[RouteOverride]:
        """Return the proposal's overrides as unsaved rows."""
        return [RouteOverride(**values) for values in self.overrides]


@dataclass
class _Loc:
    """A location of the file as nginx reads it."""

    line: int
    match: str
    path: str
    plain: bool
    address: str = ""
    names: tuple[str, ...] = ()
    redirect: str = ""
    target: str = ""
    headers: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple[str, str]:
        return (self.match, self.path)

    @property
    def label(self) -> str:
        modifier = "" if self.plain else b.MODIFIERS[self.match] + " "
        return _shown(f"location {modifier}{self.path}")


def _shown(text: str, limit: int = 80) -> str:
    """Return text from the file shortened to limit, with control characters escaped."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _normal(name: str) -> str:
    """Return a server name as the deployment stores it (as it is if it is not valid)."""
    try:
        return v.normalize_server_name(name)
    except ValidationError:
        return name


def _is_ip(address: str) -> bool:
    """Return True when host:port names its host by an IP address."""
    return v.is_ip_literal(address.rpartition(":")[0].strip("[]"))


def _listen(arg: str) -> tuple[str, int] | None:
    """Return (address, port) of listen's first argument, or None for a form not written."""
    if re.fullmatch(r"\d{1,5}", arg):
        return "", int(arg)
    found = _LISTEN.fullmatch(arg)
    if found is None:
        return None
    return found["v6"] or ("" if found["v4"] == "*" else found["v4"]), int(found["port"] or 80)


def _unescape(arg: str) -> str:
    r"""Return a location argument as nginx reads it: \\, \", \', \t, \n, \r unescaped.

    ngx_conf_read_token does this to every argument; crossplane keeps the escapes, and the
    console's own export writes a regex's backslashes doubled.
    """
    return _ESCAPE.sub(lambda found: _ESCAPED.get(found[1], found[1]), arg)


def _seconds(value: str) -> int | None:
    """Return an nginx time ("3600s", "1h 30m", "90") in whole seconds, or None."""
    total, pos = 0, 0
    while pos < len(value):
        found = _TIME.match(value, pos)
        if found is None or found.end() == pos:
            return None
        total += int(found.group(1)) * _TIME_UNITS[found.group(2) or ""]
        pos = found.end()
    if not value.strip() or total % 1000:
        return None
    return total // 1000


def _hint(address: str, names: Iterable[str]) -> str:
    """Return which upstream an address looks like by its port, then its names; or ""."""
    host, _sep, port = address.rpartition(":")
    if port in (str(CPA_PORT), str(CPAMP_PORT)):
        return b.CPA if port == str(CPA_PORT) else b.CPAMP
    text = " ".join([host, *names]).lower()
    if "cpamp" in text or "manager" in text:
        return b.CPAMP
    return b.CPA if "cpa" in text or "cli-proxy" in text or "cliproxy" in text else ""


def _literal_prefix(pattern: str) -> str:
    """Return the literal start of an anchored regex ("^/v2/.+" -> "/v2/"), or ""."""
    out = []
    for char in pattern[1:] if pattern.startswith("^") else "":
        if char in _REGEX_META:
            break
        out.append(char)
    return "".join(out)


def _redirect_shape(server: Stmt) -> tuple[dict[str, Stmt], Stmt, Stmt | None] | None:
    """Return (its statements by name, the return, the ACME location) of a redirect server.

    None when the server does more than the console's HTTP -> HTTPS redirect: listen,
    server_name, server_tokens and return 301; or the return in ``location /`` next to
    ``location ^~ /.well-known/acme-challenge/ { root …; }``.
    """
    block: dict[str, Stmt] = {}
    locations: list[Stmt] = []
    for stmt in server["block"]:
        name = stmt["directive"]
        if name == "location":
            locations.append(stmt)
        elif name in block or name not in ("listen", "server_name", "server_tokens", "return"):
            return None
        else:
            block[name] = stmt
    if "listen" not in block or "server_name" not in block:
        return None
    if not locations:
        return (block, block["return"], None) if "return" in block else None
    if "return" in block or len(locations) != 2:
        return None
    by_args = {tuple(loc["args"]): loc for loc in locations}
    acme, rest = by_args.get(("^~", render.ACME_PREFIX)), by_args.get(("/",))
    if acme is None or rest is None:
        return None
    acme_body = [(s["directive"], len(s["args"])) for s in acme.get("block", [])]
    if acme_body != [("root", 1)] or [s["directive"] for s in rest.get("block", [])] != ["return"]:
        return None
    return block, rest["block"][0], acme


class _Reader:
    """Walks the parsed file once, filling a Proposal."""

    def __init__(self, source: str) -> None:
        self.proposal = Proposal(source=source)
        self.upstreams: dict[str, tuple[str, int]] = {}
        self.used: set[str] = set()
        self.servers: list[Stmt] = []
        self.locations: list[_Loc] = []
        self.server_vars: dict[str, str] = {}
        self.server_headers: set[str] = set()
        self.seen: set[tuple[tuple[str, str], bool]] = set()
        self.server_sets: dict[str, int] = {}
        self.realip: dict[str, list[Stmt]] = {}
        # (line, location, rate, burst) of each location's console limit_req.
        self.limits: list[tuple[int, _Loc, str, int]] = []
        self.appends_forwarded = False
        # error_page CODE = @name: a route's `return CODE` proxies as the named location does.
        self.pages: dict[str, tuple[str, int]] = {}
        self.named: dict[str, Stmt] = {}
        self.handed: set[str] = set()
        # The paths of the server's locations: `location = /x` that 301s to /x/ stands for
        # nginx's own redirect when a location /x/ is here.
        self.paths: set[str] = set()

    def recognised(self, line: int, text: str) -> None:
        """Note something of the file that maps onto the deployment."""
        self.proposal.recognised.append(Finding(line, text))

    def added(self, text: str) -> None:
        """Note something the console writes that the file lacks."""
        self.proposal.added.append(Finding(0, text))

    def unmapped(self, line: int, code: str, **params: Any) -> None:
        """Note a line that cannot be mapped, with its reason."""
        self.proposal.unmapped.append(Finding(line, str(UNMAPPED[code]) % params, code))

    def set_field(self, name: str, value: Any, line: int = 0) -> None:
        """Give the deployment field a value, read from line."""
        self.proposal.fields[name] = value
        if line:
            self.proposal.field_lines[name] = line

    def unknown(self, stmt: Stmt) -> None:
        """Record a directive the console cannot carry over; a value is never repeated."""
        name, args, line = stmt["directive"], stmt["args"], stmt["line"]
        if name == "include":
            self.unmapped(line, "include", path=_shown(" ".join(args)))
        elif name in ("proxy_set_header", "add_header") and args:
            self.unmapped(
                line, "header" if name == "proxy_set_header" else name, name=_shown(args[0])
            )
        elif name in _SHOWN_ARGS:
            self.unmapped(line, "directive", name=_shown(" ".join([name, *args])))
        else:
            self.unmapped(line, "directive", name=_shown(name))

    # --- the file ----------------------------------------------------------------------------

    def read(self, statements: list[Stmt], *, inside_http: bool = False) -> None:
        """Read the file's top level: upstreams, servers, the seed's map block."""
        for stmt in statements:
            name, args, line = stmt["directive"], stmt["args"], stmt["line"]
            if name == "http" and not inside_http and "block" in stmt:
                self.recognised(line, gettext("http {}: its contents are read as a site file"))
                self.read(stmt["block"], inside_http=True)
            elif name == "upstream" and "block" in stmt and len(args) == 1:
                self.upstream(stmt)
            elif name == "server" and "block" in stmt:
                self.servers.append(stmt)
            elif name == "map" and len(args) == 2 and args[1].startswith("$console_"):
                self.recognised(
                    line,
                    gettext("%(map)s: the console's own, written on export")
                    % {"map": _shown(f"map {args[0]} {args[1]}")},
                )
            elif name == "limit_req_zone" and any(a.startswith("zone=console_") for a in args):
                self.recognised(
                    line, gettext("limit_req_zone: the console's own, written on export")
                )
            elif name == "map" and args == ["$http_upgrade", "$connection_upgrade"]:
                entries = [[s["directive"], *s["args"]] for s in stmt.get("block", [])]
                if entries == [["default", "upgrade"], ["", "close"]]:
                    self.recognised(line, gettext("the seed's map block: in the shared file"))
                else:
                    self.unmapped(line, "upgrade_map")
            else:
                self.unknown(stmt)

    def upstream(self, stmt: Stmt) -> None:
        """Read an upstream block of one server."""
        name = stmt["args"][0]
        servers = [s for s in stmt["block"] if s["directive"] == "server"]
        for other in stmt["block"]:
            if other["directive"] != "server":
                self.unknown(other)
        if len(servers) != 1 or len(servers[0]["args"]) != 1:
            self.unmapped(stmt["line"], "upstream", name=_shown(name))
            return
        address = servers[0]["args"][0].lower()
        # nginx's port where a server names none.
        port = "" if re.search(r":\d+$", address) else ":80"
        self.upstreams[name] = (address + port, stmt["line"])

    # --- servers -----------------------------------------------------------------------------

    def split_servers(self) -> tuple[Stmt | None, list[Stmt]]:
        """Return the proxying server and the servers that only redirect."""
        main, redirects = None, []
        for server in self.servers:
            if _redirect_shape(server) is not None:
                redirects.append(server)
            elif main is None:
                main = server
            else:
                self.unmapped(server["line"], "second_server")
        return main, redirects

    def server(self, stmt: Stmt) -> None:
        """Read the proxying server: its settings first, then its locations."""
        listens, locations = [], []
        for inner in stmt["block"]:
            name, args, line = inner["directive"], inner["args"], inner["line"]
            if name == "listen":
                listens.append(inner)
            elif name == "location" and "block" in inner and args and args[0].startswith("@"):
                self.named[args[0]] = inner
            elif name == "location" and "block" in inner:
                # Read after the server's own settings, which apply wherever they stand.
                locations.append(inner)
            elif name == "error_page" and len(args) == 3 and args[1] == "=":
                self.pages[args[0]] = (args[2], line)
            elif name == "server_name":
                if len(args) != 1:
                    self.unmapped(line, "server_name")
                    continue
                self.set_field(name, _normal(args[0]), line)
                self.recognised(line, f"server_name {_shown(args[0])}")
            elif name in ("ssl_certificate", "ssl_certificate_key", "client_max_body_size"):
                self.set_field(name, args[0] if len(args) == 1 else "", line)
                self.recognised(line, f"{name} {_shown(' '.join(args))}")
            elif name == "http2" and args == ["on"]:
                self.set_field("http2", True, line)
                self.recognised(line, "http2 on")
            elif name in _TIMEOUTS and len(args) == 1:
                self.timeout(inner)
            elif name in _CONSOLE_WRITES and args == _CONSOLE_WRITES[name]:
                self.recognised(line, f"{name} {args[0]}")
            elif name in _TLS_SETTINGS:
                if " ".join(args) != _TLS_SETTINGS[name]:
                    self.unmapped(line, "tls_setting", name=name)
                    continue
                self.recognised(line, gettext("%(name)s: Mozilla's intermediate") % {"name": name})
            elif name in _REALIP and args:
                self.realip.setdefault(name, []).append(inner)
            elif name == "limit_req_status" and args:
                if args != [str(render.LIMIT_STATUS)]:
                    self.unmapped(line, "limit_status")
                    continue
                self.recognised(line, f"limit_req_status {render.LIMIT_STATUS}")
            elif name == "proxy_set_header" and len(args) == 2:
                self.header(inner, self.server_headers)
            elif name == "resolver" and args:
                self.resolver(inner)
            elif name == "set" and len(args) == 2 and args[0].startswith("$"):
                self.server_vars[args[0][1:]] = args[1].lower()
                self.server_sets[args[0][1:]] = line
            elif (
                name == "add_header" and args and args[0].lower().startswith(CONSOLE_HEADER_PREFIX)
            ):
                self.recognised(
                    line,
                    gettext("add_header %(name)s: the console's tracing")
                    % {"name": _shown(args[0])},
                )
            else:
                self.unknown(inner)
        self.listen(stmt, listens)
        if len(locations) > MAX_LOCATIONS:
            self.unmapped(stmt["line"], "too_many", max=MAX_LOCATIONS)
            return
        self.paths = {_unescape(inner["args"][-1]) for inner in locations if inner["args"]}
        for inner in locations:
            self.location(inner)
        self.handoffs()

    def handoff(self, code: str) -> tuple[Stmt, dict[str, str]] | None:
        """Return the proxy_pass (and the sets) of the named location `return code` goes to."""
        page = self.pages.get(code)
        named = self.named.get(page[0]) if page else None
        if named is None:
            return None
        passes = [i for i in named["block"] if i["directive"] == "proxy_pass"]
        sets = {
            i["args"][0][1:]: i["args"][1].lower()
            for i in named["block"]
            if i["directive"] == "set" and len(i["args"]) == 2 and i["args"][0].startswith("$")
        }
        if len(passes) != 1 or len(passes[0]["args"]) != 1:
            return None
        self.handed.add(code)
        return passes[0], sets

    def handoffs(self) -> None:
        """Report the error_page lines and named locations: used by the routes, or not mapped."""
        for code, (name, line) in self.pages.items():
            if code in self.handed:
                self.recognised(
                    line,
                    gettext("error_page %(code)s = %(name)s: routes hand off to it")
                    % {"code": code, "name": _shown(name)},
                )
            else:
                self.unmapped(line, "directive", name="error_page")
        used = {self.pages[code][0] for code in self.handed}
        for name, stmt in self.named.items():
            if name in used:
                self.recognised(
                    stmt["line"],
                    gettext("location %(name)s: the proxy_pass of its routes")
                    % {"name": _shown(name)},
                )
            else:
                self.unmapped(stmt["line"], "location_kind", location=_shown(f"location {name}"))

    def slash_redirect(self, stmt: Stmt) -> bool:
        """Return True for `location = /x { return 301 /x/$is_args$args; }` beside /x/.

        That is the redirect nginx adds itself for a proxy_pass location /x/; the console
        writes it out where its routes hand off with `return`, and writes it again on export.
        """
        args, body = [_unescape(a) for a in stmt["args"]], stmt["block"]
        if len(args) != 2 or args[0] != "=" or len(body) != 1:
            return False
        path = f"{args[1]}/"
        wanted = ["301", f"{path}$is_args$args"]
        return body[0]["directive"] == "return" and body[0]["args"] == wanted and path in self.paths

    def listen(self, stmt: Stmt, listens: list[Stmt]) -> None:
        """Read the server's one listen: address, port, TLS."""
        fields = self.proposal.fields
        if not listens:
            self.unmapped(stmt["line"], "no_listen")
            return
        for extra in listens[1:]:
            self.unmapped(extra["line"], "listen", what=gettext("a second listen"))
        line, args = listens[0]["line"], listens[0]["args"]
        parsed, params = _listen(args[0]), set(args[1:])
        if parsed is None or params - {"ssl", "http2"} or params == {"http2"}:
            self.unmapped(line, "listen", what=_shown("listen " + " ".join(args)))
        if parsed is None:
            return
        address, port = parsed
        tls = "ssl" in params
        self.set_field("listen_address", address, line)
        self.set_field("tls", tls, line)
        self.set_field("https_port" if tls else "http_port", port, line)
        if tls:
            self.set_field("http2", "http2" in params or fields.get("http2", False), line)
        self.recognised(line, _shown("listen " + " ".join(args)))
        for name in ("ssl_certificate", "ssl_certificate_key"):
            if name in fields and not tls:
                self.unmapped(
                    self.proposal.field_lines.get(name, 0), "certificate_without_ssl", name=name
                )

    def redirect(self, stmt: Stmt) -> None:
        """Read a server that only redirects: the seed's HTTP -> HTTPS one gives the HTTP port.

        It may also serve certbot's challenge files (the console's ACME webroot); the redirect
        is then the answer of its ``location /``.
        """
        fields = self.proposal.fields
        shape = _redirect_shape(stmt)
        found, port, listen_line = None, None, stmt["line"]
        if shape is not None and fields.get("tls"):
            block, answer, acme = shape
            listen_line = block["listen"]["line"]
            listen = _listen(block["listen"]["args"][0])
            if listen is not None and len(block["listen"]["args"]) == 1:
                if listen[0] == fields.get("listen_address"):
                    port = listen[1]
            target = answer["args"]
            if len(target) == 2 and target[0] == "301":
                found = _REDIRECT.fullmatch(target[1])
            names = [_normal(n) for n in block["server_name"]["args"]]
            if found is not None and names != [fields.get("server_name")]:
                found = None
            if block.get("server_tokens", {}).get("args") == ["off"]:
                self.recognised(block["server_tokens"]["line"], "server_tokens off")
            if acme is not None:
                root = acme["block"][0]
                self.set_field("acme_webroot", root["args"][0], root["line"])
                self.recognised(
                    acme["line"],
                    gettext("%(location)s: the ACME webroot %(root)s")
                    % {"location": render.ACME_PREFIX, "root": _shown(root["args"][0])},
                )
        if found is not None and not found[1].startswith("$"):
            found = found if _normal(found[1]) == fields.get("server_name") else None
        if found is None or port is None or int(found[2] or 443) != fields.get("https_port"):
            self.unmapped(stmt["line"], "redirect")
            return
        self.set_field("http_port", port, listen_line)
        self.recognised(
            stmt["line"],
            gettext("server {} on port %(port)d: the HTTP -> HTTPS redirect") % {"port": port},
        )

    def client_address(self) -> None:
        """Read the realip lines: trusted proxies make the deployment behind_proxy."""
        if not self.realip:
            return
        statements = [s for lines in self.realip.values() for s in lines]
        froms = self.realip.get("set_real_ip_from", [])
        header = [s["args"] for s in self.realip.get("real_ip_header", [])]
        recursive = [s["args"] for s in self.realip.get("real_ip_recursive", [])]
        if not (froms and header == [["X-Forwarded-For"]] and recursive == [["on"]]):
            for stmt in statements:
                self.unmapped(stmt["line"], "realip", name=stmt["directive"])
            return
        cidrs = [" ".join(s["args"]) for s in froms]
        self.set_field("client_ip", "behind_proxy", froms[0]["line"])
        self.set_field("trusted_proxies", " ".join(cidrs), froms[0]["line"])
        for stmt in statements:
            self.recognised(
                stmt["line"],
                gettext("%(name)s: client address behind_proxy") % {"name": stmt["directive"]},
            )

    def limit(self, stmt: Stmt, loc: _Loc) -> None:
        """Read a location's limit_req: the console's own form gives the login rate limit."""
        found = _LIMIT.fullmatch(" ".join(stmt["args"]))
        rate = render.zone_rate(found[1]) if found else ""
        if found is None or not rate or not render.login_path(loc.match, loc.path):
            self.unmapped(stmt["line"], "limit_req", location=loc.label)
            return
        self.limits.append((stmt["line"], loc, rate, int(found[2])))

    def login_limits(self) -> None:
        """Set the login rate limit from the locations' limit_req lines (one rate for all)."""
        if not self.limits:
            return
        first_line, _loc, rate, burst = self.limits[0]
        for line, loc, other_rate, other_burst in self.limits:
            if (other_rate, other_burst) != (rate, burst):
                self.unmapped(line, "limit_req", location=loc.label)
            else:
                self.recognised(line, f"limit_req {rate} burst={burst}")
        self.set_field("limit_req_rate", rate, first_line)
        self.set_field("limit_req_burst", burst, first_line)
        limited = {loc.key for _line, loc, _rate, _burst in self.limits}
        if any(
            render.login_path(loc.match, loc.path) and loc.key not in limited
            for loc in self.locations
            if loc.target
        ):
            self.added(
                gettext("limit_req %(rate)s on every login path: the console limits them alike")
                % {"rate": rate}
            )

    def timeout(self, stmt: Stmt, *, in_location: bool = False) -> None:
        """Read a proxy timeout: the server's, or a location's that must equal it."""
        name, line = stmt["directive"], stmt["line"]
        seconds = _seconds(stmt["args"][0])
        if seconds is None:
            self.unmapped(line, "time", name=name)
        elif not in_location:
            self.set_field(name, seconds, line)
            self.recognised(line, f"{name} {seconds}s")
        elif seconds != self.proposal.fields.get(name, NGINX_DEFAULTS[name]):
            self.unmapped(line, "location_time", name=name)

    def header(self, stmt: Stmt, into: set[str]) -> None:
        """Add a proxy_set_header to into if it is one of the seed's, else report it."""
        name, value = stmt["args"]
        if name.lower() == "x-forwarded-for" and value == "$proxy_add_x_forwarded_for":
            self.appends_forwarded = True
        if f"{name.lower()} {value}" in _KNOWN_HEADERS:
            into.add(name.lower())
            if into is self.server_headers:
                self.recognised(stmt["line"], f"proxy_set_header {name} {value}")
        else:
            self.unknown(stmt)

    def resolver(self, stmt: Stmt) -> None:
        """Read the resolver's addresses."""
        addresses = [a.strip("[]") for a in stmt["args"] if "=" not in a]
        for param in (a.split("=", 1)[0] for a in stmt["args"] if "=" in a):
            if param not in ("valid", "ipv6"):
                self.unmapped(stmt["line"], "resolver", name=_shown(param))
        self.set_field("resolver", " ".join(addresses), stmt["line"])
        self.recognised(stmt["line"], gettext("resolver: its addresses (written with valid=10s)"))

    # --- locations ---------------------------------------------------------------------------

    def location(self, stmt: Stmt) -> None:
        """Read a location: how it matches, and where it proxies or redirects."""
        args, line = [_unescape(a) for a in stmt["args"]], stmt["line"]
        modifier, path = (args[0], args[1]) if len(args) == 2 else ("", args[0] if args else "")
        for prefix in ("^~", "~*", "=", "~"):
            if len(args) == 1 and path.startswith(prefix):
                modifier, path = prefix, path[len(prefix) :]
                break
        if self.slash_redirect(stmt):
            self.recognised(
                line,
                gettext("location = %(path)s: the 301 nginx adds for %(path)s/")
                % {"path": _shown(path)},
            )
            return
        if modifier not in _MODIFIERS or path.startswith("@"):
            self.unmapped(line, "location_kind", location=_shown(" ".join(["location", *args])))
            return
        loc = _Loc(line=line, match=_MODIFIERS[modifier], path=path, plain=modifier == "")
        try:
            if loc.match in (b.REGEX, b.REGEX_I):
                v.validate_location_regex(path)
            else:
                v.validate_location_path(path)
        except ValidationError as exc:
            self.unmapped(line, "location_path", location=loc.label, reason=" ".join(exc.messages))
            return
        if (loc.key, loc.plain) in self.seen:
            self.unmapped(line, "duplicate", location=loc.label)
            return
        self.seen.add((loc.key, loc.plain))
        local_vars: dict[str, str] = {}
        passes: list[Stmt] = []
        for inner in stmt["block"]:
            name, inner_args = inner["directive"], inner["args"]
            if name == "proxy_pass" and len(inner_args) == 1:
                passes.append(inner)
            elif name == "set" and len(inner_args) == 2 and inner_args[0].startswith("$"):
                local_vars[inner_args[0][1:]] = inner_args[1].lower()
            elif name == "proxy_set_header" and len(inner_args) == 2:
                self.header(inner, loc.headers)
            elif name in _TIMEOUTS and len(inner_args) == 1:
                self.timeout(inner, in_location=True)
            elif name == "limit_req":
                self.limit(inner, loc)
            elif (
                name == "return"
                and loc.key == (b.EXACT, "/")
                and inner_args == ["302", b.ROOT_REDIRECT_TARGET]
            ):
                loc.redirect = b.ROOT_REDIRECT_TARGET
            elif name == "return" and len(inner_args) == 1 and inner_args[0] in self.pages:
                handed = self.handoff(inner_args[0])
                if handed is None:
                    self.unknown(inner)
                    continue
                passes.append(handed[0])
                local_vars.update(handed[1])
            elif not (
                (name in _CONSOLE_WRITES and inner_args == _CONSOLE_WRITES[name])
                or (
                    name == "add_header"
                    and inner_args
                    and inner_args[0].lower().startswith(CONSOLE_HEADER_PREFIX)
                )
            ):
                self.unknown(inner)
        if loc.headers and len(loc.headers) != len(SEED_HEADERS):
            self.unmapped(line, "some_headers", location=loc.label)
        if len(passes) != (0 if loc.redirect else 1):
            self.unmapped(line, "one_proxy_pass", location=loc.label)
        elif loc.redirect or self.destination(loc, passes[0], local_vars):
            self.locations.append(loc)

    def destination(self, loc: _Loc, stmt: Stmt, local_vars: dict[str, str]) -> bool:
        """Set loc's address (host:port) from its proxy_pass; False when it cannot be mapped."""
        line = stmt["line"]
        found = re.fullmatch(r"http://([^/?#@]+)(.*)", stmt["args"][0], re.S)
        if found is None:
            self.unmapped(line, "proxy_pass")
            return False
        host, uri = found.groups()
        if uri:
            self.unmapped(line, "proxy_pass_uri", uri=_shown(uri))
            return False
        names: tuple[str, ...] = ()
        if host.startswith("$"):
            variable = host[1:].strip("{}")
            value = local_vars.get(variable, self.server_vars.get(variable))
            if value is None:
                self.unmapped(line, "variable", name=_shown(variable))
                return False
            names, host = (variable,), value
            if variable not in local_vars:
                self.used.add(f"${variable}")
        if host in self.upstreams:
            self.used.add(host)
            loc.address, loc.names = self.upstreams[host][0], (*names, host)
            return True
        if not re.search(r":\d+$", host):
            self.unmapped(line, "no_port", name=_shown(host))
            return False
        loc.address, loc.names = host.lower(), names
        return True


def _assign(reader: _Reader) -> dict[str, str]:
    """Return {address: target}: which proxied address is CPA and which CPAMP.

    A port (8317, 18317) or a name (cpa_api, cpamp, cli-proxy-api, cpa-manager-plus) tells;
    else the fallback `location /` goes to CPA, as in the seed.
    """
    names: dict[str, set[str]] = {}
    for loc in reader.locations:
        if loc.address:
            names.setdefault(loc.address, set()).update(loc.names)
    order = list(names)
    hints = {address: _hint(address, names[address]) for address in order}
    assigned: dict[str, str] = {}
    for target in (b.CPA, b.CPAMP):
        hinted = [a for a in order if hints[a] == target]
        if len(hinted) == 1:
            assigned[hinted[0]] = target
    rest = [a for a in order if a not in assigned]
    free = [t for t in (b.CPA, b.CPAMP) if t not in assigned.values()]
    fallback = next((loc.address for loc in reader.locations if loc.key == (b.PREFIX, "/")), "")
    if len(rest) == 1 and free:
        assigned[rest[0]] = free[0] if len(free) == 1 else (hints[rest[0]] or b.CPA)
    elif len(rest) == 2 and len(free) == 2 and fallback in rest:
        assigned[fallback] = b.CPA
        assigned[next(a for a in rest if a != fallback)] = b.CPAMP
    for address in order:
        if address not in assigned:
            line = next(loc.line for loc in reader.locations if loc.address == address)
            reader.unmapped(line, "which_upstream", address=_shown(address))
    for loc in reader.locations:
        loc.target = assigned.get(loc.address, "")
    return assigned


def _upstream_fields(reader: _Reader, assigned: dict[str, str]) -> None:
    """Set mode, cpa_upstream, cpamp_upstream and cpamp_cpa_url from the assigned addresses."""
    by_target = {target: address for address, target in assigned.items()}
    if not by_target and reader.proposal.mapped:
        reader.unmapped(0, "no_proxy")
    mode = "cpa_panel" if by_target and b.CPAMP not in by_target else "manager_server"
    reader.set_field("mode", mode)
    preset_name = "host" if by_target and _is_ip(next(iter(by_target.values()))) else "docker"
    for target, name in ((b.CPA, "cpa_upstream"), (b.CPAMP, "cpamp_upstream")):
        if target in by_target:
            line = next(loc.line for loc in reader.locations if loc.target == target)
            reader.set_field(name, by_target[target], line)
            reader.recognised(line, f"{TARGET_LABELS[target]}: {_shown(by_target[target])}")
        else:
            reader.set_field(name, PRESETS[preset_name][name])
            reader.added(
                gettext("%(field)s %(address)s: not in this file; the %(preset)s preset's")
                % {"field": name, "address": PRESETS[preset_name][name], "preset": preset_name}
            )
    cpa = reader.proposal.fields["cpa_upstream"]
    url = next((p["cpamp_cpa_url"] for p in PRESETS.values() if p["cpa_upstream"] == cpa), "")
    reader.set_field("cpamp_cpa_url", url or f"http://{cpa}")
    reader.recognised(
        0,
        gettext("mode %(mode)s; CPA URL for CPAMP's setup %(url)s (from the CPA upstream)")
        % {"mode": mode, "url": _shown(reader.proposal.fields["cpamp_cpa_url"])},
    )
    if "resolver" not in reader.proposal.fields and not all(map(_is_ip, by_target.values())):
        reader.added(
            gettext("resolver 127.0.0.11: host names resolved per request by Docker's DNS")
        )
    unused = gettext("%(name)s: not used")
    for name, (_address, line) in reader.upstreams.items():
        if name not in reader.used:
            reader.recognised(line, unused % {"name": _shown(f"upstream {name}")})
    for name, line in reader.server_sets.items():
        text = gettext("%(name)s: an upstream") if f"${name}" in reader.used else unused
        reader.recognised(line, text % {"name": _shown(f"set ${name}")})


def _builtin_target(route: b.Route, mode: str) -> str:
    """Return where the console sends a built-in route in mode."""
    return b.CPA if mode == "cpa_panel" or route is b.FALLBACK else route.target


def _routes(reader: _Reader) -> None:
    """Sort the locations into built-in routes and overrides; list the seed routes it lacks."""
    proposal, mode = reader.proposal, reader.proposal.fields["mode"]
    has_regex = any(loc.match in (b.REGEX, b.REGEX_I) for loc in reader.locations)
    keys = set()
    for loc in reader.locations:
        if loc.key == (b.PREFIX, "/") and has_regex and not loc.plain:
            reader.unmapped(loc.line, "caret_root")
            continue
        if loc.plain and loc.path != "/" and has_regex:
            reader.unmapped(loc.line, "plain_prefix", location=loc.label)
            continue
        keys.add(loc.key)
        if not (loc.redirect or loc.target):
            continue  # its upstream is reported as unmapped
        if loc.redirect:
            proposal.builtins.append(Finding(loc.line, f"{loc.label} -> 302 {loc.redirect}"))
            continue
        arrow = f"{loc.label} -> {TARGET_LABELS[loc.target]}"
        route = b.FALLBACK if loc.key == (b.PREFIX, "/") else b.BUILTIN_BY_KEY.get(loc.key)
        if route is not None and loc.target == _builtin_target(route, mode):
            proposal.builtins.append(Finding(loc.line, arrow))
            continue
        proposal.overrides.append(
            {
                "match": loc.match,
                "path": loc.path,
                "target": loc.target,
                "enabled": True,
                "position": len(proposal.overrides),
                "note": _shown(f"imported from {proposal.where(loc.line)}", 190),
            }
        )
        proposal.override_lines.append(loc.line)
    for route in (b.ROOT_REDIRECT, *b.BUILTIN_ROUTES, b.FALLBACK):
        if (route.match, route.path) in keys:
            continue
        to = (
            f"302 {b.ROOT_REDIRECT_TARGET}"
            if route is b.ROOT_REDIRECT
            else TARGET_LABELS[_builtin_target(route, mode)]
        )
        modifier = "" if route is b.FALLBACK else b.MODIFIERS[route.match] + " "
        reader.added(
            gettext("location %(location)s -> %(to)s: the seed's route, not in this file")
            % {"location": f"{modifier}{route.path}", "to": to}
        )


def _outcome(simulation: Simulation) -> str:
    """Return what a request ends in: the upstream that answers, or nginx's status."""
    if simulation.proxied:
        return TARGET_LABELS.get(simulation.upstream, simulation.upstream)
    return f"{simulation.status} {simulation.redirect}".strip()


def _samples(locations: Iterable[Location]) -> list[str]:
    """Return request paths that tell the locations apart: the seed's, then each location's."""
    paths = [p for route in b.BUILTIN_ROUTES for p in b.sample_paths(route)]
    paths += b.FALLBACK_SAMPLES
    for location in locations:
        stem = _literal_prefix(location.path) if location.is_regex else location.path
        if stem:
            paths += [stem, stem + "x", stem + "a/b", stem.rstrip("/") or "/"]
    return list(dict.fromkeys(p for p in paths if p.startswith("/")))


def _check_routing(reader: _Reader) -> None:
    """Record every sample path the proposal sends elsewhere than the file does."""
    proposal = reader.proposal
    original = [
        Location(
            loc.match,
            loc.path,
            loc.target,
            "redirect" if loc.redirect else "override",
            redirect=loc.redirect,
            plain=loc.plain,
            position=loc.line,
        )
        for loc in reader.locations
    ]
    keys = {(loc.match, loc.path) for loc in original}
    proposed = effective_locations(proposal.deployment(), proposal.route_overrides())
    before, after = Router(original), Router(proposed)
    reported: set[int] = set()
    for path in _samples([*original, *proposed]):
        try:
            was, now = before.simulate(path), after.simulate(path)
        except RegexTimeout as exc:
            reader.unmapped(0, "regex_timeout", reason=exc.message)
            return
        if _outcome(was) == _outcome(now):
            continue
        reached, owner = now.location, was.location
        # A path no location of the file claims (the fallback's, or none) may go to a seed route
        # the file lacked: the seed's fix. One the file routes on purpose may not.
        unclaimed = owner is None or (owner.match, owner.path) == (b.PREFIX, "/")
        if unclaimed and reached is not None and reached.origin != "override":
            if (reached.match, reached.path) not in keys:
                continue
        line = owner.position if owner is not None else 0
        if line not in reported:
            reported.add(line)
            reader.unmapped(
                line, "routing", path=_shown(path), was=_outcome(was), now=_outcome(now)
            )


def strip_comments(text: str) -> str:
    """Return text without its comments, every other character and line where it was.

    A # starts a comment only where a token would start, never inside quotes (as nginx and
    crossplane's lexer read it); what is left parses to the same statements on the same lines.
    """
    out: list[str] = []
    at_start, quote, i = True, "", 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            out.append(text[i : i + 2])
            i, at_start = i + 2, False
            continue
        if quote:
            quote, at_start = ("", True) if char == quote else (quote, False)
        elif at_start and char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif at_start and char in "\"'":
            quote = char
        else:
            at_start = char.isspace() or char in "{};"
        out.append(char)
        i += 1
    return "".join(out)


def _parse(text: str) -> tuple[list[Stmt], list[tuple[int, str]]]:
    """Return crossplane's statements of text, or its errors as (line, message)."""
    with tempfile.TemporaryDirectory(prefix="console-adopt-") as tmp:
        path = Path(tmp) / "site.conf"
        path.write_text(text, encoding="utf-8")
        payload = crossplane.parse(
            str(path), single=True, comments=False, check_ctx=False, catch_errors=True
        )
    errors = []
    for error in payload["errors"]:
        message = re.sub(r" in \S*:\d+$", "", str(error.get("error") or ""))
        if "recursion" in message:
            message = gettext("blocks are nested too deeply")
        errors.append((int(error.get("line") or 0), message or gettext("the file ends too early")))
    return payload["config"][0]["parsed"] if payload["config"] else [], errors


def propose(text: str, *, source: str = "site.conf") -> Proposal:
    """Return what the config text becomes as a deployment; never raises for bad content."""
    reader = _Reader(source)
    statements, errors = _parse(text)
    for line, message in errors:
        reader.unmapped(line, "syntax", error=_shown(message, 200))
    if errors:
        return _sorted(reader.proposal)
    reader.read(statements)
    main, redirects = reader.split_servers()
    if main is None:
        reader.unmapped(0, "no_server")
        return _sorted(reader.proposal)
    reader.server(main)
    reader.client_address()
    fields = reader.proposal.fields
    for server in redirects:
        reader.redirect(server)
    if "server_name" not in fields:
        reader.unmapped(main["line"], "no_server_name")
    if fields.get("tls") and "http_port" not in fields:
        reader.added(gettext("server {} on port 80: the HTTP -> HTTPS redirect"))
    for name, value in NGINX_DEFAULTS.items():
        if name not in fields:
            fields[name] = value
            reader.recognised(
                0,
                gettext("%(name)s not set: nginx's %(value)s kept")
                % {"name": name, "value": value},
            )
    for name, args in _CONSOLE_WRITES.items():
        if not any(f.text == f"{name} {args[0]}" for f in reader.proposal.recognised):
            reader.added(f"{name} {args[0]}")
    missing = {
        name
        for loc in reader.locations
        if loc.address
        for name, _value in SEED_HEADERS
        if name.lower() not in (loc.headers or reader.server_headers)
    }
    if missing:
        reader.added(
            gettext("proxy_set_header %(names)s: the seed's headers")
            % {"names": ", ".join(n for n, _value in SEED_HEADERS if n in missing)}
        )
    _upstream_fields(reader, _assign(reader))
    reader.login_limits()
    if reader.appends_forwarded and fields.get("client_ip", "edge") == "edge":
        reader.added(
            gettext(
                "proxy_set_header X-Forwarded-For $remote_addr: CPA sees the address nginx sees, "
                "never one a client wrote (client address edge)"
            )
        )
    _routes(reader)
    if reader.proposal.mapped:
        _check_routing(reader)
    return _sorted(reader.proposal)


def _sorted(proposal: Proposal) -> Proposal:
    """Return proposal with its findings in line order, at most MAX_FINDINGS of them unmapped."""
    for findings in (proposal.recognised, proposal.unmapped):
        findings.sort(key=lambda f: (f.line == 0, f.line))
    more = len(proposal.unmapped) - MAX_FINDINGS
    if more > 0:
        del proposal.unmapped[MAX_FINDINGS:]
        proposal.unmapped.append(Finding(0, str(UNMAPPED["more"]) % {"n": more}, "more"))
    return proposal
