"""The scheduler: due jobs, the conditional claim, `run_scheduler` (--once, the loop, signals),
the `verify --due` alias, and the next run time kept by the admin, the import and the model."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import signal
import threading

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connection
from django.urls import reverse
from django.utils import timezone

from routes import portable, tasks
from routes.models import Deployment, VerificationJob, VerificationRun
from routes.verification import runs

Status = VerificationRun.Status


@pytest.fixture
def not_queued(monkeypatch) -> list[int]:
    """Keep runs from reaching the task queue (no worker here); return the ids queue_run got."""
    queued: list[int] = []
    monkeypatch.setattr(tasks, "queue_run", lambda run, insecure=False: queued.append(run.pk))
    return queued


def scheduler(*args: str) -> str:
    out = io.StringIO()
    call_command("run_scheduler", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def make_deployment(team, slug: str) -> Deployment:
    return Deployment.objects.create(
        slug=slug, name=slug, team=team, server_name=f"{slug}.example.com"
    )


# --- what is due ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_job_is_due_when_it_has_an_interval_its_time_has_come_and_nothing_runs(team):
    now = timezone.now()
    never_run = VerificationJob.objects.create(
        deployment=make_deployment(team, "new"), interval_seconds=60
    )
    past = VerificationJob.objects.create(
        deployment=make_deployment(team, "past"),
        interval_seconds=60,
        next_run_at=now - dt.timedelta(seconds=1),
    )
    VerificationJob.objects.create(
        deployment=make_deployment(team, "future"),
        interval_seconds=60,
        next_run_at=now + dt.timedelta(seconds=30),
    )
    VerificationJob.objects.create(deployment=make_deployment(team, "manual"))
    busy = VerificationJob.objects.create(
        deployment=make_deployment(team, "busy"), interval_seconds=60
    )
    VerificationRun.objects.create(job=busy, trigger="manual", status=Status.RUNNING)

    due = runs.due_jobs(now=now)
    # Never run first, then by next run; the future, manual and busy jobs are not due.
    assert [j.deployment.slug for j in due] == ["new", "past"]
    assert [j.pk for j in runs.due_jobs(now=now, limit=1)] == [never_run.pk]
    assert past.pk in [j.pk for j in runs.due_jobs(now=now + dt.timedelta(seconds=1))]


@pytest.mark.django_db
def test_a_claim_moves_the_next_run_on_its_own_grid_or_one_interval_after_a_late_one(team):
    now = timezone.now()
    job = VerificationJob.objects.create(
        deployment=make_deployment(team, "a"),
        interval_seconds=20,
        next_run_at=now - dt.timedelta(seconds=1),
    )
    assert runs.claim_slot(job, now=now)
    job.refresh_from_db()
    # On time: the next slot is the claimed one plus the interval, not now plus the interval.
    assert job.next_run_at == now + dt.timedelta(seconds=19)
    assert job.last_enqueued_at == now
    # A job that fell behind by more than an interval gets no catch-up burst.
    later = now + dt.timedelta(minutes=5)
    assert runs.claim_slot(job, now=later)
    job.refresh_from_db()
    assert job.next_run_at == later + dt.timedelta(seconds=20)


@pytest.mark.django_db
def test_of_two_schedulers_that_read_the_same_due_job_only_one_claims_it(
    team, not_queued, monkeypatch
):
    job = VerificationJob.objects.create(deployment=make_deployment(team, "a"), interval_seconds=20)
    # Both read the job before either claims it: the same next run (never run: NULL).
    first, second = runs.due_jobs(), runs.due_jobs()
    assert [j.pk for j in first] == [j.pk for j in second] == [job.pk]
    assert runs.claim_slot(first[0]) is True
    assert runs.claim_slot(second[0]) is False
    # Again with a next run that is a time, through the whole pass each scheduler makes.
    VerificationJob.objects.filter(pk=job.pk).update(
        next_run_at=timezone.now() - dt.timedelta(seconds=1)
    )
    read = runs.due_jobs()
    assert read[0].next_run_at is not None
    monkeypatch.setattr(runs, "due_jobs", lambda **kwargs: [VerificationJob.objects.get(pk=job.pk)])
    won = runs.claim_due_runs()
    # The second scheduler still holds what it read before the first one claimed.
    monkeypatch.setattr(runs, "due_jobs", lambda **kwargs: read)
    lost = runs.claim_due_runs()
    assert len(won) == 1 and lost == []
    assert VerificationRun.objects.filter(trigger="scheduled").count() == 1


@pytest.mark.django_db
def test_a_job_whose_schedule_changed_after_it_was_read_is_not_claimed_on_the_old_one(team):
    job = VerificationJob.objects.create(deployment=make_deployment(team, "a"), interval_seconds=20)
    [read] = runs.due_jobs()
    # Meanwhile an owner made the job manual only (next run NULL as before).
    VerificationJob.objects.filter(pk=job.pk).update(interval_seconds=None)
    assert runs.claim_slot(read) is False
    assert runs.claim_due_runs() == []


# --- run_scheduler --once and verify --due ---------------------------------------------------


@pytest.mark.django_db
def test_run_scheduler_once_queues_the_due_runs_and_prints_how_many(team, not_queued):
    due = VerificationJob.objects.create(deployment=make_deployment(team, "a"), interval_seconds=60)
    VerificationJob.objects.create(deployment=make_deployment(team, "m"))

    assert scheduler("--once").strip() == "Enqueued 1 scheduled verification run(s)."
    run = VerificationRun.objects.get()
    assert (run.job, run.trigger, run.status) == (due, "scheduled", Status.QUEUED)
    assert run.triggered_by is None
    assert not_queued == [run.pk]
    # Its run is queued: not due again until it finished and its time came.
    assert json.loads(scheduler("--once", "--json")) == {"count": 0, "enqueued": []}
    VerificationRun.objects.filter(pk=run.pk).update(status=Status.PASSED)
    VerificationJob.objects.filter(pk=due.pk).update(next_run_at=timezone.now())
    payload = json.loads(scheduler("--once", "--json"))
    assert payload["count"] == 1
    assert payload["enqueued"][0]["deployment"] == "a"
    assert VerificationRun.objects.filter(pk=payload["enqueued"][0]["run"]).exists()


@pytest.mark.django_db
def test_run_scheduler_refuses_an_unknown_team_and_json_without_once(team):
    with pytest.raises(CommandError, match="--team: no team with slug 'ghost'"):
        scheduler("--once", "--team", "ghost")
    with pytest.raises(CommandError, match="--json only works with --once"):
        scheduler("--json")


@pytest.mark.django_db
def test_verify_due_is_an_alias_of_run_scheduler_once(team, other_team, monkeypatch, not_queued):
    VerificationJob.objects.create(deployment=make_deployment(team, "a"), interval_seconds=60)
    VerificationJob.objects.create(deployment=make_deployment(other_team, "b"), interval_seconds=60)
    calls = []
    real = tasks.enqueue_due

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(tasks, "enqueue_due", spy)
    out = io.StringIO()
    call_command("verify", "--due", "--json", "--team", "ops", stdout=out)
    payload = json.loads(out.getvalue())
    assert payload["count"] == 1 and payload["enqueued"][0]["deployment"] == "a"
    assert [c["team"].slug for c in calls] == ["ops"]
    assert scheduler("--once") == "Enqueued 1 scheduled verification run(s).\n"


# --- the loop ---------------------------------------------------------------------------------


# Each pass bounds its statements first: on PostgreSQL that is a query.
@pytest.mark.django_db
def test_the_loop_passes_until_its_stop_flag_is_set_and_returns_what_it_queued():
    stop = threading.Event()
    passes = []

    def enqueue() -> list[int]:
        passes.append(1)
        if len(passes) == 3:
            stop.set()
        return [1, 2]

    assert runs.run_schedule(enqueue, stop=stop, every=0.001) == 6
    assert len(passes) == 3


@pytest.mark.django_db
@pytest.mark.skipif("not os.environ.get('DATABASE_URL', '').startswith('postgres')")
def test_on_postgresql_every_statement_of_a_pass_is_bounded():
    stop = threading.Event()
    seen = []

    def enqueue() -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            seen.append(cursor.fetchone()[0])
            cursor.execute("SHOW lock_timeout")
            seen.append(cursor.fetchone()[0])
        stop.set()
        return []

    runs.run_schedule(enqueue, stop=stop)
    assert seen == ["10s", "5s"]


# Each pass bounds its statements first: on PostgreSQL that is a query.
@pytest.mark.django_db
def test_a_failing_pass_is_logged_without_secrets_and_the_loop_goes_on(caplog, monkeypatch):
    from django.conf import settings

    monkeypatch.setitem(settings.DATABASES["default"], "PASSWORD", "db-Pa55word-Secret")
    stop = threading.Event()
    passes = []

    def enqueue() -> list[int]:
        passes.append(1)
        if len(passes) == 1:
            raise OperationalError(
                'connection to "db" failed: password "db-Pa55word-Secret" was refused\nDETAIL: x'
            )
        stop.set()
        return [1]

    with caplog.at_level(logging.ERROR, logger="routes.verification.runs"):
        queued = runs.run_schedule(enqueue, stop=stop, every=0.001, pause_after_error=0.001)
    assert queued == 1 and len(passes) == 2
    assert "scheduler pass failed (OperationalError: connection to" in caplog.text
    assert "db-Pa55word-Secret" not in caplog.text and "DETAIL" not in caplog.text


@pytest.mark.django_db
def test_run_scheduler_stops_on_sigterm_and_restores_the_signal_handlers(monkeypatch, team):
    before = signal.getsignal(signal.SIGTERM)
    passes = []

    def enqueue_due(**kwargs):
        passes.append(kwargs)
        if len(passes) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return []

    monkeypatch.setattr(tasks, "enqueue_due", enqueue_due)
    err = io.StringIO()
    call_command("run_scheduler", stdout=io.StringIO(), stderr=err)
    assert len(passes) == 2
    assert "Scheduler stopped; it queued 0 verification run(s)." in err.getvalue()
    assert signal.getsignal(signal.SIGTERM) == before


# --- the next run time: admin, import, model --------------------------------------------------


def job_form(**changes: str) -> dict[str, str]:
    data = {"base_url": "", "verify_tls": "on", "timeout_seconds": "10", "interval_seconds": ""}
    data.update(changes)
    return data


@pytest.mark.django_db
def test_saving_the_job_in_the_admin_sets_or_clears_its_next_run(client, users, deployment):
    job = runs.job_for(deployment)
    url = reverse("admin:routes_verificationjob_change", args=[job.pk])
    client.force_login(users["operator"])
    before = timezone.now()
    assert client.post(url, job_form(interval_seconds="300")).status_code == 302
    job.refresh_from_db()
    # Never run on a schedule: due at the scheduler's next pass.
    assert before <= job.next_run_at <= timezone.now()
    # A changed interval counts from the last scheduled run.
    last = timezone.now() - dt.timedelta(seconds=30)
    VerificationJob.objects.filter(pk=job.pk).update(last_enqueued_at=last)
    assert client.post(url, job_form(interval_seconds="600")).status_code == 302
    job.refresh_from_db()
    assert job.next_run_at == last + dt.timedelta(seconds=600)
    listing = client.get(reverse("admin:routes_verificationjob_changelist")).content.decode()
    shown = timezone.localtime(job.next_run_at).strftime("%Y-%m-%d %H:%M:%S")
    assert shown in listing
    assert shown in client.get(url).content.decode()
    # The same interval again keeps the next run.
    same = job_form(interval_seconds="600", timeout_seconds="5")
    assert client.post(url, same).status_code == 302
    job.refresh_from_db()
    assert job.next_run_at == last + dt.timedelta(seconds=600)
    assert client.post(url, job_form()).status_code == 302
    job.refresh_from_db()
    assert job.interval_seconds is None and job.next_run_at is None
    listing = client.get(reverse("admin:routes_verificationjob_changelist")).content.decode()
    assert "manual only" in listing


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("interval_seconds", "19", "Interval: give 20 to 604800 seconds (a week)"),
        ("interval_seconds", "604801", "Interval: give 20 to 604800 seconds (a week)"),
        ("interval_seconds", "-5", "Interval: give 20 to 604800 seconds"),
        ("slow_threshold_ms", "0", "Slow threshold: give 1 to 600000 milliseconds"),
        ("slow_threshold_ms", "600001", "Slow threshold: give 1 to 600000 milliseconds"),
    ],
)
def test_the_job_admin_refuses_a_bad_interval_or_threshold_naming_the_field(
    client, users, deployment, field, value, message
):
    job = runs.job_for(deployment)
    client.force_login(users["operator"])
    page = client.post(
        reverse("admin:routes_verificationjob_change", args=[job.pk]), job_form(**{field: value})
    )
    assert page.status_code == 200
    errors = page.context["adminform"].form.errors
    assert list(errors) == [field]
    assert message in " ".join(errors[field])
    job.refresh_from_db()
    assert job.interval_seconds is None and job.slow_threshold_ms is None


@pytest.mark.django_db
def test_the_job_admin_stores_a_slow_threshold(client, users, deployment):
    job = runs.job_for(deployment)
    client.force_login(users["operator"])
    url = reverse("admin:routes_verificationjob_change", args=[job.pk])
    assert client.post(url, job_form(slow_threshold_ms="1500")).status_code == 302
    job.refresh_from_db()
    assert job.slow_threshold_ms == 1500


@pytest.mark.django_db
def test_the_model_refuses_an_interval_under_20_seconds(deployment):
    job = VerificationJob(deployment=deployment, interval_seconds=19)
    with pytest.raises(ValidationError) as caught:
        job.full_clean()
    assert list(caught.value.message_dict) == ["interval_seconds"]
    job.interval_seconds = 20
    job.full_clean()


OUT_OF_RANGE = "must be 20 to 604800 seconds (a week), or null for manual runs only"


def definitions(**verification) -> dict:
    return {
        "version": 1,
        "deployments": [
            {
                "slug": "prod",
                "team": "ops",
                "server_name": "api.example.com",
                "verification": verification,
            }
        ],
    }


@pytest.mark.django_db
def test_an_import_sets_the_interval_and_next_run_and_the_export_writes_it(db):
    before = timezone.now()
    portable.import_payload(payload=definitions(interval_seconds=120))
    job = VerificationJob.objects.get(deployment__slug="prod")
    assert job.interval_seconds == 120
    assert before <= job.next_run_at <= timezone.now()
    exported = portable.export_payload(deployments=Deployment.objects.all())
    assert exported["deployments"][0]["verification"] == {"base_url": "", "interval_seconds": 120}
    # null (or no field: its default) is manual only.
    portable.import_payload(payload=definitions(interval_seconds=None), update=True)
    job.refresh_from_db()
    assert job.interval_seconds is None and job.next_run_at is None
    exported = portable.export_payload(deployments=Deployment.objects.all())
    assert exported["deployments"][0]["verification"]["interval_seconds"] is None


@pytest.mark.django_db
def test_an_import_without_a_schedule_creates_no_job(db):
    portable.import_payload(payload=definitions(base_url="https://api.example.com"))
    assert not VerificationJob.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (19, f"{OUT_OF_RANGE} (got 19)"),
        (604801, f"{OUT_OF_RANGE} (got 604801)"),
        ("60", "must be an integer or null"),
        (True, "must be an integer or null"),
        (2.5, "must be an integer or null"),
    ],
)
def test_an_import_refuses_a_bad_interval_naming_the_field(db, value, reason):
    with pytest.raises(portable.ImportFailed) as caught:
        portable.import_payload(payload=definitions(interval_seconds=value))
    assert caught.value.lines() == [f"prod: verification.interval_seconds: {reason}"]
    assert not Deployment.objects.exists() and not VerificationJob.objects.exists()
