"""gixy-next on every exported variant: nothing but the findings routes/nginx/gixy.py explains.

gixy-next is a development dependency (requirements-dev.txt), so CI always runs these; they skip
only where it is not installed. The config page shows what it found next to the console's lint,
run by "Test with nginx" (a POST) and stored with the nginx test of that config.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from routes.models import HOST_PRESET, Deployment, NginxTest, RouteOverride, Team
from routes.nginx import gixy, render
from routes.nginx.export import render_files

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not gixy.installed(), reason="gixy-next is not installed"),
]
TEAM = Team(pk=1, name="Ops", slug="ops")
TLS = {
    "tls": True,
    "ssl_certificate": "/etc/nginx/ssl/api.example.com/fullchain.pem",
    "ssl_certificate_key": "/etc/nginx/ssl/api.example.com/privkey.pem",
}
HOST = {name: HOST_PRESET[name] for name in ("cpa_upstream", "cpamp_upstream", "cpamp_cpa_url")}
OVERRIDES = [
    ("prefix", "/config", "cpamp"),
    ("exact", "/logs", "cpamp"),
    ("regex", r"^/threads/\d+$", "cpa"),
    ("regex_i", r"\.png$", "cpamp"),
    ("prefix", "/v0/resource/plugins/", "cpa"),
]
VARIANTS = {
    "http": {},
    "https": TLS,
    "docker": {},
    "host": HOST,
    "cpa-panel": {"mode": "cpa_panel"},
    "overrides": {},
    "behind-proxy": {"client_ip": "behind_proxy", "trusted_proxies": "10.0.0.0/8 2001:db8::/32"},
    "limit-req": {"limit_req_rate": "5r/s"},
    "acme": {**TLS, "acme_webroot": "/var/www/certbot"},
    "everything": {
        **TLS,
        **HOST,
        "client_ip": "behind_proxy",
        "trusted_proxies": "192.168.0.0/16",
        "limit_req_rate": "300r/m",
        "acme_webroot": "/var/www/certbot",
        "listen_address": "::1",
        "https_port": 8443,
    },
}
# Findings a variant must show: the accepted ones, so a stale allow-list entry fails.
EXPECTED = {"host": {"stale_dns_cache"}, "everything": {"stale_dns_cache"}}


def make_deployment(name: str, pk: int = 1, **fields) -> Deployment:
    values = {"pk": pk, "slug": f"d-{name}", "name": name, "team": TEAM}
    values["server_name"] = f"{name}.example.com"
    values.update(VARIANTS.get(name, {}))
    values.update(fields)
    return Deployment(**values)


def overrides(deployment: Deployment) -> list[RouteOverride]:
    return [
        RouteOverride(pk=n + 1, deployment=deployment, match=m, path=p, target=t, position=n)
        for n, (m, p, t) in enumerate(OVERRIDES)
    ]


def files_of(*deployments: Deployment, default_server: bool = False) -> dict[str, str]:
    files = {}
    for d in deployments:
        rows = overrides(d) if d.name == "overrides" else []
        files[render.site_filename(d)] = render.render_site(d, rows)
    files[render.COMMON_FILENAME] = render.render_common(
        [d.server_name for d in deployments],
        sites=list(files.values()),
        default_server=default_server,
    )
    return files


@pytest.mark.parametrize("default_server", [False, True], ids=["plain", "default-server"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_exported_variant_has_no_unexplained_finding(name, default_server):
    report = gixy.lint_files(files_of(make_deployment(name), default_server=default_server))
    assert report.available and not report.error, report.error
    assert report.unexplained == []
    plugins = {f.plugin for f in report.findings}
    assert plugins == {"proxy_buffering_off", *EXPECTED.get(name, set())}


def test_a_directory_of_deployments_needs_the_default_server_or_the_accepted_reason():
    many = [make_deployment(name, pk=n + 1) for n, name in enumerate(["http", "host", "https"])]
    shared = gixy.lint_files(files_of(*many))
    assert "default_server_flag" in {f.plugin for f in shared.findings}
    assert shared.unexplained == []
    owned = gixy.lint_files(files_of(*many, default_server=True))
    assert "default_server_flag" not in {f.plugin for f in owned.findings}
    assert owned.unexplained == []


def test_every_accepted_finding_is_needed_and_says_why():
    seen = set()
    for name in VARIANTS:
        seen |= {f.plugin for f in gixy.lint_files(files_of(make_deployment(name))).findings}
    many = [make_deployment("http", pk=1), make_deployment("https", pk=2)]
    seen |= {f.plugin for f in gixy.lint_files(files_of(*many)).findings}
    assert set(gixy.ACCEPTED) <= seen
    assert all(len(reason) > 40 for reason in gixy.ACCEPTED.values())


def test_a_finding_the_console_does_not_explain_is_reported():
    # The control: without server_tokens off, gixy-next flags the version disclosure.
    files = files_of(make_deployment("http"))
    name = render.site_filename(make_deployment("http"))
    files[name] = files[name].replace("    server_tokens off;\n", "")
    report = gixy.lint_files(files)
    (finding,) = report.unexplained
    assert (finding.plugin, finding.file, finding.accepted) == ("version_disclosure", name, "")


def test_a_hung_gixy_ends_in_a_report_not_an_exception(monkeypatch):
    report = gixy.lint_files(files_of(make_deployment("http")), timeout=0.001)
    assert report.available and "did not finish" in report.error


def test_test_with_nginx_stores_the_findings_and_the_page_shows_them(client, operator, team):
    deployment = Deployment.objects.create(
        slug="prod", name="Production", team=team, server_name="api.example.com"
    )
    client.force_login(operator)
    page = reverse("admin:routes_deployment_config", args=[deployment.pk])
    before = client.get(page).content.decode()
    assert "gixy-next has not linted this config yet" in before
    client.post(reverse("admin:routes_deployment_config_test", args=[deployment.pk]))
    test = NginxTest.objects.get(deployment=deployment)
    report = gixy.Report.from_json(test.gixy)
    assert [f.plugin for f in report.findings] == ["proxy_buffering_off"]
    assert report.findings == gixy.lint_files(render_files([deployment])).findings
    after = client.get(page).content.decode()
    section = after.split('id="gixy-findings"')[1].split("</div>")[0]
    assert "proxy_buffering_off" in section and "server-sent events" in section
    assert "not explained" not in section
