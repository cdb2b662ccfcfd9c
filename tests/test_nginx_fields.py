"""Every field that reaches nginx is validated (issue 9, item 5).

- listen_address and resolver refuse IPv6 zone ids and every character nginx reads as syntax;
- the renderer's reads are recorded through a proxy: each model field it reads is listed here
  with the proof that it is validated, so a new field read without a validator fails;
- any combination of values that passes full_clean renders exactly the intended directives
  (parsed back with crossplane) and passes real ``nginx -t``;
- download, archive and the config page (copy) refuse a stored row that fails validation, with
  the field named, instead of handing out text.
"""

from __future__ import annotations

import io
import ipaddress
import os
import tarfile
import tempfile
from pathlib import Path

import crossplane
import pytest
from django.core import validators as django_validators
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.urls import reverse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from routes import validators as v
from routes.models import ConfigExport, Deployment, RouteOverride, Team
from routes.nginx import boundaries as b
from routes.nginx import export, render
from tests import nginx_routes

EXAMPLES = int(os.environ.get("CONSOLE_FUZZ_EXAMPLES", "40"))

# --- listen_address and resolver ------------------------------------------------------------

INJECTED_ADDRESSES = [
    "fe80::1%eth0",
    "[fe80::1%eth0]",
    "fe80::1%eth0;include",
    "fe80::1%1",
    "127.0.0.1;",
    "127.0.0.1 ssl",
    "127.0.0.1\n",
    "\t127.0.0.1",
    "127.0.0.1{",
    "127.0.0.1}",
    "127.0.0.1#",
    '"127.0.0.1"',
    "'::1'",
    "$server_addr",
    "127.0.0.1\\",
    "[1.2.3.4]",
    "[::1",
    "::1]",
    "[[::1]]",
    "::1]:80",
    "127.0.0.1:80",
    "localhost",
    "01.2.3.4",
]


@pytest.mark.parametrize("value", INJECTED_ADDRESSES)
def test_it_refuses_an_injected_listen_address(value):
    with pytest.raises(ValidationError):
        v.validate_listen_address(value)


@pytest.mark.parametrize("value", INJECTED_ADDRESSES)
def test_it_refuses_an_injected_resolver_alone_or_after_a_good_address(value):
    for candidate in (value, f"127.0.0.11 {value}"):
        if candidate.strip() == "127.0.0.11":
            continue
        with pytest.raises(ValidationError):
            v.validate_resolver(candidate)


def test_a_zone_id_is_refused_with_a_reason_that_says_so():
    for validator in (v.validate_listen_address, v.validate_resolver):
        with pytest.raises(ValidationError) as raised:
            validator("fe80::1%eth0")
        assert "zone id" in " ".join(raised.value.messages)


def test_a_syntax_character_is_named_in_the_refusal():
    with pytest.raises(ValidationError) as raised:
        v.validate_resolver("127.0.0.11 1.1.1.1;")
    assert "';'" in " ".join(raised.value.messages)


@pytest.mark.parametrize("value", ["", "127.0.0.1", "0.0.0.0", "::1", "[::1]", "::ffff:10.0.0.1"])
def test_it_accepts_a_plain_listen_address(value):
    v.validate_listen_address(value)


@pytest.mark.parametrize("value", ["127.0.0.11", "::1 127.0.0.11", "[::1] 8.8.8.8", " 1.1.1.1 "])
def test_it_accepts_plain_resolver_addresses(value):
    v.validate_resolver(value)


@given(st.ip_addresses())
def test_any_ip_address_is_accepted_in_both_fields(address):
    v.validate_listen_address(str(address))
    v.validate_resolver(str(address))
    if address.version == 6:
        v.validate_listen_address(f"[{address}]")


