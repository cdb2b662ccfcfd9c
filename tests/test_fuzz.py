"""Hostile-input fuzzing of the importer, the admin forms and the renderer (issue 5).

Properties:
- an import either succeeds or is refused with ImportFailed, and a refused import changes nothing;
- every accepted input renders a config that real nginx accepts and that holds only the directives
  the renderer means to write, with the locations and server name the input asked for;
- no admin form input causes a 500.

The budget is fixed: CONSOLE_FUZZ_EXAMPLES examples per target (default 40).
"""

import copy
import json
import os
import string
import tempfile
from pathlib import Path

import crossplane
import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from routes import portable
from routes.models import Deployment, RouteOverride, Team
from routes.nginx import export, render
from routes.nginx.boundaries import BUILTIN_ROUTES

EXAMPLES = int(os.environ.get("CONSOLE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# The example deployment, the valid starting point every mutation departs from.
VALID = json.loads((Path(__file__).parent / "data" / "issue-example.json").read_text())[
    "deployments"
][0]

# Fragments that would end a directive, open a block, start a comment, quote or inject.
HOSTILE = [
    ";",
    "{",
    "}",
    "#",
    '"',
    "'",
    "\\",
    "\n",
    "\r",
    "\t",
    " ",
    "$host",
    "${x}",
    "\x00",
    "..",
    "//",
    "%0a",
    "include /etc/passwd;",
    "} server { listen 1;",
    "return 200 x;",
    "ключ",
    "例子",
]
hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(alphabet=string.printable + "é中", max_size=40),
    st.lists(st.sampled_from(HOSTILE + list("abc/.-_:0123456789")), max_size=12).map("".join),
)
any_value = st.one_of(
    hostile_text,
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def mostly(valid, hostile=hostile_text):
    """Valid values five times in six, so that accepted inputs are rendered often too."""
    return st.integers(0, 5).flatmap(lambda n: hostile if n == 0 else valid)


# IPv6 zone ids and syntax after an address: listen_address and resolver must refuse them.
# Each appears about once in eight draws, so that most deployments still render.
ZONED = ["fe80::1%eth0", "[fe80::1%eth0]", "fe80::1%a;x", "127.0.0.1 ssl", "::1]", "[1.2.3.4]"]
LISTEN = st.sampled_from(["", "127.0.0.1", "::1", "[::1]"] * 10 + ZONED)
RESOLVER = st.sampled_from(["127.0.0.11", "::1 127.0.0.11", "[::1] 127.0.0.11", "::1"] * 10 + ZONED)

valid_paths = st.sampled_from(
    ["/config", "/logs", "/v0/management/", "/v1/", "/healthz", "/api/", "/a-b_c.d/"]
)
valid_regexes = st.sampled_from(["^/v2/.+", "\\.(png|css)$", "^/x{1,3}/[a-z]+$", "(?i)^/auth"])


@st.composite
def override_entries(draw):
    match = draw(st.sampled_from(["exact", "prefix", "regex", "regex_i", "bogus", 7]))
    if match in ("regex", "regex_i"):
        path = draw(st.one_of(valid_regexes, hostile_text))
    else:
        path = draw(st.one_of(valid_paths, hostile_text.map(lambda s: "/" + s)))
    entry = {
        "match": match,
        "path": path,
        "target": draw(st.sampled_from(["cpa", "cpamp", "nginx", ""])),
        "enabled": draw(st.one_of(st.booleans(), st.just("yes"))),
        "note": draw(st.one_of(st.just(""), hostile_text)),
    }
    if draw(st.booleans()):
        entry.pop(draw(st.sampled_from(sorted(entry))))
    return entry


@st.composite
def payloads(draw):
    entry = copy.deepcopy(VALID)
    for name in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=4, unique=True)):
        if name == "route_overrides":
            entry[name] = draw(st.lists(override_entries(), max_size=4))
        elif name == "verification":
            entry[name] = draw(st.one_of(any_value, st.fixed_dictionaries({"base_url": any_value})))
        else:
            entry[name] = draw(any_value)
    if draw(st.integers(0, 9)) == 0:
        entry[draw(st.sampled_from(["bogus", "listen", "include"]))] = draw(any_value)
    if draw(st.integers(0, 9)) == 0:
        entry.pop(draw(st.sampled_from(sorted(entry))))
    return {"version": 1, "deployments": [entry]}


