"""Apply: put rendered configs live on nginx, prove they answer, verify, roll back on regression.

An apply (one NginxApply row, its steps stored as they happen so a page can follow them):

1. renders every selected deployment; an invalid one refuses the whole apply, nothing changes;
2. takes the directory's export lock (exports and applies take turns; a second apply waits
   CONSOLE_APPLY_LOCK_TIMEOUT seconds, then is refused), and recovers a crashed apply first;
3. keeps the files it is about to replace as the previous generation, in a journal;
4. writes the new files atomically (routes.nginx.export.write_export, lock held);
5. runs the test command against the live configuration; on failure it restores the previous
   files at once and does not reload: ``test_failed`` with nginx's message, file and line;
6. reloads, then confirms: every deployment must answer with its new ``X-Console-Config``;
7. verifies: runs each deployment's job (trigger apply). A regression is a check that passed in
   the deployment's previous finished run (passed or failed) and fails now, a skipped check
   (key held back, ban lane) aside. On a regression, unless no_rollback, it rolls back: restore,
   test, reload, confirm the old hash, verify again: ``rolled_back``; if any of that fails,
   ``rollback_failed``. A reload that fails or does not take is rolled back the same way.

Crash safety (routes/nginx/generations.py): the journal holds the previous generation whole
before the first file is replaced and is removed once the apply has settled. nginx reads the
directory only when told to reload, and an apply that finds a journal (its predecessor was
killed) restores that generation, tests it and reloads it before it does its own work, so nginx
is always left serving one complete generation, never a mix. What it tells (JSON, steps,
notifications, live states) is routes/nginx/apply_report.py.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from routes import audit
from routes.context import current, current_actor
from routes.models import CheckResult, ConfigExport, Deployment, VerificationRun
from routes.nginx import live
from routes.nginx.apply_report import APPLY, RECOVERY, ROLLBACK
from routes.nginx.export import (
    MANIFEST,
    ExportError,
    export_lock,
    prepared,
    record_exports,
    write_export,
)
from routes.nginx.generations import (
    JOURNAL,
    Generation,
    read_generation,
    read_journal,
    remove_journal,
    restore_generation,
    write_journal,
)
from routes.nginx.records import NginxApply
from routes.nginx.render import (
    COMMON_FILENAME,
    InvalidDeployment,
    config_hash,
    render_site,
    site_filename,
)
from routes.verification import runs
from routes.verification.http import Redactor

logger = logging.getLogger(__name__)

Result = NginxApply.Result


class ApplyRefused(Exception):
    """The apply did not start (nothing changed): why, for people."""


# --- the record -------------------------------------------------------------------------------


def queue_apply(
    *,
    deployments: Iterable[Deployment],
    source: str,
    no_verify: bool = False,
    no_rollback: bool = False,
    directory: Path | None = None,
) -> NginxApply:
    """Create the record of an apply, queued, for the acting user; perform it with perform_apply.

    Raises ApplyRefused when a deployment cannot be rendered (nothing is stored then).
    """
    deployments = sorted(prepared(deployments), key=lambda d: d.slug)
    if not deployments:
        raise ApplyRefused(_("No deployment to apply."))
    hashes = rendered_hashes(deployments)
    actor = current_actor()
    teams = {d.team_id for d in deployments}
    record = NginxApply.objects.create(
        team_id=teams.pop() if len(teams) == 1 else None,
        slugs=[d.slug for d in deployments],
        directory=str(Path(directory or settings.CONSOLE_NGINX_DIR).resolve()),
        source=source,
        started_by=actor,
        started_label=(actor.get_username() if actor else current().label or "command")[:150],
        no_verify=no_verify,
        no_rollback=no_rollback,
        config_hashes=hashes,
    )
    record.deployments.set(deployments)
    return record


def rendered_hashes(deployments: Iterable[Deployment]) -> dict[str, str]:
    """Return {slug: config hash} as rendered now; ApplyRefused naming the first invalid one."""
    try:
        return {d.slug: config_hash(render_site(d)) for d in deployments}
    except InvalidDeployment as exc:
        raise ApplyRefused(_("%(error)s Nothing was applied.") % {"error": exc}) from exc


class _Run:
    """One apply being performed: its record, directory, deployments and step log."""

    def __init__(self, record: NginxApply, deployments: list[Deployment]) -> None:
        self.record = record
        self.deployments = deployments
        self.directory = Path(record.directory)
        secrets = [s for d in deployments for s in runs.load_keys(d).secrets]
        self.redact = Redactor(secrets)
        self.previous = Generation({})
        self.new_files: dict[str, str] = {}
        self.run_ids: list[int] = list(record.runs)

    # -- bookkeeping

    def step(
        self, name: str, *, ok: bool | None = True, detail: str = "", phase: str = APPLY
    ) -> None:
        """Store one step on the record now (the page polls it), then pause there if told to."""
        entry = {
            "step": name,
            "phase": phase,
            "ok": ok,
            "detail": self.redact.cut(detail, 2000, marker="…"),
            "at": timezone.now().isoformat(),
        }
        self.record.steps = [*self.record.steps, entry]
        self.record.save(update_fields=["steps"])
        pause_at = settings.CONSOLE_APPLY_PAUSE_AT
        if pause_at and pause_at in (name, f"{phase}:{name}"):
            # A test hook: the tests kill the process here, as a crash at this step would.
            sys.stderr.write(f"apply paused at {phase}:{name}\n")
            sys.stderr.flush()
            time.sleep(600)

    def journal(self, phase: str) -> None:
        write_journal(self.directory, apply_id=self.record.pk, phase=phase, previous=self.previous)

    def finish(self, result: str, *, reason: str = "") -> NginxApply:
        """Store the end of the apply, audit it, and return the record."""
        record = self.record
        record.result = result
        record.reason = self.redact.cut(reason, 4000, marker="…")
        record.runs = self.run_ids
        record.finished_at = timezone.now()
        if result == Result.APPLIED:
            record.trial_runs = []
        record.save(
            update_fields=[
                "result",
                "reason",
                "runs",
                "trial_runs",
                "finished_at",
                "test_output",
                "regressions",
                "config_hashes",
                "previous_hashes",
            ]
        )
        if result == Result.APPLIED:
            record_exports(
                texts=[(d, self.new_files[site_filename(d)]) for d in self.deployments],
                source=ConfigExport.Source.ADMIN
                if record.source == NginxApply.Source.ADMIN
                else ConfigExport.Source.COMMAND,
            )
        record_audit(record, self.deployments)
        if result == Result.ROLLBACK_FAILED:
            logger.error("apply #%s: ROLLBACK FAILED: %s", record.pk, record.reason)
        return record

    # -- the steps

    def test(self, *, phase: str) -> live.CommandOutcome:
        outcome = live.run_test_command(redact=self.redact)
        self.record.test_output = "\n".join(
            part for part in (self.record.test_output, outcome.output) if part
        )[-live.MAX_OUTPUT :]
        self.record.save(update_fields=["test_output"])
        self.step("tested", ok=outcome.ok, detail=outcome.summary or outcome.output, phase=phase)
        return outcome

    def reload(self, *, phase: str) -> live.CommandOutcome:
        outcome = live.run_reload_command(redact=self.redact)
        self.step("reloaded", ok=outcome.ok, detail=outcome.summary or outcome.output, phase=phase)
        return outcome

    def confirm(self, wanted: dict[str, Callable[[live.Answer], bool]], *, phase: str) -> str:
        """Wait for every traced deployment to answer as wanted; return why not, or ""."""
        traced = {d: wanted[d.slug] for d in self.deployments if d.slug in wanted}
        untraced = [d.slug for d in self.deployments if d.slug not in wanted]
        note = (
            _("Route tracing is off for %(slugs)s: no X-Console-Config to confirm with.")
            % {"slugs": ", ".join(untraced)}
            if untraced
            else ""
        )
        if not traced:
            self.step("confirmed", ok=None, detail=note, phase=phase)
            return ""
        seconds = float(settings.CONSOLE_APPLY_CONFIRM_TIMEOUT)
        missed = live.wait_for_hashes(traced, timeout=seconds)
        if missed:
            problem = _("The reload did not take within %(s)d s: %(answers)s.") % {
                "s": round(seconds),
                "answers": "; ".join(
                    _("%(slug)s answers %(answer)s") % {"slug": slug, "answer": _describe(answer)}
                    for slug, answer in sorted(missed.items())
                ),
            }
            self.step("confirmed", ok=False, detail=problem, phase=phase)
            return problem
        hashes = ", ".join(
            f"{d.slug} {self.record.config_hashes.get(d.slug, '')[:12]}"
            if phase == APPLY
            else f"{d.slug} {(self.record.previous_hashes.get(d.slug) or '-')[:12]}"
            for d in traced
        )
        self.step("confirmed", detail=" ".join(p for p in (hashes, note) if p), phase=phase)
        return ""

    def verify(self, *, phase: str) -> list[str]:
        """Run each deployment's job now (trigger apply); return the checks that regressed."""
        regressed: list[str] = []
        lines = []
        for d in self.deployments:
            before = previous_finished_run(d)
            run = runs.create_run(deployment=d, trigger=VerificationRun.Trigger.APPLY)
            self.run_ids.append(run.pk)
            self.record.runs = self.run_ids
            if phase == APPLY:
                self.record.trial_runs = [*self.record.trial_runs, run.pk]
            self.record.save(update_fields=["runs", "trial_runs"])
            run = runs.execute_run(run=run)
            found = regressions(before, run)
            regressed += [c for c in found if c not in regressed]
            lines.append(
                _("%(slug)s: run #%(run)d %(status)s%(more)s")
                % {
                    "slug": d.slug,
                    "run": run.pk,
                    "status": run.status,
                    "more": (
                        _(", regressed: %(checks)s") % {"checks": ", ".join(found)} if found else ""
                    ),
                }
            )
        self.step("verified", ok=not regressed, detail="; ".join(lines), phase=phase)
        return regressed

    def rollback(self, reason: str) -> NginxApply:
        """Put the previous generation back live and prove it; rolled_back or rollback_failed."""
        restore_generation(self.directory, self.previous)
        self.journal("rolled_back")
        self.step("restored", detail=reason, phase=ROLLBACK)
        tested = self.test(phase=ROLLBACK)
        if not tested.ok:
            return self.failed_rollback(
                reason,
                _("nginx -t refused the previous generation: %(why)s") % {"why": tested.summary},
            )
        reloaded = self.reload(phase=ROLLBACK)
        if not reloaded.ok:
            return self.failed_rollback(
                reason, _("The reload failed: %(why)s") % {"why": reloaded.summary}
            )
        new = self.record.config_hashes
        wanted = {
            d.slug: _is_old(
                self.record.previous_hashes.get(d.slug), new[d.slug], self.previous.traced(d)
            )
            for d in self.deployments
            if d.route_tracing
        }
        problem = self.confirm(wanted, phase=ROLLBACK)
        if problem:
            return self.failed_rollback(reason, problem)
        if not self.record.no_verify:
            self.verify(phase=ROLLBACK)
        remove_journal(self.directory)
        self.step("rolled_back", detail=reason, phase=ROLLBACK)
        return self.finish(Result.ROLLED_BACK, reason=reason)

    def failed_rollback(self, reason: str, problem: str) -> NginxApply:
        # The directory holds the previous generation whole; what nginx serves is unknown.
        remove_journal(self.directory)
        self.step("rolled_back", ok=False, detail=problem, phase=ROLLBACK)
        return self.finish(
            Result.ROLLBACK_FAILED,
            reason=_("%(reason)s The rollback failed: %(problem)s")
            % {"reason": reason, "problem": problem},
        )


