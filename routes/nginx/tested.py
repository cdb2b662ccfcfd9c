"""The stored ``nginx -t`` of each deployment's config, so reading a page never runs nginx.

A config is known by the SHA-256 of the files checked together (the site file and the shared
file). "Test with nginx" runs the export sandbox's check on them and keeps the outcome as one
NginxTest row per deployment and config hash; pages show the row of the config as it is now.
"""

from __future__ import annotations

import hashlib

from django.utils import timezone

from routes import audit
from routes.context import current_actor
from routes.models import Deployment, NginxTest
from routes.nginx.export import check_files, render_files


def config_hash(files: dict[str, str]) -> str:
    """Return the SHA-256 of {file name: text}, independent of the dict's order."""
    digest = hashlib.sha256()
    for name, text in sorted(files.items()):
        for part in (name, text):
            data = part.encode("utf-8")
            # Length-prefixed, so no two different sets of files hash alike.
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    return digest.hexdigest()


def last_test(*, deployment: Deployment, files: dict[str, str]) -> NginxTest | None:
    """Return the stored test of exactly these files of deployment, or None."""
    return (
        NginxTest.objects.filter(deployment=deployment, config_hash=config_hash(files))
        .select_related("tested_by")
        .first()
    )


def run_nginx_test(*, deployment: Deployment) -> NginxTest | None:
    """Run ``nginx -t`` on deployment's config now, store and audit the outcome.

    Return None (and store nothing) when nginx is not installed on the console host. Raises
    InvalidDeployment when the deployment cannot be rendered.
    """
    files = render_files([deployment])
    check = check_files(files)
    if not check.available:
        return None
    digest = config_hash(files)
    test, _created = NginxTest.objects.update_or_create(
        deployment=deployment,
        config_hash=digest,
        defaults={
            "ok": check.ok,
            "timed_out": check.timed_out,
            "output": check.output,
            "tested_at": timezone.now(),
            "tested_by": current_actor(),
        },
    )
    audit.record(
        action="config.test",
        team=deployment.team_id,
        obj=deployment,
        changes={"config_hash": digest, "ok": check.ok, "timed_out": check.timed_out},
    )
    return test
