"""`manage.py list_runs`: newest first, the JSON contract, the table, its errors, its queries."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from routes.models import Deployment, VerificationJob, VerificationRun

CONTRACT = {"run", "deployment", "status", "trigger", "started_at", "finished_at", "duration_ms"}


def list_runs(*args: str) -> str:
    out = io.StringIO()
    call_command("list_runs", *args, stdout=out)
    return out.getvalue()


def add_run(deployment: Deployment, *, minutes_ago: int, **fields) -> VerificationRun:
    """Store a run queued minutes_ago (created_at is automatic, so it is set afterwards)."""
    job, _created = VerificationJob.objects.get_or_create(deployment=deployment)
    run = VerificationRun.objects.create(job=job, **{"trigger": "manual", **fields})
    created = timezone.now() - dt.timedelta(minutes=minutes_ago)
    VerificationRun.objects.filter(pk=run.pk).update(created_at=created)
    return run


@pytest.fixture
def history(deployment, theirs):
    """Three finished runs of prod and one queued run of theirs, oldest first."""
    now = timezone.now()
    started = now - dt.timedelta(minutes=30)
    old = add_run(
        deployment,
        minutes_ago=30,
        trigger="scheduled",
        status="passed",
        started_at=started,
        finished_at=started + dt.timedelta(milliseconds=340),
        duration_ms=340,
    )
    middle = add_run(deployment, minutes_ago=20, trigger="command", status="failed")
    new = add_run(deployment, minutes_ago=10, status="error")
    queued = add_run(theirs, minutes_ago=5)
    return [old, middle, new, queued]


@pytest.mark.django_db
def test_list_runs_json_is_the_contract_newest_first(history):
    old, middle, new, queued = history
    rows = json.loads(list_runs("--json"))
    assert [r["run"] for r in rows] == [queued.pk, new.pk, middle.pk, old.pk]
    for row in rows:
        assert CONTRACT <= set(row)
    assert rows[-1] == {
        **rows[-1],
        "run": old.pk,
        "deployment": "prod",
        "status": "passed",
        "trigger": "scheduled",
        "started_at": old.started_at.isoformat(),
        "finished_at": old.finished_at.isoformat(),
        "duration_ms": 340,
    }
    assert dt.datetime.fromisoformat(rows[-1]["started_at"]) == old.started_at
    assert rows[0]["deployment"] == "theirs" and rows[0]["status"] == "queued"
    assert rows[0]["started_at"] is None and rows[0]["finished_at"] is None
    assert rows[0]["duration_ms"] is None


@pytest.mark.django_db
def test_list_runs_takes_slugs_a_team_and_a_limit(history):
    old, middle, new, queued = history
    assert [r["run"] for r in json.loads(list_runs("prod", "--json"))] == [
        new.pk,
        middle.pk,
        old.pk,
    ]
    assert [r["run"] for r in json.loads(list_runs("--team", "other", "--json"))] == [queued.pk]
    assert [r["run"] for r in json.loads(list_runs("--limit", "2", "--json"))] == [
        queued.pk,
        new.pk,
    ]
    assert json.loads(list_runs("prod", "--team", "ops", "--limit", "1", "--json"))[0]["run"] == (
        new.pk
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no deployment nope."),
        (["prod", "ghost"], "no deployment ghost."),
        (["theirs", "--team", "ops"], "no deployment theirs in team ops."),
        (["--team", "ghost"], "--team: no team with slug 'ghost'"),
        (["--limit", "0"], "--limit: give 1 to 10000 (got 0)."),
        (["--limit", "10001"], "--limit: give 1 to 10000 (got 10001)."),
    ],
)
def test_list_runs_refuses_unknown_names_and_a_limit_out_of_range(history, args, message):
    with pytest.raises(CommandError) as caught:
        list_runs(*args)
    assert message in str(caught.value)


@pytest.mark.django_db
def test_list_runs_prints_an_aligned_table(history):
    old, middle, new, queued = history
    lines = list_runs().splitlines()
    assert lines[0].split() == [
        "run",
        "deployment",
        "status",
        "trigger",
        "started",
        "finished",
        "ms",
    ]
    assert len(lines) == 5
    # Every column starts where its heading does.
    for heading in ("deployment", "status", "trigger", "started"):
        column = lines[0].index(heading)
        for line in lines[1:]:
            assert line[column - 1] == " " and line[column] != " ", (heading, line)
    last = lines[-1]
    assert last.split()[:4] == [str(old.pk), "prod", "passed", "scheduled"]
    assert timezone.localtime(old.started_at).strftime("%Y-%m-%d %H:%M:%S") in last
    assert last.endswith(" 340")
    assert lines[1].split()[:4] == [str(queued.pk), "theirs", "queued", "manual"]
    assert lines[1].split()[4:] == ["-", "-", "-"]


@pytest.mark.django_db
def test_list_runs_says_so_when_there_is_no_run(db):
    assert list_runs().strip() == "No verification runs."
    assert json.loads(list_runs("--json")) == []


@pytest.mark.django_db
def test_list_runs_makes_the_same_queries_for_any_limit(team, django_assert_num_queries):
    for index in range(30):
        deployment = Deployment.objects.create(
            slug=f"d{index}", name=f"D{index}", team=team, server_name=f"d{index}.example.com"
        )
        add_run(deployment, minutes_ago=index)
    with django_assert_num_queries(1) as few:
        assert len(json.loads(list_runs("--limit", "3", "--json"))) == 3
    with django_assert_num_queries(len(few.captured_queries)):
        assert len(json.loads(list_runs("--limit", "10000", "--json"))) == 30
    slugs = [f"d{index}" for index in range(20)]
    with django_assert_num_queries(3):
        # The slugs, the team, the runs.
        assert len(json.loads(list_runs(*slugs, "--team", "ops", "--json"))) == 20
