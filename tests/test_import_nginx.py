"""import_nginx and the upload page: a hand-written config of the seed's shape becomes a deployment.

The seed's own HTTP and HTTPS examples (tests/data/seed_http.conf, seed_https.conf, rebuilt from
the seed here) import to the right deployment, and their export routes every request of the
routing corpus (tests/test_simulate.py) exactly as the original does under real nginx. Anything
that cannot be mapped is reported with file and line, and then nothing is imported.
"""

from __future__ import annotations

import http.client
import io
import os
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core import signing
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from routes.admin import adopt_page
from routes.models import AuditEvent, Deployment, Key, RouteOverride, VerificationJob
from routes.nginx.adopt import propose, strip_comments
from routes.nginx.export import render_files
from routes.nginx.render import render_site
from routes.nginx.sandbox import running_nginx
from routes.workflows.keys import set_key
from tests.fakes.identify import identify_servers
from tests.fakes.stack import free_port, self_signed
from tests.test_hostile_inputs import finishes_within
from tests.test_portable import snapshot_everything
from tests.test_simulate import corpus

DATA = Path(__file__).parent / "data"
SEED_HTTP = DATA / "seed_http.conf"
SEED_HTTPS = DATA / "seed_https.conf"
SEED_DOC = Path(__file__).resolve().parents[2] / "shared" / "seed" / "reverse-proxy.md"
SERVER_NAME = "your-domain.com"
IMPORT_URL = "admin:routes_deployment_import_nginx"

# Every line of MESSY that the console cannot carry over, by line number and finding code.
MESSY = """\
upstream cpa_api { server 127.0.0.1:8317; }
upstream cpamp { server 127.0.0.1:18317; }
server {
    listen 80;
    server_name api.example.com;
    client_max_body_size 128m;
    proxy_set_header Authorization "Bearer sk-import-secret-4711";
    gzip on;
    include /etc/nginx/snippets/extra.conf;
    location = / { return 302 /management.html; }
    location ^~ /config { proxy_pass http://cpamp; }
    location ~ (a+)+$ { proxy_pass http://cpamp; }
    location ^~ /old/ { proxy_pass http://127.0.0.1:9000/new/; }
    location / {
        proxy_pass http://cpa_api;
        if ($http_x_block) { return 403; }
    }
}
"""
MESSY_LINES = {
    (7, "header"),
    (8, "directive"),
    (9, "include"),
    (12, "location_path"),
    (13, "proxy_pass_uri"),
    (16, "directive"),
}


