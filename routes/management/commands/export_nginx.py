"""manage.py export_nginx SLUG [SLUG ...] | --all [--team SLUG] [--output-dir DIR] [--stdout]
[--check] [--compose] [--default-server]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

from routes.management.base import ConsoleCommand, add_selection_arguments, selected_deployments
from routes.models import Deployment, Team
from routes.nginx.export import (
    ExportError,
    check_files,
    export_warnings,
    prepared,
    record_exports,
    render_files,
    write_export,
)
from routes.nginx.lint import LintWarning
from routes.nginx.render import InvalidDeployment, site_filename


class Command(ConsoleCommand):
    help = "Write the nginx configs of deployments into a directory (like conf.d) or to stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        add_selection_arguments(parser, verb="export")
        parser.add_argument(
            "--output-dir",
            metavar="DIR",
            help="Directory to write into (default: settings.CONSOLE_EXPORT_DIR).",
        )
        # dest differs from "stdout": Django's execute() takes options["stdout"] as its stream.
        parser.add_argument(
            "--stdout",
            dest="to_stdout",
            action="store_true",
            help="Print the files instead of writing them.",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Run real nginx -t in a sandbox first; change nothing if it fails.",
        )
        parser.add_argument(
            "--compose",
            action="store_true",
            help="Also write docker-compose.<slug>.yml, the seed's docker-compose file.",
        )
        parser.add_argument(
            "--default-server",
            action="store_const",
            const=True,
            default=None,
            help=(
                "Add a catch-all server (return 444 for unknown Host names) on the sites' ports "
                "to the shared file (default: settings.CONSOLE_NGINX_DEFAULT_SERVER); only when "
                "this directory's nginx has no other default server there."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        deployments, team = self._select(options)
        if options["to_stdout"]:
            self._print(
                deployments, check=options["check"], default_server=options["default_server"]
            )
            return
        output_dir = Path(options["output_dir"] or settings.CONSOLE_EXPORT_DIR)
        try:
            result = write_export(
                deployments=deployments,
                output_dir=output_dir,
                check=options["check"],
                compose=options["compose"],
                source="command",
                prune=options["all"],
                prune_team=team.slug if team else None,
                default_server=options["default_server"],
            )
        except (InvalidDeployment, ExportError) as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(
                _("Cannot write to %(dir)s: %(error)s") % {"dir": output_dir, "error": exc}
            ) from exc
        self._warn(result.warnings)
        self.stdout.write(
            _(
                "Exported %(count)d deployment(s) to %(dir)s: %(written)d written, "
                "%(unchanged)d unchanged, %(removed)d removed."
            )
            % {
                "count": len(deployments),
                "dir": output_dir,
                "written": len(result.written),
                "unchanged": len(result.unchanged),
                "removed": len(result.removed),
            }
        )
        for name in result.written:
            self.stdout.write(_("  wrote %(name)s") % {"name": name})
        for name in result.removed:
            self.stdout.write(_("  removed %(name)s") % {"name": name})
        for name in result.leftovers:
            self.stdout.write(
                _("  removed %(name)s, left behind by an interrupted export") % {"name": name}
            )
        if result.check is not None:
            self.stdout.write(_("nginx -t: ok. %(output)s") % {"output": result.check.output})

    def _select(self, options: dict[str, Any]) -> tuple[list[Deployment], Team | None]:
        if options["to_stdout"] and options["compose"]:
            raise CommandError(_("--compose writes files; it cannot be combined with --stdout."))
        if options["to_stdout"] and options["output_dir"]:
            raise CommandError(
                _("--stdout prints the files; it cannot be combined with --output-dir.")
            )
        deployments, team = selected_deployments(options)
        return prepared(deployments), team

    def _warn(self, warnings: list[tuple[str, LintWarning]]) -> None:
        for slug, warning in warnings:
            prefix = f"{slug}: " if slug else ""
            self.stderr.write(_("warning: %(warning)s") % {"warning": f"{prefix}{warning}"})

    def _print(
        self, deployments: list[Deployment], *, check: bool, default_server: bool | None
    ) -> None:
        try:
            files = render_files(deployments, default_server=default_server)
        except InvalidDeployment as exc:
            raise CommandError(str(exc)) from exc
        self._warn(export_warnings(deployments))
        if check:
            result = check_files(files)
            if not result.ok:
                message = (
                    _("The export could not be checked:\n%(output)s")
                    if result.timed_out
                    else _("nginx -t refused the export:\n%(output)s")
                )
                raise CommandError(message % {"output": result.output})
            self.stderr.write(_("nginx -t: ok. %(output)s") % {"output": result.output})
        # One stream that nginx can include as a single file: the shared map block first.
        self.stdout.write("\n".join(files.values()), ending="")
        record_exports(texts=[(d, files[site_filename(d)]) for d in deployments], source="command")
