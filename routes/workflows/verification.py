"""Verification jobs: the changes the verification page makes to a job, audited."""

from __future__ import annotations

from django.db import transaction

from routes import audit
from routes.models import Deployment, VerificationJob
from routes.verification.runs import job_for


def turn_tls_verification_off(*, deployment: Deployment) -> VerificationJob:
    """Set the deployment's job to verify_tls=False and record the change; return the job.

    A job already off is returned unchanged and nothing is recorded.
    """
    with transaction.atomic():
        job_id = job_for(deployment).pk
        job = VerificationJob.objects.select_for_update().get(pk=job_id)
        if not job.verify_tls:
            return job
        before = audit.snapshot(job)
        job.verify_tls = False
        job.save(update_fields=["verify_tls"])
        audit.record(
            action="verification_job.change",
            team=deployment.team_id,
            obj=job,
            changes=audit.field_diff(before, audit.snapshot(job)),
        )
    return job
