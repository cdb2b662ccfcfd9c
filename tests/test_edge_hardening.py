"""Hardened at the edge (issue 14): whose address CPA sees, the login rate limit, the ACME webroot,
server_tokens, TLS settings and the catch-all default server, each under real nginx on loopback.

Clients connect from other loopback addresses (127.0.0.2, 127.0.0.3) than the one nginx and the
emulators use, so "the address nginx sees" and "the address a client wrote" can be told apart.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from routes import portable
from routes import validators as v
from routes.models import DEFAULT_LIMIT_REQ_BURST, Deployment, Team
from routes.nginx import render
from routes.nginx.export import render_files
from routes.nginx.lint import lint
from routes.nginx.sandbox import running_nginx
from tests.fakes.cpa import BAN_AFTER, FakeCPA
from tests.fakes.identify import identify_servers
from tests.fakes.stack import free_port, self_signed
from tests.test_simulate import corpus

# The renderer reads each deployment's overrides (none here) from the database.
pytestmark = pytest.mark.django_db
TEAM = Team(pk=1, name="Ops", slug="ops")
API_KEY = "sk-edge-test-0001"
MANAGEMENT_KEY = "cpa-edge-management-0001"
CLIENT = "127.0.0.2"
OTHER_CLIENT = "127.0.0.3"
# What a remote client writes to pose as CPA's own host (reference 3.1, "Forwarded headers").
SPOOFED = "127.0.0.1"
# The panel's page load fires about a dozen requests at once; CPAMP then polls every 500 ms
# (reference 2.1 USAGE_POLL_INTERVAL_MS and 3.3).
PAGE_LOAD = 12
POLL_SECONDS = 0.5
POLLS = 12
PANEL_PATHS = (
    "/v0/management/usage",
    "/v0/management/dashboard/summary",
    "/v0/management/monitoring/requests",
    "/v0/management/config",
    "/usage-service/info",
    "/usage-service/config",
    "/status",
)


def make_deployment(**fields) -> Deployment:
    values = {
        "pk": 1,
        "slug": "prod",
        "name": "Production",
        "team": TEAM,
        "server_name": "api.example.com",
        "listen_address": "127.0.0.1",
        "http_port": free_port(),
    }
    values.update(fields)
    return Deployment(**values)


@contextmanager
def serving(tmp_path: Path, *deployments: Deployment, default_server: bool = False) -> Iterator:
    """Serve the deployments' exported files with real nginx until the block ends."""
    conf = tmp_path / "conf.d"
    conf.mkdir(exist_ok=True)
    for name, text in render_files(list(deployments), default_server=default_server).items():
        (conf / name).write_text(text)
    listening = [("127.0.0.1", d.http_port) for d in deployments]
    listening += [("127.0.0.1", d.https_port) for d in deployments if d.tls]
    with running_nginx(conf, wait_for=listening) as prefix:
        yield prefix