@pytest.mark.parametrize("field", ["listen_address", "resolver"])
@pytest.mark.parametrize("value", ["fe80::1%eth0", "127.0.0.1; include /etc/passwd"])
def test_the_renderer_refuses_an_injected_address_and_names_the_field(field, value):
    deployment = _deployment(**{field: value})
    with pytest.raises(render.InvalidDeployment) as raised:
        render.render_site(deployment, [])
    assert field in [name for name, _reason in raised.value.errors]


# --- What the renderer reads, and the proof that each is validated ---------------------------

TEAM = Team(name="Ops", slug="ops")


def _deployment(**fields) -> Deployment:
    values = {
        "slug": "prod",
        "name": "Production",
        "team": TEAM,
        "server_name": "api.example.com",
        **fields,
    }
    return Deployment(**values)


# Each field the renderer reads, how it is validated, and values that validation must refuse.
# "validator": a routes.validators function on the field; "clean": Model.clean checks it;
# "choices"/"bool"/"int": Django's own type and choices checks (plus a range in clean).
DEPLOYMENT_FIELDS = {
    "slug": ("validator", [django_validators.validate_slug], ["two words", "a;b", "x{", "$x"]),
    "mode": ("choices", [], ["everything", "manager_server;"]),
    "server_name": ("validator", [v.validate_server_name], ["a.b;", "a b", "$host", "a.b}"]),
    "tls": ("bool", [], ["1;", "yes please"]),
    "http2": ("bool", [], ["on;", "x"]),
    "route_tracing": ("bool", [], ["{", "maybe"]),
    "listen_address": ("validator", [v.validate_listen_address], ["fe80::1%eth0", "1.2.3.4;"]),
    "http_port": ("int", [], [0, 70000, "80;", "80 ssl"]),
    "https_port": ("int", [], [0, 65536, "443;"]),
    "ssl_certificate": ("validator", [v.validate_file_path], ["/a b", "/a;b", "rel/a.pem"]),
    "ssl_certificate_key": ("validator", [v.validate_file_path], ["/k}", "/$k", "/a/../k"]),
    "cpa_upstream": ("validator", [v.validate_upstream], ["a:1;", "a:1 b", "[::1%x]:1"]),
    "cpamp_upstream": ("validator", [v.validate_upstream], ["a", "a:99999", "$a:1"]),
    "resolver": ("validator", [v.validate_resolver], ["1.1.1.1;", "fe80::1%eth0", "x"]),
    "client_max_body_size": ("validator", [v.validate_size], ["64m;", "1 g", "64mb"]),
    "proxy_read_timeout": ("int", [], [0, 86401, "10s"]),
    "proxy_send_timeout": ("int", [], [0, 100000, "5;"]),
    "client_ip": ("choices", [], ["cdn", "edge;"]),
    "trusted_proxies": (
        "validator",
        [v.validate_trusted_proxies],
        ["10.0.0.0/8;", "0.0.0.0/0", "10.0.0.1/8", "$remote_addr", "fe80::/10%eth0"],
    ),
    "limit_req_rate": ("validator", [v.validate_rate], ["5r/s;", "0r/s", "5r/h", "5 r/s"]),
    "limit_req_burst": ("int", [], [0, 1001, "20 nodelay"]),
    "acme_webroot": ("validator", [v.validate_file_path], ["/a b", "/w;root /", "rel/dir"]),
}
OVERRIDE_FIELDS = {
    "match": ("choices", [], ["bogus", "regex;"]),
    "path": ("clean", [], ["/a;b", "/a b", "^/(a+)+$", "/x{", "nope"]),
    "target": ("choices", [], ["nginx", "cpa;"]),
    "enabled": ("bool", [], ["1;", "x"]),
    "position": ("int", [], [-1, "1;"]),
}
# Read by the renderer but never written into the config: proved by rendering hostile values.
OVERRIDE_NOT_WRITTEN = {"note": ["} server { listen 1; #", "include /etc/passwd;"]}
# The primary key: an integer the database assigns, used to find the override again.
OVERRIDE_IDENTITY = {"id"}


class _Manager:
    def __init__(self, rows):
        self.rows = rows

    def all(self):
        return list(self.rows)


