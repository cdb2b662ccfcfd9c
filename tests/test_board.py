"""The status board: heartbeats, uptime, latency and charts from aggregates, and its JSON views."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from routes.admin.board import build_board, percent_text
from routes.models import CheckResult, Deployment, VerificationJob, VerificationRun
from routes.verification import history
from routes.workflows.keys import set_key

NOW = timezone.now().replace(microsecond=0)
SECRETS = {
    "cpamp_admin": "cpamp_" + "Board7" * 5 + "Xy",
    "cpa_management": "board-management-key-5521",
    "cpa_api": "sk-board-api-key-88410",
}
INDEX = "/admin/"


def make_deployment(team, slug: str) -> Deployment:
    return Deployment.objects.create(
        slug=slug, name=f"Gateway {slug}", team=team, server_name=f"{slug}.example.com"
    )


def add_run(
    deployment: Deployment,
    status: str = "passed",
    *,
    ago: dt.timedelta = dt.timedelta(minutes=1),
    duration_ms: int | None = 300,
    latencies: dict[str, int | None] | None = None,
) -> VerificationRun:
    """Store a run of deployment that finished `ago` before NOW (queued/running: unfinished)."""
    job, _created = VerificationJob.objects.get_or_create(deployment=deployment)
    finished = status in ("passed", "failed", "error")
    run = VerificationRun.objects.create(
        job=job,
        status=status,
        trigger="scheduled",
        started_at=NOW - ago - dt.timedelta(seconds=1),
        finished_at=NOW - ago if finished else None,
        duration_ms=duration_ms if finished else None,
    )
    for position, (check_id, latency) in enumerate((latencies or {}).items()):
        CheckResult.objects.create(
            run=run,
            position=position,
            check_id=check_id,
            method="GET",
            url=f"http://{deployment.server_name}/",
            expected="200",
            latency_ms=latency,
            passed=status == "passed",
        )
    return run


def add_runs(deployment: Deployment, count: int, *, status: str = "passed") -> list[int]:
    """Store count finished runs a minute apart, the last a minute ago; return ids, oldest first."""
    job, _created = VerificationJob.objects.get_or_create(deployment=deployment)
    runs = VerificationRun.objects.bulk_create(
        VerificationRun(
            job=job,
            status=status,
            trigger="scheduled",
            finished_at=NOW - dt.timedelta(minutes=count - n),
            duration_ms=100 + n,
        )
        for n in range(count)
    )
    return [run.pk for run in runs]


# --- aggregates -----------------------------------------------------------------------------


def test_heartbeats_are_the_last_50_finished_runs_oldest_first(team):
    busy, idle = make_deployment(team, "busy"), make_deployment(team, "idle")
    ids = add_runs(busy, 60)
    add_run(busy, "running", ago=dt.timedelta(seconds=1))
    add_run(busy, "queued", ago=dt.timedelta(seconds=1))

    beats = history.heartbeats([busy.pk, idle.pk])

    assert [beat.id for beat in beats[busy.pk]] == ids[-50:]
    assert beats[idle.pk] == []
    newest = beats[busy.pk][-1]
    assert (newest.status, newest.duration_ms) == ("passed", 159)
    assert newest.finished_at == NOW - dt.timedelta(minutes=1)


def test_heartbeats_follow_the_finish_time_and_each_deployment_keeps_its_own_limit(team):
    first, second = make_deployment(team, "first"), make_deployment(team, "second")
    late = add_run(first, "failed", ago=dt.timedelta(minutes=10))
    early = add_run(first, "passed", ago=dt.timedelta(minutes=20))  # created later
    add_runs(second, 3)

    beats = history.heartbeats([first.pk, second.pk], limit=2)

    assert [beat.id for beat in beats[first.pk]] == [early.pk, late.pk]
    assert len(beats[second.pk]) == 2


def test_uptime_is_the_share_of_passed_runs_in_each_window(team):
    watched, old, recent = (make_deployment(team, slug) for slug in ("watched", "old", "recent"))
    add_run(watched, "passed", ago=dt.timedelta(hours=1))
    add_run(watched, "failed", ago=dt.timedelta(hours=2))
    add_run(watched, "passed", ago=dt.timedelta(days=3))
    add_run(watched, "error", ago=dt.timedelta(days=20))
    add_run(watched, "failed", ago=dt.timedelta(days=40))  # outside every window
    add_run(watched, "running", ago=dt.timedelta(minutes=1))  # no outcome yet
    add_run(old, "passed", ago=dt.timedelta(days=31))
    add_run(recent, "passed", ago=dt.timedelta(days=5))

    shares = history.uptime([watched.pk, old.pk, recent.pk], now=NOW)

    assert shares[watched.pk] == {"24h": 50.0, "7d": 66.67, "30d": 50.0}
    assert shares[old.pk] == {"24h": None, "7d": None, "30d": None}
    assert shares[recent.pk] == {"24h": None, "7d": 100.0, "30d": 100.0}


def test_the_latest_latency_is_the_mean_check_latency_of_the_latest_finished_run(team):
    deployment, silent = make_deployment(team, "timed"), make_deployment(team, "silent")
    add_run(deployment, ago=dt.timedelta(minutes=9), latencies={"panel": 900, "api_models": 900})
    add_run(deployment, ago=dt.timedelta(minutes=2), latencies={"panel": 100, "api_models": 201})
    add_run(deployment, "running", ago=dt.timedelta(minutes=1))
    add_run(silent, "error", latencies={"panel": None})

    beats = history.heartbeats([deployment.pk, silent.pk])
    latest = history.latest_latency(beats)

    assert latest == {deployment.pk: 150, silent.pk: None}


def test_the_latency_series_aligns_each_check_with_the_recent_runs(team):
    deployment = make_deployment(team, "charted")
    add_run(deployment, ago=dt.timedelta(minutes=30), latencies={"panel": 999})
    first = add_run(deployment, ago=dt.timedelta(minutes=3), latencies={"panel": 10, "cpa": 30})
    second = add_run(deployment, "failed", ago=dt.timedelta(minutes=2), latencies={"panel": 12})
    add_run(deployment, "error", ago=dt.timedelta(minutes=1))  # no result: no point

    series = history.latency_series(deployment.pk, limit=3)

    assert [run.id for run in series.runs] == [first.pk, second.pk]
    assert series.checks == {"panel": [10, 12], "cpa": [30, None]}


def test_uptime_reads_as_a_short_percentage():
    assert [percent_text(v) for v in (100.0, 99.5, 66.67, 0.0, None)] == [
        "100%",
        "99.5%",
        "66.67%",
        "0%",
        "—",
    ]


# --- constant queries -----------------------------------------------------------------------


def _fill(team, count: int, prefix: str) -> None:
    for n in range(count):
        deployment = make_deployment(team, f"{prefix}{n}")
        add_runs(deployment, 3)
        add_run(deployment, "failed", latencies={"panel": 40 + n, "api_models": 50})


def test_the_board_takes_the_same_queries_for_5_or_50_deployments(team):
    _fill(team, 5, "a")
    few_deployments = list(Deployment.objects.order_by("pk"))
    with CaptureQueriesContext(connection) as few:
        small = build_board(deployments=few_deployments, url="/", with_drift=True)
    _fill(team, 45, "b")
    many_deployments = list(Deployment.objects.order_by("pk"))
    with CaptureQueriesContext(connection) as many:
        large = build_board(deployments=many_deployments, url="/", with_drift=True)

    assert len(many.captured_queries) == len(few.captured_queries)
    assert len(large.rows) == 50 and len(small.rows) == 5
    assert all(len(row.beats) == 4 and row.latency_ms is not None for row in large.rows)


def test_the_dashboard_json_takes_the_same_queries_for_5_or_50_deployments(
    client, make_user, team, django_assert_num_queries
):
    client.force_login(make_user("vic", team=team, role="viewer"))
    url = reverse("admin:routes_deployment_board")
    _fill(team, 5, "a")
    with CaptureQueriesContext(connection) as few:
        assert len(client.get(url).json()["deployments"]) == 5
    _fill(team, 45, "b")
    with django_assert_num_queries(len(few.captured_queries)):
        assert len(client.get(url).json()["deployments"]) == 50


def test_the_dashboard_page_takes_the_same_queries_for_5_or_50_deployments(client, make_user, team):
    client.force_login(make_user("vic", team=team, role="viewer"))
    _fill(team, 5, "a")
    with CaptureQueriesContext(connection) as few:
        client.get(INDEX)
    _fill(team, 45, "b")
    with CaptureQueriesContext(connection) as many:
        page = client.get(INDEX).content.decode()
    assert len(many.captured_queries) == len(few.captured_queries)
    assert page.count('data-board-deployment="') == 50


# --- the JSON views ---------------------------------------------------------------------------


@pytest.fixture
def world(team, other_team, make_user):
    ours, theirs = make_deployment(team, "ours"), make_deployment(other_team, "theirs")
    for role, secret in SECRETS.items():
        set_key(deployment=ours, role=role, secret=secret)
    add_runs(ours, 2)
    newest = add_run(ours, "failed", latencies={"panel": 70, "api_models": 90})
    add_run(theirs, "passed", latencies={"panel": 5})
    return {
        "ours": ours,
        "theirs": theirs,
        "newest": newest,
        "viewer": make_user("vic", team=team, role="viewer"),
        "outsider": make_user("bob", team=other_team, role="owner"),
    }


def test_the_dashboard_json_lists_only_the_users_own_deployments(client, world):
    client.force_login(world["viewer"])
    response = client.get(reverse("admin:routes_deployment_board"))

    assert response.status_code == 200
    data = response.json()
    assert [d["slug"] for d in data["deployments"]] == ["ours"]
    row = data["deployments"][0]
    assert [beat["status"] for beat in row["heartbeats"]] == ["passed", "passed", "failed"]
    newest = row["heartbeats"][-1]
    assert newest["url"] == reverse(
        "admin:routes_verificationrun_change", args=[world["newest"].pk]
    )
    assert f"#{world['newest'].pk}" in newest["title"] and "300 ms" in newest["title"]
    assert row["uptime"] == {"24h": 66.67, "7d": 66.67, "30d": 66.67}
    assert row["latency_ms"] == 80 and row["latency_text"] == "80 ms"
    assert data["chart"]["deployment"] == world["ours"].pk
    assert data["chart"]["series"] == [
        {"check": "panel", "latency_ms": [70]},
        {"check": "api_models", "latency_ms": [90]},
    ]


def test_the_dashboard_json_never_charts_another_teams_deployment(client, world):
    client.force_login(world["viewer"])
    url = reverse("admin:routes_deployment_board")
    response = client.get(url, {"chart": world["theirs"].pk})
    assert response.json()["chart"]["deployment"] == world["ours"].pk
    assert b"theirs" not in response.content


def test_a_deployments_json_is_a_404_for_another_team(client, world):
    url = reverse("admin:routes_deployment_board_detail", args=[world["ours"].pk])
    client.force_login(world["outsider"])
    assert client.get(url).status_code == 404
    client.force_login(world["viewer"])
    response = client.get(url)
    assert response.status_code == 200
    assert [d["slug"] for d in response.json()["deployments"]] == ["ours"]


def test_the_json_views_answer_get_only(client, world):
    client.force_login(world["viewer"])
    for url in (
        reverse("admin:routes_deployment_board"),
        reverse("admin:routes_deployment_board_detail", args=[world["ours"].pk]),
    ):
        assert client.post(url).status_code == 405


def test_the_json_carries_no_secret_and_no_domain(client, world, superuser):
    client.force_login(superuser)
    bodies = [
        client.get(reverse("admin:routes_deployment_board")).content,
        client.get(
            reverse("admin:routes_deployment_board_detail", args=[world["ours"].pk])
        ).content,
    ]
    for body in bodies:
        json.loads(body)
        for secret in SECRETS.values():
            assert secret.encode() not in body
        assert b"ours.example.com" not in body


# --- the pages ----------------------------------------------------------------------------------


def test_the_dashboard_shows_the_bar_uptime_latency_and_a_chart(client, world):
    client.force_login(world["viewer"])
    page = client.get(INDEX).content.decode()

    board = page.split('id="status-board"')[1]
    assert 'data-board-url="/admin/routes/deployment/board/"' in board
    assert board.count('class="console-beat passed"') == 2
    assert board.count('class="console-beat failed"') == 1
    assert board.count('class="console-beat empty"') == 47
    run_url = reverse("admin:routes_verificationrun_change", args=[world["newest"].pk])
    assert f'href="{run_url}"' in board
    assert "66.67%" in board and "80 ms" in board
    assert "data-chart-plot" in board
    assert "vendor/uplot/uPlot.iife.min.js" in page and "console/board.js" in page
    assert "theirs" not in page


def test_the_verification_page_shows_the_deployments_board_and_chart(client, world):
    client.force_login(world["viewer"])
    url = reverse("admin:routes_deployment_verify", args=[world["ours"].pk])
    page = client.get(url).content.decode()

    board = page.split('id="status-board"')[1]
    detail = reverse("admin:routes_deployment_board_detail", args=[world["ours"].pk])
    assert f'data-board-url="{detail}"' in board
    assert board.count("console-beat failed") == 1
    assert "data-chart-plot" in board and "data-chart-select" not in board


def test_a_deployment_without_runs_shows_empty_slots_and_dashes(client, team, make_user):
    deployment = make_deployment(team, "fresh")
    client.force_login(make_user("vic", team=team, role="viewer"))
    data = client.get(reverse("admin:routes_deployment_board_detail", args=[deployment.pk])).json()
    assert data["deployments"][0]["heartbeats"] == []
    assert data["deployments"][0]["uptime_text"] == {"24h": "—", "7d": "—", "30d": "—"}
    assert data["chart"]["runs"] == [] and data["chart"]["series"] == []
    page = client.get(INDEX).content.decode()
    assert page.count('class="console-beat empty"') == history.HEARTBEATS
