"""The last nginx -t of each deployment config: the config page no longer runs nginx on GET."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("routes", "0003_run_deadline"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="NginxTest",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "config_hash",
                    models.CharField(
                        help_text=(
                            "SHA-256 of the files tested, e.g. prod.conf with "
                            "00-console-common.conf."
                        ),
                        max_length=64,
                        verbose_name="config SHA-256",
                    ),
                ),
                ("ok", models.BooleanField(verbose_name="accepted by nginx")),
                ("timed_out", models.BooleanField(default=False, verbose_name="timed out")),
                ("output", models.TextField(blank=True, verbose_name="nginx output")),
                ("tested_at", models.DateTimeField(verbose_name="tested at")),
                (
                    "deployment",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="nginx_tests",
                        to="routes.deployment",
                        verbose_name="deployment",
                    ),
                ),
                (
                    "tested_by",
                    models.ForeignKey(
                        blank=True,
                        editable=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                        verbose_name="tested by",
                    ),
                ),
            ],
            options={
                "verbose_name": "nginx test",
                "verbose_name_plural": "nginx tests",
                "ordering": ["-tested_at", "-id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("deployment", "config_hash"), name="nginx_test_one_per_config"
                    )
                ],
            },
        ),
    ]
