"""Scale for every role (issue 16): pages as a superuser and as an operator of many teams, bulk
import and export, and the audit list as its trail grows.

    .venv/bin/python bench/bench_teams_scale.py

It seeds BENCH_TEAMS_SIZES deployments (default 1000,10000) with bench_scale.py's Seeder (bulk
SQL: ten runs per deployment and BENCH_TEAMS_RESULTS check results in all at the largest size,
default 1,000,000), spreads them over BENCH_TEAMS_TEAMS teams (default 20) and makes "opal" an
operator of every one of them, so that she sees what the superuser sees through the team scope.
At each size it prints, side by side:

- the dashboard and the deployment list as the superuser and as opal;
- export_deployments of them all, with its statement count.

Then, on the largest database, import_deployments of as many new deployments as each size and
an --update of as many seeded ones, the sizes taking turns (each run is rolled back afterwards,
so every run starts from the seeded rows).

Times are the best of BENCH_TEAMS_REPEATS requests (default 9; the two users' requests
alternate) and of BENCH_TEAMS_IMPORT_REPEATS runs of an import or export (default 3): on a
machine shared with other work, the best run is the one it disturbed least.

Then it grows the audit trail to each of BENCH_TEAMS_EVENTS events (default 20000,200000) and
prints the audit list's time, plain and with each filter, as both users.

Bounds (the issue's "Done when"): at the largest size opal's pages take at most 1.5x the
superuser's; the largest import takes at most 10x the smallest and under 90 s; the export under
10 s with the same statements at every size; the audit list grows by at most 1.3x from the
smallest trail to the largest. A quick run: BENCH_TEAMS_SIZES=100,1000 BENCH_TEAMS_RESULTS=100000
BENCH_TEAMS_EVENTS=2000,20000 (the bounds are meant for the defaults).

SQLite in a scratch file by default; with DATABASE_URL=postgres://…/NAME it seeds test_NAME (as
bench_scale.py does, dropped afterwards). Set BENCH_SKIP_TEAMS_SCALE=1 to skip it.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_scale import RUNS_PER_DEPLOYMENT, Page, Seeder, setup_django

SKIP = "BENCH_SKIP_TEAMS_SCALE"
OPERATOR_BOUND = 1.5
IMPORT_GROWTH_BOUND = 10.0
IMPORT_SECONDS = 90.0
EXPORT_SECONDS = 10.0
AUDIT_GROWTH_BOUND = 1.3
EVENT_BATCH = 5_000
# Actions the seeded trail cycles through, and the users (besides root and opal) acting.
EVENT_ACTIONS = (
    "deployment.change",
    "deployment.create",
    "key.rotate",
    "verification.run",
    "config.export",
    "login",
    "override.change",
    "membership.add",
)
EVENT_USERS = 30
# Requests per page and user, and runs per import: the best of them is reported. The machine is
# shared (tests, other benches): the best run is the one least disturbed by the rest of it, and
# the users' requests alternate so that neither gets the quieter moments.
REPEATS = int(os.environ.get("BENCH_TEAMS_REPEATS", "9"))
IMPORT_REPEATS = int(os.environ.get("BENCH_TEAMS_IMPORT_REPEATS", "3"))


def sizes_from(name: str, default: str) -> list[int]:
    """Return the sizes an environment variable lists ("1000,10000"), smallest first."""
    return sorted(int(part) for part in os.environ.get(name, default).split(",") if part.strip())


@dataclass
class Timed:
    """One timed operation or page: best seconds, the statements it sent and their time."""

    seconds: float
    queries: int
    db_seconds: float = 0.0


class _Undo(Exception):
    """Raised to roll a timed operation back."""


def timed(action: Callable[[], Any], *, undo: bool = False, repeats: int = 1) -> Timed:
    """Return the best time of action() over repeats runs, and the statements it sends.

    With undo each run is rolled back, so that every run starts from the same rows.
    """
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    best: Timed | None = None
    for _ in range(repeats):
        try:
            with transaction.atomic():
                with CaptureQueriesContext(connection) as queries:
                    started = time.perf_counter()
                    action()
                    seconds = time.perf_counter() - started
                if best is None or seconds < best.seconds:
                    best = Timed(seconds, len(queries.captured_queries))
                if undo:
                    raise _Undo
        except _Undo:
            pass
    assert best is not None
    return best


def compare(users: dict[str, Any], pages: list[Page]) -> dict[tuple[str, str], Timed]:
    """Return each page's statements and best time as its user, the users' requests alternating."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    clients = {}
    for name, user in users.items():
        clients[name] = Client()
        clients[name].force_login(user)
    found: dict[tuple[str, str], Timed] = {}
    for url in dict.fromkeys(page.url for page in pages):
        asked = [page for page in pages if page.url == url]
        best: dict[str, float] = {}
        for page in asked:
            client = clients[page.user]
            status = client.get(url).status_code
            if status != 200:
                raise SystemExit(f"{url} as {page.user}: HTTP {status}")
            with CaptureQueriesContext(connection) as queries:
                client.get(url)
            # Read now: the next request's request_started signal empties the log.
            captured = queries.captured_queries
            db_seconds = sum(float(query["time"]) for query in captured)
            found[(page.label, page.user)] = Timed(0.0, len(captured), db_seconds)
        for _ in range(REPEATS):
            for page in asked:
                started = time.perf_counter()
                clients[page.user].get(url)
                spent = time.perf_counter() - started
                best[page.user] = min(spent, best.get(page.user, spent))
        for page in asked:
            found[(page.label, page.user)].seconds = best[page.user]
    return found


