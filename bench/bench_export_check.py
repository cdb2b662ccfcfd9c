"""Time `export_nginx --all --check` at 5,000 deployments (5 overrides each), with real nginx -t.

Runs standalone on a scratch SQLite database (never the configured one):
    .venv/bin/python bench/bench_export_check.py [--count 5000] [--part 500] [--whole]
It takes about half a minute per 5,000 deployments on two cores; set BENCH_SKIP_EXPORT_CHECK=1 to
skip it (bench/run.py then only prints that it was skipped). --whole also times one nginx -t over
every file at once, which the export no longer does: minutes and gigabytes at this size.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SKIP = "BENCH_SKIP_EXPORT_CHECK"


def _export_check(output_dir: Path) -> tuple[float, str]:
    """Run `export_nginx --all --check --output-dir DIR` in process; return (seconds, output)."""
    from routes.management.commands.export_nginx import Command

    out = io.StringIO()
    command = Command(stdout=out, stderr=io.StringIO())
    argv = ["--all", "--check", "--output-dir", str(output_dir)]
    options = vars(command.create_parser("manage.py", "export_nginx").parse_args(argv))
    started = time.perf_counter()
    command.execute(**{**options, "skip_checks": True})
    return time.perf_counter() - started, out.getvalue()


def _peak_child_mb() -> float:
    # ru_maxrss of children is the largest single child so far (KiB on Linux): the nginx -t run.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="Number of deployments.")
    parser.add_argument("--part", type=int, default=500, help="CONSOLE_NGINX_CHECK_PART.")
    parser.add_argument(
        "--whole", action="store_true", help="Also time one nginx -t over all files at once."
    )
    args = parser.parse_args()
    if os.environ.get(SKIP):
        print(f"skipped ({SKIP} is set)")
        return 0
    with tempfile.TemporaryDirectory(prefix="console-bench-check-") as tmp:
        scratch = Path(tmp)
        os.environ["CONSOLE_NGINX_CHECK_PART"] = str(args.part)
        import bench_export

        bench_export._setup(scratch)
        from django.conf import settings

        from routes.nginx.sandbox import check_directory, check_timeout, nginx_binary

        if nginx_binary() is None:
            print("nginx is not installed: nothing to measure")
            return 0
        started = time.perf_counter()
        bench_export._populate(args.count)
        print(
            f"{args.count} deployments x {len(bench_export.OVERRIDES)} overrides "
            f"(created in {time.perf_counter() - started:.1f} s); nginx: {nginx_binary()}; "
            f"parts of {settings.CONSOLE_NGINX_CHECK_PART} site files"
        )
        output_dir = scratch / "conf.d"
        seconds, output = _export_check(output_dir)
        ok = "nginx -t: ok." in output
        print(
            f"export_nginx --all --check: {seconds:.1f} s, nginx -t "
            f"{'passed' if ok else 'FAILED'}, largest nginx -t {_peak_child_mb():.0f} MB; "
            f"each part may take {check_timeout(files=settings.CONSOLE_NGINX_CHECK_PART + 1):.0f} s"
        )
        parts = [line for line in output.splitlines() if "Checked in" in line]
        print("\n".join(parts) or "checked in one part")
        if args.whole:
            files = len(list(output_dir.glob("*.conf")))
            started = time.perf_counter()
            check = check_directory(output_dir, timeout=max(600.0, check_timeout(files=files)))
            print(
                f"one nginx -t over all {files} files: {time.perf_counter() - started:.1f} s, "
                f"{'passed' if check.ok else 'FAILED'}, {_peak_child_mb():.0f} MB"
            )
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
