"""The renderer: golden files of the seed's variants, real `nginx -t`, refusal of invalid input."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from pathlib import Path

import crossplane
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routes.models import HOST_PRESET, Deployment, RouteOverride, Team
from routes.nginx import sandbox
from routes.nginx.export import check_files, self_signed_certificate
from routes.nginx.render import (
    COMMON_FILENAME,
    InvalidDeployment,
    config_hash,
    render_common,
    render_site,
    site_filename,
)
from tests import nginx_routes

GOLDEN = Path(__file__).parent / "data" / "golden"
TEAM = Team(pk=1, name="Ops", slug="ops")
HEADERS = [
    ["Host", "$host"],
    ["X-Real-IP", "$remote_addr"],
    # Not the seed's $proxy_add_x_forwarded_for: a client-sent value never reaches CPA.
    ["X-Forwarded-For", "$remote_addr"],
    ["X-Forwarded-Proto", "$scheme"],
    ["Upgrade", "$http_upgrade"],
    ["Connection", "$connection_upgrade"],
]
# The seed's "Nginx HTTP Example", location for location, written out independently of
# routes/nginx/boundaries.py: (modifier, path, upstream of the seed or the redirect).
SEED_LOCATIONS = [
    ("=", "/", "302 /management.html"),
    ("=", "/management.html", "cpamp"),
    ("=", "/health", "cpamp"),
    ("=", "/status", "cpamp"),
    ("=", "/setup", "cpamp"),
    ("^~", "/usage-service/", "cpamp"),
    ("^~", "/v0/management/", "cpamp"),
    ("^~", "/v0/resource/plugins/", "cpamp"),
    ("=", "/models", "cpamp"),
    ("^~", "/v1/", "cpa_api"),
    ("^~", "/v1beta/", "cpa_api"),
    ("^~", "/backend-api/codex/", "cpa_api"),
    ("^~", "/api/", "cpa_api"),
    ("=", "/v1internal:method", "cpa_api"),
    ("=", "/healthz", "cpa_api"),
    ("=", "/anthropic/callback", "cpa_api"),
    ("=", "/codex/callback", "cpa_api"),
    ("=", "/google/callback", "cpa_api"),
    ("=", "/antigravity/callback", "cpa_api"),
    ("", "/", "cpa_api"),
]
SEED_UPSTREAMS = {"cpa_api": "console_cpa", "cpamp": "console_cpamp"}


def make_deployment(**fields) -> Deployment:
    values = {"pk": 1, "slug": "prod", "name": "Production", "team": TEAM}
    values["server_name"] = "your-domain.com"
    values.update(fields)
    return Deployment(**values)


def override(match: str, path: str, target: str = "cpa", position: int = 0, **fields):
    return RouteOverride(match=match, path=path, target=target, position=position, **fields)


def make_certificate(directory: Path, name: str = "your-domain.com") -> tuple[str, str]:
    """Write a self-signed certificate and key into directory; return their paths."""
    cert_path, key_path = self_signed_certificate(directory, name, days=30)
    return str(cert_path), str(key_path)


def nginx_t(directory: Path, files: dict[str, str]) -> sandbox.NginxCheck:
    for name, text in files.items():
        (directory / name).write_text(text)
    return sandbox.check_directory(directory)


def parsed_server(text: str, tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """Return (upstream blocks, server blocks) of a site file, parsed by crossplane."""
    path = tmp_path / "site.conf"
    path.write_text(text)
    result = crossplane.parse(str(path), single=True, check_ctx=False, check_args=False)
    assert result["status"] == "ok", result["errors"]
    parsed = result["config"][0]["parsed"]
    return (
        [d for d in parsed if d["directive"] == "upstream"],
        [d for d in parsed if d["directive"] == "server"],
    )


def directives(block: list[dict], name: str) -> list[list[str]]:
    return [d["args"] for d in block if d["directive"] == name]


VARIANTS = {
    "docker-http.conf": {},
    "docker-https.conf": {
        "tls": True,
        "ssl_certificate": "/etc/nginx/ssl/your-domain.com/fullchain.pem",
        "ssl_certificate_key": "/etc/nginx/ssl/your-domain.com/privkey.pem",
    },
    "host-http.conf": {
        "cpa_upstream": HOST_PRESET["cpa_upstream"],
        "cpamp_upstream": HOST_PRESET["cpamp_upstream"],
        "cpamp_cpa_url": HOST_PRESET["cpamp_cpa_url"],
    },
    "cpa-panel.conf": {"mode": "cpa_panel"},
}


# --- Golden files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_it_renders_each_variant_byte_for_byte_like_its_golden_file(name):
    rendered = render_site(make_deployment(**VARIANTS[name]), overrides=[])
    assert rendered == (GOLDEN / name).read_text()


def test_it_renders_the_shared_map_block_like_its_golden_file():
    assert render_common(["your-domain.com"]) == (GOLDEN / COMMON_FILENAME).read_text()
    assert render_common() == (GOLDEN / COMMON_FILENAME).read_text()


def test_the_default_deployment_has_the_seeds_locations_in_the_seeds_order(tmp_path):
    text = (GOLDEN / "docker-http.conf").read_text()
    upstreams, servers = parsed_server(text, tmp_path)
    assert upstreams == []  # Docker host names resolve at request time, not in upstream blocks
    (server,) = servers
    block = server["block"]
    assert directives(block, "listen") == [["80"]]
    assert directives(block, "server_name") == [["your-domain.com"]]
    assert directives(block, "server_tokens") == [["off"]]
    assert directives(block, "client_max_body_size") == [["64m"]]
    assert directives(block, "proxy_http_version") == [["1.1"]]
    assert directives(block, "proxy_read_timeout") == [["3600s"]]
    assert directives(block, "proxy_send_timeout") == [["3600s"]]
    assert directives(block, "proxy_buffering") == [["off"]]
    assert directives(block, "resolver") == [["127.0.0.11", "valid=10s", "ipv6=off"]]
    # As in the seed, the header set is written once, for the whole server.
    assert directives(block, "proxy_set_header") == HEADERS
    assert directives(block, "add_header") == [
        ["X-Console-Upstream", "$console_upstream", "always"],
        ["X-Console-Config", config_hash(text), "always"],
    ]
    # The upstreams are set once per server, under names that are the same in every server.
    assert directives(block, "set") == [
        ["$console_cpa", "cli-proxy-api:8317"],
        ["$console_cpamp", "cpa-manager-plus:18317"],
    ]
    found = []
    for modifier, path, body in nginx_routes.routes(block):
        ((name, args),) = body
        if name == "return":
            found.append((modifier, path, " ".join(args)))
            continue
        # A location carries only what differs from the server: where it proxies to.
        assert name == "proxy_pass"
        upstream = {"http://$console_cpa": "cpa_api", "http://$console_cpamp": "cpamp"}[args[0]]
        found.append((modifier, path, upstream))
    assert found == SEED_LOCATIONS
    # The 301s that nginx adds itself for the seed's proxy_pass locations named /x/.
    written = [nginx_routes.slash_redirect(d) for d in block if d["directive"] == "location"]
    assert [w for w in written if w] == [p for m, p, _t in SEED_LOCATIONS if m == "^~"]


def test_the_https_variant_listens_with_ssl_and_http2_and_redirects_http(tmp_path):
    _upstreams, servers = parsed_server((GOLDEN / "docker-https.conf").read_text(), tmp_path)
    tls, plain = servers
    assert directives(tls["block"], "listen") == [["443", "ssl", "http2"]]
    assert directives(tls["block"], "ssl_certificate") == [
        ["/etc/nginx/ssl/your-domain.com/fullchain.pem"]
    ]
    assert directives(tls["block"], "ssl_certificate_key") == [
        ["/etc/nginx/ssl/your-domain.com/privkey.pem"]
    ]
    # Mozilla's intermediate profile, with one session cache name for every server.
    assert directives(tls["block"], "ssl_protocols") == [["TLSv1.2", "TLSv1.3"]]
    assert directives(tls["block"], "ssl_session_cache") == [["shared:console_tls:10m"]]
    assert directives(tls["block"], "ssl_prefer_server_ciphers") == [["off"]]
    assert len(nginx_routes.routes(tls["block"])) == len(SEED_LOCATIONS)
    assert directives(plain["block"], "listen") == [["80"]]
    assert directives(plain["block"], "server_tokens") == [["off"]]
    assert directives(plain["block"], "return") == [["301", "https://$host$request_uri"]]


def test_the_host_variant_sets_its_host_ports_without_a_resolver(tmp_path):
    upstreams, servers = parsed_server((GOLDEN / "host-http.conf").read_text(), tmp_path)
    assert upstreams == []  # upstream blocks are named per deployment: nginx-wide names
    assert directives(servers[0]["block"], "set") == [
        ["$console_cpa", "127.0.0.1:8317"],
        ["$console_cpamp", "127.0.0.1:18317"],
    ]
    assert directives(servers[0]["block"], "resolver") == []


def test_cpa_panel_mode_sends_every_route_to_cpa_and_keeps_the_panel_redirect():
    text = (GOLDEN / "cpa-panel.conf").read_text()
    assert "cpamp" not in text and "cpa-manager-plus" not in text
    assert "location = / { return 302 /management.html; }" in text
    assert text.count("{ return 597; }") == len(SEED_LOCATIONS) - 1


# --- The config hash ------------------------------------------------------------------------


def test_the_config_hash_is_the_sha256_of_the_file_without_its_own_hash_lines():
    text = render_site(make_deployment(), [])
    (value,) = set(re.findall(r"add_header X-Console-Config (\S+) always;", text))
    # What the README tells operators to run: grep -v the header lines, then sha256sum.
    rest = "".join(
        line for line in text.splitlines(keepends=True) if "X-Console-Config" not in line
    )
    assert value == hashlib.sha256(rest.encode()).hexdigest() == config_hash(text)
    # One line for the server: every location inherits it.
    assert text.count(f"add_header X-Console-Config {value} always;") == 1


def test_the_config_hash_follows_every_change_of_the_config_and_nothing_else():
    base = render_site(make_deployment(), [])
    again = render_site(make_deployment(), [])
    moved = render_site(make_deployment(), [override("prefix", "/v0/resource/plugins/", "cpa")])
    renamed = render_site(make_deployment(server_name="other.example.com"), [])
    assert config_hash(base) == config_hash(again)
    assert len({config_hash(base), config_hash(moved), config_hash(renamed)}) == 3
    # A file written before the header existed has the hash its rendering carries now.
    without = re.sub(r".*X-Console-Config.*\n", "", base)
    assert "X-Console-Config" not in without and config_hash(without) == config_hash(base)


# --- Rendering rules ------------------------------------------------------------------------


def test_it_is_deterministic_and_ends_with_a_newline_whatever_the_order_of_overrides():
    overrides = [
        override("regex", r"^/a/\d+$", position=2),
        override("prefix", "/config", "cpamp", position=1),
        override("exact", "/x", position=3),
    ]
    deployment = make_deployment()
    first = render_site(deployment, overrides)
    assert first == render_site(deployment, list(reversed(overrides)))
    assert first.endswith("}\n")


def test_an_override_with_a_builtins_match_and_path_replaces_it_and_others_are_added():
    text = render_site(
        make_deployment(),
        [
            override("prefix", "/v0/resource/plugins/", "cpa"),
            override("prefix", "/config", "cpamp"),
            override("exact", "/logs", "cpamp", enabled=False),
        ],
    )
    assert text.count("location ^~ /v0/resource/plugins/ {") == 1
    assert "    location ^~ /v0/resource/plugins/ { return 597; }\n" in text
    assert "    location ^~ /config { return 598; }\n" in text
    assert "/logs" not in text  # disabled overrides are ignored


def test_overrides_of_slash_replace_the_redirect_and_keep_the_fallback_a_plain_prefix():
    text = render_site(
        make_deployment(),
        [override("exact", "/", "cpamp"), override("prefix", "/", "cpamp")],
    )
    assert "return 302" not in text
    assert "location ^~ / {" not in text
    assert "    location / { return 598; }\n" in text


def test_regex_overrides_follow_their_position_and_double_their_backslashes():
    text = render_site(
        make_deployment(),
        [
            override("regex_i", r"\.PNG$", "cpamp", position=5),
            override("regex", r"^/threads/\d+$", "cpamp", position=1),
        ],
    )
    first = text.index('location ~ "^/threads/\\\\d+$" {')
    second = text.index('location ~* "\\\\.PNG$" {')
    assert first < second < text.index("    location / {")


def test_route_tracing_off_removes_every_trace_header():
    text = render_site(make_deployment(route_tracing=False), [])
    assert "X-Console-Upstream" not in text
    assert "X-Console-Config" not in text
    assert "add_header" not in text
    assert text.count("proxy_set_header Connection") == 1


def test_listen_address_ports_and_ipv6_literals_are_written_the_nginx_way():
    text = render_site(
        make_deployment(
            listen_address="::1",
            http_port=8080,
            https_port=8443,
            tls=True,
            http2=False,
            ssl_certificate="/certs/a.pem",
            ssl_certificate_key="/certs/a.key",
            cpa_upstream="[::1]:8317",
            cpamp_upstream="cpa-manager-plus:18317",
            resolver="::1 127.0.0.11",
        ),
        [],
    )
    assert "    listen [::1]:8443 ssl;\n" in text
    assert "    listen [::1]:8080;\n" in text
    assert "return 301 https://$host:8443$request_uri;" in text
    assert "    set $console_cpa   [::1]:8317;\n" in text
    assert "    set $console_cpamp cpa-manager-plus:18317;\n" in text
    assert "\nupstream " not in text
    assert "resolver [::1] 127.0.0.11 valid=10s ipv6=off;" in text


def test_a_long_server_name_gets_a_larger_hash_bucket_in_the_shared_file():
    assert "server_names_hash_bucket_size" not in render_common(["a" * 46])
    assert "server_names_hash_bucket_size 128;" in render_common(["a" * 47])
    assert "server_names_hash_bucket_size 320;" in render_common(["a" * 253])


# --- Invalid input is refused before rendering ----------------------------------------------

INVALID_FIELDS = [
    ("server_name", "bad name;"),
    ("server_name", "a..b"),
    ("server_name", "Upper.example.com"),
    ("listen_address", "localhost"),
    ("http_port", 0),
    ("http_port", 70000),
    ("cpa_upstream", "cli-proxy-api:8317; include /etc/passwd"),
    ("cpa_upstream", "http://cli-proxy-api:8317"),
    ("cpamp_upstream", "cpa-manager-plus"),
    ("cpamp_upstream", "300.1.1.1:18317"),
    ("resolver", "127.0.0.11; evil"),
    ("resolver", ""),
    ("client_max_body_size", "64m;"),
    ("proxy_read_timeout", 0),
    ("proxy_send_timeout", 100000),
    ("mode", "everything"),
    ("slug", "two words"),
    ("slug", "00-console-common"),
    ("ssl_certificate", "relative/cert.pem"),
    ("ssl_certificate_key", "/etc/ssl/$host.key"),
]


@pytest.mark.parametrize(("field", "value"), INVALID_FIELDS)
def test_it_refuses_an_invalid_field_before_rendering_and_names_it(field, value):
    deployment = make_deployment(**{field: value})
    with pytest.raises(InvalidDeployment) as raised:
        render_site(deployment, [])
    assert field in [name for name, _reason in raised.value.errors]
    assert field in str(raised.value)


def test_it_refuses_https_without_certificates():
    with pytest.raises(InvalidDeployment) as raised:
        render_site(make_deployment(tls=True), [])
    assert {"ssl_certificate", "ssl_certificate_key"} <= {f for f, _r in raised.value.errors}


INVALID_OVERRIDES = [
    ("exact", "/a;b"),
    ("prefix", "/a b"),
    ("prefix", "/a{"),
    ("prefix", "no-slash"),
    ("exact", "/a#b"),
    ("regex", '^/a"'),
    ("regex", "^/(unclosed"),
    ("regex_i", "^/a;"),
    ("regex", "(?<name>x"),
]


@pytest.mark.parametrize(("match", "path"), INVALID_OVERRIDES)
def test_it_refuses_an_invalid_override_path_before_rendering(match, path):
    with pytest.raises(InvalidDeployment) as raised:
        render_site(make_deployment(), [override(match, path)])
    assert any(field.endswith(".path") for field, _reason in raised.value.errors)


def test_it_refuses_two_overrides_with_the_same_match_and_path():
    with pytest.raises(InvalidDeployment, match="twice"):
        render_site(make_deployment(), [override("exact", "/a"), override("exact", "/a", "cpamp")])


def test_it_refuses_an_unknown_override_target():
    with pytest.raises(InvalidDeployment, match="target"):
        render_site(make_deployment(), [override("exact", "/a", "elsewhere")])


# --- Real nginx -t --------------------------------------------------------------------------


@pytest.mark.nginx
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_real_nginx_accepts_each_variant(name, tmp_path):
    fields = dict(VARIANTS[name])
    if fields.get("tls"):
        fields["ssl_certificate"], fields["ssl_certificate_key"] = make_certificate(
            tmp_path / "ssl"
        )
    site = render_site(make_deployment(**fields), [])
    conf = tmp_path / "conf.d"
    conf.mkdir()
    check = nginx_t(conf, {COMMON_FILENAME: render_common(), "prod.conf": site})
    assert check.available
    assert check.ok, check.output


@pytest.mark.nginx
def test_the_docker_variant_starts_although_its_host_names_do_not_resolve_here(tmp_path):
    # cli-proxy-api and cpa-manager-plus exist only inside a Docker network.
    site = render_site(make_deployment(), [])
    assert "proxy_pass http://$console_cpa;" in site
    check = nginx_t(tmp_path, {COMMON_FILENAME: render_common(), "prod.conf": site})
    assert check.ok, check.output


@pytest.mark.nginx
def test_real_nginx_refuses_the_same_site_without_its_resolver(tmp_path):
    # Control for the test above: a plain upstream block with a Docker name fails nginx -t here.
    site = render_site(make_deployment(), []).replace(
        "http://$console_cpa;", "http://cli-proxy-api:8317;"
    )
    check = nginx_t(tmp_path, {COMMON_FILENAME: render_common(), "prod.conf": site})
    assert not check.ok
    assert "host not found" in check.output


@pytest.mark.nginx
def test_real_nginx_accepts_many_deployments_in_one_directory(tmp_path):
    cert, key = make_certificate(tmp_path / "ssl")
    files = {}
    names = []
    for index in range(24):
        variant = sorted(VARIANTS)[index % len(VARIANTS)]
        fields = dict(VARIANTS[variant])
        if fields.get("tls"):
            fields.update(ssl_certificate=cert, ssl_certificate_key=key)
        deployment = make_deployment(
            pk=index + 1, slug=f"site-{index}", server_name=f"s{index}.example.com", **fields
        )
        overrides = [
            override("exact", "/x", "cpamp", 1),
            override("prefix", "/config", "cpamp", 2),
            override("regex", r"^/t/\d+$", "cpamp", 3),
            override("regex_i", r"\.png$", "cpa", 4),
            override("prefix", "/v1/", "cpa", 5),
        ]
        files[site_filename(deployment)] = render_site(deployment, overrides)
        names.append(deployment.server_name)
    files[COMMON_FILENAME] = render_common(names)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    check = nginx_t(conf, files)
    assert check.ok, check.output


@pytest.mark.nginx
def test_the_check_uses_a_stand_in_for_certificates_missing_on_the_console_host():
    site = render_site(make_deployment(**VARIANTS["docker-https.conf"]), [])
    check = check_files({COMMON_FILENAME: render_common(), "prod.conf": site})
    assert check.ok, check.output
    assert "/etc/nginx/ssl/your-domain.com/fullchain.pem" in check.output
    assert "stand-in" in check.output


@pytest.mark.nginx
def test_the_check_reports_nginxs_own_message_for_a_broken_certificate(tmp_path):
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    site = render_site(
        make_deployment(tls=True, ssl_certificate=str(broken), ssl_certificate_key=str(broken)),
        [],
    )
    check = check_files({COMMON_FILENAME: render_common(), "prod.conf": site})
    assert not check.ok
    assert "cannot load certificate" in check.output


# --- Hypothesis: any valid deployment renders into a config nginx accepts -------------------

_LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
_HOST = st.lists(_LABEL, min_size=1, max_size=5).map(".".join).filter(lambda h: len(h) <= 253)
_SERVER_NAME = st.one_of(_HOST, _HOST.map(lambda h: f"*.{h}"), _HOST.filter(lambda h: len(h) > 46))
_PORT = st.integers(1, 65535)
_IPV6 = st.ip_addresses(v=6).map(str)
_UPSTREAM = st.one_of(
    st.tuples(_HOST, _PORT).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.ip_addresses(v=4).map(str), _PORT).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(_IPV6, _PORT).map(lambda t: f"[{t[0]}]:{t[1]}"),
)
_RESOLVER = st.lists(
    st.one_of(st.ip_addresses(v=4).map(str), _IPV6, _IPV6.map(lambda a: f"[{a}]")),
    min_size=1,
    max_size=3,
).map(" ".join)
_SEGMENT = st.text(alphabet="abcXYZ019-._~!$&()*+,=:@é", min_size=0, max_size=8)
_LOCATION_PATH = st.lists(_SEGMENT, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
_REGEX = st.tuples(
    st.text(alphabet="abc019-._~/é{}", max_size=8).map(re.escape),
    st.sampled_from(["", "$", "/.*", r"/\d+$", "(/|$)", r"\.png$", "[a-z]+"]),
).map(lambda t: f"^/{t[0]}{t[1]}")
_OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(["exact", "prefix"]), _LOCATION_PATH),
    st.tuples(st.sampled_from(["regex", "regex_i"]), _REGEX),
)
_CERT_PATH = st.text(alphabet="abcXYZ019._@+=-", min_size=1, max_size=12).map(
    lambda s: f"/console-test-missing/{s}"
)


_CIDR = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(1, 32)),
    st.tuples(st.ip_addresses(v=6), st.integers(1, 128)),
).map(lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)))
_CLIENT_IP = st.one_of(
    st.just({"client_ip": "edge", "trusted_proxies": ""}),
    st.lists(_CIDR, min_size=1, max_size=4).map(
        lambda cidrs: {"client_ip": "behind_proxy", "trusted_proxies": " ".join(cidrs)}
    ),
)


@st.composite
def deployments(draw, count: int = 4):
    slugs = draw(
        st.lists(
            st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True).filter(
                lambda s: s != "00-console-common"
            ),
            min_size=1,
            max_size=count,
            unique=True,
        )
    )
    # Distinct ports across the batch: one deployment's TLS port must not be another's plain port.
    ports = draw(st.lists(_PORT, min_size=2 * len(slugs), max_size=2 * len(slugs), unique=True))
    result = []
    for index, slug in enumerate(slugs):
        tls = draw(st.booleans())
        deployment = Deployment(
            pk=index + 1,
            slug=slug,
            name=slug,
            team=TEAM,
            mode=draw(st.sampled_from(["manager_server", "cpa_panel"])),
            server_name=draw(_SERVER_NAME),
            tls=tls,
            listen_address=draw(st.one_of(st.just(""), st.ip_addresses().map(str))),
            http_port=ports[2 * index],
            https_port=ports[2 * index + 1],
            ssl_certificate=draw(_CERT_PATH) if tls else "",
            ssl_certificate_key=draw(_CERT_PATH) if tls else "",
            http2=draw(st.booleans()),
            cpa_upstream=draw(_UPSTREAM),
            cpamp_upstream=draw(_UPSTREAM),
            cpamp_cpa_url="http://127.0.0.1:8317",
            resolver=draw(_RESOLVER),
            client_max_body_size=draw(st.from_regex(r"[0-9]{1,9}[kKmMgG]?", fullmatch=True)),
            proxy_read_timeout=draw(st.integers(1, 86400)),
            proxy_send_timeout=draw(st.integers(1, 86400)),
            route_tracing=draw(st.booleans()),
            limit_req_rate=draw(st.sampled_from(["", "1r/s", "5r/s", "300r/m", "9999r/s"])),
            limit_req_burst=draw(st.integers(1, 1000)),
            acme_webroot=draw(st.one_of(st.just(""), _CERT_PATH)),
            **draw(_CLIENT_IP),
        )
        pairs = draw(st.lists(_OVERRIDE, max_size=8, unique=True))
        overrides = [
            override(
                match,
                path,
                draw(st.sampled_from(["cpa", "cpamp"])),
                position,
                enabled=draw(st.booleans()),
            )
            for position, (match, path) in enumerate(pairs)
        ]
        result.append((deployment, overrides))
    return result


@pytest.mark.nginx
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=deployments())
def test_real_nginx_accepts_every_valid_generated_deployment(batch):
    files = {site_filename(d): render_site(d, overrides) for d, overrides in batch}
    files[COMMON_FILENAME] = render_common(
        [d.server_name for d, _o in batch], sites=list(files.values()), default_server=True
    )
    check = check_files(files)
    assert check.ok, check.output + "\n\n" + "\n".join(files.values())
