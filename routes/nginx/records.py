"""The record of each apply: who started it, which deployments, hashes, test output, runs, steps.

This model belongs to the routes app: routes/models.py imports it by name. It names the core
models as "routes.Team" and so on and imports nothing of routes.models, so neither module needs
the other to load. The apply itself is routes/nginx/apply.py.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils.translation import gettext_lazy as _


def combined_hash(hashes: dict[str, str | None]) -> str | None:
    """Return the hash of a generation of several sites ("slug hash" lines), the one hash of one.

    None when no site of it has a hash (nothing of it was in the directory before).
    """
    if not hashes or all(value is None for value in hashes.values()):
        return None
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    lines = "".join(f"{slug} {value or '-'}\n" for slug, value in sorted(hashes.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


class NginxApply(models.Model):
    """One apply of rendered configs to the live nginx, and how it ended."""

    class Result(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        APPLIED = "applied", _("applied")
        TEST_FAILED = "test_failed", _("test failed")
        ROLLED_BACK = "rolled_back", _("rolled back")
        ROLLBACK_FAILED = "rollback_failed", _("rollback failed")
        INTERRUPTED = "interrupted", _("interrupted")
        REFUSED = "refused", _("refused")

    class Source(models.TextChoices):
        ADMIN = "admin", _("admin")
        COMMAND = "command", _("command")

    team = models.ForeignKey(
        "routes.Team",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="nginx_applies",
        verbose_name=_("team"),
        help_text=_("The team of every deployment applied; empty when they span several."),
    )
    deployments = models.ManyToManyField(
        "routes.Deployment", related_name="nginx_applies", verbose_name=_("deployments")
    )
    # Kept when a deployment is deleted later: the history still says what was applied.
    slugs = models.JSONField(
        _("deployment slugs"), default=list, blank=True, help_text=_('e.g. ["prod"].')
    )
    directory = models.CharField(
        _("nginx directory"),
        max_length=500,
        help_text=_("The directory the live nginx includes, e.g. /etc/nginx/conf.d."),
    )
    source = models.CharField(_("source"), max_length=10, choices=Source.choices)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("started by"),
    )
    started_label = models.CharField(
        _("started by (name)"),
        max_length=150,
        blank=True,
        help_text=_("Username at the time, or 'command'."),
    )
    no_verify = models.BooleanField(_("without verification"), default=False)
    no_rollback = models.BooleanField(_("without rollback"), default=False)
    result = models.CharField(
        _("result"), max_length=20, choices=Result.choices, default=Result.QUEUED, db_index=True
    )
    config_hashes = models.JSONField(
        _("config hashes"),
        default=dict,
        blank=True,
        help_text=_('The new config hash of each deployment, e.g. {"prod": "3f2a…"}.'),
    )
    previous_hashes = models.JSONField(
        _("previous hashes"),
        default=dict,
        blank=True,
        help_text=_("The hash of each site file before the apply; null when there was none."),
    )
    test_output = models.TextField(_("test output"), blank=True)
    runs = models.JSONField(
        _("verification runs"), default=list, blank=True, help_text=_("Run ids, e.g. [12, 13].")
    )
    # Runs that verified a generation before it was kept: a rollback or a crash means they saw
    # a config that did not stay live, so they are no baseline for later regressions.
    trial_runs = models.JSONField(_("trial runs"), default=list, blank=True, editable=False)
    regressions = models.JSONField(
        _("regressions"),
        default=list,
        blank=True,
        help_text=_('Checks that passed before and fail now, e.g. ["plugin_resources"].'),
    )
    # [{"step": "written", "phase": "apply", "ok": true, "detail": "...", "at": "..."}, ...]
    steps = models.JSONField(_("steps"), default=list, blank=True)
    reason = models.TextField(_("reason"), blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    FINISHED = (
        Result.APPLIED,
        Result.TEST_FAILED,
        Result.ROLLED_BACK,
        Result.ROLLBACK_FAILED,
        Result.INTERRUPTED,
        Result.REFUSED,
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("nginx apply")
        verbose_name_plural = _("nginx applies")
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    result__in=[
                        "queued",
                        "running",
                        "applied",
                        "test_failed",
                        "rolled_back",
                        "rollback_failed",
                        "interrupted",
                        "refused",
                    ]
                ),
                name="nginx_apply_result_valid",
            ),
            models.CheckConstraint(
                condition=Q(source__in=["admin", "command"]), name="nginx_apply_source_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {', '.join(self.slugs) or '-'} {self.result}"

    def get_absolute_url(self) -> str:
        return reverse("admin:routes_nginxapply_change", args=[self.pk])

    @property
    def finished(self) -> bool:
        """Return True once the apply has ended, whatever its result."""
        return self.result in self.FINISHED

    @property
    def config_hash(self) -> str | None:
        """Return the new config hash (of the whole generation when several sites)."""
        return combined_hash(self.config_hashes)

    @property
    def previous_hash(self) -> str | None:
        """Return the hash before the apply (of the whole generation when several sites)."""
        return combined_hash(self.previous_hashes)
