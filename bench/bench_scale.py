"""Scale: the dashboard, the deployment list and the run history at 100 and 10,000 deployments.

    .venv/bin/python bench/bench_scale.py

It seeds 100 deployments (10 runs each, 10 check results per run), measures each page, grows the
same database to BENCH_SCALE_DEPLOYMENTS (default 10,000) deployments with BENCH_SCALE_RESULTS
(default 1,000,000) check results in all, and measures again: query counts at both sizes, the
time ratio between them, and the run history's time against the deployment list's at the large
size (superuser, operator, ?status__exact=failed). A quick run:
BENCH_SCALE_DEPLOYMENTS=1000 BENCH_SCALE_RESULTS=100000.

SQLite in a scratch file by default. With DATABASE_URL=postgres://…/NAME in the environment it
seeds test_NAME next to NAME (Django's test-database machinery, dropped afterwards), never NAME
itself. Set BENCH_SKIP_SCALE=1 to skip it.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SKIP = "BENCH_SKIP_SCALE"
SMALL = 100
TEAM_SIZE = 100
RUNS_PER_DEPLOYMENT = 10
# Failed checks in a run that did not pass (the first ones of its template).
FAILED_PER_RUN = 2
REPEATS = 5
# The run history may take at most this many times the deployment list's time.
BOUND = 2.0


@dataclass
class Page:
    """A page measured as one user: its label, URL and who asks."""

    label: str
    url: str
    user: str


@dataclass
class Measure:
    """Queries and median seconds of one page at one size."""

    queries: int
    seconds: float


def setup_django(scratch: Path) -> tuple[str, object]:
    """Point Django at a scratch database; return its vendor and the test-database name to drop."""
    url = os.environ.get("DATABASE_URL", "")
    postgres = url.startswith(("postgres://", "postgresql://", "pgsql://"))
    if not postgres:
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'bench.sqlite3'}"
    os.environ["CONSOLE_DATA_DIR"] = str(scratch / "data")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django
    from django.conf import settings

    warnings.filterwarnings("ignore", "No directory at", UserWarning)

    django.setup()
    # Unhashed static URLs: the whitenoise manifest exists only after collectstatic.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.ALLOWED_HOSTS = ["testserver"]
    from django.core.management import call_command
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections, connection

    # As Django's test runner does: one connection for the whole bench, so queries are counted.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    if postgres:
        creation = connection.creation
        old_name = creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        return connection.vendor, old_name
    call_command("migrate", verbosity=0, interactive=False)
    return connection.vendor, None


def check_ids(count: int) -> list[str]:
    """Return count check ids: the real ones first, numbered ones after."""
    from routes.verification.checks import CHECKS

    real = list(CHECKS)
    return [real[i] if i < len(real) else f"check_{i}" for i in range(count)]


def run_status(deployment_index: int, run_index: int) -> str:
    """Return the seeded status: one run in five failed, one in fifty errored."""
    turn = deployment_index * 7 + run_index
    if turn % 50 == 0:
        return "error"
    return "failed" if turn % 5 == 0 else "passed"


class Seeder:
    """Grows the scratch database: deployments in teams, their jobs, runs and check results."""

    def __init__(self, *, results_per_run: int) -> None:
        from django.contrib.auth import get_user_model

        from routes.models import Membership, Team

        user_model = get_user_model()
        self.results_per_run = results_per_run
        self.root = user_model.objects.create_superuser("root", "root@example.com", "x")
        self.otto = user_model.objects.create_user("otto", "otto@example.com", "x", is_staff=True)
        self.teams: list[Team] = []
        self.count = 0
        self.templates: dict[str, int] = {}
        self._team(0)
        Membership.objects.create(user=self.otto, team=self.teams[0], role="operator")

    def _team(self, index: int) -> object:
        from routes.models import Team

        while len(self.teams) <= index:
            n = len(self.teams)
            self.teams.append(Team.objects.create(name=f"Team {n:04d}", slug=f"t{n:04d}"))
        return self.teams[index]

    def grow(self, total: int) -> None:
        """Add deployments up to total, with their runs and results, in one transaction."""
        from django.db import connection, transaction
        from django.db.models import F

        from routes.models import Deployment, VerificationJob, VerificationRun

        start = self.count
        now = dt.datetime.now(dt.UTC)
        with transaction.atomic():
            deployments = Deployment.objects.bulk_create(
                (
                    Deployment(
                        slug=f"d{i:05d}",
                        name=f"Deployment {i}",
                        team=self._team(i // TEAM_SIZE),
                        server_name=f"d{i:05d}.example.com",
                    )
                    for i in range(start, total)
                ),
                batch_size=2000,
            )
            jobs = VerificationJob.objects.bulk_create(
                (VerificationJob(deployment=d) for d in deployments), batch_size=2000
            )
            last_run = VerificationRun.objects.order_by("-pk").values_list("pk", flat=True).first()
            runs = []
            for offset, job in enumerate(jobs):
                index = start + offset
                for k in range(RUNS_PER_DEPLOYMENT):
                    # Newest last: one run per deployment an hour, over the last hours.
                    at = now - dt.timedelta(hours=RUNS_PER_DEPLOYMENT - k, seconds=index % 3600)
                    status = run_status(index, k)
                    # As the runner stores them when the run finishes (runs.stored_counts).
                    failed = 0 if status == "passed" else min(FAILED_PER_RUN, self.results_per_run)
                    runs.append(
                        VerificationRun(
                            job=job,
                            status=status,
                            trigger="manual" if k % 3 == 0 else "scheduled",
                            triggered_by=self.root if k % 3 == 0 else None,
                            base_url=f"https://d{index:05d}.example.com",
                            started_at=at,
                            finished_at=at + dt.timedelta(milliseconds=340),
                            duration_ms=340,
                            check_count=self.results_per_run,
                            failed_count=failed,
                            error="boom" if status == "error" else "",
                        )
                    )
            VerificationRun.objects.bulk_create(runs, batch_size=2000)
            # created_at is auto_now_add: bulk_create stamps it now, the history needs it spread.
            new_runs = VerificationRun.objects.filter(pk__gt=last_run or 0)
            new_runs.update(created_at=F("started_at"))
            if not self.templates:
                self._make_templates(new_runs)
            self._copy_results(connection, after=last_run or 0)
        self.count = total
        if connection.vendor == "postgresql":
            # What autovacuum does to a table of this size: statistics and the visibility map.
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")

    def _make_templates(self, runs: object) -> None:
        """Store the results of one passed and one failed run through the ORM, to copy from."""
        from routes.models import CheckResult

        ids = check_ids(self.results_per_run)
        for status in ("passed", "failed"):
            run = runs.filter(status=status).order_by("pk").first()
            results = []
            for position, check_id in enumerate(ids):
                ok = status == "passed" or position >= FAILED_PER_RUN
                results.append(
                    CheckResult(
                        run=run,
                        position=position,
                        check_id=check_id,
                        method="GET",
                        url=f"{run.base_url}/v1/models",
                        expected="200 from CPA",
                        status_code=200 if ok else 404,
                        latency_ms=20 + position,
                        expected_upstream="cpa",
                        observed_upstream="cpa" if ok else "cpamp",
                        passed=ok,
                        diagnosis="" if ok else "wrong upstream",
                    )
                )
            CheckResult.objects.bulk_create(results)
            self.templates[status] = run.pk

    def _copy_results(self, connection: object, *, after: int) -> None:
        """Copy the template results to every new run in two INSERT … SELECT statements."""
        from routes.models import CheckResult, VerificationRun

        quote = connection.ops.quote_name
        columns = [f.column for f in CheckResult._meta.concrete_fields if not f.primary_key]
        picked = ", ".join("r.id" if c == "run_id" else f"t.{quote(c)}" for c in columns)
        results = quote(CheckResult._meta.db_table)
        run_table = quote(VerificationRun._meta.db_table)
        sql = (
            f"INSERT INTO {results} ({', '.join(quote(c) for c in columns)}) "
            f"SELECT {picked} FROM {run_table} r CROSS JOIN {results} t "
            "WHERE t.run_id = %s AND r.id > %s AND r.id NOT IN (%s, %s) AND r.status "
        )
        passed, failed = self.templates["passed"], self.templates["failed"]
        with connection.cursor() as cursor:
            cursor.execute(sql + "= 'passed'", [passed, after, passed, failed])
            cursor.execute(sql + "IN ('failed', 'error')", [failed, after, passed, failed])


def measure(client: object, url: str) -> Measure:
    """Return the page's query count and its median time over REPEATS requests after a warm-up."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"{url}: HTTP {response.status_code}")
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    # Read now: the next request's request_started signal empties the log it slices.
    count = len(queries.captured_queries)
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        client.get(url)
        timings.append(time.perf_counter() - started)
    return Measure(queries=count, seconds=statistics.median(timings))


