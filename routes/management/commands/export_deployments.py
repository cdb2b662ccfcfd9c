"""Export deployment definitions as version-1 JSON (key roles only, never secrets)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from routes import portable
from routes.models import Deployment, Team


class Command(BaseCommand):
    help = "Export deployments as JSON in the import format; secrets are never included."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slugs", nargs="*", metavar="SLUG", help="Deployments (default: all).")
        parser.add_argument("--team", metavar="SLUG", help="Only deployments of this team.")
        parser.add_argument(
            "--output", metavar="FILE", help="Write to FILE instead of standard output."
        )

    def handle(self, *args, **options) -> None:
        deployments = Deployment.objects.all()
        team_slug = options["team"]
        if team_slug:
            if not Team.objects.filter(slug=team_slug).exists():
                raise CommandError(_("%(team)s: no such team.") % {"team": team_slug})
            deployments = deployments.filter(team__slug=team_slug)
        slugs = options["slugs"]
        if slugs:
            found = set(deployments.filter(slug__in=slugs).values_list("slug", flat=True))
            missing = [slug for slug in slugs if slug not in found]
            if missing:
                message = (
                    _("no deployment %(slugs)s in team %(team)s.")
                    if team_slug
                    else _("no deployment %(slugs)s.")
                )
                raise CommandError(message % {"slugs": ", ".join(missing), "team": team_slug})
            deployments = deployments.filter(slug__in=slugs)
        payload = portable.export_definitions(deployments=list(deployments))
        text = portable.dump_payload(payload)
        output = options["output"]
        if not output:
            self.stdout.write(text, ending="")
            return
        target = Path(output)
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise CommandError(
                _("%(file)s: cannot write: %(error)s") % {"file": output, "error": exc.strerror}
            ) from None
        self.stderr.write(
            _("%(n)d deployment(s) written to %(file)s")
            % {"n": len(payload["deployments"]), "file": output}
        )