class Recording:
    """Stands in for a model instance and records the name of every attribute read from it."""

    def __init__(self, target, reads: set[str], overrides=None):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name):
        if name == "overrides" and self._overrides is not None:
            return _Manager(self._overrides)
        self._reads.add(name)
        return getattr(self._target, name)


def _field_names(model) -> dict[str, str]:
    names = {"pk": model._meta.pk.name}
    for field in model._meta.concrete_fields:
        names[field.name] = field.name
        names[field.attname] = field.name
    return names


def _variants():
    """Return deployments and overrides that take every branch of the renderer."""
    ip_upstreams = {"cpa_upstream": "127.0.0.1:8317", "cpamp_upstream": "[::1]:18317"}
    tls = {"tls": True, "ssl_certificate": "/c.pem", "ssl_certificate_key": "/k.pem"}
    edge = {"client_ip": "behind_proxy", "trusted_proxies": "10.0.0.0/8", "limit_req_rate": "5r/s"}
    deployments = [
        _deployment(),
        _deployment(**ip_upstreams, **tls, listen_address="::1", route_tracing=False),
        _deployment(**tls, **edge, http2=False, mode="cpa_panel", https_port=8443),
        _deployment(**tls, acme_webroot="/var/www/certbot"),
    ]
    overrides = [
        RouteOverride(pk=1, match="exact", path="/x", target="cpamp", note="n"),
        RouteOverride(pk=2, match="prefix", path="/v1/", target="cpamp", position=1),
        RouteOverride(pk=3, match="regex", path="^/v2/.+", target="cpa", position=2),
        RouteOverride(pk=4, match="regex_i", path="\\.png$", target="cpamp", position=3),
        RouteOverride(pk=5, match="prefix", path="/", target="cpamp", position=4),
        RouteOverride(pk=6, match="exact", path="/", target="cpa", position=5),
        RouteOverride(pk=7, match="prefix", path="/off/", target="cpa", enabled=False),
    ]
    return deployments, overrides


def _recorded_reads() -> tuple[set[str], set[str]]:
    deployment_reads: set[str] = set()
    override_reads: set[str] = set()
    deployments, overrides = _variants()
    for deployment in deployments:
        rows = [Recording(o, override_reads) for o in overrides]
        # render_files is what download, archive, the config page and export_nginx call.
        export.render_files([Recording(deployment, deployment_reads, overrides=rows)])
    deployment_names, override_names = _field_names(Deployment), _field_names(RouteOverride)
    return (
        {deployment_names[n] for n in deployment_reads if n in deployment_names},
        {override_names[n] for n in override_reads if n in override_names},
    )


def test_the_renderer_reads_exactly_the_fields_listed_with_their_proof():
    deployment_reads, override_reads = _recorded_reads()
    assert deployment_reads == set(DEPLOYMENT_FIELDS), (
        "a field read by the renderer must be listed in DEPLOYMENT_FIELDS with its validator"
    )
    assert override_reads == set(OVERRIDE_FIELDS) | set(OVERRIDE_NOT_WRITTEN) | OVERRIDE_IDENTITY


def _proofs():
    for name, (kind, validators, bad) in DEPLOYMENT_FIELDS.items():
        yield Deployment, name, kind, validators, bad
    for name, (kind, validators, bad) in OVERRIDE_FIELDS.items():
        yield RouteOverride, name, kind, validators, bad


@pytest.mark.parametrize(
    ("model", "name", "kind", "expected"),
    [pytest.param(m, n, k, e, id=f"{m.__name__}.{n}") for m, n, k, e, _bad in _proofs()],
)
def test_each_field_the_renderer_reads_has_the_validation_listed(model, name, kind, expected):
    field = model._meta.get_field(name)
    if kind == "validator":
        assert all(validator in field.validators for validator in expected)
    elif kind == "choices":
        assert field.choices
    elif kind == "bool":
        assert isinstance(field, models.BooleanField)
    elif kind == "int":
        assert isinstance(field, models.IntegerField)
    else:
        assert kind == "clean" and model.clean is not models.Model.clean