def _describe(answer: live.Answer) -> str:
    if answer.error:
        return _("nothing (%(error)s)") % {"error": answer.error}
    if answer.config_hash is None:
        return _("without X-Console-Config")
    return answer.config_hash[:12]


def _is_new(new: str) -> Callable[[live.Answer], bool]:
    return lambda answer: answer.config_hash == new


def _is_old(old: str | None, new: str, traced: bool) -> Callable[[live.Answer], bool]:
    """Return the test of an answer after a rollback: the old hash, or at least not the new one.

    A site file that carried no X-Console-Config (or no file at all) cannot show its hash.
    """
    if old is not None and traced:
        return lambda answer: answer.config_hash == old
    return lambda answer: answer.config_hash != new


# Applies of a deployment whose trial runs are looked at for a baseline (older ones have long
# been pushed back by later runs).
RECENT_APPLIES = 50


def previous_finished_run(deployment: Deployment) -> VerificationRun | None:
    """Return the deployment's latest run that passed or failed (the baseline of regressions).

    Runs of a generation on trial that did not stay live (rolled back, interrupted) are left out:
    they verified a config nginx no longer serves.
    """
    trials = NginxApply.objects.filter(deployments=deployment).order_by("-created_at", "-id")
    left_out = [
        pk for ids in trials.values_list("trial_runs", flat=True)[:RECENT_APPLIES] for pk in ids
    ]
    return (
        VerificationRun.objects.filter(
            job__deployment=deployment,
            status__in=[VerificationRun.Status.PASSED, VerificationRun.Status.FAILED],
        )
        .exclude(pk__in=left_out)
        .order_by("-created_at", "-id")
        .first()
    )