def send(
    port: int,
    path: str,
    *,
    host: str = "api.example.com",
    source: str = CLIENT,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send one GET from the source address; return (status, lower-cased headers, body)."""
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    return response.status, {k.lower(): val for k, val in response.getheaders()}, body


@pytest.fixture
def stack():
    with ExitStack() as resources:
        yield resources


@pytest.fixture
def cpa():
    with FakeCPA(api_keys=[API_KEY], management_key=MANAGEMENT_KEY) as emulator:
        yield emulator


def at(cpa: FakeCPA, **fields) -> Deployment:
    """Return a deployment whose upstreams are the CPA emulator (CPAMP points at it too)."""
    return make_deployment(cpa_upstream=cpa.address, cpamp_upstream=cpa.address, **fields)


def seen_by(cpa: FakeCPA, path: str) -> tuple[str, dict[str, str]]:
    """Return (client address, headers) of the last request the emulator got for path."""
    (last, *_rest) = reversed(cpa.requests_to(path))
    return last.client_ip, last.headers


# --- client_ip = edge (the default) -----------------------------------------------------------


@pytest.mark.nginx
def test_a_forwarded_localhost_never_reaches_cpa_in_edge_mode(cpa, tmp_path):
    deployment = at(cpa)
    assert deployment.client_ip == "edge"
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    with serving(tmp_path, deployment):
        status, _headers, _body = send(
            deployment.http_port, "/v1/models", headers={"X-Forwarded-For": SPOOFED, **bearer}
        )
        assert status == 200
        client, headers = seen_by(cpa, "/v1/models")
    # CPA (gin's ClientIP: the leftmost X-Forwarded-For) sees the address nginx saw.
    assert client == CLIENT
    assert (headers["x-forwarded-for"], headers["x-real-ip"]) == (CLIENT, CLIENT)


@pytest.mark.nginx
def test_the_seeds_header_would_let_the_forged_address_through(cpa, tmp_path):
    # The control for the test above: the seed's $proxy_add_x_forwarded_for keeps it leftmost.
    deployment = at(cpa)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    for name, text in render_files([deployment]).items():
        text = text.replace(
            "X-Forwarded-For   $remote_addr;", "X-Forwarded-For   $proxy_add_x_forwarded_for;"
        )
        (conf / name).write_text(text)
    with running_nginx(conf, wait_for=[("127.0.0.1", deployment.http_port)]):
        send(
            deployment.http_port,
            "/v1/models",
            headers={"X-Forwarded-For": SPOOFED, "Authorization": f"Bearer {API_KEY}"},
        )
        client, _headers = seen_by(cpa, "/v1/models")
    assert client == SPOOFED


@pytest.mark.nginx
def test_rotating_forged_addresses_does_not_escape_cpas_ban(cpa, tmp_path):
    deployment = at(cpa, mode="cpa_panel")  # /v0/management/ goes straight to CPA
    with serving(tmp_path, deployment):
        statuses = [
            send(
                deployment.http_port,
                "/v0/management/config",
                headers={"X-Forwarded-For": f"10.9.9.{n}", "Authorization": "Bearer wrong"},
            )[0]
            for n in range(BAN_AFTER + 1)
        ]
        banned, _headers, body = send(
            deployment.http_port,
            "/v0/management/config",
            headers={"Authorization": f"Bearer {MANAGEMENT_KEY}"},
        )
    assert statuses == [401] * BAN_AFTER + [403]
    assert banned == 403 and b"IP banned" in body
    assert cpa.failures(CLIENT) == 0 and not cpa.failures("10.9.9.1")


# --- client_ip = behind_proxy -----------------------------------------------------------------


@pytest.mark.nginx
def test_behind_a_proxy_the_address_comes_from_the_trusted_proxies_only(cpa, tmp_path):
    deployment = at(cpa, client_ip="behind_proxy", trusted_proxies=f"{CLIENT}/32 10.0.0.0/8")
    bearer = {"Authorization": f"Bearer {API_KEY}"}

    def client_of(source: str, forwarded: str) -> str:
        send(
            deployment.http_port,
            "/v1/models",
            source=source,
            headers={"X-Forwarded-For": forwarded, **bearer},
        )
        return seen_by(cpa, "/v1/models")[0]

    with serving(tmp_path, deployment):
        # A trusted proxy's X-Forwarded-For names the client.
        assert client_of(CLIENT, "203.0.113.7") == "203.0.113.7"
        # Recursively: the rightmost address that is not a trusted proxy.
        assert client_of(CLIENT, "198.51.100.9, 10.1.2.3") == "198.51.100.9"
        # Anyone else's header is ignored: the client is the address nginx sees.
        assert client_of(OTHER_CLIENT, "203.0.113.7") == OTHER_CLIENT


def test_behind_proxy_without_trusted_proxies_is_refused_by_name(db):
    deployment = make_deployment(client_ip="behind_proxy", trusted_proxies="", team=None)
    with pytest.raises(ValidationError) as raised:
        deployment.full_clean(exclude=["team"])
    assert "trusted_proxies" in raised.value.error_dict
    with pytest.raises(render.InvalidDeployment) as refused:
        render.render_site(deployment, [])
    assert "trusted_proxies" in [field for field, _reason in refused.value.errors]
    team = Team.objects.create(name="Ops", slug="ops")
    deployment.pk, deployment.team = None, team
    with transaction.atomic(), pytest.raises(IntegrityError):
        deployment.save()


@pytest.mark.parametrize(
    "value", ["10.0.0.0/8", "203.0.113.7", "2001:db8::/32", "10.0.0.0/8, 192.168.0.0/16\n::1"]
)
def test_it_accepts_trusted_proxy_addresses_and_networks(value):
    v.validate_trusted_proxies(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0.0.0.0/0", "trusts every address"),
        ("::/0", "trusts every address"),
        ("10.0.0.1/8", "host bits"),
        ("10.0.0.0/33", "not a valid network"),
        ("cdn.example.com", "not an IP address"),
        ("10.0.0.0/8;", "not an IP address"),
        ("fe80::1%eth0", "not an IP address"),
        (" ".join(f"10.0.{n}.0/24" for n in range(65)), "at most 64"),
    ],
)
def test_it_refuses_a_trusted_proxy_list_and_says_why(value, reason):
    with pytest.raises(ValidationError) as raised:
        v.validate_trusted_proxies(value)
    assert reason in " ".join(raised.value.messages)


# --- server_tokens and TLS --------------------------------------------------------------------


@pytest.mark.nginx
def test_nginx_does_not_tell_its_version(tmp_path):
    cert, key = self_signed(tmp_path, "api.example.com")
    deployment = make_deployment(
        tls=True, https_port=free_port(), ssl_certificate=str(cert), ssl_certificate_key=str(key)
    )
    with serving(tmp_path, deployment):
        _status, headers, body = send(deployment.http_port, "/v1/models")
    assert (_status, headers["server"]) == (301, "nginx")
    assert b"nginx/" not in body


@pytest.mark.nginx
def test_https_speaks_tls_1_2_and_1_3_only(tmp_path):
    cert, key = self_signed(tmp_path, "api.example.com")
    deployment = make_deployment(
        tls=True, https_port=free_port(), ssl_certificate=str(cert), ssl_certificate_key=str(key)
    )

    def handshake(version: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.minimum_version = context.maximum_version = version
        with socket.create_connection(("127.0.0.1", deployment.https_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="api.example.com") as tls:
                return tls.version() or ""

    with serving(tmp_path, deployment):
        assert handshake(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
        assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


# --- The ACME webroot -------------------------------------------------------------------------


@pytest.mark.nginx
def test_the_acme_webroot_serves_challenges_and_every_other_path_still_redirects(tmp_path, stack):
    cert, key = self_signed(tmp_path, "api.example.com")
    webroot = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="console-acme-")))
    challenge = webroot / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True)
    (challenge / "x").write_text("token-x.thumbprint")
    # nginx's workers drop to an unprivileged user when the tests run as root.
    for directory in (webroot, webroot / ".well-known", challenge):
        directory.chmod(0o755)
    (challenge / "x").chmod(0o644)
    tls = {"tls": True, "ssl_certificate": str(cert), "ssl_certificate_key": str(key)}
    acme = make_deployment(https_port=free_port(), acme_webroot=str(webroot), **tls)
    # The same site without the webroot, on ports of its own: the seed's plain redirect.
    plain = make_deployment(pk=2, slug="plain", https_port=free_port(), **tls)
    requests = [t for t in corpus() if t.isprintable() and " " not in t]

    def answer(deployment: Deployment, target: str) -> tuple[int, str]:
        status, headers, _body = send(deployment.http_port, target)
        moved = headers.get("location", "").replace(f":{deployment.https_port}", ":PORT")
        return status, moved

    with serving(tmp_path, acme, plain):
        status, _headers, body = send(acme.http_port, "/.well-known/acme-challenge/x")
        missing = send(acme.http_port, "/.well-known/acme-challenge/none")[0]
        differ = {
            target: (answer(plain, target), answer(acme, target))
            for target in requests
            if not target.startswith(render.ACME_PREFIX)
        }
        example = answer(plain, "/v1/models")
    assert (status, body, missing) == (200, b"token-x.thumbprint", 404)
    assert len(differ) >= 200
    assert {t: pair for t, pair in differ.items() if pair[0] != pair[1]} == {}
    assert {pair[0][0] for pair in differ.values()} <= {301, 400}
    assert example == (301, "https://api.example.com:PORT/v1/models")


def test_the_acme_webroot_is_only_written_for_https(tmp_path):
    plain = make_deployment(acme_webroot="/var/www/certbot")
    assert render.ACME_PREFIX not in render.render_site(plain, [])
    assert "acme_without_tls" in [w.code for w in lint(plain, [])]


# --- The login rate limit ---------------------------------------------------------------------


def _panel_session(port: int, source: str = CLIENT) -> list[int]:
    """Return the statuses of the panel's own pattern: a page load, then polls every 500 ms."""
    statuses: list[int] = []
    lock = threading.Lock()

    def one(path: str) -> None:
        status = send(port, path, source=source)[0]
        with lock:
            statuses.append(status)

    threads = [
        threading.Thread(target=one, args=(PANEL_PATHS[n % len(PANEL_PATHS)],))
        for n in range(PAGE_LOAD)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(POLLS):
        time.sleep(POLL_SECONDS)
        one(PANEL_PATHS[n % len(PANEL_PATHS)])
    return statuses


@pytest.mark.nginx
def test_the_panels_own_polling_passes_the_lowest_rate_the_lint_accepts(tmp_path):
    # 2r/s is CPAMP's 500 ms polling: the lowest rate without a rate_below_polling warning.
    with identify_servers("cpa", "cpamp") as upstreams:
        deployment = make_deployment(
            cpa_upstream=upstreams["cpa"].address,
            cpamp_upstream=upstreams["cpamp"].address,
            limit_req_rate="2r/s",
        )
        assert deployment.limit_req_burst == DEFAULT_LIMIT_REQ_BURST
        assert "rate_below_polling" not in [w.code for w in lint(deployment, [])]
        with serving(tmp_path, deployment):
            statuses = _panel_session(deployment.http_port)
            # A password guesser from the same address is stopped once the burst is spent …
            guesses = [
                send(deployment.http_port, "/v0/management/config")[0]
                for _n in range(DEFAULT_LIMIT_REQ_BURST + 10)
            ]
            # … while the API, other clients and the panel page itself are not limited.
            api = [send(deployment.http_port, "/v1/models")[0] for _n in range(30)]
            other = send(deployment.http_port, "/v0/management/config", source=OTHER_CLIENT)[0]
            page = send(deployment.http_port, "/management.html")[0]
    assert statuses == [200] * (PAGE_LOAD + POLLS)
    assert 429 in guesses and set(guesses) == {200, 429}
    assert (set(api), other, page) == ({200}, 200, 200)


def test_a_rate_below_the_panels_polling_is_warned_about():
    warnings = lint(make_deployment(limit_req_rate="60r/m"), [])
    assert "rate_below_polling" in [w.code for w in warnings]
    assert "rate_below_polling" not in [
        w.code for w in lint(make_deployment(limit_req_rate="120r/m"), [])
    ]


@pytest.mark.parametrize("value", ["5r/s;", "0r/s", "5r/h", "5 r/s", "10000r/s", "r/s"])
def test_it_refuses_a_rate_nginx_would_not_read(value):
    with pytest.raises(ValidationError):
        v.validate_rate(value)


def test_one_zone_per_rate_serves_every_deployment_that_uses_it():
    sites = [
        render.render_site(make_deployment(pk=n, slug=f"d{n}", limit_req_rate=rate), [])
        for n, rate in enumerate(["5r/s", "5r/s", "300r/m", ""])
    ]
    common = render.render_common(sites=sites)
    zones = [line for line in common.splitlines() if line.startswith("limit_req_zone")]
    assert zones == [
        "limit_req_zone $binary_remote_addr$server_name zone=console_300r_m:10m rate=300r/m;",
        "limit_req_zone $binary_remote_addr$server_name zone=console_5r_s:10m rate=5r/s;",
    ]


# --- The catch-all default server -------------------------------------------------------------


@pytest.mark.nginx
def test_the_default_server_closes_unknown_hosts_and_routes_known_ones(tmp_path):
    cert, key = self_signed(tmp_path, "api.example.com")
    with identify_servers("cpa", "cpamp") as upstreams:
        addresses = {
            "cpa_upstream": upstreams["cpa"].address,
            "cpamp_upstream": upstreams["cpamp"].address,
        }
        first = make_deployment(
            tls=True,
            https_port=free_port(),
            ssl_certificate=str(cert),
            ssl_certificate_key=str(key),
            **addresses,
        )
        second = make_deployment(
            pk=2, slug="b", server_name="b.example.com", http_port=first.http_port, **addresses
        )
        with serving(tmp_path, first, second, default_server=True):
            known = send(first.http_port, "/v1/models", host="b.example.com")[0]
            with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
                send(first.http_port, "/v1/models", host="unknown.example.com")
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            with socket.create_connection(("127.0.0.1", first.https_port), timeout=5) as raw:
                with pytest.raises(ssl.SSLError):
                    context.wrap_socket(raw, server_hostname="unknown.example.com")
            with socket.create_connection(("127.0.0.1", first.https_port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="api.example.com") as tls:
                    assert tls.version()
    assert known == 200


def test_the_default_server_is_off_unless_asked_for(settings):
    site = render.render_site(make_deployment(), [])
    assert "default_server" not in render.render_common(sites=[site])
    assert "default_server" not in render_files([make_deployment()])[render.COMMON_FILENAME]
    settings.CONSOLE_NGINX_DEFAULT_SERVER = True
    assert "default_server" in render_files([make_deployment()])[render.COMMON_FILENAME]


# --- The definitions format -------------------------------------------------------------------


def test_the_definitions_format_carries_the_edge_fields(team):
    edge = {
        "client_ip": "behind_proxy",
        "trusted_proxies": "10.0.0.0/8 2001:db8::/32",
        "limit_req_rate": "5r/s",
        "limit_req_burst": 40,
        "acme_webroot": "/var/www/certbot",
    }
    source = Deployment.objects.create(
        slug="src", name="Source", team=team, server_name="src.example.com", **edge
    )
    (entry,) = portable.export_payload(deployments=[source])["deployments"]
    assert {name: entry[name] for name in edge} == edge
    entry.update(slug="copy", server_name="copy.example.com")
    portable.import_payload(payload={"version": 1, "deployments": [entry]})
    copy = Deployment.objects.get(slug="copy")
    assert {name: getattr(copy, name) for name in edge} == edge
    refused = dict(entry, slug="bad", server_name="bad.example.com", trusted_proxies="")
    with pytest.raises(portable.ImportFailed) as raised:
        portable.import_payload(payload={"version": 1, "deployments": [refused]})
    assert "trusted_proxies" in [field for _slug, field, _reason in raised.value.problems]
    assert not Deployment.objects.filter(slug="bad").exists()
