from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("routes", "0002_key_destinations"),
    ]

    operations = [
        migrations.AddField(
            model_name="verificationrun",
            name="deadline_at",
            field=models.DateTimeField(
                blank=True, editable=False, null=True, verbose_name="deadline"
            ),
        ),
    ]
