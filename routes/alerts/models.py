"""Notification channels, their deliveries (one row per attempt) and each deployment's alert state.

These models belong to the routes app: routes/models.py imports them by name. They name the core
models as "routes.Team" and so on, and import nothing of routes.models, so neither module needs
the other to load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from routes import keys as keyring

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# Reminders are at most this many hours apart (30 days): longer is no reminder at all.
MAX_REMIND_HOURS = 720


def optional_link(
    to: str,
    verbose_name: StrOrPromise,
    *,
    on_delete: Any = models.CASCADE,
    related_name: str = "notification_deliveries",
) -> models.ForeignKey:
    """Return a foreign key that may be empty."""
    return models.ForeignKey(
        to,
        null=True,
        blank=True,
        on_delete=on_delete,
        related_name=related_name,
        verbose_name=verbose_name,
    )


class NotificationChannel(models.Model):
    """Where a team's state changes are sent: an email address, a webhook or an Apprise URL."""

    class Kind(models.TextChoices):
        EMAIL = "email", _("email")
        WEBHOOK = "webhook", _("webhook (JSON POST)")
        APPRISE = "apprise", _("Apprise URL (Slack, Discord, Telegram, ntfy, Matrix, …)")

    team = models.ForeignKey(
        "routes.Team",
        on_delete=models.CASCADE,
        related_name="notification_channels",
        verbose_name=_("team"),
    )
    name = models.CharField(
        _("name"), max_length=100, help_text=_("For example: On-call email, #ops in Slack.")
    )
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices)
    # The address or URL, encrypted like keys: webhook and Apprise URLs carry tokens.
    target_ciphertext = models.TextField(editable=False)
    target_masked = models.CharField(
        _("target"),
        max_length=300,
        editable=False,
        help_text=_("The target as pages show it, e.g. https://hooks.example.com/••••1a2b."),
    )
    all_deployments = models.BooleanField(
        _("all deployments of the team"),
        default=True,
        help_text=_("Off: only the deployments listed below."),
    )
    deployments = models.ManyToManyField(
        "routes.Deployment",
        blank=True,
        related_name="notification_channels",
        verbose_name=_("deployments"),
        help_text=_("Used when the channel does not cover all deployments, e.g. prod only."),
    )
    remind_every_hours = models.PositiveIntegerField(
        _("remind every (hours)"),
        null=True,
        blank=True,
        help_text=_("While a deployment stays down, remind every N hours, e.g. 4; empty: never."),
    )
    enabled = models.BooleanField(
        _("enabled"), default=True, help_text=_("Off: no state change is sent here.")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        verbose_name=_("created by"),
    )

    class Meta:
        ordering = ["team__name", "name", "id"]
        verbose_name = _("notification channel")
        verbose_name_plural = _("notification channels")
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="channel_team_name_unique"),
            models.CheckConstraint(
                condition=Q(kind__in=["email", "webhook", "apprise"]), name="channel_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(remind_every_hours__isnull=True)
                | Q(remind_every_hours__gte=1, remind_every_hours__lte=MAX_REMIND_HOURS),
                name="channel_remind_hours_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    def get_absolute_url(self) -> str:
        return reverse("admin:routes_notificationchannel_change", args=[self.pk])

    def reveal_target(self) -> str:
        """Return the clear target. Callers must never log, render or store it."""
        return keyring.decrypt(self.target_ciphertext)


class NotificationDelivery(models.Model):
    """One attempt to send one notification to one channel (never the target, never a secret)."""

    class Event(models.TextChoices):
        FAILED = "failed", _("failed")
        RECOVERED = "recovered", _("recovered")
        REMINDER = "reminder", _("still down (reminder)")
        TEST = "test", _("test")
        # An apply to nginx that was undone, or whose undoing failed (routes/nginx/apply.py).
        ROLLED_BACK = "rolled_back", _("apply rolled back")
        ROLLBACK_FAILED = "rollback_failed", _("apply rollback failed")

    class Result(models.TextChoices):
        PENDING = "pending", _("pending")
        SENDING = "sending", _("sending")
        SENT = "sent", _("sent")
        RETRIED = "retried", _("failed, retried")
        FAILED = "failed", _("failed")

    channel = models.ForeignKey(
        NotificationChannel,
        on_delete=models.CASCADE,
        related_name="deliveries",
        verbose_name=_("channel"),
    )
    # Empty for a test notification. A pruned run takes its deliveries with it.
    deployment = optional_link("routes.Deployment", _("deployment"))
    run = optional_link("routes.VerificationRun", _("run"))
    event = models.CharField(_("event"), max_length=20, choices=Event.choices)
    attempt = models.PositiveSmallIntegerField(_("attempt"), default=1)
    result = models.CharField(
        _("result"), max_length=10, choices=Result.choices, default=Result.PENDING, db_index=True
    )
    response_code = models.PositiveIntegerField(
        _("response code"),
        null=True,
        blank=True,
        help_text=_("The HTTP status or SMTP reply code, e.g. 200 or 250."),
    )
    error = models.TextField(_("error"), blank=True)
    # What is sent (the webhook body); an email and an Apprise message are written from it.
    payload = models.JSONField(_("payload"), default=dict, blank=True, editable=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("notification delivery")
        verbose_name_plural = _("notification deliveries")
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    event__in=[
                        "failed",
                        "recovered",
                        "reminder",
                        "test",
                        "rolled_back",
                        "rollback_failed",
                    ]
                ),
                name="delivery_event_valid",
            ),
            models.CheckConstraint(
                condition=Q(result__in=["pending", "sending", "sent", "retried", "failed"]),
                name="delivery_result_valid",
            ),
            models.CheckConstraint(condition=Q(attempt__gte=1), name="delivery_attempt_valid"),
        ]
        indexes = [
            models.Index(
                fields=["channel", "deployment", "-created_at"], name="delivery_channel_deployment"
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel.name}: {self.event} #{self.attempt} {self.result}"


class DeploymentAlertState(models.Model):
    """Whether a deployment is up or down, as of its last finished run (no row: never run)."""

    class State(models.TextChoices):
        UP = "up", _("up")
        DOWN = "down", _("down")

    deployment = models.OneToOneField(
        "routes.Deployment",
        on_delete=models.CASCADE,
        related_name="alert_state",
        verbose_name=_("deployment"),
    )
    state = models.CharField(_("state"), max_length=4, choices=State.choices)
    since = models.DateTimeField(_("since"), help_text=_("When the deployment went up or down."))
    last_run = optional_link(
        "routes.VerificationRun", _("last run"), on_delete=models.SET_NULL, related_name="+"
    )
    # Kept when the run itself is pruned: a run that finished earlier must not change the state.
    last_finished_at = models.DateTimeField(_("last run finished at"))

    class Meta:
        ordering = ["deployment"]
        verbose_name = _("alert state")
        verbose_name_plural = _("alert states")
        constraints = [
            models.CheckConstraint(condition=Q(state__in=["up", "down"]), name="alert_state_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.deployment.slug}: {self.get_state_display()}"
