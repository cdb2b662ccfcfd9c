"""Benchmark verification: parallel checks against slow services, and 1,000 deployments.

Standalone: ``.venv/bin/python bench/bench_verify.py [--delay 0.2] [--deployments 1000]``. It uses
a throwaway SQLite database and data directory, the CPA/CPAMP emulators of tests/fakes and real
nginx serving the exported configs on 127.0.0.1.

1. With emulators that hold every answer for D seconds, one run of all checks costs at most 2·D
   more than with no delay: one wave (the pool has a worker for every check), plus the probes
   the management lane holds until management_config has answered (request_monitoring,
   cpa_direct, the API-key probe), so that CPA never sees two refused keys. The seed's curl list
   run in order costs at least 7·D; that reference is measured too.
2. N deployments, all behind one nginx and the same emulators, are each verified by one
   `manage.py db_worker --batch` process: total and per-run time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django(tmp: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["CONSOLE_DATA_DIR"] = str(tmp)
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["CONSOLE_TASK_BACKEND"] = "django_tasks_db.DatabaseBackend"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def median_run_seconds(deployment, runs: int) -> float:
    from routes.verification.runs import verify_now

    timings = []
    for _ in range(runs):
        started = time.monotonic()
        run = verify_now(deployment=deployment)
        timings.append(time.monotonic() - started)
        if run.status != "passed":
            failed = [r.check_id for r in run.results.all() if not r.passed]
            raise SystemExit(f"a healthy run failed: {failed}")
    return statistics.median(timings)


def sequential_seed_seconds(deployment) -> float:
    """Run the seed's seven curl requests one after the other, as the guide does."""
    from routes.verification.checks import CHECKS, SEED_CHECKS
    from routes.verification.runner import build_context, run_check
    from routes.verification.runs import load_keys

    stored = load_keys(deployment)
    ctx = build_context(
        deployment,
        base_url=deployment.base_url,
        verify_tls=False,
        timeout=10.0,
        keys=stored.by_role,
        secrets=stored.secrets,
    )
    started = time.monotonic()
    for check_id in SEED_CHECKS:
        run_check(CHECKS[check_id], ctx)
    return time.monotonic() - started


def bench_delay(team, delay: float, repeats: int) -> bool:
    from django.conf import settings

    from routes.models import Deployment
    from tests.fakes.stack import running_stack

    def fresh(slug: str) -> Deployment:
        return Deployment.objects.create(
            slug=slug, name=slug, team=team, server_name=f"{slug}.bench.test"
        )

    from routes.verification.runner import pool_size
    from routes.verification.runs import planned_checks

    with running_stack(fresh("nodelay")) as stack:
        base = median_run_seconds(stack.deployment, repeats)
        count = stack.deployment.verification_job.runs.first().results.count()
        pool = pool_size(planned_checks(stack.deployment.verification_job))
    with running_stack(fresh("delayed"), delay=delay) as stack:
        slow = median_run_seconds(stack.deployment, repeats)
        seed = sequential_seed_seconds(stack.deployment)
    extra = slow - base
    print(
        f"checks per run: {count}; pool: {pool} (CONSOLE_VERIFY_POOL "
        f"{settings.CONSOLE_VERIFY_POOL}, at least the plan); D = {delay:.3f} s"
    )
    print(f"one run, no delay:          {base:7.3f} s (median of {repeats})")
    print(f"one run, delay D:           {slow:7.3f} s (median of {repeats})")
    print(f"extra cost:                 {extra:7.3f} s = {extra / delay:.2f}·D (bound 2·D)")
    print(f"seed's 7 curls in order:    {seed:7.3f} s = {seed / delay:.2f}·D (at least 7·D)")
    # A few milliseconds of scheduling noise on top of the bound are not a regression.
    return extra <= 2 * delay + 0.02 and seed >= 7 * delay