def seed_text(path: Path) -> str:
    """Return a seed example without the comment lines that name its source."""
    lines = path.read_text().splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "".join(lines)


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_nginx", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def refused(*args: str, returncode: int = 1) -> tuple[CommandError, str, str]:
    """Run import_nginx expecting refusal; return the error, its output and its problem lines."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("import_nginx", *args, stdout=out, stderr=err)
    assert caught.value.returncode == returncode
    return caught.value, out.getvalue(), err.getvalue()


def write(tmp_path: Path, text: str | bytes, name: str = "site.conf") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


# --- The seed's examples ---------------------------------------------------------------------


@pytest.mark.skipif(not SEED_DOC.exists(), reason="the seed's guide is not next to the project")
def test_the_data_files_are_the_seeds_examples():
    doc = SEED_DOC.read_text()
    start = doc.index("Site config:\n\nnginx\n") + len("Site config:\n\nnginx\n")
    http_example = doc[start : doc.index("\n}\n\nHTTPS\n", start) + 3]
    start = doc.index("nginx\nserver {\n    listen 443 ssl http2;") + len("nginx\n")
    tls_server, redirect = doc[start : doc.index("\n}\n\nIn production", start) + 3].split(
        "\n}\n\n"
    )
    # "Keep the same proxy_set_header and location blocks as above."
    tls_head = tls_server.split("\n\n    # Keep")[0] + "\n"
    http_head = f"server {{\n    listen 80;\n    server_name {SERVER_NAME};\n"
    https_example = http_example.replace(http_head, tls_head, 1) + "\n" + redirect
    assert seed_text(SEED_HTTP) == http_example
    assert seed_text(SEED_HTTPS) == https_example


def test_the_seeds_http_example_imports_as_the_docker_deployment(team):
    out, _err = run(str(SEED_HTTP), "--slug", "prod", "--team", "ops", "--name", "Production")
    prod = Deployment.objects.get(slug="prod")
    assert (prod.name, prod.team, prod.mode, prod.server_name) == (
        "Production",
        team,
        "manager_server",
        SERVER_NAME,
    )
    assert (prod.tls, prod.http_port, prod.listen_address) == (False, 80, "")
    assert (prod.cpa_upstream, prod.cpamp_upstream, prod.cpamp_cpa_url) == (
        "cli-proxy-api:8317",
        "cpa-manager-plus:18317",
        "http://cli-proxy-api:8317",
    )
    assert (prod.client_max_body_size, prod.proxy_read_timeout, prod.proxy_send_timeout) == (
        "64m",
        3600,
        3600,
    )
    # Every location of the seed is one of the built-in routes: nothing is stored.
    assert not prod.overrides.exists()
    assert "seed_http.conf:79: location / -> CPA" in out
    assert "seed_http.conf:37: location = /management.html -> CPAMP" in out
    assert "prod: created" in out
    event = AuditEvent.objects.get(action="deployment.import")
    assert (event.object_id, event.actor_label) == (str(prod.pk), "command")


def test_the_seeds_https_example_imports_with_tls_and_its_certificate_paths(team):
    run(str(SEED_HTTPS), "--slug", "prod", "--team", "ops")
    prod = Deployment.objects.get(slug="prod")
    assert (prod.tls, prod.https_port, prod.http_port, prod.http2) == (True, 443, 80, True)
    assert prod.ssl_certificate == "/etc/nginx/ssl/your-domain.com/fullchain.pem"
    assert prod.ssl_certificate_key == "/etc/nginx/ssl/your-domain.com/privkey.pem"
    assert (prod.mode, prod.client_max_body_size) == ("manager_server", "64m")
    assert not prod.overrides.exists()


def test_the_seeds_host_upstreams_give_the_host_topology(team, tmp_path):
    text = seed_text(SEED_HTTP).replace("cli-proxy-api:8317", "127.0.0.1:8317")
    text = text.replace("cpa-manager-plus:18317", "127.0.0.1:18317")
    run(write(tmp_path, text), "--slug", "host", "--team", "ops")
    host = Deployment.objects.get(slug="host")
    assert (host.cpa_upstream, host.cpamp_upstream, host.cpamp_cpa_url) == (
        "127.0.0.1:8317",
        "127.0.0.1:18317",
        "http://127.0.0.1:8317",
    )


def test_a_config_that_proxies_everything_to_cpa_is_cpa_panel_mode(team, tmp_path):
    text = (
        "server {\n    listen 8080;\n    server_name panel.example.com;\n"
        "    location / { proxy_pass http://127.0.0.1:8317; }\n}\n"
    )
    out, _err = run(write(tmp_path, text), "--slug", "panel", "--team", "ops")
    panel = Deployment.objects.get(slug="panel")
    assert (panel.mode, panel.http_port, panel.cpa_upstream) == (
        "cpa_panel",
        8080,
        "127.0.0.1:8317",
    )
    # What the file did not say keeps nginx's behaviour, and what the console adds is listed.
    assert (panel.client_max_body_size, panel.proxy_read_timeout) == ("1m", 60)
    assert "location = /management.html -> CPA: the seed's route, not in this file" in out


def test_the_docker_form_with_variables_resolved_per_request_imports(team, tmp_path):
    text = """\
