"""Runs as stored jobs: the verify command, the task worker path, stale runs, --due, pruning."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from routes import tasks
from routes.admin.verification import recent_runs_html
from routes.context import acting
from routes.models import AuditEvent, CheckResult, VerificationJob, VerificationRun
from routes.verification import checks, runs
from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY, running_stack

SECRETS = (ADMIN_KEY, API_KEY, MANAGEMENT_KEY)
IMMEDIATE = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
CHECK_KEYS = {
    "id",
    "method",
    "url",
    "status_code",
    "expected_upstream",
    "observed_upstream",
    "latency_ms",
    "passed",
    "diagnosis",
    # Issue 11's additions.
    "label",
    "warning",
}


def run_command_cli(capsys, *args) -> tuple[int, str, str]:
    """Run `verify` and return (exit code, stdout, stderr) as manage.py would exit."""
    try:
        call_command("verify", *args)
        code = 0
    except CommandError as exc:
        # manage.py prints the message to stderr and exits with the error's returncode.
        print(f"CommandError: {exc}", file=sys.stderr)
        code = exc.returncode
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_verify_json_prints_the_contract_shape_and_exits_0(deployment, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with running_stack(deployment):
        code, out, err = run_command_cli(capsys, "prod", "--json")
    assert code == 0, out + err
    data = json.loads(out)
    assert set(data) == {"deployment", "run", "status", "duration_ms", "causes", "checks"}
    assert data["deployment"] == "prod" and data["status"] == "passed"
    assert data["causes"] == []
    assert isinstance(data["duration_ms"], int)
    run = VerificationRun.objects.get(pk=data["run"])
    assert run.trigger == VerificationRun.Trigger.COMMAND
    assert [c["id"] for c in data["checks"]][:7] == list(checks.SEED_CHECKS)
    panel = data["checks"][0]
    assert set(panel) == CHECK_KEYS
    assert panel["method"] == "HEAD" and panel["status_code"] == 200
    assert panel["expected_upstream"] == panel["observed_upstream"] == "cpamp"
    assert panel["url"].endswith("/management.html")
    assert panel["diagnosis"] == "" and panel["passed"] is True
    assert panel["label"] == "Management panel" and panel["warning"] == ""
    # api_models names each stored API key (issue 11); the other checks have no "keys".
    models = next(c for c in data["checks"] if c["id"] == "api_models")
    assert set(models) == CHECK_KEYS | {"keys"}
    assert models["keys"] == [{"key": "••••" + API_KEY[-4:], "status_code": 200, "passed": True}]
    for secret in SECRETS:
        assert secret not in out + err + caplog.text


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_verify_exits_1_and_prints_a_table_with_diagnoses_when_a_check_fails(deployment, capsys):
    with running_stack(deployment, setup_done=False):
        code, out, err = run_command_cli(capsys, "prod")
    assert code == 1
    assert "prod: run #" in out and "failed" in out
    assert "management_config" in out and "FAIL" in out
    assert "first setup is not finished" in out
    for secret in SECRETS:
        assert secret not in out + err


@pytest.mark.django_db
def test_verify_prints_one_json_object_per_line_for_several_slugs(deployment, team, capsys):
    from routes.models import Deployment

    Deployment.objects.create(slug="stage", name="Stage", team=team, server_name="stage.invalid")
    deployment.server_name = "prod.invalid"
    deployment.save()
    code, out, _err = run_command_cli(capsys, "prod", "stage", "--json", "--insecure")
    lines = out.strip().splitlines()
    assert code == 1  # nothing answers: DNS errors
    assert [json.loads(line)["deployment"] for line in lines] == ["prod", "stage"]
    check = json.loads(lines[0])["checks"][0]
    assert check["diagnosis"].startswith("DNS error")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no deployment nope."),
        (["prod", "--base-url", "ftp://x"], "--base-url"),
        (["prod", "--team", "ghost"], "no team with slug 'ghost'"),
        (["prod", "--team", "other"], "no deployment prod in team other."),
        ([], "Give at least one deployment SLUG"),
        (["prod", "--due"], "--due enqueues scheduled jobs"),
    ],
)
def test_verify_exits_2_on_a_usage_error(deployment, other_team, capsys, args, message):
    code, out, err = run_command_cli(capsys, *args)
    assert code == 2
    assert message in err
    assert VerificationRun.objects.count() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--frobnicate"], "unrecognized arguments"), ([], "Give at least one deployment SLUG")],
)
def test_manage_py_verify_exits_2_on_a_usage_error(args, message):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "manage.py", "verify", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_start_run_enqueues_on_commit_and_the_worker_performs_it(deployment, make_user):
    user = make_user("olga", team=deployment.team, role="operator")
    with running_stack(deployment) as stack, override_settings(TASKS=IMMEDIATE):
        from django.db import transaction

        with transaction.atomic():
            with acting(user=user):
                run = tasks.start_run(
                    deployment=stack.deployment, trigger=VerificationRun.Trigger.MANUAL
                )
            # Not before the commit: the worker must find the row.
            assert VerificationRun.objects.get(pk=run.pk).status == VerificationRun.Status.QUEUED
        run.refresh_from_db()
    assert run.status == VerificationRun.Status.PASSED
    assert run.task_id
    assert run.results.count() >= 7
    event = AuditEvent.objects.get(action="verification.run")
    assert event.actor == user
    assert event.changes["status"] == "passed" and event.changes["trigger"] == "manual"


@pytest.mark.django_db(transaction=True)
def test_the_task_result_carries_no_secret(deployment):
    from routes.tasks import run_verification
    from tests.fakes.stack import store_key

    store_key(deployment, "cpa_api", API_KEY)
    run = runs.create_run(deployment=deployment, trigger="manual", base_url="http://127.0.0.1:9")
    with override_settings(TASKS=IMMEDIATE):
        result = run_verification.enqueue(run.pk, False)
    assert result.return_value == {"run": run.pk, "status": "failed"}
    assert API_KEY not in repr(result.return_value) + repr(result.args)
    assert CheckResult.objects.filter(run=run, passed=False).exists()


@pytest.mark.django_db(transaction=True)
def test_the_task_runs_in_the_database_worker(deployment):
    from django_tasks_db.models import DBTaskResult

    run = tasks.start_run(deployment=deployment, trigger="manual", base_url="http://127.0.0.1:9")
    stored = DBTaskResult.objects.get()
    assert stored.args_kwargs["args"] == [run.pk, False]
    call_command("db_worker", batch=True, startup_delay=False, stdout=io.StringIO())
    run.refresh_from_db()
    assert run.status == VerificationRun.Status.FAILED
    assert run.results.get(check_id="panel").diagnosis.startswith("Connection refused")


@pytest.mark.django_db
def test_a_run_whose_worker_died_is_marked_error(deployment, settings):
    settings.CONSOLE_RUN_STALE_AFTER = 60
    job = runs.job_for(deployment)
    old = VerificationRun.objects.create(
        job=job,
        trigger="manual",
        status=VerificationRun.Status.RUNNING,
        started_at=timezone.now() - dt.timedelta(seconds=61),
    )
    fresh = VerificationRun.objects.create(
        job=job, trigger="manual", status="running", started_at=timezone.now()
    )
    assert runs.sweep_stale_runs() == 1
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.status == VerificationRun.Status.ERROR and old.finished_at
    assert "worker stopped" in old.error
    assert fresh.status == VerificationRun.Status.RUNNING
    # A late worker finishing the stale run does not overwrite the error.
    assert runs.execute_run(run=old).status == VerificationRun.Status.ERROR


@pytest.mark.django_db
def test_a_run_queued_but_never_handed_to_the_task_queue_stops_keeping_its_job_busy(
    deployment, settings
):
    settings.CONSOLE_RUN_STALE_AFTER = 60
    job = runs.job_for(deployment)
    orphan, handed, fresh = (
        VerificationRun.objects.create(job=job, trigger="scheduled", task_id=task_id)
        for task_id in ("", "task-1", "")
    )
    long_ago = timezone.now() - dt.timedelta(seconds=61)
    VerificationRun.objects.filter(pk__in=[orphan.pk, handed.pk]).update(created_at=long_ago)
    assert runs.sweep_stale_runs() == 1
    for run in (orphan, handed, fresh):
        run.refresh_from_db()
    assert (
        orphan.status == VerificationRun.Status.ERROR and "never reached a worker" in orphan.error
    )
    # One handed to the queue may just be waiting behind others; a fresh one is being handed.
    assert handed.status == fresh.status == VerificationRun.Status.QUEUED


@pytest.mark.django_db
def test_the_worker_and_the_scheduler_sweep_stale_runs_and_page_views_do_not(
    deployment, settings, client, make_user
):
    settings.CONSOLE_RUN_STALE_AFTER = 1
    job = runs.job_for(deployment)
    stale = VerificationRun.objects.create(
        job=job,
        trigger="manual",
        status="running",
        started_at=timezone.now() - dt.timedelta(seconds=5),
    )
    client.force_login(make_user("vera", team=deployment.team, role="viewer"))
    for url in (
        "/admin/routes/verificationrun/",
        reverse("admin:routes_deployment_verify", args=[deployment.pk]),
        reverse("admin:routes_verificationrun_progress", args=[stale.pk]),
    ):
        assert client.get(url).status_code == 200, url
    stale.refresh_from_db()
    assert stale.status == VerificationRun.Status.RUNNING
    # The worker sweeps before it performs the next run.
    queued = runs.create_run(deployment=deployment, trigger="manual", base_url="http://127.0.0.1:9")
    assert tasks.run_verification.call(queued.pk, False)["run"] == queued.pk
    stale.refresh_from_db()
    assert stale.status == VerificationRun.Status.ERROR
    again = VerificationRun.objects.create(
        job=job,
        trigger="manual",
        status="running",
        started_at=timezone.now() - dt.timedelta(seconds=5),
    )
    # So does the scheduler (`verify --due`), before it looks for due jobs.
    tasks.enqueue_due()
    again.refresh_from_db()
    assert again.status == VerificationRun.Status.ERROR


@pytest.mark.django_db
def test_verify_due_enqueues_jobs_whose_interval_has_passed(deployment, team, capsys):
    from routes.models import Deployment

    other = Deployment.objects.create(slug="b", name="B", team=team, server_name="b.example.com")
    manual = Deployment.objects.create(slug="c", name="C", team=team, server_name="c.example.com")
    now = timezone.now()
    due = VerificationJob.objects.create(deployment=deployment, interval_seconds=900)
    recent = VerificationJob.objects.create(
        deployment=other,
        interval_seconds=900,
        last_enqueued_at=now - dt.timedelta(minutes=5),
        next_run_at=now + dt.timedelta(minutes=10),
    )
    VerificationJob.objects.create(deployment=manual)
    code, out, _err = run_command_cli(capsys, "--due")
    assert code == 0 and "Enqueued 1 scheduled" in out
    run = VerificationRun.objects.get()
    assert run.job == due and run.trigger == VerificationRun.Trigger.SCHEDULED
    due.refresh_from_db()
    assert due.last_enqueued_at is not None
    assert due.next_run_at == due.last_enqueued_at + dt.timedelta(seconds=900)
    # A second call right away enqueues nothing: the job is busy and not due.
    code, out, _err = run_command_cli(capsys, "--due")
    assert "Enqueued 0 scheduled" in out
    later = now + dt.timedelta(minutes=11)
    assert [j.pk for j in runs.due_jobs(now=later)] == [recent.pk]


@pytest.mark.django_db
def test_verify_due_respects_team(deployment, other_team, capsys):
    VerificationJob.objects.create(deployment=deployment, interval_seconds=300)
    code, out, _err = run_command_cli(capsys, "--due", "--team", "other")
    assert code == 0 and "Enqueued 0" in out


@pytest.mark.django_db
def test_prune_runs_keeps_the_newest_n_per_job(deployment, team, settings):
    from routes.models import Deployment

    settings.CONSOLE_RUNS_KEPT = 3
    other = Deployment.objects.create(slug="b", name="B", team=team, server_name="b.example.com")
    job, job_b = runs.job_for(deployment), runs.job_for(other)
    made = [
        VerificationRun.objects.create(job=job, trigger="manual", status="passed") for _ in range(5)
    ]
    CheckResult.objects.create(
        run=made[0], check_id="panel", method="HEAD", url="u", expected="e", passed=True
    )
    queued = VerificationRun.objects.create(job=job, trigger="manual", status="queued")
    for _ in range(2):
        VerificationRun.objects.create(job=job_b, trigger="manual", status="failed")
    out = io.StringIO()
    call_command("prune_runs", stdout=out)
    left = set(VerificationRun.objects.filter(job=job).values_list("pk", flat=True))
    # The newest three (the queued run counts) are kept.
    assert left == {queued.pk, made[4].pk, made[3].pk}
    assert VerificationRun.objects.filter(job=job_b).count() == 2
    assert not CheckResult.objects.exists()
    assert "Deleted 3 verification run(s)" in out.getvalue()
    call_command("prune_runs", "--keep", "0", stdout=out)
    assert list(VerificationRun.objects.values_list("pk", flat=True)) == [queued.pk]
    assert AuditEvent.objects.filter(action="verification.prune").count() == 2


@pytest.mark.django_db
def test_annotate_last_run_gives_the_newest_status_and_time(deployment, team):
    from routes.models import Deployment

    Deployment.objects.create(slug="b", name="B", team=team, server_name="b.example.com")
    job = runs.job_for(deployment)
    VerificationRun.objects.create(job=job, trigger="manual", status="failed")
    newest = VerificationRun.objects.create(
        job=job, trigger="manual", status="passed", finished_at=timezone.now()
    )
    rows = {d.slug: d for d in runs.annotate_last_run(Deployment.objects.all())}
    assert rows["prod"].last_run_status == "passed"
    assert rows["prod"].last_run_at == newest.finished_at
    assert rows["b"].last_run_status is None


@pytest.mark.django_db
def test_recent_runs_html_is_a_strip_of_badges(deployment):
    job = runs.job_for(deployment)
    run = VerificationRun.objects.create(job=job, trigger="manual", status="failed")
    html = recent_runs_html(deployment)
    assert f"#{run.pk}" in html and "console-badge failed" in html
    assert f"/admin/routes/verificationrun/{run.pk}/change/" in html


@pytest.mark.django_db
def test_verify_base_url_sends_the_checks_elsewhere_and_stores_it(deployment, capsys):
    code, out, _err = run_command_cli(capsys, "prod", "--base-url", "http://127.0.0.1:9/", "--json")
    data = json.loads(out)
    assert code == 1
    assert data["checks"][0]["url"] == "http://127.0.0.1:9/management.html"
    assert VerificationRun.objects.get(pk=data["run"]).base_url == "http://127.0.0.1:9"
    assert data["checks"][0]["diagnosis"].startswith("Connection refused")