def regressions(before: VerificationRun | None, after: VerificationRun) -> list[str]:
    """Return the checks that passed in before and fail in after, in after's order.

    A check that was not tried (skipped: key held back, ban lane) neither passed nor failed.
    """
    if before is None:
        return []

    def tried(result: CheckResult) -> bool:
        return not (result.details or {}).get("skipped")

    passed = {r.check_id for r in before.results.all() if r.passed and tried(r)}
    return [
        r.check_id
        for r in after.results.all()
        if not r.passed and tried(r) and r.check_id in passed
    ]


# --- performing -------------------------------------------------------------------------------


def perform_apply(*, apply: NginxApply) -> NginxApply:
    """Perform a queued apply to its end and return the record (never raises for its failures).

    ApplyRefused reasons (a deployment that no longer renders, the lock held too long, a file
    in the way) end it as ``refused``, nothing changed.
    """
    deployments = prepared(
        Deployment.objects.filter(pk__in=apply.deployments.values("pk")).order_by("slug")
    )
    run = _Run(apply, deployments)
    try:
        if not deployments:
            raise ApplyRefused(_("Its deployments were deleted; nothing was applied."))
        run.record.config_hashes = rendered_hashes(deployments)
        run.directory.mkdir(parents=True, exist_ok=True)
        with export_lock(run.directory, timeout=float(settings.CONSOLE_APPLY_LOCK_TIMEOUT)):
            claimed = NginxApply.objects.filter(pk=apply.pk, result=Result.QUEUED).update(
                result=Result.RUNNING, started_at=timezone.now()
            )
            if not claimed:
                apply.refresh_from_db()
                return apply
            apply.result = Result.RUNNING
            run.step("locked", detail=str(run.directory))
            found = _sweep(run)
            if found:
                run.step("recovered", detail=found, phase=RECOVERY)
            return _apply(run)
    except (ApplyRefused, ExportError, InvalidDeployment) as exc:
        return run.finish(Result.REFUSED, reason=str(exc))
    except OSError as exc:
        logger.exception("apply #%s could not use %s", apply.pk, run.directory)
        reason = _("%(dir)s cannot be used: %(error)s") % {"dir": run.directory, "error": exc}
        if (run.directory / JOURNAL).exists():
            # Files may have changed and could not be put back: the journal still holds the
            # previous generation, and the next apply restores it first.
            return run.finish(Result.ROLLBACK_FAILED, reason=reason)
        return run.finish(Result.REFUSED, reason=reason)