server {
    listen 80;
    server_name api.example.com;
    resolver 127.0.0.11 valid=10s ipv6=off;
    set $cpa_upstream cli-proxy-api:8317;
    set $cpamp_upstream cpa-manager-plus:18317;
    location = /management.html { proxy_pass http://$cpamp_upstream; }
    location ^~ /v0/management/ {
        set $panel cpa-manager-plus:18317;
        proxy_pass http://$panel;
    }
    location / { proxy_pass http://$cpa_upstream; }
}
"""
    out, _err = run(write(tmp_path, text), "--slug", "docker", "--team", "ops")
    docker = Deployment.objects.get(slug="docker")
    assert (docker.mode, docker.cpa_upstream, docker.cpamp_upstream, docker.resolver) == (
        "manager_server",
        "cli-proxy-api:8317",
        "cpa-manager-plus:18317",
        "127.0.0.11",
    )
    assert not docker.overrides.exists()
    assert "site.conf:5: set $cpa_upstream: an upstream" in out


def test_a_location_with_only_some_of_the_seeds_headers_is_reported(team, tmp_path):
    text = seed_text(SEED_HTTP).replace(
        "location = /healthz              { proxy_pass http://cpa_api; }",
        "location = /healthz { proxy_set_header Host $host; proxy_pass http://cpa_api; }",
    )
    line = (
        text.splitlines().index(
            "    location = /healthz { proxy_set_header Host $host; proxy_pass http://cpa_api; }"
        )
        + 1
    )
    assert {(f.line, f.code) for f in propose(text).unmapped} == {(line, "some_headers")}


def test_a_route_of_the_file_that_an_added_seed_route_would_take_over_is_reported(team, tmp_path):
    # Without the seed's ^~ /v1/, this regex answers /v1/special; with it, it never would.
    text = seed_text(SEED_HTTP).replace(
        "    location ^~ /v1/                 { proxy_pass http://cpa_api; }\n",
        "    location ~ ^/v1/special { proxy_pass http://cpamp; }\n",
    )
    line = text.splitlines().index("    location ~ ^/v1/special { proxy_pass http://cpamp; }") + 1
    found = propose(text).unmapped
    assert [(f.line, f.code) for f in found] == [(line, "routing")]
    assert "this file sends it to CPAMP, the deployment would send it to CPA" in found[0].text
    # Paths the file leaves to its fallback may go to the seed's route it lacks.
    unclaimed = seed_text(SEED_HTTP).replace(
        "    location ^~ /v1/                 { proxy_pass http://cpa_api; }\n", ""
    )
    assert propose(unclaimed).mapped


def test_locations_outside_the_built_in_table_become_overrides_that_say_where_they_came_from(
    team, tmp_path
):
    text = seed_text(SEED_HTTP).replace(
        "    # Fallback to CPA\n",
        "    location ^~ /config { proxy_pass http://cpamp; }\n"
        '    location ~* "\\.png$" { proxy_pass http://cpamp; }\n'
        "    location = /v1/models { proxy_pass http://cpamp; }\n"
        "    # Fallback to CPA\n",
    )
    line = text.splitlines().index("    location ^~ /config { proxy_pass http://cpamp; }") + 1
    out, _err = run(write(tmp_path, text), "--slug", "prod", "--team", "ops")
    rows = list(
        RouteOverride.objects.filter(deployment__slug="prod").values_list(
            "match", "path", "target", "position", "note"
        )
    )
    assert rows == [
        ("prefix", "/config", "cpamp", 0, f"imported from site.conf:{line}"),
        ("regex_i", r"\.png$", "cpamp", 1, f"imported from site.conf:{line + 1}"),
        ("exact", "/v1/models", "cpamp", 2, f"imported from site.conf:{line + 2}"),
    ]
    assert f"site.conf:{line}: prefix /config -> cpamp (position 0)" in out
    # The lint runs on the result: /v1/models to CPAMP breaks the seed's API boundary.
    assert "Lint warnings:" in out and "/v1/models" in out.split("Lint warnings:")[1]


def test_an_override_of_a_built_in_path_replaces_it(team, tmp_path):
    text = seed_text(SEED_HTTP).replace(
        "location ^~ /v1/                 { proxy_pass http://cpa_api; }",
        "location ^~ /v1/                 { proxy_pass http://cpamp; }",
    )
    run(write(tmp_path, text), "--slug", "prod", "--team", "ops")
    override = RouteOverride.objects.get(deployment__slug="prod")
    assert (override.match, override.path, override.target) == ("prefix", "/v1/", "cpamp")


def test_a_console_export_imports_back_to_the_same_definition(team, tmp_path):
    source = Deployment.objects.create(
        slug="src",
        name="Source",
        team=team,
        server_name="api.example.com",
        client_max_body_size="32m",
        proxy_read_timeout=600,
    )
    RouteOverride.objects.create(deployment=source, match="prefix", path="/config", target="cpamp")
    RouteOverride.objects.create(
        deployment=source, match="regex", path=r"^/threads/\d+$", target="cpamp", position=1
    )
    run(write(tmp_path, render_site(source)), "--slug", "copy", "--team", "ops")
    copy = Deployment.objects.get(slug="copy")
    for name in ("mode", "server_name", "cpa_upstream", "cpamp_upstream", "resolver"):
        assert getattr(copy, name) == getattr(source, name), name
    assert (copy.client_max_body_size, copy.proxy_read_timeout) == ("32m", 600)
    assert list(copy.overrides.values_list("match", "path", "target")) == [
        ("prefix", "/config", "cpamp"),
        ("regex", r"^/threads/\d+$", "cpamp"),
    ]


# --- Round trip under real nginx -------------------------------------------------------------

CLIENT_TLS = ssl.create_default_context()
CLIENT_TLS.check_hostname = False
CLIENT_TLS.verify_mode = ssl.CERT_NONE


def on_loopback(text: str, upstreams, *, http_port: int, https_port: int, cert: Path, key: Path):
    """Return a seed example served on loopback ports with the identify servers as upstreams."""
    replacements = {
        "server cli-proxy-api:8317;": f"server {upstreams['cpa'].address};",
        "server cpa-manager-plus:18317;": f"server {upstreams['cpamp'].address};",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "/etc/nginx/ssl/your-domain.com/fullchain.pem": str(cert),
        "/etc/nginx/ssl/your-domain.com/privkey.pem": str(key),
        "https://$host$request_uri": f"https://$host:{https_port}$request_uri",
    }
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def answer(port: int, target: str, *, tls: bool) -> tuple:
    """Send target exactly as written; return what routing decided: status, upstream, redirect."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        sock = CLIENT_TLS.wrap_socket(sock, server_hostname=SERVER_NAME)
    with sock:
        sock.sendall(
            b"GET " + target.encode() + b" HTTP/1.1\r\nHost: " + SERVER_NAME.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read().decode("latin-1")
    location = response.getheader("Location")
    # The two sites listen on different ports: a redirect is compared without its authority.
    moved = urlsplit(location)[0:1] + urlsplit(location)[2:4] if location else None
    return response.status, body if response.status == 200 else None, moved


@pytest.mark.nginx
@pytest.mark.parametrize("example", [SEED_HTTP, SEED_HTTPS], ids=["http", "https"])
def test_the_imported_seed_example_routes_every_request_as_the_original(team, tmp_path, example):
    tls = example == SEED_HTTPS
    cert, key = self_signed(tmp_path, SERVER_NAME)
    requests = corpus()
    with identify_servers("cpa", "cpamp") as upstreams:
        ports = {name: free_port() for name in ("http", "https", "orig_http", "orig_https")}
        imported = on_loopback(
            seed_text(example), upstreams, http_port=ports["http"], https_port=ports["https"],
            cert=cert, key=key,
        )  # fmt: skip
        run(write(tmp_path, imported), "--slug", "prod", "--team", "ops")
        prod = Deployment.objects.get(slug="prod")
        assert (prod.cpa_upstream, prod.cpamp_upstream, prod.tls) == (
            upstreams["cpa"].address,
            upstreams["cpamp"].address,
            tls,
        )
        conf = tmp_path / "conf.d"
        conf.mkdir()
        for name, text in render_files([prod]).items():
            (conf / name).write_text(text)
        original = on_loopback(
            seed_text(example), upstreams, http_port=ports["orig_http"],
            https_port=ports["orig_https"], cert=cert, key=key,
        )  # fmt: skip
        (conf / "seed.conf").write_text(original)
        pairs = [(ports["orig_http"], ports["http"], False)]
        if tls:
            pairs.append((ports["orig_https"], ports["https"], True))
        listening = [("127.0.0.1", port) for pair in pairs for port in pair[:2]]
        mismatches = []
        with running_nginx(conf, wait_for=listening):
            for seed_port, export_port, over_tls in pairs:
                for target in requests:
                    was = answer(seed_port, target, tls=over_tls)
                    now = answer(export_port, target, tls=over_tls)
                    if was != now:
                        mismatches.append((target, over_tls, was, now))
            if tls:
                # The port-80 server redirects to the deployment's own HTTPS port.
                redirect = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=5)
                redirect.request("GET", "/v1/models", headers={"Host": SERVER_NAME})
                location = redirect.getresponse().getheader("Location")
                assert location == f"https://{SERVER_NAME}:{ports['https']}/v1/models"
    assert len(requests) >= 200
    assert mismatches == []


# --- What cannot be mapped -------------------------------------------------------------------


def test_unknown_directives_and_locations_are_reported_with_file_and_line_and_nothing_imported(
    team, tmp_path
):
    before = snapshot_everything()
    error, out, err = refused(
        write(tmp_path, MESSY, "messy.conf"), "--slug", "prod", "--team", "ops"
    )
    assert "nothing was imported" in str(error)
    assert snapshot_everything() == before
    found = {(f.line, f.code) for f in propose(MESSY, source="messy.conf").unmapped}
    assert found == MESSY_LINES
    problems = err.splitlines()
    for line, _code in MESSY_LINES:
        assert any(p.startswith(f"prod: messy.conf:{line}: ") for p in problems), line
    assert "include /etc/nginx/snippets/extra.conf" in err
    # The header's name is reported, never its value; no traceback either.
    assert "Authorization" in err
    assert "sk-import-secret-4711" not in out + err + str(error)
    assert "Traceback" not in out + err
    # What did map is still shown, so the operator sees the whole picture.
    assert "messy.conf:11: prefix /config -> cpamp" in out


def test_a_value_the_validators_refuse_names_the_field_the_reason_and_the_line(team, tmp_path):
    text = seed_text(SEED_HTTP).replace("client_max_body_size 64m;", "client_max_body_size 64x;")
    line = text.splitlines().index("    client_max_body_size 64x;") + 1
    _error, _out, err = refused(write(tmp_path, text), "--slug", "prod", "--team", "ops")
    assert err.startswith("prod: client_max_body_size: Give a size such as 64m")
    assert f"(site.conf:{line})" in err
    assert not Deployment.objects.exists()


def test_a_proxy_pass_that_is_neither_cpa_nor_cpamp_is_reported(team, tmp_path):
    text = seed_text(SEED_HTTP).replace(
        "    # Fallback to CPA\n",
        "    location ^~ /grafana/ { proxy_pass http://10.0.0.9:3000; }\n",
    )
    _error, _out, err = refused(write(tmp_path, text), "--slug", "prod", "--team", "ops")
    assert "proxy_pass to 10.0.0.9:3000: cannot tell whether it is CPA or CPAMP" in err


def test_a_redirect_server_that_is_not_the_seeds_is_reported(team, tmp_path):
    text = seed_text(SEED_HTTPS).replace("return 301 https://$host$request_uri;", "return 444;")
    _error, _out, err = refused(write(tmp_path, text), "--slug", "prod", "--team", "ops")
    assert "not the seed's HTTP -> HTTPS redirect" in err


def test_a_plain_prefix_that_regex_locations_could_win_is_reported(team, tmp_path):
    text = seed_text(SEED_HTTP).replace(
        "    # Fallback to CPA\n",
        "    location /docs/ { proxy_pass http://cpamp; }\n"
        "    location ~ ^/docs/x { proxy_pass http://cpa_api; }\n",
    )
    _error, _out, err = refused(write(tmp_path, text), "--slug", "prod", "--team", "ops")
    assert "location /docs/: a prefix without ^~ lets regex locations win" in err


# --- Options and scope -----------------------------------------------------------------------


def test_a_dry_run_shows_everything_and_changes_nothing(team):
    before = snapshot_everything()
    out, _err = run(str(SEED_HTTPS), "--slug", "prod", "--team", "ops", "--dry-run")
    assert "prod: would be created (dry run: nothing was changed)" in out
    assert "Recognised:" in out and "Built-in routes (nothing stored):" in out
    assert snapshot_everything() == before


def test_an_existing_slug_is_refused_without_update(team):
    run(str(SEED_HTTP), "--slug", "prod", "--team", "ops")
    before = snapshot_everything()
    _error, _out, err = refused(str(SEED_HTTPS), "--slug", "prod", "--team", "ops")
    assert err.startswith("prod: slug: already exists")
    assert snapshot_everything() == before


def test_update_replaces_the_definition_and_keeps_the_keys(team, tmp_path):
    run(str(SEED_HTTP), "--slug", "prod", "--team", "ops", "--name", "Production")
    prod = Deployment.objects.get(slug="prod")
    set_key(deployment=prod, role="cpa_api", secret="sk-import-keeps-this-key-1")
    prod.notes = "kept"
    prod.save()
    VerificationJob.objects.create(deployment=prod, interval_seconds=300)
    key = Key.objects.get(deployment=prod)
    version = Deployment.objects.get(pk=prod.pk).version
    text = seed_text(SEED_HTTPS).replace("client_max_body_size 64m;", "client_max_body_size 256m;")
    text = text.replace(
        "    # Fallback to CPA\n", "    location ^~ /config { proxy_pass http://cpamp; }\n"
    )
    out, _err = run(write(tmp_path, text), "--slug", "prod", "--team", "ops", "--update")
    assert "prod: updated" in out
    prod = Deployment.objects.get(pk=prod.pk)
    assert (prod.tls, prod.client_max_body_size, prod.name, prod.notes) == (
        True,
        "256m",
        "Production",
        "kept",
    )
    assert prod.version > version
    assert list(prod.overrides.values_list("path", flat=True)) == ["/config"]
    assert Key.objects.get(pk=key.pk).ciphertext == key.ciphertext
    assert VerificationJob.objects.get(deployment=prod).interval_seconds == 300
    assert (
        AuditEvent.objects.filter(action="deployment.import", object_id=str(prod.pk)).count() == 2
    )


def test_update_does_not_reach_a_deployment_of_another_team(team, other_team):
    run(str(SEED_HTTP), "--slug", "prod", "--team", "ops")
    before = snapshot_everything()
    _error, _out, err = refused(str(SEED_HTTPS), "--slug", "prod", "--team", "other", "--update")
    assert "prod: slug: belongs to team ops" in err
    assert snapshot_everything() == before


def test_usage_errors_exit_with_2(team, tmp_path):
    refused(str(SEED_HTTP), "--slug", "prod", "--team", "nope", returncode=2)
    refused(str(tmp_path / "missing.conf"), "--slug", "prod", "--team", "ops", returncode=2)
    with pytest.raises(CommandError, match="--slug"):
        call_command("import_nginx", str(SEED_HTTP), "--team", "ops")


def test_an_invalid_slug_is_refused(team):
    _error, _out, err = refused(str(SEED_HTTP), "--slug", "no slug", "--team", "ops")
    assert err.startswith("no slug: slug: Enter a valid")


# --- Hostile input ---------------------------------------------------------------------------


def test_a_file_over_the_limit_is_refused_without_being_read_whole(team, tmp_path, settings):
    settings.CONSOLE_IMPORT_MAX_BYTES = 2000
    _error, _out, err = refused(write(tmp_path, "#" * 5000), "--slug", "p", "--team", "ops")
    assert "larger than 2000 bytes" in err
    with finishes_within(20):
        error, _out, _err = refused("/dev/zero", "--slug", "p", "--team", "ops", returncode=2)
    assert "/dev/zero: cannot read: not a regular file" in str(error)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not a text file"),
        (b"server {\x00}", "NUL"),
        (b"server {\n    listen 80;\n", 'unexpected end of file, expecting "}"'),
        (b"server {\n    listen 80;\n}\n}\n", 'unexpected "}"'),
        (b"server { listen 80; location / { proxy_pass 'http://x;", "nginx cannot parse"),
        (b"a{" * 5000, "nested too deeply"),
        (b"", "no server {}"),
    ],
    ids=["binary", "nul", "unclosed", "extra-brace", "open-quote", "deep", "empty"],
)
def test_garbage_is_a_clear_error_not_a_traceback(team, tmp_path, data, reason):
    with finishes_within(20):
        error, out, err = refused(write(tmp_path, data), "--slug", "p", "--team", "ops")
    assert reason in err
    assert "Traceback" not in out + err
    assert not Deployment.objects.exists()


