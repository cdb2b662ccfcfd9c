"""Run history as aggregates: heartbeats, uptime, latest latency and latency series.

Every function here answers for a whole set of deployments with a fixed number of queries (a
window function or one aggregate query each), however many deployments, runs and check results
there are; nothing loops over deployments with a query inside. Only finished runs count
(passed, failed or error, with a finished_at); a queued or running run has no outcome yet.

Uptime is the share of finished runs in the window that passed. It counts the runs that are
stored: ``manage.py prune_runs`` keeps the last CONSOLE_RUNS_KEPT runs of each job, so on a job
that runs often the longer windows only reach back as far as the oldest kept run.

The latest latency is the mean check latency of the deployment's latest finished run (checks
without a latency, such as skipped ones, left out). The run's duration_ms is not used for it: it
also holds the worker's own time (planning, decrypting keys, storing results), and the checks run
in parallel, so it says how long the run took rather than how fast the deployment answers. Each
heartbeat carries duration_ms for that.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import cast

from django.db.models import Avg, Count, F, Q, Subquery, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from routes.models import CheckResult, VerificationRun

Status = VerificationRun.Status
FINISHED = (Status.PASSED, Status.FAILED, Status.ERROR)
# The heartbeat bar's length, and how many runs the latency chart reaches back.
HEARTBEATS = 50
CHART_RUNS = 50
# Uptime windows, shortest first: their keys are what the JSON and the pages use.
WINDOWS: dict[str, dt.timedelta] = {
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
}


@dataclass(frozen=True)
class Heartbeat:
    """One finished run in a heartbeat bar."""

    id: int
    status: str
    finished_at: dt.datetime
    duration_ms: int | None


@dataclass(frozen=True)
class LatencySeries:
    """Check latencies over a deployment's recent finished runs, oldest run first.

    ``checks`` maps a check id to one latency per run in ``runs`` (None where the check did not
    run or has no latency), in the order the checks first appear.
    """

    runs: list[Heartbeat]
    checks: dict[str, list[int | None]] = field(default_factory=dict)


def _finished_runs(deployment_ids: Collection[int]) -> Q:
    return Q(job__deployment_id__in=list(deployment_ids), status__in=FINISHED) & Q(
        finished_at__isnull=False
    )


def heartbeats(
    deployment_ids: Collection[int], *, limit: int = HEARTBEATS
) -> dict[int, list[Heartbeat]]:
    """Return {deployment id: its last `limit` finished runs, oldest first} in one query.

    Every id asked about is a key; a deployment without a finished run maps to [].
    """
    found: dict[int, list[Heartbeat]] = {pk: [] for pk in deployment_ids}
    if not found:
        return found
    # ROW_NUMBER() per deployment, newest first; Django puts the window in a subquery to filter.
    rows = (
        VerificationRun.objects.filter(_finished_runs(found))
        .annotate(
            deployment=F("job__deployment_id"),
            newest=Window(
                RowNumber(),
                partition_by=[F("job__deployment_id")],
                order_by=[F("finished_at").desc(), F("id").desc()],
            ),
        )
        .filter(newest__lte=limit)
        .order_by()
        .values_list("deployment", "id", "status", "finished_at", "duration_ms", "newest")
    )
    ranked: dict[int, list[tuple[int, Heartbeat]]] = defaultdict(list)
    for deployment, pk, status, finished_at, duration_ms, newest in rows:
        # Never None: the filter keeps finished runs only (the stubs do not know that).
        when = cast(dt.datetime, finished_at)
        ranked[deployment].append((newest, Heartbeat(pk, status, when, duration_ms)))
    for deployment, beats in ranked.items():
        found[deployment] = [beat for _rank, beat in sorted(beats, key=lambda b: -b[0])]
    return found


def uptime(
    deployment_ids: Collection[int], *, now: dt.datetime | None = None
) -> dict[int, dict[str, float | None]]:
    """Return {deployment id: {window: percent of finished runs that passed, or None}}.

    One aggregate query over the longest window. None means no finished run in that window.
    """
    now = now or timezone.now()
    found: dict[int, dict[str, float | None]] = {
        pk: dict.fromkeys(WINDOWS) for pk in deployment_ids
    }
    if not found:
        return found
    counts = {}
    for key, span in WINDOWS.items():
        inside = Q(finished_at__gt=now - span)
        counts[f"runs_{key}"] = Count("id", filter=inside)
        counts[f"passed_{key}"] = Count("id", filter=inside & Q(status=Status.PASSED))
    names = list(counts)
    rows = (
        VerificationRun.objects.filter(
            _finished_runs(found),
            finished_at__gt=now - max(WINDOWS.values()),
            finished_at__lte=now,
        )
        .values("job__deployment_id")
        .annotate(**counts)
        .order_by()
        .values_list("job__deployment_id", *names)
    )
    for deployment, *values in rows:
        row = dict(zip(names, values, strict=True))
        shares = found[deployment]
        for key in WINDOWS:
            runs = row[f"runs_{key}"]
            shares[key] = round(100.0 * row[f"passed_{key}"] / runs, 2) if runs else None
    return found


def mean_latencies(run_ids: Collection[int]) -> dict[int, int | None]:
    """Return {run id: mean latency in ms of its checks that have one, or None} in one query."""
    found: dict[int, int | None] = dict.fromkeys(run_ids)
    if not found:
        return found
    rows = (
        CheckResult.objects.filter(run_id__in=list(found), latency_ms__isnull=False)
        .values("run_id")
        .annotate(mean=Avg("latency_ms"))
        .order_by()
    )
    for row in rows:
        found[row["run_id"]] = round(row["mean"])
    return found


def latest_latency(beats: dict[int, list[Heartbeat]]) -> dict[int, int | None]:
    """Return {deployment id: mean check latency of its latest finished run, or None}.

    Takes heartbeats() output, so the latest runs are known already: one query.
    """
    latest = {deployment: runs[-1].id for deployment, runs in beats.items() if runs}
    means = mean_latencies(latest.values())
    return {
        deployment: means.get(latest[deployment]) if deployment in latest else None
        for deployment in beats
    }


def latency_series(deployment_id: int, *, limit: int = CHART_RUNS) -> LatencySeries:
    """Return the latency of each check over the deployment's last `limit` finished runs.

    One query: the runs are a subquery of the result rows' own query. A run without any check
    result (an error before the first check) has no point on the chart and is left out.
    """
    recent = (
        VerificationRun.objects.filter(_finished_runs([deployment_id]))
        .order_by("-finished_at", "-id")
        .values("id")[:limit]
    )
    rows = (
        CheckResult.objects.filter(run_id__in=Subquery(recent))
        .order_by("run__finished_at", "run_id", "position", "id")
        .values_list(
            "run_id",
            "run__status",
            "run__finished_at",
            "run__duration_ms",
            "check_id",
            "latency_ms",
        )
    )
    runs: list[Heartbeat] = []
    latencies: dict[str, dict[int, int | None]] = {}
    for run_id, status, finished_at, duration_ms, check_id, latency_ms in rows:
        if not runs or runs[-1].id != run_id:
            runs.append(Heartbeat(run_id, status, cast(dt.datetime, finished_at), duration_ms))
        latencies.setdefault(check_id, {})[run_id] = latency_ms
    checks = {
        check_id: [by_run.get(run.id) for run in runs] for check_id, by_run in latencies.items()
    }
    return LatencySeries(runs=runs, checks=checks)
