"""Export 1,000 deployments with 5 overrides each; compare with real `nginx -t`; count queries.

Runs standalone on a scratch SQLite database (never the configured one):
    .venv/bin/python bench/bench_export.py [--count 1000]
Set BENCH_DATABASE_URL (for example a scratch PostgreSQL database) to measure another backend.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OVERRIDES = (
    ("exact", "/logs", "cpamp"),
    ("prefix", "/config", "cpamp"),
    ("prefix", "/v0/management/usage", "cpamp"),
    ("regex", r"^/threads/\d+$", "cpa"),
    ("regex_i", r"\.png$", "cpa"),
)


def _setup(scratch: Path) -> None:
    # Set before Django reads its settings: a scratch database and data directory only.
    os.environ["DATABASE_URL"] = os.environ.get(
        "BENCH_DATABASE_URL", f"sqlite:///{scratch / 'bench.sqlite3'}"
    )
    os.environ["CONSOLE_DATA_DIR"] = str(scratch / "data")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def _populate(count: int) -> list[int]:
    from routes.models import Deployment, RouteOverride, Team

    team = Team.objects.create(name="Bench", slug="bench")
    Deployment.objects.bulk_create(
        Deployment(
            slug=f"d{index:05d}",
            name=f"Deployment {index}",
            team=team,
            server_name=f"d{index:05d}.example.com",
        )
        for index in range(count)
    )
    ids = list(Deployment.objects.order_by("slug").values_list("pk", flat=True))
    RouteOverride.objects.bulk_create(
        RouteOverride(deployment_id=pk, match=match, path=path, target=target, position=position)
        for pk in ids
        for position, (match, path, target) in enumerate(OVERRIDES)
    )
    return ids


def _measure(ids: list[int], scratch: Path) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from routes.models import Deployment
    from routes.nginx.export import write_export
    from routes.nginx.sandbox import check_directory

    output = scratch / f"out-{len(ids)}"
    deployments = Deployment.objects.filter(pk__in=ids).order_by("slug")
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        result = write_export(deployments=deployments, output_dir=output)
        export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    check = check_directory(output)
    nginx_seconds = time.perf_counter() - started
    statements = [q["sql"].lstrip().split(" ", 1)[0].upper() for q in queries.captured_queries]
    return {
        "count": len(ids),
        "files": len(result.files),
        "export": export_seconds,
        "nginx": nginx_seconds,
        "nginx_ok": check.ok,
        "nginx_output": check.output,
        "queries": len(statements),
        "reads": statements.count("SELECT"),
        "writes": len(statements) - statements.count("SELECT"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="Largest number of deployments.")
    args = parser.parse_args()
    sizes = sorted({min(10, args.count), min(100, args.count), args.count})
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        scratch = Path(tmp)
        _setup(scratch)
        from routes.nginx.sandbox import nginx_binary

        ids = _populate(args.count)
        print(f"{args.count} deployments x {len(OVERRIDES)} overrides; nginx: {nginx_binary()}")
        header = (
            f"{'deployments':>11} {'export (s)':>10} {'nginx -t (s)':>12} {'ratio':>6} "
            f"{'queries':>7} {'reads':>5} {'writes':>6}"
        )
        print(header)
        rows = [_measure(ids[:size], scratch) for size in sizes]
        for row in rows:
            ratio = row["nginx"] / row["export"] if row["export"] else float("inf")
            print(
                f"{row['count']:>11} {row['export']:>10.3f} {row['nginx']:>12.3f} "
                f"{ratio:>5.1f}x {row['queries']:>7} {row['reads']:>5} {row['writes']:>6}"
            )
        failed = [row for row in rows if not row["nginx_ok"]]
        for row in failed:
            print(f"nginx -t failed for {row['count']} deployments:\n{row['nginx_output']}")
        largest = rows[-1]
        print(
            "export (render + atomic write + history) is "
            f"{largest['nginx'] / largest['export']:.1f}x faster than nginx -t on the same files"
            if largest["export"] < largest["nginx"]
            else "export is SLOWER than nginx -t on the same files"
        )
        reads = {row["reads"] for row in rows}
        print(
            f"read queries: {sorted(reads)} ({'constant' if len(reads) == 1 else 'GROWING'}); "
            "writes are batched INSERTs of the history (SQLite caps one statement at 999 "
            "parameters, PostgreSQL takes each batch in one statement)"
        )
        return 1 if failed or len(reads) != 1 else 0


if __name__ == "__main__":
    raise SystemExit(main())
