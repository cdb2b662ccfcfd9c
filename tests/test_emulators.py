"""The CPA and CPAMP emulators behave as the behaviour reference says the real services do."""

from __future__ import annotations

import time

import pytest
import requests

from tests.fakes.cpa import FakeCPA
from tests.fakes.cpamp import FakeCPAMP

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