def test_a_fifo_never_blocks_the_command(team, tmp_path):
    fifo = tmp_path / "site.conf"
    os.mkfifo(fifo)
    with finishes_within(10):
        error, _out, _err = refused(str(fifo), "--slug", "p", "--team", "ops", returncode=2)
    assert "not a regular file" in str(error)


def test_stdin_is_read_with_a_dash(team, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(SEED_HTTP.read_bytes())))
    out, _err = run("-", "--slug", "prod", "--team", "ops")
    assert "stdin:79: location / -> CPA" in out
    assert Deployment.objects.filter(slug="prod").exists()


# --- The upload page -------------------------------------------------------------------------


def upload(client, path: Path = SEED_HTTPS, **fields):
    data = {"team": fields.pop("team_pk"), "slug": "prod", "name": "", **fields}
    data["config"] = SimpleUploadedFile(path.name, path.read_bytes(), content_type="text/plain")
    return client.post(reverse(IMPORT_URL), data)


def test_an_operator_previews_then_saves(client, operator, team):
    client.force_login(operator)
    page = client.get(reverse(IMPORT_URL))
    assert page.status_code == 200 and b'type="file"' in page.content
    before = snapshot_everything()
    preview = upload(client, team_pk=team.pk, name="Production")
    assert preview.status_code == 200
    content = preview.content.decode()
    assert "seed_https.conf:14" in content and "listen 443 ssl http2" in content
    assert "location = /management.html -&gt; CPAMP" in content
    assert snapshot_everything() == before
    token = preview.context["token"]
    assert token
    saved = client.post(reverse(IMPORT_URL), {"token": token})
    prod = Deployment.objects.get(slug="prod")
    assert saved.status_code == 302
    assert saved.headers["Location"] == reverse("admin:routes_deployment_change", args=[prod.pk])
    assert (prod.tls, prod.name, prod.team) == (True, "Production", team)
    event = AuditEvent.objects.get(action="deployment.import")
    assert event.actor == operator


