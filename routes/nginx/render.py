"""Render a stored deployment into the seed's nginx site config: pure and byte-for-byte stable.

The text is built as data (lists of lines), never from a template with autoescape, and every value
that reaches it has passed the model's validators (routes/validators.py) first: an invalid
deployment raises InvalidDeployment before a single line is produced.
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
UPSTREAM_PREFIX = "console_"
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

HEADER_SET = (
    ("Host", "$host"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ("X-Forwarded-Proto", "$scheme"),
    ("Upgrade", "$http_upgrade"),
    ("Connection", "$connection_upgrade"),
)
_HEADER_LINES = tuple(f"        proxy_set_header {name:<17} {value};" for name, value in HEADER_SET)
# The config hash cannot cover the lines that carry it: they are left out of what is hashed.
_CONFIG_LINE = re.compile(rf"^[ \t]*add_header[ \t]+{CONFIG_HEADER}[ \t][^\n]*(?:\n|$)", re.M)
_HASH_PLACEHOLDER = "@console-config-hash@"


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


def upstream_name(deployment: Deployment, target: str) -> str:
    """Return the upstream block name, unique per deployment and target."""
    # Slugs are [-a-zA-Z0-9_]; keeping them verbatim keeps names injective across deployments.
    return f"{UPSTREAM_PREFIX}{deployment.slug}_{target}"


def variable_name(deployment: Deployment, target: str) -> str:
    """Return the nginx variable that holds a host-name upstream (letters, digits, _ only)."""
    return f"{UPSTREAM_PREFIX}{deployment.slug.replace('-', '_')}_{target}"


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


def _proxy_block(deployment: Deployment, target: str, vars_: dict[str, str]) -> list[str]:
    """Return the body of a location proxied to target (the same for all of a deployment's)."""
    out = []
    if target in vars_:
        out.append(f"        set ${vars_[target]} {upstream_address(deployment, target)};")
        out.append(f"        proxy_pass http://${vars_[target]};")
    else:
        out.append(f"        proxy_pass http://{upstream_name(deployment, target)};")
    out.extend(_HEADER_LINES)
    if deployment.route_tracing:
        out.append(f"        add_header {TRACE_HEADER} {target} always;")
        out.append(f"        add_header {CONFIG_HEADER} {_HASH_PLACEHOLDER} always;")
    return out


def config_hash(text: str) -> str:
    """Return the SHA-256 of a site file with its ``add_header X-Console-Config`` lines left out.

    The same as ``grep -v 'add_header X-Console-Config' prod.conf | sha256sum``: the hash a
    rendered file carries in X-Console-Config is the hash of the rest of that file, so it can be
    checked from the file alone, and a file written before the header existed has one too.
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


def _locations(
    out: list[str], deployment: Deployment, locations: list[Location], vars_: dict[str, str]
) -> None:
    section = ""
    blocks: dict[str, list[str]] = {}
    for location in locations:
        if location.section and location.section != section:
            out.append(f"    {location.section}")
            out.append("")
            section = location.section
        if location.note:
            out.extend(_comment(location.note))
        if location.origin == "override":
            if location.replaces is not None:
                out.append("    # Override: replaces the built-in route above.")
            else:
                out.append(f"    # Override (position {location.position}).")
        out.append(f"    location {location.header()} {{")
        if location.redirect:
            out.append(f"        return 302 {location.redirect};")
        else:
            if location.target not in blocks:
                blocks[location.target] = _proxy_block(deployment, location.target, vars_)
            out.extend(blocks[location.target])
        out.append("    }")
        out.append("")


def _server_body(
    out: list[str], deployment: Deployment, locations: list[Location], vars_: dict[str, str]
) -> None:
    out.append(f"    client_max_body_size {deployment.client_max_body_size};")
    out.append("")
    out.append("    proxy_http_version 1.1;")
    out.append(f"    proxy_read_timeout {deployment.proxy_read_timeout}s;")
    out.append(f"    proxy_send_timeout {deployment.proxy_send_timeout}s;")
    out.append("    proxy_buffering off;")
    out.append("")
    if vars_:
        out.append("    # Upstream host names are resolved when a request arrives, not when nginx")
        out.append("    # starts, so nginx starts (and answers 502) while a container is down.")
        out.append(f"    resolver {_resolver(deployment.resolver)} valid=10s ipv6=off;")
        out.append("")
    out.append("    # Each location repeats the full proxy_set_header set (and add_header): one")
    out.append("    # proxy_set_header or add_header inside a location drops every inherited one.")
    out.append("")
    _locations(out, deployment, locations, vars_)


def render_site(deployment: Deployment, overrides: Sequence[RouteOverride] | None = None) -> str:
    """Return the site config of the deployment; raise InvalidDeployment before rendering."""
    overrides = chosen_overrides(deployment, overrides)
    validate_deployment(deployment, overrides)
    locations = effective_locations(deployment, overrides)
    targets = sorted({loc.target for loc in locations if loc.target})
    vars_ = {
        t: variable_name(deployment, t)
        for t in targets
        if resolves_at_request_time(upstream_address(deployment, t))
    }
    out = [
        f"# CPA gateway console: nginx site of deployment {deployment.slug} "
        f"(mode {deployment.mode}).",
        "# Generated file: the next export overwrites edits. Include it inside http {} next to",
        f"# {COMMON_FILENAME}, which defines $connection_upgrade.",
        "",
    ]
    for target in targets:
        if target in vars_:
            continue
        out.append(f"upstream {upstream_name(deployment, target)} {{")
        out.append(f"    server {upstream_address(deployment, target)};")
        out.append("}")
        out.append("")
    out.append("server {")
    if deployment.tls:
        http2 = " http2" if deployment.http2 else ""
        out.append(
            f"    listen {_listen(deployment.listen_address, deployment.https_port)} ssl{http2};"
        )
        out.append(f"    server_name {deployment.server_name};")
        out.append("")
        out.append(f"    ssl_certificate     {deployment.ssl_certificate};")
        out.append(f"    ssl_certificate_key {deployment.ssl_certificate_key};")
    else:
        out.append(f"    listen {_listen(deployment.listen_address, deployment.http_port)};")
        out.append(f"    server_name {deployment.server_name};")
    out.append("")
    _server_body(out, deployment, locations, vars_)
    if out[-1] == "":
        out.pop()
    out.append("}")
    if deployment.tls:
        port = "" if deployment.https_port == 443 else f":{deployment.https_port}"
        out.append("")
        out.append("server {")
        out.append(f"    listen {_listen(deployment.listen_address, deployment.http_port)};")
        out.append(f"    server_name {deployment.server_name};")
        out.append(f"    return 301 https://$host{port}$request_uri;")
        out.append("}")
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


def render_common(server_names: Iterable[str] = ()) -> str:
    """Return the shared file: the seed's map block, once per export directory."""
    out = [
        "# CPA gateway console: shared by every site file in this directory (include inside",
        "# http {}). Remove the seed's own map $http_upgrade block from nginx.conf if it is there:",
        "# nginx refuses a variable defined twice.",
        "map $http_upgrade $connection_upgrade {",
        "    default upgrade;",
        "    ''      close;",
        "}",
    ]
    bucket = _bucket_size(server_names)
    if bucket:
        out += [
            "",
            "# A server name is too long for nginx's default hash bucket (64 bytes); without",
            "# this nginx refuses to start. Remove any other server_names_hash_bucket_size line.",
            f"server_names_hash_bucket_size {bucket};",
        ]
    return "\n".join(out) + "\n"