def analyze() -> None:
    """Do what autovacuum does to tables after bulk changes: statistics and the visibility map."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


def spread(teams: list[Any]) -> None:
    """Move every deployment into one of teams, by id: each team holds an equal share."""
    from django.db.models import F
    from django.db.models.functions import Mod

    from routes.models import Deployment

    for index, team in enumerate(teams):
        Deployment.objects.annotate(bucket=Mod(F("id"), len(teams))).filter(bucket=index).update(
            team=team
        )
    analyze()


def definitions(count: int, *, prefix: str, teams: list[Any]) -> dict[str, Any]:
    """Return a definitions file of count new deployments with two overrides and a schedule."""
    return {
        "version": 1,
        "deployments": [
            {
                "slug": f"{prefix}{n:05d}",
                "team": teams[n % len(teams)].slug,
                "server_name": f"{prefix}{n:05d}.example.net",
                "route_overrides": [
                    {"match": "prefix", "path": "/config", "target": "cpamp"},
                    {"match": "exact", "path": f"/only-{n}", "target": "cpa"},
                ],
                "verification": {"interval_seconds": 300},
            }
            for n in range(count)
        ],
    }


def export_all(size: int, scratch: Path) -> Timed:
    """Return the best run of export_deployments of every deployment (size of them)."""
    from django.core.management import call_command

    target = scratch / f"export-{size}.json"
    return timed(
        lambda: call_command("export_deployments", "--output", str(target)),
        undo=True,
        repeats=IMPORT_REPEATS,
    )


def imports(sizes: list[int], teams: list[Any]) -> dict[int, dict[str, Timed]]:
    """Return the best run of an import of each size of new deployments and of an --update.

    Measured side by side on the largest database, the sizes taking turns, so that the load
    elsewhere on the machine weighs on each size alike. An --update of size replaces that many
    of the seeded deployments, each with a changed field.
    """
    from routes import portable
    from routes.models import Deployment

    payloads: dict[tuple[str, int], tuple[dict[str, Any], bool]] = {}
    for size in sizes:
        payloads[("import", size)] = (definitions(size, prefix=f"i{size}-", teams=teams), False)
        chosen = Deployment.objects.filter(
            pk__in=Deployment.objects.order_by("slug").values("pk")[:size]
        )
        exported = portable.export_payload(deployments=chosen)
        for entry in exported["deployments"]:
            entry["client_max_body_size"] = "128m"
            entry.pop("keys")
        payloads[("import --update", size)] = (exported, True)
    best: dict[int, dict[str, Timed]] = {size: {} for size in sizes}
    for _ in range(IMPORT_REPEATS):
        for (name, size), (payload, update) in payloads.items():
            run = timed(
                lambda payload=payload, update=update: portable.import_payload(
                    payload=payload, update=update
                ),
                undo=True,
            )
            if name not in best[size] or run.seconds < best[size][name].seconds:
                best[size][name] = run
    return best


class Trail:
    """Grows the audit trail with bulk INSERTs: events of every team, newest last."""

    def __init__(self, *, teams: list[Any], users: list[Any]) -> None:
        self.teams = teams
        self.users = users
        self.count = 0

    def grow(self, total: int) -> None:
        """Add events up to total, one second apart, ending now."""
        from django.db import transaction

        from routes.models import AuditEvent, Deployment

        ids = list(Deployment.objects.order_by("pk").values_list("pk", flat=True)[:5000])
        created_at = AuditEvent._meta.get_field("created_at")
        now = dt.datetime.now(dt.UTC)
        # Spread in time, as a real trail is: auto_now_add would stamp every row with now.
        created_at.auto_now_add = False  # type: ignore[attr-defined]
        try:
            with transaction.atomic():
                for start in range(self.count, total, EVENT_BATCH):
                    batch = range(start, min(total, start + EVENT_BATCH))
                    AuditEvent.objects.bulk_create(self._event(n, ids, now, total) for n in batch)
        finally:
            created_at.auto_now_add = True  # type: ignore[attr-defined]
        self.count = total
        analyze()

    def _event(self, n: int, ids: list[int], now: dt.datetime, total: int) -> Any:
        from routes.models import AuditEvent

        action = EVENT_ACTIONS[n % len(EVENT_ACTIONS)]
        actor = self.users[n % len(self.users)]
        team = None if action == "login" else self.teams[n % len(self.teams)]
        return AuditEvent(
            created_at=now - dt.timedelta(seconds=total - n),
            actor=actor,
            actor_label=actor.username,
            team=team,
            action=action,
            object_type="user" if action == "login" else "deployment",
            object_id=str(actor.pk if action == "login" else ids[n % len(ids)]),
            object_repr=f"event {n}",
            changes={"name": [f"old {n}", f"new {n}"]},
            ip="198.51.100.7",
        )


def audit_pages(team: Any, opal: Any) -> list[Page]:
    """Return the audit list, plain and with each filter, as root and as opal."""
    from django.urls import reverse

    url = reverse("admin:routes_auditevent_changelist")
    queries = {
        "audit list": "",
        "audit ?action": "?action=deployment.change",
        "audit ?team": f"?team__id__exact={team.pk}",
        "audit ?object_type": "?object_type=deployment",
        "audit ?actor": f"?actor__id__exact={opal.pk}",
    }
    return [
        Page(label, url + query, user)
        for label, query in queries.items()
        for user in ("root", "opal")
    ]


def main() -> int:
    """Seed, measure at every size, print the tables; return non-zero if a bound was missed."""
    if os.environ.get(SKIP):
        print(f"skipped ({SKIP} is set)")
        return 0
    sizes = sizes_from("BENCH_TEAMS_SIZES", "1000,10000")
    events = sizes_from("BENCH_TEAMS_EVENTS", "20000,200000")
    total_results = int(os.environ.get("BENCH_TEAMS_RESULTS", "1000000"))
    team_count = int(os.environ.get("BENCH_TEAMS_TEAMS", "20"))
    results_per_run = max(1, total_results // (sizes[-1] * RUNS_PER_DEPLOYMENT))
    with tempfile.TemporaryDirectory(prefix="console-bench-teams-") as tmp:
        vendor, old_name = setup_django(Path(tmp))
        try:
            return bench(
                vendor,
                sizes=sizes,
                events=events,
                team_count=team_count,
                results_per_run=results_per_run,
                scratch=Path(tmp),
            )
        finally:
            if old_name is not None:
                from django.db import connection

                connection.creation.destroy_test_db(old_name, verbosity=0)


def bench(
    vendor: str,
    *,
    sizes: list[int],
    events: list[int],
    team_count: int,
    results_per_run: int,
    scratch: Path,
) -> int:
    """Measure at every size; print figures; return 1 if a bound was missed."""
    from django.contrib.auth import get_user_model
    from django.urls import reverse

    from routes.models import CheckResult, Membership, Team

    seeder = Seeder(results_per_run=results_per_run)
    teams = [
        Team.objects.create(name=f"Many {n:02d}", slug=f"many{n:02d}") for n in range(team_count)
    ]
    users = get_user_model().objects
    opal = users.create_user("opal", "opal@example.com", "x", is_staff=True)
    Membership.objects.bulk_create(Membership(user=opal, team=t, role="operator") for t in teams)
    both = {"root": seeder.root, "opal": opal}
    pages = [
        Page(label, url, user)
        for label, url in (
            ("dashboard", reverse("admin:index")),
            ("deployment list", reverse("admin:routes_deployment_changelist")),
        )
        for user in ("root", "opal")
    ]
    page_times: dict[int, dict[tuple[str, str], Timed]] = {}
    transfers: dict[int, dict[str, Timed]] = {}
    for size in sizes:
        started = time.perf_counter()
        seeder.grow(size)
        spread(teams)
        print(
            f"{vendor}: {size} deployments in {team_count} teams, "
            f"{CheckResult.objects.count()} check results (seeded in "
            f"{time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        page_times[size] = compare(both, pages)
        transfers[size] = {"export": export_all(size, scratch)}
    for size, done in imports(sizes, teams).items():
        transfers[size].update(done)
    missed = report_pages(sizes, pages, page_times) + report_transfers(sizes, transfers)

    people = [seeder.root, opal] + [
        users.create_user(f"user{n:02d}", f"user{n:02d}@example.com", "x")
        for n in range(EVENT_USERS)
    ]
    trail = Trail(teams=teams, users=people)
    listed = audit_pages(teams[0], opal)
    audit_times: dict[int, dict[tuple[str, str], Timed]] = {}
    for count in events:
        started = time.perf_counter()
        trail.grow(count)
        print(f"{vendor}: {count} audit events (seeded in {time.perf_counter() - started:.1f} s)")
        audit_times[count] = compare(both, listed)
    missed += report_audit(events, listed, audit_times)
    if missed:
        print("FAILED: " + "; ".join(missed))
        return 1
    return 0


def report_pages(
    sizes: list[int], pages: list[Page], times: dict[int, dict[tuple[str, str], Timed]]
) -> list[str]:
    """Print page times per size and opal's against root's; return the bounds missed."""
    print(
        f"{'page':<17} {'user':<5} "
        + " ".join(f"{f'@{s} (s)':>12} {'queries':>8} {'SQL ms':>7}" for s in sizes)
    )
    for page in pages:
        key = (page.label, page.user)
        cells = " ".join(
            f"{times[s][key].seconds:>12.3f} {times[s][key].queries:>8} "
            f"{times[s][key].db_seconds * 1000:>7.1f}"
            for s in sizes
        )
        print(f"{page.label:<17} {page.user:<5} {cells}")
    largest = sizes[-1]
    print(f"the operator of every team against the superuser at {largest}:")
    missed = []
    for label in dict.fromkeys(p.label for p in pages):
        ratio = times[largest][(label, "opal")].seconds / times[largest][(label, "root")].seconds
        print(f"  {label:<17} {ratio:>5.2f}x (bound {OPERATOR_BOUND}x)")
        if ratio > OPERATOR_BOUND:
            missed.append(f"{label} as operator {ratio:.2f}x")
    return missed


def report_transfers(sizes: list[int], times: dict[int, dict[str, Timed]]) -> list[str]:
    """Print import and export times per size; return the bounds missed."""
    print(f"{'operation':<17} " + " ".join(f"{f'@{s} (s)':>12} {'queries':>8}" for s in sizes))
    for name in times[sizes[0]]:
        cells = " ".join(
            f"{times[s][name].seconds:>12.2f} {times[s][name].queries:>8}" for s in sizes
        )
        print(f"{name:<17} {cells}")
    small, large = sizes[0], sizes[-1]
    missed = []
    for name in ("import", "import --update"):
        growth = times[large][name].seconds / times[small][name].seconds
        print(
            f"  {name} {large} against {small}: {growth:.1f}x for {large / small:.0f}x the "
            f"deployments (bound {IMPORT_GROWTH_BOUND:.0f}x), {times[large][name].seconds:.1f} s "
            f"(bound {IMPORT_SECONDS:.0f} s)"
        )
        if growth > IMPORT_GROWTH_BOUND or times[large][name].seconds >= IMPORT_SECONDS:
            missed.append(f"{name} {growth:.1f}x, {times[large][name].seconds:.1f} s")
    export = [times[s]["export"] for s in sizes]
    print(
        f"  export at {large}: {export[-1].seconds:.2f} s (bound {EXPORT_SECONDS:.0f} s), "
        f"statements {' -> '.join(str(e.queries) for e in export)}"
    )
    if export[-1].seconds >= EXPORT_SECONDS or len({e.queries for e in export}) > 1:
        missed.append(
            f"export {export[-1].seconds:.2f} s, statements {[e.queries for e in export]}"
        )
    return missed


def report_audit(
    counts: list[int], pages: list[Page], times: dict[int, dict[tuple[str, str], Timed]]
) -> list[str]:
    """Print the audit list's times per trail size and their growth; return the bounds missed."""
    few, many = counts[0], counts[-1]
    print(
        f"{'audit page':<19} {'user':<5} {'queries':>9} {f'@{few} (s)':>12} {f'@{many} (s)':>12} "
        f"{'growth':>7} (bound {AUDIT_GROWTH_BOUND}x) {'SQL ms':>15}"
    )
    missed = []
    for page in pages:
        key = (page.label, page.user)
        small, large = times[few][key], times[many][key]
        growth = large.seconds / small.seconds
        queries = f"{small.queries}->{large.queries}"
        sql = f"{small.db_seconds * 1000:.1f} -> {large.db_seconds * 1000:.1f}"
        print(
            f"{page.label:<19} {page.user:<5} {queries:>9} {small.seconds:>12.3f} "
            f"{large.seconds:>12.3f} {growth:>6.2f}x {'':>12} {sql:>15}"
        )
        if growth > AUDIT_GROWTH_BOUND or small.queries != large.queries:
            missed.append(f"{page.label} as {page.user} {growth:.2f}x")
    return missed


if __name__ == "__main__":
    raise SystemExit(main())
