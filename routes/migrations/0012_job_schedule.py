"""Intervals in seconds with a claimable next-run time, a slow threshold, and the apply trigger."""

import datetime as dt

import django.core.validators
from django.db import migrations, models


def minutes_to_seconds(apps, schema_editor):
    Job = apps.get_model("routes", "VerificationJob")
    for job in Job.objects.exclude(interval_minutes__isnull=True).iterator():
        job.interval_seconds = max(20, job.interval_minutes * 60)
        if job.last_enqueued_at is not None:
            job.next_run_at = job.last_enqueued_at + dt.timedelta(seconds=job.interval_seconds)
        job.save(update_fields=["interval_seconds", "next_run_at"])


def seconds_to_minutes(apps, schema_editor):
    Job = apps.get_model("routes", "VerificationJob")
    for job in Job.objects.exclude(interval_seconds__isnull=True).iterator():
        job.interval_minutes = max(1, round(job.interval_seconds / 60))
        job.save(update_fields=["interval_minutes"])


class Migration(migrations.Migration):
    dependencies = [("routes", "0011_causes")]

    operations = [
        migrations.AddField(
            model_name="verificationjob",
            name="interval_seconds",
            field=models.PositiveIntegerField(
                blank=True,
                help_text=(
                    "Run every this many seconds from `manage.py run_scheduler`, e.g. 300; at "
                    "least 20. Empty: manual only."
                ),
                null=True,
                validators=[django.core.validators.MinValueValidator(20)],
                verbose_name="interval (s)",
            ),
        ),
        migrations.AddField(
            model_name="verificationjob",
            name="next_run_at",
            field=models.DateTimeField(
                blank=True, db_index=True, editable=False, null=True, verbose_name="next run"
            ),
        ),
        migrations.AddField(
            model_name="verificationjob",
            name="slow_threshold_ms",
            field=models.PositiveIntegerField(
                blank=True,
                help_text='A check that passes slower than this, e.g. 1500, carries a "slow" warning.',
                null=True,
                verbose_name="slow threshold (ms)",
            ),
        ),
        migrations.RunPython(minutes_to_seconds, seconds_to_minutes),
        migrations.RemoveField(model_name="verificationjob", name="interval_minutes"),
        migrations.AlterField(
            model_name="verificationrun",
            name="trigger",
            field=models.CharField(
                choices=[
                    ("manual", "manual"),
                    ("scheduled", "scheduled"),
                    ("command", "command"),
                    ("apply", "apply"),
                ],
                max_length=10,
                verbose_name="trigger",
            ),
        ),
    ]
