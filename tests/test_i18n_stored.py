"""Issue 15, "no stored English on a Chinese page": what a run says beyond its checks and what
the audit trail names are stored as codes (or in English, mapped back to codes) and read in the
viewer's language; the run's ``error`` column keeps the English words for commands and grep.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone, translation

from routes import audit
from routes import keys as keyring
from routes.context import acting
from routes.models import AuditEvent, Deployment, VerificationJob, VerificationRun
from routes.verification import remarks, runs
from routes.workflows.keys import set_key
from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY, free_port, store_key
from tests.test_i18n import visible_text
from tests.test_i18n_causes import pages_in_chinese

HELD_BACK = "Keys are held back from"
HELD_BACK_TAIL = "until an owner confirms this destination on the deployment page"
HELD_BACK_ZH = "在所有者于部署页面上确认该发送目标之前，不会向"
API_KEY_ZH = "CPA API 密钥"
API_KEY_LONG_ZH = "CPA API 密钥（普通 API 请求）"


def withheld_deployment(team) -> Deployment:
    """A deployment with its three keys whose destinations no owner confirmed.

    Nothing listens on its port nor on the CPA URL: the checks fail fast, every key held back.
    """
    deployment = Deployment.objects.create(
        slug="prod",
        name="Production",
        team=team,
        server_name="localhost",
        http_port=free_port(),
        cpa_upstream="127.0.0.1:8317",
        cpamp_upstream="127.0.0.1:18317",
        cpamp_cpa_url="http://127.0.0.1:9",
    )
    store_key(deployment, keyring.CPAMP_ADMIN, ADMIN_KEY, custom_format=True)
    store_key(deployment, keyring.CPA_MANAGEMENT, MANAGEMENT_KEY, custom_format=True)
    store_key(deployment, keyring.CPA_API, API_KEY, custom_format=True)
    return deployment


@pytest.fixture
def withheld_run(team) -> VerificationRun:
    """A finished run whose keys were held back, run while Chinese was active."""
    deployment = withheld_deployment(team)
    with translation.override("zh-hans"):
        return runs.verify_now(deployment=deployment)


def chinese_page(client, url: str) -> str:
    """Return the text a reader of the page in Chinese sees (no attribute values, no scripts)."""
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    response = client.get(url)
    assert response.status_code == 200, url
    page = response.content.decode()
    assert '<html lang="zh-hans"' in page, url
    return visible_text(page)


def run_pages(client, run: VerificationRun) -> dict[str, str]:
    """Return the text of the run's verification page, run page and dashboard, in Chinese."""
    return {name: visible_text(page) for name, page in pages_in_chinese(client, run).items()}


# --- a run's remarks --------------------------------------------------------------------------


def test_a_run_with_keys_held_back_stores_a_code_and_english_words(withheld_run):
    origins = sorted({"http://127.0.0.1:9", withheld_run.base_url})
    assert withheld_run.remarks == [{"code": "keys_withheld", "params": {"origins": origins}}]
    # Run with Chinese active, the column still holds the English words.
    assert withheld_run.error.startswith(HELD_BACK)
    assert HELD_BACK_TAIL in withheld_run.error


def test_the_run_pages_say_keys_were_held_back_in_chinese(client, users, withheld_run):
    client.force_login(users["operator"])
    for name, page in run_pages(client, withheld_run).items():
        assert HELD_BACK not in page, name
        assert HELD_BACK_TAIL not in page, name
        assert HELD_BACK_ZH in page, name


def test_the_progress_json_says_it_in_the_requests_language(client, users, withheld_run):
    client.force_login(users["operator"])
    url = reverse("admin:routes_verificationrun_progress", args=[withheld_run.pk])
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    chinese = client.get(url).json()["error"]
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    english = client.get(url).json()["error"]
    assert HELD_BACK_ZH in chinese and HELD_BACK not in chinese
    assert english == withheld_run.error


def test_verify_prints_the_remarks_in_its_language_and_keeps_the_column_english(team):
    withheld_deployment(team)
    printed = {}
    for language in ("en", "zh-hans"):
        out = io.StringIO()
        with pytest.raises(SystemExit):
            call_command("verify", "prod", "--lang", language, stdout=out)
        printed[language] = out.getvalue()
    assert HELD_BACK in printed["en"]
    assert HELD_BACK_ZH in printed["zh-hans"] and HELD_BACK not in printed["zh-hans"]
    assert all(run.error.startswith(HELD_BACK) for run in VerificationRun.objects.all())


def test_a_stale_run_says_why_in_the_readers_language(deployment):
    run = runs.create_run(deployment=deployment, trigger="manual")
    started = timezone.now() - dt.timedelta(hours=1)
    VerificationRun.objects.filter(pk=run.pk).update(status="running", started_at=started)
    assert runs.sweep_stale_runs() == 1
    run.refresh_from_db()
    assert run.remarks[0]["code"] == "worker_stopped"
    assert run.error.startswith("The worker stopped before the run finished")
    with translation.override("zh-hans"):
        assert remarks.run_text(run).startswith("任务进程在运行结束前停止了")


