"""Issue 11: failures grouped into root causes, diagnoses as codes rendered in the reader's
language, and no library exception text in any diagnosis. No emulators: outcomes are built by
hand, and real network failures go to 127.0.0.1 only."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from typing import Any

import pytest
from django.utils import translation

from routes.models import CheckResult, VerificationJob, VerificationRun
from routes.nginx.export import self_signed_certificate
from routes.verification import causes, runner
from routes.verification import diagnoses as dx
from routes.verification.checks import CHECKS
from routes.verification.outcomes import CheckOutcome
from routes.verification.runner import build_context
from tests.test_bounded_requests import Loopback, read_request

LIBRARY_TEXT = re.compile(
    r"HTTPConnectionPool|HTTPSConnectionPool|Max retries|_ssl\.c|Errno|Traceback|"
    r"[A-Z][A-Za-z]+(?:Error|Exception)\b|SSL:|CERTIFICATE_VERIFY_FAILED|errno|"
    r"RemoteDisconnected|BadStatusLine|gaierror|\[Err"
)
# Parameters every code's words may need, as the checks store them.
SAMPLE: dict[str, Any] = {
    "status": 502,
    "latency_ms": 2300,
    "threshold_ms": 1500,
    "upstream": "cpa",
    "observed": "cpamp",
    "address": "cli-proxy-api:8317",
    "topology": "docker",
    "cpa_url": "http://cli-proxy-api:8317",
    "panel": "https://api.example.com/management.html",
    "role": "cpa_api",
    "actual": "cpamp_admin",
    "path": "/v1/models",
    "key": "ci ••••7f3a",
    "host": "api.example.com",
    "timeout": "10",
    "reason": "self_signed",
    "origin": "https://api.example.com",
    "url": "http://cli-proxy-api:8317",
    "version": "v6.9.0",
    "check": "api_models",
    "excerpt": "{}",
    "location": "http://api.example.com/",
    "server_name": "api.example.com",
    "names": ["other.example.com"],
    "days_left": -3,
    "trust": "self_signed",
    "after": "management_config",
}


def failed(check_id: str, code: str, position: int, **params: Any) -> CheckOutcome:
    check = CHECKS[check_id]
    outcome = CheckOutcome.failed(
        check, url="http://127.0.0.1/", diagnosis=dx.Diagnosis(code, params)
    )
    outcome.position = position
    return outcome


def passed(check_id: str, position: int) -> CheckOutcome:
    check = CHECKS[check_id]
    outcome = CheckOutcome.failed(check, url="http://127.0.0.1/")
    outcome.passed, outcome.position = True, position
    return outcome


# --- grouping ---------------------------------------------------------------------------------


def test_one_upstream_down_explains_every_check_routed_to_it_and_through_cpamp():
    down = {"status": 502, "upstream": "cpa", "address": "127.0.0.1:8317", "topology": "host"}
    outcomes = [
        passed("panel", 0),
        failed("cpa_health", "upstream_down", 2, **down),
        failed("api_models", "upstream_down", 4, **down),
        failed("management_config", "cpamp_cannot_reach_cpa", 5, status=502, cpa_url="x"),
        failed("request_monitoring", "cpa_usage_unreadable", 10),
        failed("cpa_direct", "connection_refused", 13, host="127.0.0.1:8317", target="cpa"),
    ]
    found = causes.group(outcomes)
    assert [(c["code"], c["upstream"]) for c in found] == [("upstream_down", "cpa")]
    assert found[0]["checks"] == [
        "cpa_health",
        "api_models",
        "management_config",
        "request_monitoring",
        "cpa_direct",
    ]
    assert found[0]["params"]["address"] == "127.0.0.1:8317"
    assert found[0]["fix"] == {"kind": "upstreams", "override_id": None}


def test_two_upstreams_down_are_two_causes_and_a_refused_base_url_is_not_explained_by_them():
    outcomes = [
        failed(
            "panel", "upstream_down", 0, upstream="cpamp", status=502, address="a", topology="host"
        ),
        failed(
            "cpa_health",
            "upstream_down",
            2,
            upstream="cpa",
            status=502,
            address="b",
            topology="host",
        ),
        failed("cpamp_health", "connection_refused", 1, host="127.0.0.1:80", target=""),
    ]
    found = causes.group(outcomes)
    # Most important first: nothing answering at the base URL, then the upstreams in plan order.
    assert [(c["code"], c["upstream"]) for c in found] == [
        ("connection_refused", ""),
        ("upstream_down", "cpamp"),
        ("upstream_down", "cpa"),
    ]
    assert found[0]["fix"]["kind"] == "base_url"


def test_a_probe_held_back_for_the_ban_joins_the_cause_of_the_refusal():
    outcomes = [
        failed("management_config", "saved_management_key_refused", 5, status=401),
        failed("cpa_direct", "held_back_for_ban", 13, after="management_config"),
        failed("request_monitoring", "held_back_for_ban", 10, after="management_config"),
    ]
    found = causes.group(outcomes)
    assert [c["code"] for c in found] == ["saved_management_key_refused"]
    assert found[0]["checks"] == ["management_config", "request_monitoring", "cpa_direct"]
    assert found[0]["fix"]["kind"] == "cpamp_setup"


def test_an_untrusted_certificate_explains_every_https_check_as_one_cause():
    outcomes = [
        failed(check_id, "tls_untrusted", i, host="127.0.0.1:443", reason="self_signed")
        for i, check_id in enumerate(("panel", "cpa_health", "api_models"))
    ]
    outcomes.append(
        failed(
            "certificate",
            "tls_untrusted",
            12,
            server_name="api.example.com",
            names=["api.example.com"],
            days_left=20,
            trust="self_signed",
        )
    )
    found = causes.group(outcomes)
    assert [c["code"] for c in found] == ["tls_untrusted"]
    assert found[0]["checks"] == ["panel", "cpa_health", "api_models", "certificate"]
    assert found[0]["fix"]["kind"] == "tls_verify"


def test_the_admin_key_in_the_api_keys_place_explains_the_missing_admin_key():
    wrong = {"role": "cpa_api", "actual": "cpamp_admin", "path": "/v1/models"}
    outcomes = [
        failed("api_models", "wrong_key_type", 4, **wrong),
        failed("management_config", "keys_missing", 5, role="cpamp_admin"),
        # A missing API key is another matter: not explained by it.
        failed("models_compat", "keys_missing", 7, role="cpa_api"),
    ]
    assert [c["code"] for c in causes.group(outcomes)] == ["wrong_key_type", "keys_missing"]


def test_unexpected_answers_of_different_checks_stay_apart_and_passes_make_no_cause():
    outcomes = [
        failed(
            "cpa_health", "unexpected_status", 2, check="cpa_health", upstream="cpa", status=418
        ),
        failed("panel", "unexpected_status", 0, check="panel", upstream="cpamp", status=418),
        passed("api_models", 4),
    ]
    assert [c["checks"] for c in causes.group(outcomes)] == [["panel"], ["cpa_health"]]
    assert causes.group([passed("panel", 0)]) == []


# --- words in the reader's language -----------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "zh-hans"])
@pytest.mark.parametrize("code", sorted({*dx.TEXTS, *dx.PLAIN}))
def test_every_code_renders_in_both_languages_with_no_placeholder_left(code, language):
    with translation.override(language):
        text = dx.render(code, SAMPLE)
    assert text and text != code
    assert "%(" not in text and not LIBRARY_TEXT.search(text)


def test_a_diagnosis_reads_in_the_viewers_language():
    with translation.override("en"):
        english = dx.render("plugin_rule_missing", {"path": "/v0/resource/plugins/"})
    with translation.override("zh-hans"):
        chinese = dx.render("plugin_rule_missing", {"path": "/v0/resource/plugins/"})
    assert english.startswith("/v0/resource/plugins/ was answered by CPA")
    assert chinese != english and re.search(r"[\u4e00-\u9fff]", chinese)


def test_an_unknown_code_or_old_parameters_never_raise():
    assert dx.render("no_such_code", {}) == ""
    assert dx.render("upstream_down", {"status": 502}) == "upstream_down"


def test_the_host_topology_gets_the_host_question_and_docker_the_checklist_never_both():
    down = {"status": 502, "upstream": "cpa", "address": "127.0.0.1:8317", "topology": "host"}
    host = dx.render("upstream_down", down)
    docker = dx.render(
        "upstream_down", {**down, "address": "cli-proxy-api:8317", "topology": "docker"}
    )
    assert "Is CPA running and listening on 127.0.0.1:8317?" in host
    assert "Docker" not in host
    assert "same Docker network" in docker and "Is CPA running" not in docker
    reach = {"status": 502, "cpa_url": "http://127.0.0.1:8317", "topology": "host"}
    assert "Docker" not in dx.render("cpamp_cannot_reach_cpa", reach)
    docker_reach = dx.render(
        "cpamp_cannot_reach_cpa",
        {"status": 502, "cpa_url": "http://cli-proxy-api:8317", "topology": "docker"},
    )
    for item in ("same Docker network", "0.0.0.0:8317", "cli-proxy-api", "running", "allow-remote"):
        assert item in docker_reach


def test_cpamps_other_saved_url_is_named_in_the_cause():
    text = dx.render(
        "cpamp_cannot_reach_cpa",
        {
            "status": 502,
            "cpa_url": "http://cli-proxy-api:8317",
            "topology": "docker",
            "saved_cpa_url": "http://cpa:8317",
        },
    )
    assert "CPAMP's setup has http://cpa:8317 instead" in text


@pytest.mark.parametrize(
    ("address", "topology"),
    [
        ("127.0.0.1:8317", "host"),
        ("127.9.9.9:8317", "host"),
        ("[::1]:8317", "host"),
        ("localhost:8317", "host"),
        ("http://127.0.0.1:8317", "host"),
        ("cli-proxy-api:8317", "docker"),
        ("172.18.0.3:8317", "docker"),
        ("http://cli-proxy-api:8317", "docker"),
    ],
)
def test_the_topology_comes_from_the_upstream_address(address, topology):
    assert dx.topology_of(address) == topology


@pytest.mark.django_db
def test_a_stored_run_renders_its_causes_and_rows_in_the_viewers_language(deployment):
    job = VerificationJob.objects.create(deployment=deployment)
    run = VerificationRun.objects.create(job=job, trigger="manual", status="failed")
    outcome = failed("plugin_resources", "plugin_rule_missing", 6, path="/v0/resource/plugins/")
    with translation.override("en"):
        english = outcome.diagnosis
    result = CheckResult.objects.create(
        run=run,
        check_id="plugin_resources",
        method="GET",
        url="http://127.0.0.1/",
        expected="",
        passed=False,
        diagnosis=english,
        diagnosis_code=outcome.diagnosis_code,
        diagnosis_params=outcome.diagnosis_params,
    )
    run.causes = causes.group([outcome], deployment=deployment)
    run.save()
    with translation.override("zh-hans"):
        rendered = causes.render_causes(run)
        row = dx.render_result_diagnosis(result)
    assert rendered[0]["code"] == "plugin_rule_missing"
    assert rendered[0]["labels"] == ["插件资源"]
    assert rendered[0]["diagnosis"] == row and row != english
    # No override decides the plugin path here: the fix is the deployment's config.
    assert rendered[0]["fix"] == {"kind": "deployment", "override_id": None}


@pytest.mark.django_db
def test_a_row_stored_before_codes_keeps_its_own_words_and_is_its_own_cause(deployment):
    job = VerificationJob.objects.create(deployment=deployment)
    run = VerificationRun.objects.create(job=job, trigger="manual", status="failed")
    row = CheckResult.objects.create(
        run=run,
        check_id="panel",
        method="HEAD",
        url="http://127.0.0.1/management.html",
        expected="200",
        passed=False,
        diagnosis="Old words.",
    )
    assert dx.render_result_diagnosis(row) == "Old words."
    assert [(c["checks"], c["diagnosis"]) for c in causes.render_causes(run)] == [
        (["panel"], "Old words.")
    ]


@pytest.mark.django_db
def test_a_run_that_errored_is_one_notification_cause(deployment):
    job = VerificationJob.objects.create(deployment=deployment)
    run = VerificationRun.objects.create(job=job, trigger="manual", status="error", error="boom")
    assert causes.run_causes(run) == [{"code": "run_error", "diagnosis": "boom"}]


# --- no library text from real failures -------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hang_up(conn: socket.socket, stop: threading.Event) -> None:
    read_request(conn)


def garbage(conn: socket.socket, stop: threading.Event) -> None:
    read_request(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")


@pytest.mark.django_db
def test_real_network_failures_become_codes_with_no_library_text(deployment, tmp_path):
    cert, key = self_signed_certificate(tmp_path, "api.example.com", days=2)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    seen: dict[str, CheckOutcome] = {}
    targets = {
        "refused": f"http://127.0.0.1:{_closed_port()}",
        "dns": "http://does-not-exist.invalid",
    }
    with (
        Loopback(hang_up) as closed,
        Loopback(garbage) as odd,
        Loopback(hang_up, tls=context) as tls,
    ):
        targets |= {"closed": closed.url, "not_http": odd.url, "tls": tls.url}
        for name, base_url in targets.items():
            ctx = build_context(deployment, base_url=base_url, verify_tls=True, timeout=3, keys={})
            seen[name] = runner.run_check(CHECKS["cpamp_health"], ctx)
    codes = {name: (o.diagnosis_code, o.diagnosis_params.get("reason")) for name, o in seen.items()}
    assert codes == {
        "refused": ("connection_refused", None),
        "dns": ("dns", None),
        "closed": ("connection_error", "closed"),
        "not_http": ("connection_error", "not_http"),
        "tls": ("tls_untrusted", "self_signed"),
    }
    for name, outcome in seen.items():
        for language in ("en", "zh-hans"):
            with translation.override(language):
                assert not LIBRARY_TEXT.search(outcome.diagnosis), (name, outcome.diagnosis)
        assert not LIBRARY_TEXT.search(repr(outcome.diagnosis_params) + repr(outcome.details))


@pytest.mark.django_db
def test_a_check_that_raises_says_so_without_the_exception(deployment, monkeypatch):
    def broken(check, ctx):
        raise RuntimeError("ZeroDivisionError: secret internals")

    monkeypatch.setitem(runner._TRANSPORTS, "http", broken)
    ctx = build_context(
        deployment, base_url="http://127.0.0.1:9", verify_tls=True, timeout=1, keys={}
    )
    outcome = runner.run_check(CHECKS["cpa_health"], ctx)
    assert outcome.diagnosis_code == "internal_error"
    assert "internals" not in outcome.diagnosis and not LIBRARY_TEXT.search(outcome.diagnosis)
