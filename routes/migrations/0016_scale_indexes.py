"""Scale (issue 16): the audit list's indexes, one per filter it offers and the team scope, each
in the list's newest-first order, and (object_type, object_id) for an object's history; and the
verification job's last_enqueued_at gets the name the admin shows."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("routes", "0015_edge_hardening"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["-created_at", "-id"], name="audit_newest_idx"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["team", "-created_at", "-id"], name="audit_team_newest_idx"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(
                fields=["actor", "-created_at", "-id"], name="audit_actor_newest_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(
                fields=["action", "-created_at", "-id"], name="audit_action_newest_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(
                fields=["object_type", "object_id", "-created_at", "-id"], name="audit_object_idx"
            ),
        ),
        migrations.AlterField(
            model_name="verificationjob",
            name="last_enqueued_at",
            field=models.DateTimeField(
                blank=True, editable=False, null=True, verbose_name="last queued at"
            ),
        ),
    ]