def measure_all(seeder: Seeder, pages: list[Page]) -> dict[tuple[str, str], Measure]:
    """Return every page's measure as its user."""
    from django.test import Client

    clients = {}
    for name in {page.user for page in pages}:
        client = Client()
        client.force_login(getattr(seeder, name))
        clients[name] = client
    return {(page.label, page.user): measure(clients[page.user], page.url) for page in pages}


def main() -> int:
    """Seed, measure at both sizes, print the table; return non-zero if a bound was not met."""
    if os.environ.get(SKIP):
        print(f"skipped ({SKIP} is set)")
        return 0
    large = int(os.environ.get("BENCH_SCALE_DEPLOYMENTS", "10000"))
    total_results = int(os.environ.get("BENCH_SCALE_RESULTS", "1000000"))
    small = min(SMALL, large)
    results_per_run = max(1, total_results // (large * RUNS_PER_DEPLOYMENT))
    with tempfile.TemporaryDirectory(prefix="console-bench-scale-") as tmp:
        vendor, old_name = setup_django(Path(tmp))
        try:
            return bench(vendor, small=small, large=large, results_per_run=results_per_run)
        finally:
            if old_name is not None:
                from django.db import connection

                connection.creation.destroy_test_db(old_name, verbosity=0)


def bench(vendor: str, *, small: int, large: int, results_per_run: int) -> int:
    """Measure at small and large deployments; print figures; return 1 if a bound was missed."""
    from django.urls import reverse

    from routes.models import CheckResult, VerificationRun

    index = reverse("admin:index")
    deployments = reverse("admin:routes_deployment_changelist")
    runs = reverse("admin:routes_verificationrun_changelist")
    failed = f"{runs}?status__exact=failed"
    pages = [
        Page(label, url, user)
        for label, url in (
            ("dashboard", index),
            ("deployment list", deployments),
            ("run list", runs),
            ("run list ?status=failed", failed),
        )
        for user in ("root", "otto")
    ]
    seeder = Seeder(results_per_run=results_per_run)
    sizes = {}
    for size in (small, large):
        started = time.perf_counter()
        seeder.grow(size)
        seeded = time.perf_counter() - started
        print(
            f"{vendor}: {size} deployments, {VerificationRun.objects.count()} runs, "
            f"{CheckResult.objects.count()} check results (seeded in {seeded:.1f} s)",
            flush=True,
        )
        sizes[size] = measure_all(seeder, pages)
    print(
        f"{'page':<25} {'user':<5} {'queries':>15} {f'time@{small} (s)':>15} "
        f"{f'time@{large} (s)':>17} {'ratio':>7}"
    )
    growing = []
    for page in pages:
        key = (page.label, page.user)
        few, many = sizes[small][key], sizes[large][key]
        queries = f"{few.queries} -> {many.queries}"
        if few.queries != many.queries:
            growing.append(key)
        print(
            f"{page.label:<25} {page.user:<5} {queries:>15} {few.seconds:>15.3f} "
            f"{many.seconds:>17.3f} {many.seconds / few.seconds:>6.1f}x"
        )
    print(f"run list against the deployment list at {large} deployments (bound {BOUND:.0f}x):")
    over = []
    for label, user in (
        ("run list", "root"),
        ("run list", "otto"),
        ("run list ?status=failed", "root"),
        ("run list ?status=failed", "otto"),
    ):
        yardstick = sizes[large][("deployment list", user)].seconds
        ratio = sizes[large][(label, user)].seconds / yardstick
        if ratio > BOUND:
            over.append((label, user))
        print(f"  {label:<25} {user:<5} {ratio:>5.2f}x")
    if growing or over:
        print(f"FAILED: queries growing {growing}; over {BOUND:.0f}x {over}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