def test_the_preview_lists_what_cannot_be_mapped_and_offers_no_save(
    client, operator, team, tmp_path
):
    client.force_login(operator)
    path = tmp_path / "messy.conf"
    path.write_text(MESSY)
    preview = upload(client, path, team_pk=team.pk)
    content = preview.content.decode()
    assert preview.context["token"] == ""
    assert 'name="token"' not in content
    for line, _code in MESSY_LINES:
        assert f"messy.conf:{line}" in content
    assert "sk-import-secret-4711" not in content
    assert not Deployment.objects.exists()


def test_the_preview_carries_the_statements_but_not_the_comments(client, operator, team, tmp_path):
    client.force_login(operator)
    path = tmp_path / "site.conf"
    path.write_text(
        seed_text(SEED_HTTP).replace(
            "    # Fallback to CPA\n",
            "    # token for the old proxy: sk-comment-secret-0815\n"
            "    location ^~ /config { proxy_pass http://cpamp; }  # moved to CPAMP\n",
        )
    )
    line = (
        path.read_text()
        .splitlines()
        .index("    location ^~ /config { proxy_pass http://cpamp; }  # moved to CPAMP")
        + 1
    )
    token = upload(client, path, team_pk=team.pk).context["token"]
    carried = signing.loads(token, salt=adopt_page.SALT)["text"]
    assert "sk-comment-secret-0815" not in carried and "moved to CPAMP" not in carried
    assert client.post(reverse(IMPORT_URL), {"token": token}).status_code == 302
    override = RouteOverride.objects.get(deployment__slug="prod")
    assert override.note == f"imported from site.conf:{line}"


