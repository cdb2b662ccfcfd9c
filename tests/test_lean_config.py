"""The exported config is as lean as the seed's and scales with the deployments (issue 14).

- the default deployment's site file is at most 1.3x the seed's site config in lines;
- the proxy headers and settings are written once per server; a location carries only what
  differs (where it proxies to); the upstreams are set once per server;
- nothing nginx keeps nginx-wide (variables, maps, upstream blocks, zones, the session cache)
  is named after a deployment, so those tables stay the same size however many deployments one
  nginx serves (bench/bench_nginx_scale.py measures nginx -t at 1,000 and 10,000);
- the comments say only what is true (add_header and proxy_set_header inherit separately).
"""

from __future__ import annotations

import re
from pathlib import Path

import crossplane
import pytest

from routes.models import HOST_PRESET, Deployment, RouteOverride, Team
from routes.nginx import render
from tests.test_import_nginx import SEED_DOC, SEED_HTTP, seed_text

TEAM = Team(pk=1, name="Ops", slug="ops")
BOUND = 1.3
# Directives whose names nginx keeps in tables of the whole http {} block.
GLOBAL_NAMES = re.compile(
    r"^\s*(?:set|map\s+\S+)\s+(\$\w+)|^upstream\s+(\S+)|zone=(\w+)|shared:(\w+)", re.M
)


def seed_site_config() -> str:
    """Return the seed's "Site config:" block (the guide when it is here, else its copy)."""
    if SEED_DOC.exists():
        doc = SEED_DOC.read_text()
        start = doc.index("Site config:\n\nnginx\n") + len("Site config:\n\nnginx\n")
        return doc[start : doc.index("\n}\n\nHTTPS\n", start) + 3]
    return seed_text(SEED_HTTP)


def parse(text: str, tmp_path: Path) -> list[dict]:
    path = tmp_path / "site.conf"
    path.write_text(text)
    result = crossplane.parse(str(path), single=True, comments=False, check_ctx=False)
    assert result["status"] == "ok", result["errors"]
    return result["config"][0]["parsed"]


def variants() -> list[tuple[Deployment, list[RouteOverride]]]:
    tls = {"tls": True, "ssl_certificate": "/c.pem", "ssl_certificate_key": "/k.pem"}
    host = {k: HOST_PRESET[k] for k in ("cpa_upstream", "cpamp_upstream", "cpamp_cpa_url")}
    rows = [
        RouteOverride(pk=1, match="prefix", path="/config", target="cpamp"),
        RouteOverride(pk=2, match="regex", path=r"^/threads/\d+$", target="cpamp", position=1),
        RouteOverride(pk=3, match="prefix", path="/v0/management/usage", target="cpa", position=2),
    ]
    fields = [
        {},
        tls,
        host,
        {"mode": "cpa_panel"},
        {"client_ip": "behind_proxy", "trusted_proxies": "10.0.0.0/8"},
        {**tls, "acme_webroot": "/var/www/certbot", "limit_req_rate": "5r/s"},
    ]
    return [
        (
            Deployment(
                pk=n + 1,
                slug=slug,
                name=slug,
                team=TEAM,
                server_name=f"site{n}.example.com",
                **extra,
            ),
            rows if n % 2 else [],
        )
        for n, (slug, extra) in enumerate(
            zip(["a-b", "a_b", "prod", "x9", "Z", "d00001"], fields, strict=True)
        )
    ]


def test_the_default_site_file_is_at_most_1_3_times_the_seeds_config():
    seed = seed_site_config().splitlines()
    assert seed[0] == "upstream cpa_api {" and seed[-1] == "}"
    site = render.render_site(Deployment(slug="prod", name="P", server_name="your-domain.com"), [])
    assert len(site.splitlines()) <= BOUND * len(seed), (len(site.splitlines()), len(seed))


@pytest.mark.parametrize("index", range(len(variants())))
def test_the_server_sets_the_headers_and_the_upstreams_once_and_a_location_only_its_target(
    index, tmp_path
):
    deployment, rows = variants()[index]
    text = render.render_site(deployment, rows)
    main = parse(text, tmp_path)[0]["block"]
    targets = {"http://$console_cpa", "http://$console_cpamp"}
    assert [d["args"] for d in main if d["directive"] == "proxy_set_header"] == [
        list(pair) for pair in render.HEADER_SET
    ]
    assert text.count("proxy_set_header") == len(render.HEADER_SET)
    sets = [d["args"][0] for d in main if d["directive"] == "set"]
    assert len(sets) == len(set(sets)) and text.count("    set $") == len(sets)
    for location in (d for d in main if d["directive"] == "location"):
        body = [(d["directive"], d["args"]) for d in location["block"]]
        if body[0][0] == "return":
            assert len(body) == 1
            continue
        *limit, (name, (target,)) = body
        assert name == "proxy_pass" and target in targets
        assert [d for d, _a in limit] in ([], ["limit_req"])


def test_nginx_wide_names_are_the_same_for_every_deployment():
    names: set[str] = set()
    sites = []
    for deployment, rows in variants():
        text = render.render_site(deployment, rows)
        sites.append(text)
        names |= {next(g for g in m.groups() if g) for m in GLOBAL_NAMES.finditer(text)}
        assert deployment.slug not in text.replace(f"deployment {deployment.slug} ", "")
    # One zone per rate (not per deployment) and one TLS session cache.
    assert names == {"$console_cpa", "$console_cpamp", "console_5r_s", "console_tls"}
    common = render.render_common([f"d{n}.example.com" for n in range(1000)], sites=sites * 100)
    assert common == render.render_common(["d0.example.com"], sites=sites)


def test_the_comments_say_what_nginx_does():
    text = render.render_site(Deployment(slug="prod", name="P", server_name="a.example.com"), [])
    # The old header claimed a location's add_header or proxy_set_header drops both kinds.
    assert "drops every inherited one" not in text
    assert "proxy_set_header" not in "".join(
        line for line in text.splitlines() if line.strip().startswith("#")
    )
