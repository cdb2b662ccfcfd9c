"""Issue 15: a run's remarks (keys left out or held back, why it stopped) as codes and
parameters, rendered in the reader's language; ``error`` keeps the English words."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("routes", "0016_scale_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="verificationrun",
            name="remarks",
            field=models.JSONField(
                blank=True,
                default=list,
                editable=False,
                help_text=(
                    'e.g. [{"code": "keys_withheld", "params": {"origins": ["https://a.example"]}}].'
                ),
                verbose_name="remarks",
            ),
        ),
    ]
