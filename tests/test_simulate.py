"""The route simulator: nginx URI normalisation, location choice, and agreement with nginx."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from routes.models import Deployment, RouteOverride, Team
from routes.nginx.render import COMMON_FILENAME, render_common, render_site, site_filename
from routes.nginx.sandbox import running_nginx
from routes.nginx.simulate import BadRequest, normalise, simulate
from tests.fakes.identify import identify_servers

TEAM = Team(pk=1, name="Ops", slug="ops")


def make_deployment(**fields) -> Deployment:
    values = {"pk": 1, "slug": "prod", "name": "Production", "team": TEAM}
    values["server_name"] = "api.example.com"
    values.update(fields)
    return Deployment(**values)


def override(match: str, path: str, target: str = "cpa", position: int = 0, **fields):
    return RouteOverride(match=match, path=path, target=target, position=position, **fields)


# --- Normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "args"),
    [
        ("/v1/models", "/v1/models", ""),
        ("/v1/models?limit=20", "/v1/models", "limit=20"),
        ("//v1///models", "/v1/models", ""),
        ("/v1/./models", "/v1/models", ""),
        ("/a/b/../../v1/", "/v1/", ""),
        ("/a/..", "/", ""),
        ("/a/.", "/a/", ""),
        ("/%76%31/models", "/v1/models", ""),
        ("/a%2F..%2Fv1", "/v1", ""),  # a decoded slash takes part in dot segments
        ("/%2e%2E/x".replace("/x", "/v1/x").replace("/%2e%2E", "/a/%2e%2E"), "/v1/x", ""),
        ("/a%3Fb", "/a?b", ""),  # a decoded ? is a literal character, not a query
        ("/a%23b", "/a#b", ""),
        ("/a%25", "/a%", ""),
        ("/v1#/x", "/v1", ""),  # a raw # ends the path
        ("/v1?a#b", "/v1", "a"),
        ("/a.b/..c", "/a.b/..c", ""),
        ("/é", "/é", ""),
    ],
)
def test_it_normalises_the_path_like_nginx(raw, path, args):
    got_path, got_args = normalise(raw.encode())
    assert (got_path.decode(), got_args.decode()) == (path, args)


@pytest.mark.parametrize("raw", ["/..", "/a/../..", "/%2e%2e/", "/a%", "/a%4", "/a%zz", "/a%00"])
def test_it_answers_400_where_nginx_refuses_the_path(raw):
    with pytest.raises(BadRequest):
        normalise(raw.encode())
    assert simulate(make_deployment(), raw, []).status == 400


@pytest.mark.parametrize("raw", ["v1/models", "/a b", "/a\x01"])
def test_it_refuses_a_request_target_nginx_would_not_parse(raw):
    result = simulate(make_deployment(), raw, [])
    assert result.status == 400
    assert result.reason


# --- Location choice ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "upstream"),
    [
        ("/management.html", "cpamp"),
        ("/health", "cpamp"),
        ("/usage-service/info", "cpamp"),
        ("/v0/management/config", "cpamp"),
        ("/v0/resource/plugins/", "cpamp"),
        ("/models", "cpamp"),
        ("/models/", "cpa"),  # only the exact /models belongs to CPAMP
        ("/v1/models", "cpa"),
        ("/v1beta/models/gemini:generateContent", "cpa"),
        ("/backend-api/codex/responses", "cpa"),
        ("/healthz", "cpa"),
        ("/codex/callback?code=x", "cpa"),
        ("/some/new/endpoint", "cpa"),
    ],
)
def test_it_sends_the_seeds_paths_to_the_seeds_upstreams(raw, upstream):
    result = simulate(make_deployment(), raw, [])
    assert result.proxied
    assert result.upstream == upstream


def test_the_root_answers_302_to_the_panel():
    result = simulate(make_deployment(), "/", [])
    assert (result.status, result.redirect) == (302, "/management.html")


def test_a_prefix_requested_without_its_trailing_slash_answers_301_with_the_query():
    result = simulate(make_deployment(), "/v0/management?x=1", [])
    assert (result.status, result.redirect) == (301, "/v0/management/?x=1")
    assert result.location.path == "/v0/management/"


def test_an_exact_location_beats_the_trailing_slash_redirect():
    result = simulate(make_deployment(), "/v0/management", [override("exact", "/v0/management")])
    assert result.proxied and result.location.match == "exact"


def test_an_exact_location_ending_in_a_slash_also_redirects():
    result = simulate(make_deployment(), "/foo", [override("exact", "/foo/", "cpamp")])
    assert (result.status, result.redirect) == (301, "/foo/")


def test_a_caret_tilde_prefix_stops_the_regex_search():
    result = simulate(
        make_deployment(), "/v1/special", [override("regex", "^/v1/special", "cpamp")]
    )
    assert result.upstream == "cpa"
    assert result.location.path == "/v1/"
    assert result.regexes_tried == ()


def test_regexes_are_tried_in_position_order_after_the_plain_fallback_prefix():
    overrides = [
        override("regex", r"^/t/\d+$", "cpamp", position=2),
        override("regex", r"^/t/", "cpa", position=1),
    ]
    result = simulate(make_deployment(), "/t/12", overrides)
    assert result.location.path == "^/t/"
    assert result.regexes_tried == ("^/t/",)


def test_a_case_insensitive_regex_matches_any_case_and_a_plain_regex_does_not():
    overrides = [override("regex_i", r"\.PNG$", "cpamp"), override("regex", r"\.GIF$", "cpamp")]
    assert simulate(make_deployment(), "/img/a.png", overrides).upstream == "cpamp"
    assert simulate(make_deployment(), "/img/a.gif", overrides).upstream == "cpa"


def test_the_longest_prefix_wins():
    overrides = [override("prefix", "/v0/management/usage", "cpa")]
    assert simulate(make_deployment(), "/v0/management/usage/x", overrides).upstream == "cpa"
    assert simulate(make_deployment(), "/v0/management/config", overrides).upstream == "cpamp"


def test_cpa_panel_mode_sends_everything_to_cpa():
    deployment = make_deployment(mode="cpa_panel")
    for raw in ("/management.html", "/v0/management/config", "/models", "/v1/models"):
        assert simulate(deployment, raw, []).upstream == "cpa"


def test_it_uses_the_deployments_enabled_overrides(deployment):
    RouteOverride.objects.create(deployment=deployment, match="prefix", path="/a/", target="cpamp")
    RouteOverride.objects.create(
        deployment=deployment, match="prefix", path="/b/", target="cpamp", enabled=False
    )
    assert simulate(deployment, "/a/x").upstream == "cpamp"
    assert simulate(deployment, "/b/x").upstream == "cpa"


# --- Agreement with real nginx --------------------------------------------------------------

# Overrides of all four match types, chosen to exercise nginx's rules: a prefix shadowing part
# of a built-in, prefixes that share a stem ("/a-", "/a/", exact "/a."), an exact location
# ending in "/", regexes never reached behind ^~, and case-insensitive regexes.
OVERRIDES_A = [
    ("exact", "/exact/thing", "cpamp"),
    ("exact", "/foo/", "cpamp"),
    ("exact", "/v0/management", "cpamp"),
    ("exact", "/a.", "cpamp"),
    ("exact", "/config-x", "cpa"),
    ("prefix", "/config", "cpamp"),
    ("prefix", "/config/", "cpa"),
    ("prefix", "/v1/chat/", "cpamp"),
    ("prefix", "/a-", "cpamp"),
    ("prefix", "/a/", "cpa"),
    ("prefix", "/a/b/", "cpamp"),
    ("regex", r"^/threads/\d+$", "cpamp"),
    ("regex", "^/v1/special", "cpamp"),
    ("regex", "^/hea", "cpamp"),
    ("regex", "^/models/", "cpamp"),
    ("regex", "^/a", "cpamp"),
    ("regex_i", r"\.PNG$", "cpamp"),
    ("regex_i", "^/CONFIG", "cpa"),
    ("regex_i", "^/DOCS/", "cpamp"),
]
OVERRIDES_B = [
    ("exact", "/x", "cpamp"),
    ("prefix", "/", "cpa"),
    ("regex_i", "^/ASSETS/", "cpamp"),
    ("regex", "z$", "cpamp"),
]
SEED_PATHS = [
    "/",
    "/management.html",
    "/health",
    "/status",
    "/setup",
    "/usage-service/",
    "/usage-service/info",
    "/v0/management/",
    "/v0/management/config",
    "/v0/resource/plugins/",
    "/v0/resource/plugins/p/index.js",
    "/models",
    "/v1/",
    "/v1/models",
    "/v1beta/",
    "/v1beta/models/g:generateContent",
    "/backend-api/codex/",
    "/backend-api/codex/responses",
    "/api/",
    "/api/provider/openai/v1/chat/completions",
    "/v1internal:method",
    "/healthz",
    "/anthropic/callback",
    "/codex/callback",
    "/google/callback",
    "/antigravity/callback",
]
OVERRIDE_PATHS = [
    "/exact/thing",
    "/foo/",
    "/config",
    "/config/",
    "/config-x",
    "/configs",
    "/v1/chat/",
    "/v1/chat/completions",
    "/v1/special",
    "/threads/12",
    "/threads/x",
    "/hea",
    "/heal",
    "/models/x",
    "/a",
    "/a-",
    "/a-b",
    "/a/",
    "/a/b/",
    "/a.",
    "/img.PNG",
    "/IMG.png",
    "/docs/x",
    "/DOCS/x",
    "/x",
    "/assets/x",
    "/buzz",
]
EDGE_PATHS = [
    "/..",
    "/a/..",
    "/a/../..",
    "/%2e%2e/",
    "/a/%2e%2e/v1/x",
    "/a%2F..%2Fv1/x",
    "/v1%2F",
    "/v1%2f..",
    "/v1#/",
    "/v1%3F",
    "/v1%23",
    "/a%",
    "/a%4",
    "/a%zz",
    "/a%00",
    "/%76%31/models",
    "/V1/models",
    "/v1/./models",
    "//v1//models",
    "/x/../../v1",
    "/a/./b/../config",
    "/config?x=1#y",
    "/foo?x",
    "/v0/management?x=1",
    "/%2F%2Fv1/x",
    "/é",
    "/v1/é",
]
PIECES = [
    "/", "//", ".", "..", "/.", "/..", "%2e", "%2F", "%25", "%41", "?q=1", "#f",
    "v1", "v0", "management", "config", "a", "a-", "a.", "b", "foo", "threads", "12",
    "PNG", ".png", "models", "health", "docs", "DOCS", "x", "z", "-",
]  # fmt: skip


def corpus() -> list[str]:
    """Return the requests both nginx and the simulator answer (deterministic, >= 200)."""
    paths = SEED_PATHS + OVERRIDE_PATHS + EDGE_PATHS
    for path in SEED_PATHS + OVERRIDE_PATHS:
        stripped = path.rstrip("/")
        paths += [stripped or "/", path + "x", path + "?k=v", "/" + path, path.upper()]
    rng = random.Random(20240601)
    for _ in range(150):
        paths.append("/" + "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 5))))
    return list(dict.fromkeys(paths))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port: int, target: str) -> tuple[int, dict[str, str], str]:
    """Send target exactly as written (no client-side normalisation) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET " + target.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _sep, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _colon, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body.decode("latin-1")