def test_a_refused_base_url_reads_in_chinese(deployment):
    run = runs.create_run(deployment=deployment, trigger="manual", base_url="http://a.b/x?")
    run = runs.execute_run(run=run)
    assert run.remarks == [{"code": "base_url_refused", "params": {"url": "http://a.b/x?"}}]
    assert run.error.startswith("Base URL http://a.b/x?:")
    with translation.override("zh-hans"):
        assert remarks.run_text(run).startswith("基础 URL http://a.b/x?：")


def test_a_run_without_remarks_shows_its_stored_error(deployment):
    # Stored before remarks existed, or ended by an exception: its own words are all there is.
    run = VerificationRun.objects.create(
        job=runs.job_for(deployment), trigger="manual", status="error", error="OSError: boom"
    )
    with translation.override("zh-hans"):
        assert remarks.run_text(run) == "OSError: boom"
    run.remarks = [{"code": "no_such_remark", "params": {}}]
    assert remarks.run_text(run) == "OSError: boom"


# --- the audit trail ------------------------------------------------------------------------


@pytest.fixture
def key_events(team, users, deployment) -> list[AuditEvent]:
    """A key added by an owner viewing the console in Chinese, and an older row (English)."""
    with acting(user=users["owner"]), translation.override("zh-hans"):
        set_key(deployment=deployment, role=keyring.CPA_API, secret=API_KEY, label="ci")
    older = audit.record(
        action="key.test",
        team=team,
        object_repr="prod CPA API Key (normal API requests) ••••7f3a",
    )
    return [AuditEvent.objects.get(action="key.create"), older]


def test_a_key_event_stores_the_role_code_and_english_words(key_events):
    created = key_events[0]
    assert created.changes["role"] == keyring.CPA_API
    assert created.object_repr == "prod: CPA API Key (ci)"


@pytest.mark.parametrize("page", ["audit", "dashboard"])
def test_the_trail_names_key_roles_in_chinese(client, users, key_events, page):
    client.force_login(users["owner"])
    url = reverse("admin:routes_auditevent_changelist" if page == "audit" else "admin:index")
    text = chinese_page(client, url)
    assert "CPA API Key" not in text
    assert "prod: CPA API 密钥 (ci)" in text
    if page == "audit":
        assert f"prod {API_KEY_LONG_ZH} ••••7f3a" in text


def test_an_events_page_names_the_role_in_chinese_and_the_export_keeps_english(
    client, users, key_events
):
    client.force_login(users["owner"])
    created = key_events[0]
    page = chinese_page(client, reverse("admin:routes_auditevent_change", args=[created.pk]))
    assert "CPA API Key" not in page and API_KEY_ZH in page
    exported = client.post(reverse("admin:routes_auditevent_export_jsonl"))
    rows = [json.loads(line) for line in b"".join(exported.streaming_content).splitlines()]
    assert {"prod: CPA API Key (ci)"} <= {row["object"] for row in rows}


def test_a_row_stored_in_chinese_reads_in_english_for_an_english_reader(team):
    event = audit.record(action="key.delete", team=team, object_repr=f"prod: {API_KEY_ZH}")
    with translation.override("en"):
        assert event.object_text() == "prod: CPA API Key"


def test_only_key_events_have_their_words_mapped(team):
    event = audit.record(action="deployment.change", team=team, object_repr="CPA API Key demo")
    with translation.override("zh-hans"):
        assert event.object_text() == "CPA API Key demo"


def test_a_runs_event_names_its_status_in_the_readers_language(client, users, deployment):
    job = VerificationJob.objects.create(deployment=deployment)
    run = VerificationRun.objects.create(job=job, trigger="manual", status="failed")
    event = audit.record(action="verification.run", team=deployment.team, obj=run)
    assert event.object_repr == f"#{run.pk} {deployment.slug} failed"  # stored in English
    with translation.override("zh-hans"):
        failed = str(VerificationRun.Status.FAILED.label)
        assert failed != "failed"
        assert event.object_text() == f"#{run.pk} {deployment.slug} {failed}"
    client.force_login(users["owner"])
    dashboard = chinese_page(client, reverse("admin:index"))
    assert f"#{run.pk} {deployment.slug} {failed}" in dashboard
    assert f"#{run.pk} {deployment.slug} failed" not in dashboard


def test_what_a_command_did_is_credited_to_command_in_the_readers_language(client, users, team):
    with acting(label="command"):
        event = audit.record(action="export.nginx", team=team, object_repr="prod")
    assert event.actor_label == "command"  # stored in English, as exports and filters read it
    with translation.override("zh-hans"):
        assert event.actor_text() == "命令"
    client.force_login(users["owner"])
    for url in (
        reverse("admin:index"),
        reverse("admin:routes_auditevent_changelist"),
        reverse("admin:routes_auditevent_change", args=[event.pk]),
    ):
        page = chinese_page(client, url)
        assert "命令" in page and "command" not in page, url