def _apply(run: _Run) -> NginxApply:
    """The apply's steps once the lock is held (see the module's docstring)."""
    directory = run.directory
    names = [site_filename(d) for d in run.deployments] + [COMMON_FILENAME, MANIFEST]
    run.previous = read_generation(directory, names)
    run.record.previous_hashes = run.previous.site_hashes(run.deployments)
    run.record.save(update_fields=["previous_hashes"])
    run.journal("kept")
    run.step(
        "kept",
        detail=", ".join(
            f"{slug} {(value or '-')[:12]}" for slug, value in run.record.previous_hashes.items()
        ),
    )
    try:
        written = write_export(
            deployments=run.deployments,
            output_dir=directory,
            source=run.record.source,
            lock=False,
            record=False,
        )
    except ExportError as exc:
        # Refused before a file was replaced: the directory is as it was.
        remove_journal(directory)
        return run.finish(Result.REFUSED, reason=str(exc))
    except BaseException:
        restore_generation(directory, run.previous)
        remove_journal(directory)
        raise
    run.new_files = {name: text for name, text in written.files.items()}
    run.record.config_hashes = {
        d.slug: config_hash(run.new_files[site_filename(d)]) for d in run.deployments
    }
    run.record.save(update_fields=["config_hashes"])
    run.journal("written")
    run.step("written", detail=", ".join(written.written) or _("no file changed"))
    try:
        return _settle(run)
    except Exception as exc:
        # A bug or a lost database must not leave an untested generation behind.
        logger.exception("apply #%s failed", run.record.pk)
        return run.rollback(_("Unexpected error: %(error)s.") % {"error": type(exc).__name__})


