"""Background tasks (django-tasks, run by `manage.py db_worker`): take ids, call one function."""

from __future__ import annotations

from django_tasks import task

from routes.models import VerificationRun


@task()
def run_verification(run_id: int, insecure: bool = False) -> dict:
    """Perform the queued verification run; return its id and status (never a secret)."""
    from routes.verify import execute_run

    run = VerificationRun.objects.filter(pk=run_id).first()
    if run is None:
        # Pruned or deleted while queued: nothing to do.
        return {"run": run_id, "status": "missing"}
    run = execute_run(run=run, verify_tls=False if insecure else None)
    return {"run": run.pk, "status": run.status}
