"""Run every benchmark in bench/ in turn and print their figures.

bench_export_check.py (export_nginx --all --check at 5,000 deployments) takes about half a
minute; set BENCH_SKIP_EXPORT_CHECK=1 to skip it. bench_scale.py (the dashboard and the lists at
10,000 deployments with 1,000,000 check results) takes a few minutes; set BENCH_SKIP_SCALE=1 to
skip it, or BENCH_SCALE_DEPLOYMENTS=1000 BENCH_SCALE_RESULTS=100000 for a quick run.
bench_nginx_scale.py (nginx -t of today's, the new and the seed-shaped config at 1,000 and 10,000
deployments, then export_nginx --all --check at 10,000) takes ten minutes or more, most of it
today's config at 10,000; set BENCH_SKIP_NGINX_SCALE=1 to skip it, or BENCH_NGINX_DEPLOYMENTS=2000
for a quick run.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Run each bench_*.py with this interpreter; return non-zero if any failed."""
    failed = 0
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        failed |= subprocess.call([sys.executable, str(script)], cwd=HERE.parent) != 0
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
