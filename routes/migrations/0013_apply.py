"""The record of each apply to nginx, and notifications of applies rolled back (issue 13)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('routes', '0012_job_schedule'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='NginxApply',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('slugs', models.JSONField(blank=True, default=list, help_text='e.g. ["prod"].', verbose_name='deployment slugs')),
                ('directory', models.CharField(help_text='The directory the live nginx includes, e.g. /etc/nginx/conf.d.', max_length=500, verbose_name='nginx directory')),
                ('source', models.CharField(choices=[('admin', 'admin'), ('command', 'command')], max_length=10, verbose_name='source')),
                ('started_label', models.CharField(blank=True, help_text="Username at the time, or 'command'.", max_length=150, verbose_name='started by (name)')),
                ('no_verify', models.BooleanField(default=False, verbose_name='without verification')),
                ('no_rollback', models.BooleanField(default=False, verbose_name='without rollback')),
                ('result', models.CharField(choices=[('queued', 'queued'), ('running', 'running'), ('applied', 'applied'), ('test_failed', 'test failed'), ('rolled_back', 'rolled back'), ('rollback_failed', 'rollback failed'), ('interrupted', 'interrupted'), ('refused', 'refused')], db_index=True, default='queued', max_length=20, verbose_name='result')),
                ('config_hashes', models.JSONField(blank=True, default=dict, help_text='The new config hash of each deployment, e.g. {"prod": "3f2a…"}.', verbose_name='config hashes')),
                ('previous_hashes', models.JSONField(blank=True, default=dict, help_text='The hash of each site file before the apply; null when there was none.', verbose_name='previous hashes')),
                ('test_output', models.TextField(blank=True, verbose_name='test output')),
                ('runs', models.JSONField(blank=True, default=list, help_text='Run ids, e.g. [12, 13].', verbose_name='verification runs')),
                ('trial_runs', models.JSONField(blank=True, default=list, editable=False, verbose_name='trial runs')),
                ('regressions', models.JSONField(blank=True, default=list, help_text='Checks that passed before and fail now, e.g. ["plugin_resources"].', verbose_name='regressions')),
                ('steps', models.JSONField(blank=True, default=list, verbose_name='steps')),
                ('reason', models.TextField(blank=True, verbose_name='reason')),
                ('task_id', models.CharField(blank=True, max_length=64)),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True, verbose_name='created at')),
                ('started_at', models.DateTimeField(blank=True, null=True, verbose_name='started at')),
                ('finished_at', models.DateTimeField(blank=True, null=True, verbose_name='finished at')),
            ],
            options={
                'verbose_name': 'nginx apply',
                'verbose_name_plural': 'nginx applies',
                'ordering': ['-created_at', '-id'],
            },
        ),
        migrations.RemoveConstraint(
            model_name='notificationdelivery',
            name='delivery_event_valid',
        ),
        migrations.AlterField(
            model_name='notificationdelivery',
            name='event',
            field=models.CharField(choices=[('failed', 'failed'), ('recovered', 'recovered'), ('reminder', 'still down (reminder)'), ('test', 'test'), ('rolled_back', 'apply rolled back'), ('rollback_failed', 'apply rollback failed')], max_length=20, verbose_name='event'),
        ),
        migrations.AddConstraint(
            model_name='notificationdelivery',
            constraint=models.CheckConstraint(condition=models.Q(('event__in', ['failed', 'recovered', 'reminder', 'test', 'rolled_back', 'rollback_failed'])), name='delivery_event_valid'),
        ),
        migrations.AddField(
            model_name='nginxapply',
            name='deployments',
            field=models.ManyToManyField(related_name='nginx_applies', to='routes.deployment', verbose_name='deployments'),
        ),
        migrations.AddField(
            model_name='nginxapply',
            name='started_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL, verbose_name='started by'),
        ),
        migrations.AddField(
            model_name='nginxapply',
            name='team',
            field=models.ForeignKey(blank=True, help_text='The team of every deployment applied; empty when they span several.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='nginx_applies', to='routes.team', verbose_name='team'),
        ),
        migrations.AddConstraint(
            model_name='nginxapply',
            constraint=models.CheckConstraint(condition=models.Q(('result__in', ['queued', 'running', 'applied', 'test_failed', 'rolled_back', 'rollback_failed', 'interrupted', 'refused'])), name='nginx_apply_result_valid'),
        ),
        migrations.AddConstraint(
            model_name='nginxapply',
            constraint=models.CheckConstraint(condition=models.Q(('source__in', ['admin', 'command'])), name='nginx_apply_source_valid'),
        ),
    ]
