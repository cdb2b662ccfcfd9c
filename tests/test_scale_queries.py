"""Scale (issue 12): the dashboard and the lists ask the same queries for 3 or 30 deployments, and
the run history reads stored check counters instead of counting every check result.

Timings are bench/bench_scale.py's business; these tests pin the shape of the queries.
"""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from routes.admin import verification as run_admin
from routes.models import CheckResult, Deployment, VerificationRun
from routes.verification import runs

INDEX = reverse("admin:index")
DEPLOYMENTS = reverse("admin:routes_deployment_changelist")
RUNS = reverse("admin:routes_verificationrun_changelist")
PAGES = [INDEX, DEPLOYMENTS, RUNS, f"{RUNS}?status__exact=failed"]

pytestmark = pytest.mark.django_db


def add_run(deployment: Deployment, status: str, *, failed: int = 0) -> VerificationRun:
    """Store a finished run of deployment with three results, `failed` of them failed."""
    now = timezone.now()
    run = VerificationRun.objects.create(
        job=runs.job_for(deployment),
        trigger="scheduled",
        status=status,
        started_at=now,
        finished_at=now,
        duration_ms=300,
        check_count=3,
        failed_count=failed,
    )
    CheckResult.objects.bulk_create(
        CheckResult(
            run=run,
            position=position,
            check_id=check_id,
            method="GET",
            url=f"https://{deployment.server_name}/",
            expected="200",
            status_code=200,
            latency_ms=10 + position,
            passed=position >= failed,
            diagnosis="" if position >= failed else "wrong upstream",
        )
        for position, check_id in enumerate(("panel", "api_models", "cpa_direct"))
    )
    return run


def add_deployments(team, count: int, *, prefix: str) -> None:
    """Add count deployments to team, each with a passed, a failed and an errored run."""
    for n in range(count):
        deployment = Deployment.objects.create(
            slug=f"{prefix}{n}", name=f"{prefix} {n}", team=team, server_name=f"{prefix}{n}.test"
        )
        add_run(deployment, "passed")
        add_run(deployment, "error", failed=1)
        add_run(deployment, "failed", failed=2)


def query_counts(client) -> dict[str, int]:
    """Return the number of queries of each page, asked a second time (sessions are warm)."""
    counts = {}
    for url in PAGES:
        assert client.get(url).status_code == 200
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        counts[url] = len(queries.captured_queries)
    return counts


@pytest.mark.parametrize("role", ["superuser", "operator"])
def test_it_asks_the_same_queries_for_3_or_30_deployments(client, make_user, team, role):
    user = (
        make_user("root", superuser=True)
        if role == "superuser"
        else make_user("otto", team=team, role="operator")
    )
    client.force_login(user)
    add_deployments(team, 3, prefix="a")
    few = query_counts(client)
    add_deployments(team, 27, prefix="b")
    many = query_counts(client)
    assert many == few
    # Every page saw the 30 deployments (the run list its 90 runs), so the counts cover them.
    assert client.get(DEPLOYMENTS).content.decode().count("b26.test") == 1
    assert "90 verification runs" in client.get(RUNS).content.decode()


def test_the_run_history_shows_the_stored_failed_count(client, superuser, deployment):
    run = add_run(deployment, "failed", failed=2)
    client.force_login(superuser)
    body = client.get(RUNS).content.decode()
    assert f'<td class="field-failed_count">{run.failed_count}</td>' in body
    # Nothing is counted over the results: the list reads the column.
    with CaptureQueriesContext(connection) as queries:
        client.get(RUNS)
    assert not any("routes_checkresult" in q["sql"] for q in queries.captured_queries)


def test_the_run_history_counts_no_further_than_its_bound(
    client, superuser, deployment, monkeypatch
):
    monkeypatch.setattr(run_admin.BoundedCountPaginator, "bound", 3)
    monkeypatch.setattr(run_admin.VerificationRunAdmin, "list_per_page", 2)
    made = [add_run(deployment, "passed") for _ in range(5)]
    client.force_login(superuser)

    def shown(query: str) -> list[VerificationRun]:
        body = client.get(f"{RUNS}?{query}").content.decode()
        return [run for run in made if f"/verificationrun/{run.pk}/change/" in body]

    body = client.get(RUNS).content.decode()
    assert "The newest 3 runs; filter by deployment, status or date" in body
    assert shown("p=1") == [made[3], made[4]]
    assert shown("p=2") == [made[2]]
    assert client.get(f"{RUNS}?p=3").status_code == 302
    body = client.get(f"{RUNS}?status__exact=failed").content.decode()
    assert "0 verification runs" in body and "The newest" not in body


def test_the_deployment_filter_lists_only_the_chosen_one_past_its_bound(
    client, superuser, team, monkeypatch
):
    monkeypatch.setattr(run_admin, "MAX_DEPLOYMENT_CHOICES", 2)
    made = [
        Deployment.objects.create(slug=slug, name=slug, team=team, server_name=f"{slug}.test")
        for slug in ("alpha", "beta", "gamma")
    ]
    client.force_login(superuser)
    listed = client.get(RUNS).content.decode()
    assert f"?deployment={made[0].pk}" not in listed
    chosen = client.get(f"{RUNS}?deployment={made[1].pk}").content.decode()
    assert f"?deployment={made[1].pk}" in chosen and f"?deployment={made[2].pk}" not in chosen
    monkeypatch.setattr(run_admin, "MAX_DEPLOYMENT_CHOICES", 3)
    listed = client.get(RUNS).content.decode()
    assert all(f"?deployment={d.pk}" in listed for d in made)


def test_a_finished_run_stores_its_check_counts(deployment):
    run = runs.create_run(deployment=deployment, trigger="manual", base_url="http://127.0.0.1:9")
    assert run.check_count is None and run.failed_count is None
    run = runs.execute_run(run=run)
    assert run.status == VerificationRun.Status.FAILED
    assert run.check_count == run.results.count() > 0
    assert run.failed_count == run.results.filter(passed=False).count() > 0


def test_a_swept_stale_run_stores_the_counts_of_what_it_stored(deployment, settings):
    settings.CONSOLE_RUN_STALE_AFTER = 60
    run = add_run(deployment, "running", failed=1)
    VerificationRun.objects.filter(pk=run.pk).update(
        started_at=timezone.now() - dt.timedelta(seconds=61), check_count=None, failed_count=None
    )
    assert runs.sweep_stale_runs() == 1
    run.refresh_from_db()
    assert (run.status, run.check_count, run.failed_count) == ("error", 3, 1)


def test_the_migration_fills_the_counts_of_finished_runs(deployment):
    failed = add_run(deployment, "failed", failed=2)
    passed = add_run(deployment, "passed")
    bare = add_run(deployment, "error")
    CheckResult.objects.filter(run=bare).delete()
    queued = VerificationRun.objects.create(job=failed.job, trigger="manual")
    VerificationRun.objects.update(check_count=None, failed_count=None)
    migration = importlib.import_module("routes.migrations.0014_run_scale")
    migration.fill_counts(apps, None)
    stored = dict(VerificationRun.objects.values_list("pk", "check_count"))
    assert stored == {failed.pk: 3, passed.pk: 3, bare.pk: 0, queued.pk: None}
    assert dict(VerificationRun.objects.values_list("pk", "failed_count")) == {
        failed.pk: 2,
        passed.pk: 0,
        bare.pk: 0,
        queued.pk: None,
    }