# Every directive the renderer may write, across modes, TLS and topologies.
ALLOWED_DIRECTIVES = {
    "map",
    "server_names_hash_bucket_size",
    "upstream",
    "server",
    "listen",
    "server_name",
    "client_max_body_size",
    "proxy_http_version",
    "proxy_read_timeout",
    "proxy_send_timeout",
    "proxy_buffering",
    "proxy_set_header",
    "proxy_pass",
    "add_header",
    "resolver",
    "set",
    "return",
    "location",
    "ssl_certificate",
    "ssl_certificate_key",
    # Edge hardening (issue 14).
    "server_tokens",
    *(name for name, _value in render.TLS_SETTINGS),
    "set_real_ip_from",
    "real_ip_header",
    "real_ip_recursive",
    "limit_req_zone",
    "limit_req",
    "limit_req_status",
    "root",
    # Routes hand off to one named location per upstream (issue 14).
    "error_page",
}


def _walk(block):
    for directive in block:
        yield directive
        if directive["directive"] == "map":
            # A map's entries are value pairs, not directives: the seed's two, or route tracing's.
            entries = [(d["directive"], d["args"]) for d in directive["block"]]
            if directive["args"][-1] == "$connection_upgrade":
                assert entries == [("default", ["upgrade"]), ("", ["close"])], entries
            else:
                assert directive["args"][-1] in ("$console_cpamp", "$console_upstream"), directive
            continue
        yield from _walk(directive.get("block", []))


def assert_config_is_intended(deployment: Deployment) -> None:
    """Parse the rendered files with crossplane and check they hold only what was asked for."""
    files = export.render_files([deployment])
    seen = set()
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            path = Path(tmp) / name
            path.write_text(text)
            # The files are included inside http {}, so directive context is not checked here.
            parsed = crossplane.parse(str(path), single=True, comments=False, check_ctx=False)
            assert parsed["status"] == "ok", parsed["errors"]
            for directive in _walk(parsed["config"][0]["parsed"]):
                assert directive["directive"] in ALLOWED_DIRECTIVES, directive
                if directive["directive"] == "server_name":
                    assert directive["args"] == [deployment.server_name]
                if directive["directive"] == "location":
                    args = directive["args"]
                    modifier, where = (args[0], args[1]) if len(args) == 2 else ("", args[0])
                    if modifier in ("~", "~*"):
                        where = where.replace("\\\\", "\\")
                    seen.add((modifier, where))
    locations = render.effective_locations(deployment)
    intended = {(loc.modifier, loc.path) for loc in locations}
    # The named location of each upstream that routes hand off to, and the 301s written out.
    limit = render.login_limit(deployment)
    handed = {loc.target for loc in locations if render.hands_off(loc, limit)}
    intended |= {("", render.HANDOFF_LOCATIONS[t]) for t in handed}
    intended |= {("=", short) for short in render.slash_redirects(locations, limit)}
    assert seen == intended
    result = export.check_files(files)
    assert result.ok, result.output


def _counts() -> tuple[int, int, int]:
    return Deployment.objects.count(), RouteOverride.objects.count(), Team.objects.count()


class ImportFuzzTests(TestCase):
    @FUZZ
    @given(payload=payloads())
    def test_an_import_either_succeeds_cleanly_or_changes_nothing(self, payload):
        before = _counts()
        sid = transaction.savepoint()
        try:
            try:
                report = portable.import_payload(payload=payload)
            except portable.ImportFailed as exc:
                assert exc.problems, "a refusal must name at least one problem"
                for slug, name, reason in exc.problems:
                    assert slug and name and str(reason)
                assert _counts() == before
                event("refused")
                return
            event("imported and rendered")
            for slug in report.created:
                assert_config_is_intended(Deployment.objects.get(slug=slug))
        finally:
            transaction.savepoint_rollback(sid)

    @FUZZ
    @given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(repr)))
    def test_arbitrary_text_is_refused_with_a_reason_not_a_crash(self, text):
        try:
            payload = portable.load_payload(text)
        except portable.ImportFailed as exc:
            assert exc.lines()
            return
        sid = transaction.savepoint()
        try:
            portable.import_payload(payload=payload)
        except portable.ImportFailed as exc:
            assert exc.lines()
        finally:
            transaction.savepoint_rollback(sid)


def _builtin_paths() -> list[str]:
    return sorted({route.path for route in BUILTIN_ROUTES})


class RendererFuzzTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.team = Team.objects.create(name="Ops", slug="ops")

    @FUZZ
    @given(
        server_name=mostly(
            st.sampled_from(["api.example.com", "例子.测试", "a-b.c", "x" * 60 + ".io"])
        ),
        cpa=mostly(st.sampled_from(["127.0.0.1:8317", "[::1]:8317", "cpa:1"])),
        size=mostly(st.sampled_from(["64m", "1g", "100"])),
        overrides=st.lists(
            st.tuples(
                st.sampled_from(["exact", "prefix", "regex", "regex_i"]),
                mostly(st.one_of(valid_paths, valid_regexes, st.sampled_from(_builtin_paths()))),
                st.sampled_from(["cpa", "cpamp"]),
            ),
            max_size=5,
            unique_by=lambda t: (t[0], t[1]),
        ),
        tls=st.booleans(),
        mode=st.sampled_from(["manager_server", "cpa_panel"]),
        listen=LISTEN,
        resolver=RESOLVER,
    )
    def test_every_accepted_deployment_renders_a_config_nginx_accepts(
        self, server_name, cpa, size, overrides, tls, mode, listen, resolver
    ):
        deployment = Deployment(
            slug="fuzz",
            name="Fuzz",
            team=self.team,
            server_name=server_name,
            cpa_upstream=cpa,
            client_max_body_size=size,
            tls=tls,
            mode=mode,
            listen_address=listen,
            resolver=resolver,
            ssl_certificate="/etc/ssl/fuzz.pem" if tls else "",
            ssl_certificate_key="/etc/ssl/fuzz.key" if tls else "",
        )
        rows = [
            RouteOverride(deployment=deployment, match=m, path=p, target=t, position=i)
            for i, (m, p, t) in enumerate(overrides)
        ]
        try:
            render.validate_deployment(deployment, rows)
        except render.InvalidDeployment as exc:
            # Refused before rendering, with the field named.
            assert exc.errors and all(field and reason for field, reason in exc.errors)
            event("refused before rendering")
            with pytest.raises(render.InvalidDeployment):
                render.render_site(deployment, rows)
            return
        sid = transaction.savepoint()
        try:
            deployment.save()
            for row in rows:
                row.deployment = deployment
                row.save()
            assert_config_is_intended(deployment)
            event("rendered")
        finally:
            transaction.savepoint_rollback(sid)


class AdminFormFuzzTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.team = Team.objects.create(name="Ops", slug="ops")
        cls.user = get_user_model().objects.create_superuser("root", "r@example.com", "pw")

    def _client(self) -> Client:
        client = Client()
        client.force_login(self.user)
        return client

    def _inline_management(self, client: Client) -> dict[str, str]:
        page = client.get(reverse("admin:routes_deployment_add"))
        assert page.status_code == 200
        data = {}
        for formset in page.context["inline_admin_formsets"]:
            prefix = formset.formset.prefix
            data.update(
                {
                    f"{prefix}-TOTAL_FORMS": "0",
                    f"{prefix}-INITIAL_FORMS": "0",
                    f"{prefix}-MIN_NUM_FORMS": "0",
                    f"{prefix}-MAX_NUM_FORMS": "1000",
                }
            )
        return data

    @FUZZ
    @given(
        fields=st.dictionaries(
            st.sampled_from(
                [
                    "slug",
                    "name",
                    "server_name",
                    "cpa_upstream",
                    "cpamp_upstream",
                    "cpamp_cpa_url",
                    "client_max_body_size",
                    "http_port",
                    "https_port",
                    "ssl_certificate",
                    "resolver",
                    "listen_address",
                    "proxy_read_timeout",
                    "cpa_version",
                    "mode",
                ]
            ),
            hostile_text,
            max_size=3,
        )
    )
    def test_no_form_input_causes_a_server_error(self, fields):
        client = self._client()
        data = {
            **self._inline_management(client),
            "slug": "fz",
            "name": "Fuzz",
            "team": str(self.team.pk),
            "mode": "manager_server",
            "server_name": "fuzz.example.com",
            "http_port": "80",
            "https_port": "443",
            "cpa_upstream": "cli-proxy-api:8317",
            "cpamp_upstream": "cpa-manager-plus:18317",
            "cpamp_cpa_url": "http://cli-proxy-api:8317",
            "resolver": "127.0.0.11",
            "client_max_body_size": "64m",
            "proxy_read_timeout": "3600",
            "proxy_send_timeout": "3600",
            "route_tracing": "on",
        }
        data.update({k: v.replace("\x00", "") for k, v in fields.items()})
        sid = transaction.savepoint()
        try:
            response = client.post(reverse("admin:routes_deployment_add"), data)
            assert response.status_code in (200, 302), response.status_code
            event(f"status {response.status_code}")
            if response.status_code == 302:
                assert_config_is_intended(Deployment.objects.get(slug="fz"))
            else:
                assert b"errornote" in response.content or b"errorlist" in response.content
        finally:
            transaction.savepoint_rollback(sid)


def test_the_fuzz_budget_is_fixed_and_small():
    # CI runs every target with this many examples; a runaway budget would blow the CI time.
    assert 1 <= EXAMPLES <= 500
    assert json.dumps(VALID)