@pytest.mark.parametrize(
    ("model", "name", "value"),
    [
        pytest.param(m, n, value, id=f"{m.__name__}.{n}={value!r}")
        for m, n, _k, _e, bad in _proofs()
        for value in bad
    ],
)
def test_full_clean_and_the_renderer_refuse_each_bad_value_by_field(model, name, value):
    deployment = _deployment()
    override = RouteOverride(deployment=deployment, match="prefix", path="/config", target="cpa")
    target = deployment if model is Deployment else override
    if name == "path" and isinstance(value, str) and value.startswith("^"):
        override.match = "regex"
    setattr(target, name, value)
    with pytest.raises(ValidationError) as raised:
        target.clean_fields(exclude=["team", "deployment"])
        target.clean()
    assert name in raised.value.error_dict
    if model is RouteOverride and name == "enabled":
        return  # a non-boolean "enabled" is not even an override the renderer would pick
    with pytest.raises(render.InvalidDeployment) as rendered:
        render.render_site(deployment, [override])
    assert any(name in field for field, _reason in rendered.value.errors), rendered.value.errors


@pytest.mark.parametrize("note", OVERRIDE_NOT_WRITTEN["note"])
def test_an_override_note_is_read_but_never_written_into_the_config(note):
    override = RouteOverride(match="prefix", path="/config", target="cpamp", note=note)
    text = render.render_site(_deployment(), [override])
    assert note not in text and "location ^~ /config {" in text


# --- Any accepted value renders exactly the intended directives and passes nginx -t -----------

HOSTILE = st.sampled_from(
    [
        "",
        ";",
        "{",
        "}",
        "#",
        '"',
        "'",
        "\\",
        "\n",
        " ",
        "$host",
        "fe80::1%eth0",
        "[fe80::1%eth0]",
        "1.2.3.4;include /etc/passwd",
        "} server { listen 1;",
        "例子",
    ]
)


def mostly(valid, hostile=HOSTILE):
    """Valid values 15 times in 16: with a dozen fields, about half the deployments pass."""
    return st.sampled_from([False] * 15 + [True]).flatmap(lambda bad: hostile if bad else valid)


def numbers(low: int, high: int, *common: int):
    """Integers in [low, high], often the common ones, sometimes just outside the range."""
    return mostly(
        st.one_of(st.sampled_from(common), st.integers(low, high)),
        st.sampled_from([low - 1, high + 1, -(2**31)]),
    )