@pytest.mark.parametrize(
    "text",
    [
        seed_text(SEED_HTTPS),
        'server { listen 80; server_name a.example.com; # x { "\n'
        '    location ~ "^/a#b" { proxy_pass http://127.0.0.1:8317; } #c\n'
        "    location ~ ^/c\\#d { proxy_pass http://127.0.0.1:8317; }\n"
        "    location = /e#f { proxy_pass http://127.0.0.1:8317; }\n"
        "    location / { proxy_pass http://127.0.0.1:8317; }#;}\n}\n",
    ],
    ids=["seed", "hashes"],
)
def test_stripping_comments_keeps_every_statement_on_its_line(text):
    stripped = strip_comments(text)
    assert "#" not in stripped.replace("^/a#b", "").replace("\\#", "").replace("/e#f", "")
    assert stripped.count("\n") == text.count("\n")
    assert propose(stripped) == propose(text)


def test_a_viewer_may_not_import(client, viewer, team):
    client.force_login(viewer)
    assert client.get(reverse(IMPORT_URL)).status_code == 403
    assert upload(client, team_pk=team.pk).status_code == 403
    assert not Deployment.objects.exists()


def test_another_teams_owner_may_not_import_into_the_team(client, outsider, operator, team):
    client.force_login(outsider)
    response = upload(client, team_pk=team.pk)
    assert response.status_code == 200
    assert "team" in response.context["form"].errors
    # Nor with the preview of someone who may: the token is bound to its user.
    client.force_login(operator)
    token = upload(client, team_pk=team.pk).context["token"]
    client.force_login(outsider)
    assert client.post(reverse(IMPORT_URL), {"token": token}).status_code == 403
    assert not Deployment.objects.exists()


def test_a_changed_token_is_refused(client, operator, team):
    client.force_login(operator)
    token = upload(client, team_pk=team.pk).context["token"]
    response = client.post(reverse(IMPORT_URL), {"token": token[:-2] + "xx"})
    assert response.status_code == 302
    assert response.headers["Location"] == reverse(IMPORT_URL)
    assert not Deployment.objects.exists()


def test_the_page_refuses_a_huge_upload(client, operator, team, settings, tmp_path):
    settings.CONSOLE_IMPORT_MAX_BYTES = 1000
    client.force_login(operator)
    response = upload(client, SEED_HTTPS, team_pk=team.pk)
    assert "config" in response.context["form"].errors
    assert not Deployment.objects.exists()


def test_the_deployment_list_links_to_the_page_for_operators(client, operator, viewer, team):
    client.force_login(operator)
    changelist = reverse("admin:routes_deployment_changelist")
    assert reverse(IMPORT_URL).encode() in client.get(changelist).content
    client.force_login(viewer)
    assert reverse(IMPORT_URL).encode() not in client.get(changelist).content
