"""The CPA and CPAMP emulators behave as the behaviour reference says the real services do."""

from __future__ import annotations

import re
import socket
import time
from http.server import BaseHTTPRequestHandler

import pytest
import requests

from tests.fakes.cpa import BAN_AFTER, EmulatorHTTPServer, FakeCPA
from tests.fakes.cpamp import FakeCPAMP
from tests.fakes.identify import IdentifyServer

API = "sk-client-0001"
MGMT = "cpa-management-secret"
ADMIN = "cpamp_" + "A1b2C3d4" * 4


@pytest.fixture
def cpa():
    with FakeCPA(api_keys=[API], management_key=MGMT) as server:
        yield server


@pytest.fixture
def cpamp(cpa):
    with FakeCPAMP(admin_key=ADMIN, cpa_url=cpa.url, management_key=MGMT) as server:
        yield server


def get(server, path, method="GET", **kwargs):
    return requests.request(method, server.url + path, timeout=5, allow_redirects=False, **kwargs)


# --- CPA (reference Part 1) -------------------------------------------------------------------


def test_cpa_health_answers_get_and_head(cpa):
    assert get(cpa, "/healthz").json() == {"status": "ok"}
    head = get(cpa, "/healthz", "HEAD")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({}, 401),
        ({"headers": {"Authorization": f"Bearer {API}"}}, 200),
        ({"headers": {"Authorization": f"bearer {API}"}}, 200),
        ({"headers": {"Authorization": API}}, 200),
        ({"headers": {"X-Api-Key": API}}, 200),
        ({"headers": {"X-Goog-Api-Key": API}}, 200),
        ({"params": {"key": API}}, 200),
        ({"params": {"auth_token": API}}, 200),
        ({"headers": {"Authorization": "Bearer nope-0000"}}, 401),
    ],
)
def test_cpa_takes_the_api_key_wherever_the_reference_says(cpa, kwargs, status):
    assert get(cpa, "/v1/models", **kwargs).status_code == status


def test_cpa_names_a_missing_and_an_invalid_api_key(cpa):
    assert get(cpa, "/v1/models").json() == {"error": "Missing API key"}
    wrong = get(cpa, "/v1/models", headers={"Authorization": "Bearer nope-0000"})
    assert wrong.json() == {"error": "Invalid API key"}
    assert wrong.headers["Content-Type"] == "application/json; charset=utf-8"


def test_cpa_with_no_api_keys_lets_every_request_through():
    with FakeCPA(api_keys=[]) as open_cpa:
        assert get(open_cpa, "/v1/models").status_code == 200


def test_cpa_management_takes_bearer_or_x_management_key(cpa):
    bearer = get(cpa, "/v0/management/config", headers={"Authorization": f"Bearer {MGMT}"})
    header = get(cpa, "/v0/management/config", headers={"X-Management-Key": MGMT})
    assert bearer.status_code == header.status_code == 200
    assert bearer.headers["X-CPA-VERSION"] == "v7.1.39"
    assert "api-keys" in bearer.json() and "port" not in bearer.json()


def test_cpa_bans_an_ip_after_five_refused_management_keys(cpa):
    statuses = [
        get(cpa, "/v0/management/config", headers={"Authorization": "Bearer wrong"}).status_code
        for _ in range(6)
    ]
    assert statuses == [401, 401, 401, 401, 401, 403]
    banned = get(cpa, "/v0/management/config", headers={"Authorization": f"Bearer {MGMT}"})
    assert banned.status_code == 403 and "IP banned" in banned.json()["error"]
    assert banned.headers["X-CPA-VERSION"]
    assert cpa.banned("127.0.0.1")


def test_cpa_says_missing_or_invalid_management_key(cpa):
    assert get(cpa, "/v0/management/config").json() == {"error": "missing management key"}
    wrong = get(cpa, "/v0/management/config", headers={"Authorization": "Bearer x"})
    assert wrong.json() == {"error": "invalid management key"}
    assert len(cpa.management_refusals()) == 2