_IPV6 = st.ip_addresses(v=6).map(str)
_ADDRESS = st.one_of(st.ip_addresses(v=4).map(str), _IPV6, _IPV6.map(lambda a: f"[{a}]"))
_UPSTREAM = st.one_of(
    st.sampled_from(["cli-proxy-api:8317", "cpa-manager-plus:18317", "cpa:1", "a-b.c:65535"]),
    st.tuples(st.ip_addresses(v=4), st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(_IPV6, st.integers(1, 65535)).map(lambda t: f"[{t[0]}]:{t[1]}"),
)
_PATHS = st.sampled_from(
    ["/config", "/v1/", "/v0/management/", "/healthz", "/a-b_c.d/", "/", "/management.html"]
)
_REGEXES = st.sampled_from(
    ["^/v2/.+", "\\.(png|css)$", "^/x{1,3}/[a-z]+$", "(?i)^/auth", "^/(?<v>v[0-9])/\\k<v>$"]
)


@st.composite
def overrides(draw):
    rows = []
    keys = set()
    for _ in range(draw(st.integers(0, 4))):
        match = draw(mostly(st.sampled_from(["exact", "prefix", "regex", "regex_i"])))
        path = draw(mostly(_REGEXES if match in ("regex", "regex_i") else _PATHS))
        if (match, path) in keys:
            continue
        keys.add((match, path))
        rows.append(
            RouteOverride(
                match=match,
                path=path,
                target=draw(mostly(st.sampled_from(["cpa", "cpamp"]))),
                enabled=draw(st.booleans()),
                position=draw(st.integers(0, 5)),
                note=draw(st.one_of(st.just(""), HOSTILE)),
            )
        )
    return rows


@st.composite
def deployments(draw):
    tls = draw(st.booleans())
    return Deployment(
        slug=draw(mostly(st.sampled_from(["prod", "a-b", "x_1", "Z9"]))),
        name="Fuzz",
        mode=draw(mostly(st.sampled_from(["manager_server", "cpa_panel"]))),
        server_name=draw(
            mostly(st.sampled_from(["api.example.com", "*.example.com", "a-b.c", "x" * 60 + ".io"]))
        ),
        tls=tls,
        http2=draw(st.booleans()),
        listen_address=draw(mostly(st.one_of(st.just(""), _ADDRESS))),
        http_port=draw(numbers(1, 65535, 80, 8080)),
        https_port=draw(numbers(1, 65535, 443, 8443)),
        ssl_certificate=draw(mostly(st.sampled_from(["/etc/ssl/f.pem", "/c/fullchain.pem"])))
        if tls
        else "",
        ssl_certificate_key=draw(mostly(st.sampled_from(["/etc/ssl/f.key", "/c/privkey.pem"])))
        if tls
        else "",
        cpa_upstream=draw(mostly(_UPSTREAM)),
        cpamp_upstream=draw(mostly(_UPSTREAM)),
        cpamp_cpa_url="http://127.0.0.1:8317",
        resolver=draw(mostly(st.lists(_ADDRESS, min_size=1, max_size=3).map(" ".join))),
        client_max_body_size=draw(mostly(st.sampled_from(["64m", "1g", "100", "512k"]))),
        proxy_read_timeout=draw(numbers(1, 86400, 3600)),
        proxy_send_timeout=draw(numbers(1, 86400, 3600)),
        route_tracing=draw(st.booleans()),
        client_ip=draw(mostly(st.sampled_from(["edge", "behind_proxy"]))),
        trusted_proxies=draw(
            mostly(st.sampled_from(["", "10.0.0.0/8", "127.0.0.1 2001:db8::/32"]))
        ),
        limit_req_rate=draw(mostly(st.sampled_from(["", "5r/s", "300r/m"]))),
        limit_req_burst=draw(numbers(1, 1000, 20)),
        acme_webroot=draw(mostly(st.sampled_from(["", "/var/www/certbot"]))),
    )


def _ip(text: str):
    return ipaddress.ip_address(text.strip("[]"))


def _listen_target(arg: str) -> tuple[str, int]:
    if arg.isdigit():
        return "", int(arg)
    host, port = arg.rsplit(":", 1)
    return host, int(port)


def _expected_locations(deployment, rows) -> dict[tuple[str, str], str]:
    """Return {(modifier, path): target or "302"}: the seed's table with the overrides applied."""
    panel = deployment.mode == "cpa_panel"
    expected = {("=", "/"): "302", ("", "/"): b.CPA}
    for route in b.BUILTIN_ROUTES:
        expected[(b.MODIFIERS[route.match], route.path)] = b.CPA if panel else route.target
    for row in rows:
        if not row.enabled:
            continue
        if (row.match, row.path) == (b.PREFIX, "/"):
            expected[("", "/")] = row.target
        else:
            expected[(b.MODIFIERS[row.match], row.path)] = row.target
    return expected


def _upstream_of(deployment, target: str) -> str:
    return deployment.cpa_upstream if target == b.CPA else deployment.cpamp_upstream


def _parse(text: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.conf"
        path.write_text(text)
        parsed = crossplane.parse(str(path), single=True, comments=False, check_ctx=False)
    assert parsed["status"] == "ok", parsed["errors"]
    return parsed["config"][0]["parsed"]


def _args(block: list[dict], name: str) -> list[list[str]]:
    return [d["args"] for d in block if d["directive"] == name]


def assert_exactly_intended(deployment, rows) -> None:
    """Parse the rendered site back and compare every directive with what the fields ask for."""
    text = render.render_site(deployment, rows)
    top = _parse(text)
    expected_locations = _expected_locations(deployment, rows)
    targets = {t for t in expected_locations.values() if t != "302"}
    by_name = {t: render.resolves_at_request_time(_upstream_of(deployment, t)) for t in targets}

    # Nothing nginx-wide: no upstream blocks, only servers.
    assert [d["directive"] for d in top] == ["server"] * (2 if deployment.tls else 1)
    servers = top
    main = servers[0]["block"]

    # listen: the stored address (the same IP, v6 bracketed) and the right port and flags.
    ((listen, *flags),) = _args(main, "listen")
    host, port = _listen_target(listen)
    assert port == (deployment.https_port if deployment.tls else deployment.http_port)
    if deployment.listen_address:
        assert host.startswith("[") == (_ip(deployment.listen_address).version == 6)
        assert _ip(host) == _ip(deployment.listen_address)
    else:
        assert host == ""
    wanted_flags = (["ssl", "http2"] if deployment.http2 else ["ssl"]) if deployment.tls else []
    assert flags == wanted_flags
    assert _args(main, "server_name") == [[deployment.server_name]]
    assert _args(main, "server_tokens") == [["off"]]
    if deployment.tls:
        assert _args(main, "ssl_certificate") == [[deployment.ssl_certificate]]
        assert _args(main, "ssl_certificate_key") == [[deployment.ssl_certificate_key]]
        for name, value in render.TLS_SETTINGS:
            assert _args(main, name) == [value.split()]
    assert _args(main, "client_max_body_size") == [[deployment.client_max_body_size]]
    assert _args(main, "proxy_read_timeout") == [[f"{deployment.proxy_read_timeout}s"]]
    assert _args(main, "proxy_send_timeout") == [[f"{deployment.proxy_send_timeout}s"]]
    assert _args(main, "proxy_http_version") == [["1.1"]]
    assert _args(main, "proxy_buffering") == [["off"]]
    assert _args(main, "proxy_set_header") == [list(pair) for pair in render.HEADER_SET]
    assert _args(main, "add_header") == (
        [["X-Console-Upstream", "$console_upstream", "always"],
         ["X-Console-Config", render.config_hash(text), "always"]]
        if deployment.route_tracing
        else []
    )  # fmt: skip
    if deployment.client_ip == "behind_proxy":
        assert _args(main, "set_real_ip_from") == [
            [cidr] for cidr in v.trusted_proxies(deployment.trusted_proxies)
        ]
        assert _args(main, "real_ip_header") == [["X-Forwarded-For"]]
        assert _args(main, "real_ip_recursive") == [["on"]]
    else:
        assert _args(main, "set_real_ip_from") == []
    # The upstream addresses are set once per server, as variables named alike everywhere.
    assert _args(main, "set") == [
        [f"${render.variable_name(t)}", _upstream_of(deployment, t)] for t in sorted(targets)
    ]
    resolvers = _args(main, "resolver")
    if any(by_name.values()):
        ((*addresses, valid, ipv6),) = resolvers
        assert (valid, ipv6) == ("valid=10s", "ipv6=off")
        wanted = deployment.resolver.split()
        assert [_ip(a) for a in addresses] == [_ip(a) for a in wanted]
        assert all(a.startswith("[") == (_ip(a).version == 6) for a in addresses)
    else:
        assert resolvers == []
    limit = (
        [f"zone={render.limit_zone(deployment.limit_req_rate)}",
         f"burst={deployment.limit_req_burst}", "nodelay"]
        if deployment.limit_req_rate
        else None
    )  # fmt: skip
    assert _args(main, "limit_req_status") == ([["429"]] if limit else [])

    seen = {}
    for modifier, where, body in nginx_routes.routes(main):
        if modifier in ("~", "~*"):
            where = where.replace("\\\\", "\\")
        if body[0][0] == "return":
            assert body == [("return", ["302", b.ROOT_REDIRECT_TARGET])]
            seen[(modifier, where)] = "302"
            continue
        (pass_args,) = dict(body)["proxy_pass"]
        target = {f"http://${render.variable_name(t)}": t for t in b.TARGETS}[pass_args]
        match = {"=": b.EXACT, "^~": b.PREFIX, "": b.PREFIX}.get(modifier, b.REGEX)
        if limit and render.login_path(match, where):
            assert body == [("limit_req", limit), ("proxy_pass", [pass_args])]
        else:
            # A location carries only what differs from its server: where it proxies to.
            assert body == [("proxy_pass", [pass_args])]
        seen[(modifier, where)] = target
    assert seen == expected_locations
    assert set(d["directive"] for d in main) <= {
        "listen",
        "server_name",
        "server_tokens",
        "ssl_certificate",
        "ssl_certificate_key",
        *(name for name, _value in render.TLS_SETTINGS),
        "set_real_ip_from",
        "real_ip_header",
        "real_ip_recursive",
        "client_max_body_size",
        "proxy_http_version",
        "proxy_read_timeout",
        "proxy_send_timeout",
        "proxy_buffering",
        "proxy_set_header",
        "add_header",
        "limit_req_status",
        "error_page",
        "resolver",
        "set",
        "location",
    }
    if deployment.tls:
        redirect = [(d["directive"], d["args"]) for d in servers[1]["block"]]
        port = "" if deployment.https_port == 443 else f":{deployment.https_port}"
        to_https = ("return", ["301", f"https://$host{port}$request_uri"])
        assert redirect[1:3] == [
            ("server_name", [deployment.server_name]),
            ("server_tokens", ["off"]),
        ]
        if deployment.acme_webroot:
            acme, rest = (d for d in servers[1]["block"] if d["directive"] == "location")
            assert acme["args"] == ["^~", render.ACME_PREFIX]
            assert [(d["directive"], d["args"]) for d in acme["block"]] == [
                ("root", [deployment.acme_webroot])
            ]
            assert rest["args"] == ["/"]
            assert [(d["directive"], d["args"]) for d in rest["block"]] == [to_https]
        else:
            assert redirect[3:] == [to_https]
        assert redirect[0][0] == "listen"
        assert _listen_target(redirect[0][1][0])[1] == deployment.http_port
    files = {render.site_filename(deployment): text}
    files[render.COMMON_FILENAME] = render.render_common(
        [deployment.server_name], sites=[text], default_server=True
    )
    check = export.check_files(files)
    assert check.ok, check.output + "\n\n" + text


def _accepted(deployment, rows) -> bool:
    try:
        deployment.full_clean()
        for row in rows:
            row.full_clean(exclude=["deployment"])
    except ValidationError as exc:
        assert all(name for name in exc.error_dict), exc
        return False
    return True


@pytest.mark.nginx
class AcceptedValuesRenderExactlyTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.team = Team.objects.create(name="Ops", slug="ops")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(deployment=deployments(), rows=overrides())
    def test_any_accepted_value_renders_exactly_the_intended_directives(self, deployment, rows):
        deployment.team = self.team
        for row in rows:
            row.deployment = deployment
        if not _accepted(deployment, rows):
            event("refused by full_clean")
            enabled = [row for row in rows if row.enabled]
            try:
                render.validate_deployment(deployment, enabled)
            except render.InvalidDeployment as exc:
                assert exc.errors and all(field and reason for field, reason in exc.errors)
                return
            # Only a disabled override was refused: it is never rendered.
            assert any(not row.enabled for row in rows)
            return
        event("accepted")
        assert_exactly_intended(deployment, rows)
        sid = transaction.savepoint()
        try:
            # The same values stored and loaded back render the same text.
            deployment.save()
            for row in rows:
                row.deployment = deployment
                row.save()
            stored = Deployment.objects.prefetch_related("overrides").get(pk=deployment.pk)
            assert render.render_site(stored) == render.render_site(deployment, rows)
        finally:
            transaction.savepoint_rollback(sid)


def test_the_budget_is_shared_with_the_fuzz_targets():
    assert 1 <= EXAMPLES <= 500


# --- Download, archive and copy hand out only validated configs -------------------------------

STORED_BAD = [
    ("server_name", {"server_name": "api.example.com;include /etc/passwd"}),
    ("slug", {"slug": "pr od"}),
    ("listen_address", {"listen_address": "fe80::1%eth0"}),
    ("resolver", {"resolver": "127.0.0.11;include /etc/passwd"}),
    ("cpa_upstream", {"cpa_upstream": "cli-proxy-api:8317;"}),
    ("client_max_body_size", {"client_max_body_size": "64m;"}),
    ("proxy_read_timeout", {"proxy_read_timeout": 0}),
    (
        "ssl_certificate",
        {"tls": True, "ssl_certificate": "/a b.pem", "ssl_certificate_key": "/k.pem"},
    ),
]


def _messages(response) -> str:
    return " ".join(str(m) for m in response.wsgi_request._messages)


def _assert_refused_everywhere(client, deployment, field: str) -> None:
    download = reverse("admin:routes_deployment_config_download", args=[deployment.pk])
    for query in ({}, {"file": "common"}):
        response = client.get(download, query)
        assert response.status_code == 302, query
        assert "attachment" not in response.get("Content-Disposition", "")
        assert field in _messages(response)
    posted = client.post(download)
    assert posted.status_code == 302 and field in _messages(posted)
    archive = client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": "download_archive", "_selected_action": [deployment.pk]},
    )
    assert archive.get("Content-Type") != "application/gzip"
    assert field in _messages(archive)
    page = client.get(reverse("admin:routes_deployment_config", args=[deployment.pk]))
    content = page.content.decode()
    assert page.status_code == 200
    assert "cannot be rendered" in content and f"<code>{field}" in content
    # Nothing to copy: no config text on the page.
    assert 'id="site-config"' not in content and "server {" not in content
    assert not ConfigExport.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("field", "stored"), STORED_BAD, ids=[f for f, _s in STORED_BAD])