def bench_many(team, count: int) -> bool:
    from django.core.management import call_command

    from routes import keys as keyring
    from routes.models import Deployment, Key, VerificationRun
    from routes.nginx.sandbox import running_nginx
    from routes.tasks import start_run
    from routes.verification.destinations import destination_of, host_header
    from tests.fakes.cpa import FakeCPA
    from tests.fakes.cpamp import FakeCPAMP
    from tests.fakes.stack import ADMIN_KEY, API_KEY, MANAGEMENT_KEY, free_port, render_export

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (
        # Usage publishing on, as CPAMP's setup leaves it: request_monitoring checks it.
        FakeCPA(
            api_keys=[API_KEY], management_key=MANAGEMENT_KEY, usage_statistics_enabled=True
        ) as cpa,
        FakeCPAMP(admin_key=ADMIN_KEY, cpa_url=cpa.url, management_key=MANAGEMENT_KEY) as cpamp,
    ):
        deployments = Deployment.objects.bulk_create(
            Deployment(
                slug=f"d{i:04d}",
                name=f"Deployment {i}",
                team=team,
                server_name=f"d{i:04d}.bench.test",
                listen_address="127.0.0.1",
                http_port=port,
                cpa_upstream=cpa.address,
                cpamp_upstream=cpamp.address,
                cpamp_cpa_url=cpa.url,
                # The checks go to the one nginx port; the Host header picks the server block.
                verification_base_url=f"http://127.0.0.1:{port}",
                # Confirmed as an owner would, so the checks carry their keys.
                keys_confirmed_origins=sorted(
                    {
                        destination_of(base, host_header(base, f"d{i:04d}.bench.test")),
                        destination_of(cpa.url),
                    }
                ),
            )
            for i in range(count)
        )
        # Each key is encrypted once and copied: the bench measures verification, not Fernet.
        template = {}
        for role, secret in (
            (keyring.CPAMP_ADMIN, ADMIN_KEY),
            (keyring.CPA_MANAGEMENT, MANAGEMENT_KEY),
            (keyring.CPA_API, API_KEY),
        ):
            key = Key(role=role, custom_format=True)
            key.set_secret(secret)
            template[role] = key
        Key.objects.bulk_create(
            Key(
                deployment=d,
                role=role,
                custom_format=True,
                ciphertext=k.ciphertext,
                fingerprint=k.fingerprint,
                last4=k.last4,
            )
            for d in deployments
            for role, k in template.items()
        )
        deployments = list(Deployment.objects.filter(slug__regex=r"^d[0-9]{4}$").order_by("slug"))
        with tempfile.TemporaryDirectory(prefix="bench-nginx-") as conf:
            conf_dir = Path(conf)
            started = time.monotonic()
            for name, text in render_export(deployments).items():
                (conf_dir / name).write_text(text)
            # Only for the bench's 1,000 server names: nginx's default hash is sized for fewer.
            (conf_dir / "zz-bench.conf").write_text("server_names_hash_max_size 8192;\n")
            rendered = time.monotonic() - started
            with running_nginx(conf_dir, wait_for=[("127.0.0.1", port)]):
                started = time.monotonic()
                runs = [start_run(deployment=d, trigger="scheduled") for d in deployments]
                enqueued = time.monotonic() - started
                started = time.monotonic()
                call_command("db_worker", batch=True, startup_delay=False, verbosity=0)
                worked = time.monotonic() - started
    statuses = {}
    for status in VerificationRun.objects.filter(pk__in=[r.pk for r in runs]).values_list(
        "status", flat=True
    ):
        statuses[status] = statuses.get(status, 0) + 1
    print(f"deployments: {count} (one nginx, {count} server blocks, shared emulators)")
    print(f"render + write configs:     {rendered:7.2f} s")
    print(f"enqueue {count} runs:         {enqueued:7.2f} s")
    print(f"one worker, all runs:       {worked:7.2f} s = {worked / count * 1000:.1f} ms per run")
    print(f"run statuses: {statuses}")
    return statuses.get("passed", 0) == count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.2, help="D in seconds, e.g. 0.2.")
    parser.add_argument("--repeats", type=int, default=5, help="Runs per timing (median).")
    parser.add_argument("--deployments", type=int, default=1000, help="e.g. 1000.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        setup_django(Path(tmp))
        from routes.models import Team

        team = Team.objects.create(name="Bench", slug="bench")
        print("== parallel checks vs slow services")
        delay_ok = bench_delay(team, args.delay, args.repeats)
        print("== many deployments, one worker")
        many_ok = bench_many(team, args.deployments)
    if not (delay_ok and many_ok):
        print("FAILED: a bound was not met")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