def _settle(run: _Run) -> NginxApply:
    """Test, reload, confirm and verify the written generation; undo it where it fails."""
    tested = run.test(phase=APPLY)
    if not tested.ok:
        restore_generation(run.directory, run.previous)
        remove_journal(run.directory)
        reason = _(
            "nginx -t refused the configuration: %(why)s. The previous files are back; nginx "
            "was not reloaded."
        ) % {"why": tested.summary}
        run.step("restored", detail=reason)
        return run.finish(Result.TEST_FAILED, reason=reason)
    run.journal("tested")
    reloaded = run.reload(phase=APPLY)
    if not reloaded.ok:
        return run.rollback(_("The reload failed: %(why)s.") % {"why": reloaded.summary})
    run.journal("reloaded")
    wanted = {
        d.slug: _is_new(run.record.config_hashes[d.slug])
        for d in run.deployments
        if d.route_tracing
    }
    problem = run.confirm(wanted, phase=APPLY)
    if problem:
        return run.rollback(problem)
    run.journal("confirmed")
    if run.record.no_verify:
        run.step("verified", ok=None, detail=_("Verification skipped (--no-verify)."))
        remove_journal(run.directory)
        return run.finish(Result.APPLIED)
    regressed = run.verify(phase=APPLY)
    run.record.regressions = regressed
    if regressed and not run.record.no_rollback:
        return run.rollback(
            _("Checks that passed before fail now: %(checks)s.") % {"checks": ", ".join(regressed)}
        )
    remove_journal(run.directory)
    reason = (
        _("Kept despite regressions (--no-rollback): %(checks)s.")
        % {"checks": ", ".join(regressed)}
        if regressed
        else ""
    )
    return run.finish(Result.APPLIED, reason=reason)


def _sweep(run: _Run) -> str:
    """With the lock held: settle what earlier applies left behind; return what was found.

    A journal means its apply was killed after it kept the previous generation: that generation
    goes back, is tested and reloaded. Records still "running" without the lock are dead.
    """
    directory = run.directory
    notes = []
    journal = read_journal(directory)
    if journal is not None:
        previous = Generation(journal["files"])
        restore_generation(directory, previous)
        outcome = live.run_test_command(redact=run.redact)
        reloaded = live.run_reload_command(redact=run.redact) if outcome.ok else None
        remove_journal(directory)
        what = (
            _("reloaded nginx")
            if reloaded is not None and reloaded.ok
            else _("nginx was not reloaded (%(why)s)")
            % {"why": (reloaded.summary if reloaded is not None else outcome.summary)}
        )
        notes.append(
            _(
                "Found apply #%(id)s interrupted after step “%(phase)s”: restored the generation "
                "before it and %(what)s."
            )
            % {"id": journal.get("apply", "?"), "phase": journal.get("phase", "?"), "what": what}
        )
    dead = NginxApply.objects.filter(directory=run.record.directory, result=Result.RUNNING).exclude(
        pk=run.record.pk
    )
    for record in dead:
        record.steps = [
            *record.steps,
            {
                "step": "interrupted",
                "phase": RECOVERY,
                "ok": False,
                "detail": _("Stopped before it finished; found by apply #%(id)d.")
                % {"id": run.record.pk},
                "at": timezone.now().isoformat(),
            },
        ]
        record.result = Result.INTERRUPTED
        record.reason = _("The apply's process stopped before it finished.")
        record.finished_at = timezone.now()
        record.save(update_fields=["steps", "result", "reason", "finished_at"])
        record_audit(record, list(record.deployments.all()))
        if not journal or journal.get("apply") != record.pk:
            notes.append(_("Apply #%(id)d had stopped without changing files.") % {"id": record.pk})
    return " ".join(notes)


# --- audit and notifications ------------------------------------------------------------------


def record_audit(record: NginxApply, deployments: list[Deployment]) -> None:
    """One audit event per team of the apply; a failed rollback has an action of its own."""
    action = (
        "nginx.apply.rollback_failed" if record.result == Result.ROLLBACK_FAILED else "nginx.apply"
    )
    by_team: dict[int, list[Deployment]] = {}
    for d in deployments:
        by_team.setdefault(d.team_id, []).append(d)
    for team_id, members in sorted(by_team.items()):
        slugs = [d.slug for d in members]
        audit.record(
            action=action,
            team=team_id,
            obj=record,
            actor=record.started_by,
            changes={
                "result": record.result,
                "deployments": slugs,
                "config_hashes": {s: record.config_hashes.get(s) for s in slugs},
                "previous_hashes": {s: record.previous_hashes.get(s) for s in slugs},
                "runs": record.runs,
                "regressions": record.regressions,
            },
        )