def test_a_stored_row_that_fails_validation_is_never_handed_out(
    client, operator, deployment, field, stored
):
    # update() skips every validator, like raw SQL or data from an older version.
    Deployment.objects.filter(pk=deployment.pk).update(**stored)
    deployment.refresh_from_db()
    with pytest.raises(ValidationError) as raised:
        deployment.full_clean()
    assert field in raised.value.error_dict
    client.force_login(operator)
    _assert_refused_everywhere(client, deployment, field)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("match", "path"), [("prefix", "/x;include /etc/passwd"), ("regex", "^/(a+)+$")]
)
def test_a_stored_override_that_fails_validation_is_never_handed_out(
    client, operator, deployment, match, path
):
    row = RouteOverride.objects.create(
        deployment=deployment, match=match, path="/config" if match == "prefix" else "^/x"
    )
    RouteOverride.objects.filter(pk=row.pk).update(path=path)
    client.force_login(operator)
    _assert_refused_everywhere(client, deployment, f"overrides[{match} {path}].path")


@pytest.mark.django_db
def test_a_valid_row_is_still_handed_out(client, operator, deployment):
    client.force_login(operator)
    download = reverse("admin:routes_deployment_config_download", args=[deployment.pk])
    response = client.get(download)
    assert response.status_code == 200
    assert "server_name api.example.com;" in response.content.decode()
    assert client.get(download, {"file": "common"}).status_code == 200
    archive = client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": "download_archive", "_selected_action": [deployment.pk]},
    )
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert "conf.d/prod.conf" in tar.getnames()