def _expected(result) -> tuple:
    if result.status is None:
        return ("proxied", result.upstream)
    if result.status in (301, 302):
        return (result.status, result.redirect)
    return (result.status,)


def _observed(status: int, headers: dict[str, str], body: str) -> tuple:
    if status == 200:
        # Route tracing must name the upstream that really answered.
        assert headers.get("x-console-upstream") == body
        return ("proxied", body)
    if status in (301, 302):
        location = urlsplit(headers["location"])
        return (status, location.path + (f"?{location.query}" if location.query else ""))
    return (status,)


@pytest.mark.nginx
def test_the_simulator_agrees_with_real_nginx_on_every_request_of_the_corpus(tmp_path):
    requests = corpus()
    assert len(requests) >= 200
    with identify_servers("cpa", "cpamp") as upstreams:
        sites = []
        for pk, (mode, overrides) in enumerate(
            [("manager_server", OVERRIDES_A), ("cpa_panel", OVERRIDES_B)], start=1
        ):
            deployment = make_deployment(
                pk=pk,
                slug=f"site{pk}",
                server_name=f"site{pk}.example.com",
                mode=mode,
                listen_address="127.0.0.1",
                http_port=_free_port(),
                cpa_upstream=upstreams["cpa"].address,
                cpamp_upstream=upstreams["cpamp"].address,
            )
            rows = [override(m, p, t, i) for i, (m, p, t) in enumerate(overrides)]
            assert {m for m, _p, _t in overrides} == {
                "exact",
                "prefix",
                "regex",
                "regex_i",
            } or pk == 2
            (tmp_path / site_filename(deployment)).write_text(render_site(deployment, rows))
            sites.append((deployment, rows))
        (tmp_path / COMMON_FILENAME).write_text(render_common())
        listening = [("127.0.0.1", d.http_port) for d, _rows in sites]
        mismatches = []
        with running_nginx(Path(tmp_path), wait_for=listening):
            for deployment, rows in sites:
                for target in requests:
                    expected = _expected(simulate(deployment, target, rows))
                    observed = _observed(*_request(deployment.http_port, target))
                    if expected != observed:
                        mismatches.append((deployment.slug, target, expected, observed))
    assert mismatches == []