def test_cpa_without_a_management_secret_has_no_management_routes():
    with FakeCPA(management_key=None) as bare:
        answer = get(bare, "/v0/management/config", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 404 and answer.text == "404 page not found"


def test_cpa_refuses_remote_management_when_allow_remote_is_off():
    with FakeCPA(management_key=MGMT, allow_remote=False) as strict:
        answer = get(
            strict,
            "/v0/management/config",
            headers={"Authorization": f"Bearer {MGMT}", "X-Forwarded-For": "203.0.113.9"},
        )
        assert answer.json() == {"error": "remote management disabled"}
        assert strict.failures("203.0.113.9") == 0


def test_cpa_serves_its_own_panel_and_gin_404s(cpa):
    assert get(cpa, "/management.html").status_code == 200
    # gin registers GET only; HEAD on the panel is an unknown route.
    assert get(cpa, "/management.html", "HEAD").status_code == 404
    unknown = get(cpa, "/no/such/path")
    assert unknown.status_code == 404 and unknown.text == "404 page not found"
    assert get(cpa, "/models").status_code == 404


def test_cpa_answers_every_options_with_204(cpa):
    answer = get(cpa, "/v1/chat/completions", "OPTIONS")
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Headers"] == "*"


def test_no_emulator_sends_the_console_trace_header(cpa, cpamp):
    for server, path in ((cpa, "/healthz"), (cpamp, "/health"), (cpamp, "/v1/models")):
        assert "X-Console-Upstream" not in get(server, path).headers


# --- CPAMP (reference Part 2) -----------------------------------------------------------------


def test_cpamp_health_is_get_only(cpamp):
    answer = get(cpamp, "/health")
    assert answer.content == b'{"ok":true,"service":"cpa-manager-plus"}\n'
    head = get(cpamp, "/health", "HEAD")
    assert head.status_code == 405
    assert get(cpamp, "/health", "POST").json() == {
        "error": "method not allowed",
        "code": "method_not_allowed",
    }


def test_cpamp_info_reports_setup_state():
    with FakeCPAMP(setup_done=False) as fresh:
        info = get(fresh, "/usage-service/info").json()
    assert info["setupRequired"] is True and info["configured"] is False
    assert info["service"] == "cpa-manager-plus"


def test_cpamp_answers_428_on_proxied_paths_before_setup():
    with FakeCPAMP(setup_done=False) as fresh:
        for path in ("/models", "/v1/models", "/v0/resource/plugins/x"):
            answer = get(fresh, path)
            assert answer.status_code == 428, path
            assert answer.json()["code"] == "usage_service_not_configured"
        with_admin = get(
            fresh, "/v0/management/config", headers={"Authorization": f"Bearer {fresh.admin_key}"}
        )
        assert with_admin.status_code == 428


def test_cpamp_swaps_the_admin_key_for_the_saved_management_key(cpa, cpamp):
    answer = get(cpamp, "/v0/management/config", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200
    assert answer.headers["X-CPA-VERSION"] == "v7.1.39"
    seen = cpa.requests_to("/v0/management/config")[-1]
    assert seen.headers["authorization"] == f"Bearer {MGMT}"
    assert ADMIN not in repr(cpa.log)


def test_cpamp_refuses_admin_heads_without_the_admin_key(cpa, cpamp):
    answer = get(cpamp, "/v0/management/config", headers={"Authorization": f"Bearer {API}"})
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid admin key", "code": "invalid_admin_key"}
    assert cpa.requests_to("/v0/management/") == []
    # X-Management-Key is no admin credential at CPAMP.
    assert (
        get(cpamp, "/v0/management/config", headers={"X-Management-Key": ADMIN}).status_code == 401
    )


def test_cpamp_forwards_other_heads_with_the_callers_own_key(cpa, cpamp):
    answer = get(cpamp, "/v0/management/api-keys", headers={"Authorization": f"Bearer {MGMT}"})
    assert answer.status_code == 200
    refused = get(cpamp, "/v0/management/api-keys", headers={"Authorization": "Bearer bad"})
    assert refused.status_code == 401 and refused.json() == {"error": "invalid management key"}
    assert len(cpa.management_refusals()) == 1


def test_cpamp_passes_the_api_key_through_on_v1_models(cpa, cpamp):
    assert get(cpamp, "/v1/models", headers={"Authorization": f"Bearer {API}"}).status_code == 200
    assert get(cpamp, "/models", headers={"Authorization": f"Bearer {API}"}).status_code == 404
    assert cpa.requests_to("/v1/models")[-1].headers["authorization"] == f"Bearer {API}"


def test_cpamp_answers_502_request_failed_when_cpa_is_down(cpa, cpamp):
    cpa.stop()
    answer = get(cpamp, "/v0/management/config", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 502
    assert answer.json()["code"] == "request_failed"
    assert "connection refused" in answer.json()["error"].lower()


def test_cpamp_404s_everything_else_as_text(cpamp):
    for path in ("/healthz", "/v1/chat/completions", "/v0/management", "/nope"):
        answer = get(cpamp, path)
        assert answer.status_code == 404, path
        assert answer.text == "404 page not found\n"


def test_cpamp_setup_validates_against_cpa_and_finishes(cpa):
    with FakeCPAMP(admin_key=ADMIN, setup_done=False, management_key="") as fresh:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        wrong = requests.post(
            fresh.url + "/setup",
            json={"cpaBaseUrl": cpa.url + "/v0", "managementKey": "wrong"},
            headers=auth,
            timeout=5,
        )
        assert wrong.status_code == 502
        assert wrong.json()["code"] == "management_api_validation_failed"
        ok = requests.post(
            fresh.url + "/setup",
            json={"cpaBaseUrl": cpa.url, "managementKey": MGMT},
            headers=auth,
            timeout=5,
        )
        assert ok.json() == {"ok": True, "upstream": cpa.url}
        assert get(fresh, "/usage-service/info").json()["configured"] is True


def test_cpamp_head_on_the_panel_is_200(cpamp):
    assert get(cpamp, "/management.html", "HEAD").status_code == 200


# --- options shared by both -------------------------------------------------------------------


def test_delay_holds_every_answer_and_a_proxied_one_once():
    with (
        FakeCPA(api_keys=[API], delay=0.3) as slow_cpa,
        FakeCPAMP(cpa_url=slow_cpa.url, delay=0.3) as slow_cpamp,
    ):
        started = time.monotonic()
        get(slow_cpa, "/healthz")
        direct = time.monotonic() - started
        started = time.monotonic()
        get(slow_cpamp, "/v1/models", headers={"Authorization": f"Bearer {API}"})
        proxied = time.monotonic() - started
    assert 0.3 <= direct < 0.5
    assert 0.3 <= proxied < 0.5


def test_a_stopped_emulator_refuses_connections_and_can_restart(cpa):
    port = cpa.port
    cpa.stop()
    with pytest.raises(requests.ConnectionError):
        get(cpa, "/healthz")
    cpa.start()
    assert cpa.port == port and get(cpa, "/healthz").status_code == 200


# --- Part 3 of the reference (measured builds) --------------------------------------------------

WRONG = {"Authorization": "Bearer wrong-key"}
RIGHT = {"Authorization": f"Bearer {MGMT}"}
BAN_MESSAGE = re.compile(r"^IP banned due to too many failed attempts\. Try again in 29m5\ds$")


def config_as(server, headers, **extra):
    return get(server, "/v0/management/config", headers={**headers, **extra})


def dead_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Reference 3.1 "The ban": per gin ClientIP(), the leftmost X-Forwarded-For entry.
def test_cpa_bans_the_leftmost_forwarded_address_after_five_refused_keys(cpa):
    client = {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}
    statuses = [config_as(cpa, WRONG, **client).status_code for _ in range(5)]
    assert statuses == [401] * 5
    banned = config_as(cpa, RIGHT, **client)
    assert banned.status_code == 403
    assert BAN_MESSAGE.match(banned.json()["error"]), banned.json()
    assert banned.headers["X-CPA-VERSION"] == "v7.1.39"
    assert cpa.banned("203.0.113.7") and not cpa.banned("127.0.0.1")
    # Another leftmost address (the spoofable part behind the seed's nginx) is a fresh client.
    assert config_as(cpa, RIGHT, **{"X-Forwarded-For": "198.51.100.1, 127.0.0.1"}).ok
    assert config_as(cpa, RIGHT).status_code == 200


# Reference 3.1 "The ban": then X-Real-IP, then the socket peer.
def test_cpa_keys_the_ban_on_x_real_ip_then_the_peer(cpa):
    # gin gives up on a forwarded header with an entry that is not an IP.
    config_as(cpa, WRONG, **{"X-Forwarded-For": "unknown", "X-Real-IP": "192.0.2.44"})
    assert cpa.failures("192.0.2.44") == 1
    config_as(cpa, WRONG)
    assert cpa.failures("127.0.0.1") == 1
    assert [r.client_ip for r in cpa.management_refusals()] == ["192.0.2.44", "127.0.0.1"]


# Reference 3.1 "The ban": a success before the 5th failure resets the count; /v1 is not affected.
def test_cpa_resets_the_count_on_success_and_never_bans_the_api(cpa):
    for _ in range(4):
        config_as(cpa, WRONG)
    assert config_as(cpa, RIGHT).ok and cpa.failures() == 0
    for _ in range(5):
        config_as(cpa, WRONG)
    assert cpa.banned()
    assert get(cpa, "/v1/models", headers={"Authorization": f"Bearer {API}"}).status_code == 200
    cpa.unban()
    assert config_as(cpa, RIGHT).ok


# Reference 3.1 "Forwarded headers are trusted".
def test_cpa_believes_a_forwarded_localhost_when_remote_management_is_off():
    with FakeCPA(management_key=MGMT, allow_remote=False) as strict:
        remote = config_as(strict, RIGHT, **{"X-Forwarded-For": "10.9.9.1"})
        assert remote.status_code == 403
        assert remote.json() == {"error": "remote management disabled"}
        assert config_as(strict, RIGHT, **{"X-Forwarded-For": "127.0.0.1"}).status_code == 200


# Reference 3.1: GET /management.html 200 / 404 empty when the panel is absent; HEAD always 404.
def test_cpa_panel_can_be_absent_and_head_is_always_404():
    with FakeCPA(panel_available=False) as bare:
        missing = get(bare, "/management.html")
        assert missing.status_code == 404 and missing.content == b""
        assert get(bare, "/management.html", "HEAD").status_code == 404
        bare.panel_available = True
        assert get(bare, "/management.html").status_code == 200
        assert get(bare, "/management.html", "HEAD").status_code == 404


# Reference 3.1 "OPTIONS on any path" and 3.4: no key needed, never counted toward the ban.
@pytest.mark.parametrize(
    "path", ["/v0/management/config", "/v0/management/nope", "/v1/models", "/nope", "/"]
)
def test_cpa_answers_options_anywhere_without_a_key_or_a_strike(cpa, path):
    for _ in range(BAN_AFTER + 2):
        answer = get(cpa, path, "OPTIONS", headers=WRONG)
        assert answer.status_code == 204 and answer.content == b""
        assert answer.headers["Access-Control-Allow-Headers"] == "*"
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert answer.headers["Access-Control-Allow-Methods"] == (
            "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        )
    assert cpa.failures() == 0 and not cpa.banned()
    assert cpa.management_refusals() == []


# Reference 3.1: the rest of the measured table.
def test_cpa_answers_the_measured_v7_1_39_table():
    with FakeCPA(api_keys=[API], management_key=MGMT) as cpa:
        assert get(cpa, "/v1/models", headers={"Authorization": f"Bearer {API}"}).content == (
            b'{"data":[],"object":"list"}'
        )
        slash = get(cpa, "/v1/models/")
        assert (slash.status_code, slash.headers["Location"]) == (301, "/v1/models")
        unknown = get(cpa, "/v1/unknown-thing")
        assert (unknown.status_code, unknown.text) == (404, "404 page not found")
        chat = requests.post(
            cpa.url + "/v1/chat/completions",
            json={"model": "gpt-x"},
            headers={"Authorization": f"Bearer {API}"},
            timeout=5,
        )
        assert chat.status_code == 502
        assert chat.json()["error"]["message"] == "unknown provider for model gpt-x"
        assert requests.post(cpa.url + "/v1/chat/completions", timeout=5).status_code == 401
        for path in ("/api/user", "/threads"):
            amp = get(cpa, path)
            assert amp.status_code == 503, path
            assert amp.json() == {"error": "amp upstream proxy not available"}
        gemini = requests.post(cpa.url + "/v1internal:method", timeout=5)
        assert gemini.json()["error"]["message"] == "Gemini CLI endpoint is disabled"
        assert gemini.status_code == 403
        assert (
            requests.put(cpa.url + "/v0/management/config", headers=RIGHT, timeout=5).status_code
            == 404
        )
        logs = get(cpa, "/v0/management/logs", headers=RIGHT)
        assert (logs.status_code, logs.json()) == (400, {"error": "logging to file disabled"})
        cpa.logging_to_file = True
        assert get(cpa, "/v0/management/logs", headers=RIGHT).status_code == 200
        plugins = get(cpa, "/v0/resource/plugins/")
        assert (plugins.status_code, plugins.text) == (404, "404 page not found")
        assert "Server" not in get(cpa, "/healthz").headers


# Reference 3.1: unknown management paths are gin 404s, unauthenticated and not counted.
def test_cpa_v7_1_does_not_count_unknown_management_paths(cpa):
    for _ in range(BAN_AFTER + 1):
        answer = get(cpa, "/v0/management/no-such-route", headers=WRONG)
        assert (answer.status_code, answer.text) == (404, "404 page not found")
    assert cpa.failures() == 0 and not cpa.banned()


# Reference 1.4: a secret removed by hot reload leaves the routes, answering 404 empty.
def test_cpa_management_removed_at_run_time_answers_404_empty(cpa):
    cpa.management_key = None
    answer = config_as(cpa, RIGHT)
    assert (answer.status_code, answer.content) == (404, b"")


# Reference 3.2: v7.2 authenticates unknown management paths first and answers 404 empty.
def test_cpa_v7_2_counts_unknown_management_paths_and_404s_empty():
    with FakeCPA(api_keys=[API], management_key=MGMT, version="v7.2") as cpa:
        statuses = [
            get(cpa, "/v0/management/no-such-route", headers=WRONG).status_code for _ in range(6)
        ]
        assert statuses == [401] * 5 + [403]
        assert cpa.banned()
        cpa.unban()
        known_key = get(cpa, "/v0/management/no-such-route", headers=RIGHT)
        assert (known_key.status_code, known_key.content) == (404, b"")
        assert known_key.headers["X-CPA-SUPPORT-PLUGIN"] in ("0", "1")
        for path in ("/nope", "/v0/resource/plugins/some-plugin/x", "/models"):
            gone = get(cpa, path)
            assert (gone.status_code, gone.content) == (404, b""), path


# Reference 3.2: routes removed in v7.2, and the extra CORS header (1.7).
def test_cpa_v7_2_drops_amp_and_gemini_cli_routes():
    with FakeCPA(api_keys=[API], management_key=MGMT, version="v7.2.140") as cpa:
        for path in ("/api/user", "/threads", "/google/callback", "/xai/callback"):
            assert get(cpa, path).status_code == 404, path
        assert requests.post(cpa.url + "/v1internal:method", timeout=5).status_code == 404
        assert get(cpa, "/codex/callback").status_code == 200
        options = get(cpa, "/v1/models", "OPTIONS")
        assert options.headers["Access-Control-Allow-Headers"] == "*"
        assert "X-CPA-VERSION" in options.headers["Access-Control-Expose-Headers"]
        management = config_as(cpa, RIGHT)
        assert management.headers["X-CPA-VERSION"] == "v7.2.140"
        assert "X-CPA-SUPPORT-PLUGIN" in management.headers


# Reference 3.2 / 1.3: safe mode with a template key, from v7.1.46 on; not at v7.1.39.
def test_cpa_v7_2_safe_mode_refuses_api_requests_with_a_template_key():
    with FakeCPA(api_keys=["your-api-key-1", API], version="v7.2") as cpa:
        for path in ("/v1/models", "/v1beta/models", "/backend-api/codex/responses"):
            answer = get(cpa, path, headers={"Authorization": f"Bearer {API}"})
            assert answer.status_code == 403, path
            assert answer.headers["X-CPA-SAFE-MODE"] == "example-api-key"
            assert answer.json()["error"] == "unsafe_example_api_key"
            assert answer.json()["message"].startswith(
                "Proxy API endpoints are disabled because api-keys contains template values."
            )
        warning = get(cpa, "/management.html")
        assert warning.status_code == 200 and "Example API key detected" in warning.text
        assert "your-api-key-1" in warning.text
        panel = get(cpa, "/management.html?safe-mode=configure")
        assert panel.status_code == 200 and "CPA panel" in panel.text
        assert get(cpa, "/healthz").status_code == 200
        cpa.api_keys = [API]
        assert get(cpa, "/v1/models", headers={"Authorization": f"Bearer {API}"}).ok
    with FakeCPA(api_keys=["your-api-key-1"]) as old:
        assert get(old, "/v1/models", headers={"Authorization": "Bearer your-api-key-1"}).ok


def test_cpa_refuses_a_version_it_cannot_read():
    with pytest.raises(ValueError, match="version: 'latest'"):
        FakeCPA(version="latest")


# Reference 1.5 / 2.7: the usage queue needs CPA v6.10.8; older builds 404 it.
def test_cpa_serves_the_usage_queue_from_v6_10_8_oldest_first():
    with FakeCPA(management_key=MGMT) as cpa:
        cpa.usage_queue.extend([{"request_id": "a"}, {"request_id": "b"}, {"request_id": "c"}])
        first = get(cpa, "/v0/management/usage-queue", headers=RIGHT)
        assert first.json() == [{"request_id": "a"}]
        rest = get(cpa, "/v0/management/usage-queue?count=5", headers=RIGHT)
        assert rest.json() == [{"request_id": "b"}, {"request_id": "c"}]
        bad = get(cpa, "/v0/management/usage-queue?count=0", headers=RIGHT)
        assert (bad.status_code, bad.json()) == (400, {"error": "count must be a positive integer"})
    with FakeCPA(management_key=MGMT, version="v6.10.7") as old:
        answer = get(old, "/v0/management/usage-queue", headers=RIGHT)
        assert (answer.status_code, answer.text) == (404, "404 page not found")
        assert config_as(old, RIGHT).headers["X-CPA-VERSION"] == "v6.10.7"


# Reference 1.4: usage-statistics-enabled as a getter/setter and in the config.
def test_cpa_usage_statistics_flag_reads_and_writes(cpa):
    path = "/v0/management/usage-statistics-enabled"
    assert get(cpa, path, headers=RIGHT).json() == {"usage-statistics-enabled": False}
    put = requests.put(cpa.url + path, json={"value": True}, headers=RIGHT, timeout=5)
    assert put.json() == {"status": "ok"}
    assert config_as(cpa, RIGHT).json()["usage-statistics-enabled"] is True
    bad = requests.put(cpa.url + path, json={"value": "yes"}, headers=RIGHT, timeout=5)
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid body"})
    cpa.usage_statistics_enabled = False
    assert config_as(cpa, RIGHT).json()["usage-statistics-enabled"] is False


# Reference 3.3 and 3.4: CPAMP's own OPTIONS answer, no key, nothing forwarded to CPA.
@pytest.mark.parametrize(
    "path", ["/v0/management/config", "/v0/management/logs", "/v1/models", "/health", "/", "/x"]
)
def test_cpamp_answers_options_itself_with_its_allow_headers(cpa, cpamp, path):
    answer = get(cpamp, path, "OPTIONS", headers=WRONG)
    assert answer.status_code == 204 and answer.content == b""
    assert answer.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert cpa.log == [] and cpamp.admin_refusals() == []


# Reference 3.3: /management.html is 200 for every method, with no CORS wrapper.
def test_cpamp_panel_answers_every_method(cpamp):
    for method in ("GET", "HEAD", "POST", "OPTIONS"):
        answer = get(cpamp, "/management.html", method)
        assert answer.status_code == 200, method
        assert "Access-Control-Allow-Headers" not in answer.headers


# Reference 3.3: "/" is a 307 for any method, GET /setup is 405, info says "fresh".
def test_cpamp_redirects_root_refuses_get_setup_and_starts_fresh():
    with FakeCPAMP(setup_done=False) as fresh:
        for method in ("GET", "HEAD", "POST"):
            root = get(fresh, "/", method)
            assert (root.status_code, root.headers["Location"]) == (307, "/management.html")
        setup = get(fresh, "/setup")
        assert setup.status_code == 405 and setup.json()["code"] == "method_not_allowed"
        info = get(fresh, "/usage-service/info").json()
        assert (info["configured"], info["setupRequired"], info["migrationStatus"]) == (
            False,
            True,
            "fresh",
        )
        assert "Server" not in get(fresh, "/health").headers


# Reference 3.3: 428 before setup and 401 for admin heads and the empty head either way.
def test_cpamp_refuses_before_setup_with_428_and_admin_heads_with_401(cpa):
    with FakeCPAMP(admin_key=ADMIN, cpa_url=cpa.url, setup_done=False) as fresh:
        for path in ("/models", "/v1/models", "/v0/management/logs", "/v0/resource/plugins"):
            answer = get(fresh, path, headers={"Authorization": f"Bearer {API}"})
            assert answer.status_code == 428, path
            assert answer.content == (
                b'{"error":"usage service is not configured",'
                b'"code":"usage_service_not_configured"}\n'
            )
        for path in ("/v0/management/config", "/v0/management/"):
            assert get(fresh, path).json()["code"] == "invalid_admin_key", path
        fresh.setup_done = True
        assert get(fresh, "/v0/management/").status_code == 401
        models = get(fresh, "/models", headers={"Authorization": f"Bearer {API}"})
        assert (models.status_code, models.text) == (404, "404 page not found")
        assert cpa.requests_to("/models")[-1].headers["authorization"] == f"Bearer {API}"
        limited = get(fresh, "/v1/models?limit=20", headers={"Authorization": f"Bearer {API}"})
        assert limited.status_code == 200
        assert cpa.log[-1].path == "/v1/models"


# Reference 3.3: /usage-service/config, open before any connection, the saved key in clear after.
def test_cpamp_usage_config_reveals_the_saved_key_only_to_the_admin(cpa):
    with FakeCPAMP(admin_key=ADMIN, cpa_url=cpa.url, management_key=MGMT, setup_done=False) as it:
        open_answer = get(it, "/usage-service/config")
        assert open_answer.status_code == 200
        assert open_answer.json()["config"]["cpaConnection"] == {"cpaBaseUrl": ""}
        assert MGMT not in open_answer.text
        it.setup_done = True
        assert get(it, "/usage-service/config").json()["code"] == "invalid_admin_key"
        admin = get(it, "/usage-service/config", headers={"Authorization": f"Bearer {ADMIN}"})
        data = admin.json()
        assert data["config"]["cpaConnection"] == {"cpaBaseUrl": cpa.url, "managementKey": MGMT}
        assert data["config"]["collector"]["enabled"] is True
        assert data["source"] == "db"
        assert data["cpaUsage"] == {
            "usageStatisticsEnabled": False,
            "redisUsageQueueRetentionSeconds": 60,
            "retentionSourceDefault": False,
        }
        cpa.usage_statistics_enabled = True
        it.collector_enabled = False
        data = get(it, "/usage-service/config", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert data["config"]["collector"]["enabled"] is False
        assert data["cpaUsage"]["usageStatisticsEnabled"] is True
        it.reveals_management_key = False
        masked = get(it, "/usage-service/config", headers={"Authorization": f"Bearer {ADMIN}"})
        assert masked.json()["config"]["cpaConnection"]["managementKeyConfigured"] is True
        assert MGMT not in masked.text


# Reference 2.3: reading the config costs one CPA management request with the saved key.
def test_cpamp_usage_config_with_a_stale_key_is_a_strike_at_cpa(cpa):
    with FakeCPAMP(admin_key=ADMIN, cpa_url=cpa.url, management_key="stale-000") as it:
        data = get(it, "/usage-service/config", headers={"Authorization": f"Bearer {ADMIN}"})
        assert "cpaUsage" not in data.json()
    assert len(cpa.management_refusals()) == 1


# Reference 2.5 / 2.4: CPAMP's own 502 request_failed, exact body, when its CPA URL is dead.
def test_cpamp_answers_its_own_502_when_its_cpa_url_is_unreachable():
    url = dead_url()
    port = url.rsplit(":", 1)[1]
    with FakeCPAMP(admin_key=ADMIN, cpa_url=url) as it:
        answer = config_as(it, {"Authorization": f"Bearer {ADMIN}"})
        assert answer.status_code == 502
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.content == (
            b'{"error":"dial tcp 127.0.0.1:' + port.encode() + b': connect: connection refused",'
            b'"code":"request_failed"}\n'
        )
        it.cpa_url = "http://cli-proxy-api.invalid:8317"
        named = get(it, "/v1/models", headers={"Authorization": f"Bearer {API}"})
        assert named.json() == {
            "error": "dial tcp: lookup cli-proxy-api.invalid: no such host",
            "code": "request_failed",
        }


# Reference 3.4: a stale saved key is refused by CPA and passed through byte for byte.
def test_cpamp_passes_cpas_refusal_of_a_stale_saved_key_through_unchanged(cpa):
    with FakeCPAMP(admin_key=ADMIN, cpa_url=cpa.url, management_key="stale-in-cpamp-1") as it:
        through = config_as(it, {"Authorization": f"Bearer {ADMIN}"})
    direct = config_as(cpa, {"Authorization": "Bearer stale-in-cpamp-1"})
    assert through.status_code == direct.status_code == 401
    assert through.content == direct.content == b'{"error":"invalid management key"}'
    for name in ("Content-Type", "X-CPA-VERSION", "X-CPA-COMMIT", "X-CPA-BUILD-DATE"):
        assert through.headers[name] == direct.headers[name], name
    assert [r.auth for r in cpa.management_refusals()] == ["refused", "refused"]
    # CPA keyed the proxied strike on the caller, the leftmost X-Forwarded-For.
    assert cpa.management_refusals()[0].headers["x-forwarded-for"] == "127.0.0.1"


# Reference 3.3 / 2.4: setup calls CPA three times and turns usage publishing on.
def test_cpamp_setup_makes_its_three_calls_and_enables_usage_statistics(cpa):
    with FakeCPAMP(admin_key=ADMIN, setup_done=False) as fresh:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        ok = requests.post(
            fresh.url + "/setup",
            json={"cpaBaseUrl": cpa.address, "managementKey": MGMT},
            headers=auth,
            timeout=5,
        )
        assert ok.json() == {"ok": True, "upstream": cpa.url}
    calls = [(r.method, r.path, r.status) for r in cpa.requests_to("/v0/management/")]
    assert calls == [
        ("GET", "/v0/management/config", 200),
        ("GET", "/v0/management/config", 200),
        ("PUT", "/v0/management/usage-statistics-enabled", 200),
    ]
    assert cpa.usage_statistics_enabled is True
    assert {r.headers["authorization"] for r in cpa.log} == {f"Bearer {MGMT}"}


# Reference 2.4: setup's other outcomes.
def test_cpamp_setup_names_each_failure(cpa):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with FakeCPAMP(admin_key=ADMIN, setup_done=False, poll_interval_ms=90_000) as fresh:

        def setup(**payload):
            return requests.post(fresh.url + "/setup", json=payload, headers=auth, timeout=5)

        slow = setup(cpaBaseUrl=cpa.url, managementKey=MGMT)
        assert slow.status_code == 400 and slow.json()["code"] == "poll_interval_exceeds_retention"
        assert "(60 seconds)" in slow.json()["error"]
        dead = dead_url()
        unreachable = setup(cpaBaseUrl=dead, managementKey=MGMT)
        assert unreachable.status_code == 502
        assert unreachable.json()["error"].startswith(
            f'Get "{dead}/v0/management/config": dial tcp'
        )
        assert unreachable.json()["code"] == "request_failed"
        cpa.clear_log()
        quiet = setup(cpaBaseUrl=cpa.url, managementKey=MGMT, requestMonitoringEnabled=False)
        assert quiet.ok and fresh.setup_done and fresh.collector_enabled is False
        assert [r.path for r in cpa.log] == ["/v0/management/config"]
        assert cpa.usage_statistics_enabled is False


# Reference 3.3 / 2.6: the collector polls the HTTP queue; a stale key gets CPAMP itself banned.
def test_cpamp_collector_polls_and_a_stale_key_bans_cpamps_own_address():
    with FakeCPA(management_key=MGMT) as cpa:
        cpa.usage_queue.append({"request_id": "r1", "model": "gpt-x"})
        with FakeCPAMP(
            admin_key=ADMIN, cpa_url=cpa.url, management_key=MGMT, source_address="127.0.0.2"
        ) as it:
            assert it.collect_once() == 200
            assert it.usage_records == [{"request_id": "r1", "model": "gpt-x"}]
            status = get(it, "/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()
            assert status["collector"]["collector"] == "running"
            assert status["collector"]["transport"] == "http"
            it.management_key = "stale-000"
            assert [it.collect_once() for _ in range(6)] == [401] * 5 + [403]
            assert cpa.banned("127.0.0.2") and not cpa.banned("127.0.0.1")
            collector = get(it, "/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()
            assert collector["collector"]["collector"] == "error"
            assert collector["collector"]["lastError"].startswith(
                "http: usage queue request failed: 403 Forbidden: "
            )
            it.collector_enabled = False
            assert it.collect_once() is None
            assert (
                get(it, "/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()[
                    "collector"
                ]["collector"]
                == "stopped"
            )


# Reference 2.6 / 2.7: CPA older than v6.10.8 has no HTTP queue; the collector falls back.
def test_cpamp_collector_against_an_old_cpa_falls_back_and_fails():
    with (
        FakeCPA(management_key=MGMT, version="v6.10.7") as old,
        FakeCPAMP(cpa_url=old.url, management_key=MGMT) as it,
    ):
        assert it.collect_once() == 404
        assert (it.collector_state, it.collector_transport) == ("error", "resp")


# Reference 2.7 / 1.4: CPAMP's own connections from another address are remote at CPA.
def test_cpamp_seen_from_another_address_needs_allow_remote():
    with FakeCPA(management_key=MGMT, allow_remote=False) as strict:
        with FakeCPAMP(admin_key=ADMIN, setup_done=False, source_address="127.0.0.2") as it:
            answer = requests.post(
                it.url + "/setup",
                json={"cpaBaseUrl": strict.url, "managementKey": MGMT},
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=5,
            )
        assert answer.status_code == 502
        assert answer.json() == {
            "error": "management API validation failed: 403 Forbidden",
            "code": "management_api_validation_failed",
        }
        assert strict.log[-1].client_ip == "127.0.0.2"


# --- issue 16: listen backlog -----------------------------------------------------------------


def connect_all(address, count, timeout=0.5):
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address, timeout=timeout)
            sockets.append(sock)
        return len(sockets)
    except OSError:
        return len(sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_every_emulator_server_queues_at_least_128_connections():
    # A server that is not accepting yet: with the stdlib's backlog of 5 the 7th connect times out.
    assert FakeCPA.server_class is FakeCPAMP.server_class is EmulatorHTTPServer
    servers = [
        EmulatorHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler),
        IdentifyServer("cpa"),
    ]
    try:
        for server in servers:
            assert server.request_queue_size >= 128
            assert connect_all(server.server_address[:2], 100) == 100, type(server).__name__
    finally:
        for server in servers:
            server.server_close()


# --- the stack: emulators behind real nginx with the exported config ---------------------------


# Reference 3.4 through nginx, and the stack options issue 11's scenarios use.
@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_the_stack_exposes_the_part_3_switches_behind_real_nginx(deployment):
    from tests.fakes.stack import ADMIN_KEY, running_stack

    with running_stack(deployment, cpamp_cpa_url=dead_url(), cpa_version="v7.2") as stack:
        host = {"Host": stack.deployment.server_name}

        def through_nginx(path, method="GET", **headers):
            return requests.request(
                method, stack.base_url + path, headers={**host, **headers}, timeout=5
            )

        fingerprints = {
            path: through_nginx(path, "OPTIONS").headers["Access-Control-Allow-Headers"]
            for path in ("/v0/management/config", "/healthz", "/v1/models")
        }
        assert fingerprints == {
            "/v0/management/config": "Authorization, Content-Type",
            "/healthz": "*",
            "/v1/models": "*",
        }
        cannot_reach = through_nginx("/v0/management/config", Authorization=f"Bearer {ADMIN_KEY}")
        assert cannot_reach.status_code == 502
        assert cannot_reach.json()["code"] == "request_failed"
        assert "connection refused" in cannot_reach.json()["error"]
        assert through_nginx("/healthz").json() == {"status": "ok"}
        assert stack.cpa.v72 and stack.cpa.usage_statistics_enabled is True
        assert stack.cpa.management_refusals() == []
    with running_stack(deployment, setup_done=False, cpa_panel_available=False, keys={}) as fresh:
        assert fresh.cpa.usage_statistics_enabled is False
        assert fresh.cpa.panel_available is False
