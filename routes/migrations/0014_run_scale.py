"""The run history at scale (issue 12): stored check counters and indexes in its order.

The counters are filled here for every finished run, from its stored results, the way
routes.verification.runs.stored_counts() fills them when a run finishes.
"""

from django.db import migrations, models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce

FINISHED = ("passed", "failed", "error")


def fill_counts(apps, schema_editor):
    VerificationRun = apps.get_model("routes", "VerificationRun")
    CheckResult = apps.get_model("routes", "CheckResult")
    results = CheckResult.objects.filter(run=OuterRef("pk")).order_by().values("run")

    def count(rows):
        return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n")), 0)

    # One UPDATE for all rows: a loop over a hundred thousand runs would take minutes.
    VerificationRun.objects.filter(status__in=FINISHED).update(
        check_count=count(results), failed_count=count(results.filter(passed=False))
    )


class Migration(migrations.Migration):
    dependencies = [
        ("routes", "0013_apply"),
    ]

    operations = [
        migrations.AddField(
            model_name="verificationrun",
            name="check_count",
            field=models.PositiveIntegerField(
                blank=True, editable=False, help_text="e.g. 12.", null=True, verbose_name="checks"
            ),
        ),
        migrations.AddField(
            model_name="verificationrun",
            name="failed_count",
            field=models.PositiveIntegerField(
                blank=True,
                editable=False,
                help_text="e.g. 2.",
                null=True,
                verbose_name="failed checks",
            ),
        ),
        migrations.AlterField(
            model_name="verificationrun",
            name="created_at",
            field=models.DateTimeField(auto_now_add=True, verbose_name="queued at"),
        ),
        migrations.AlterField(
            model_name="verificationrun",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "queued"),
                    ("running", "running"),
                    ("passed", "passed"),
                    ("failed", "failed"),
                    ("error", "error"),
                ],
                default="queued",
                max_length=10,
                verbose_name="status",
            ),
        ),
        migrations.AddIndex(
            model_name="verificationrun",
            index=models.Index(fields=["-created_at", "-id"], name="run_newest_idx"),
        ),
        migrations.AddIndex(
            model_name="verificationrun",
            index=models.Index(fields=["job", "-created_at", "-id"], name="run_job_newest_idx"),
        ),
        migrations.AddIndex(
            model_name="verificationrun",
            index=models.Index(
                condition=models.Q(
                    ("status", "queued"),
                    ("status", "running"),
                    ("status", "failed"),
                    ("status", "error"),
                    _connector="OR",
                ),
                fields=["status", "-created_at", "-id"],
                name="run_not_passed_idx",
            ),
        ),
        migrations.RunPython(fill_counts, migrations.RunPython.noop, elidable=True),
    ]
