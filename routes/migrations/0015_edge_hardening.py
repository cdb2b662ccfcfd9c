"""Edge hardening (issue 14): the client address mode, trusted proxies, login rate limit, ACME;
and the gixy-next findings kept with each nginx test.

Existing deployments get the safe defaults: edge (X-Forwarded-For set to the connecting
address), no rate limit, no ACME webroot.
"""

from django.db import migrations, models

import routes.validators


class Migration(migrations.Migration):
    dependencies = [
        ("routes", "0014_run_scale"),
    ]

    operations = [
        migrations.AddField(
            model_name="nginxtest",
            name="gixy",
            field=models.JSONField(
                blank=True,
                editable=False,
                help_text='What gixy-next reported, e.g. {"findings": [], "error": ""}.',
                null=True,
                verbose_name="gixy-next findings",
            ),
        ),
        migrations.AddField(
            model_name="deployment",
            name="acme_webroot",
            field=models.CharField(
                blank=True,
                help_text=(
                    "Only used with HTTPS. The directory of certbot --webroot, e.g. "
                    "/var/www/certbot: port 80 serves /.well-known/acme-challenge/ from it and "
                    "redirects the rest."
                ),
                max_length=255,
                validators=[routes.validators.validate_file_path],
                verbose_name="ACME webroot",
            ),
        ),
        migrations.AddField(
            model_name="deployment",
            name="client_ip",
            field=models.CharField(
                choices=[
                    ("edge", "edge: nginx is the first hop"),
                    ("behind_proxy", "behind_proxy: trusted proxies in front"),
                ],
                default="edge",
                help_text=(
                    "edge: nginx is the first hop, so X-Forwarded-For and X-Real-IP are set to "
                    "the connecting address and a client-sent X-Forwarded-For: 127.0.0.1 never "
                    "reaches CPA. behind_proxy: a CDN or load balancer is in front; its "
                    "X-Forwarded-For is believed only from the trusted proxies."
                ),
                max_length=16,
                verbose_name="client address",
            ),
        ),
        migrations.AddField(
            model_name="deployment",
            name="limit_req_burst",
            field=models.PositiveIntegerField(
                default=20,
                help_text=(
                    "Requests above the rate let through at once, e.g. 20: the panel loads a "
                    "dozen endpoints at a time."
                ),
                verbose_name="login rate burst",
            ),
        ),
        migrations.AddField(
            model_name="deployment",
            name="limit_req_rate",
            field=models.CharField(
                blank=True,
                help_text=(
                    "Requests per client address to /v0/management/ and the panel's login "
                    "paths, e.g. 5r/s or 300r/m; more get 429. Empty: no limit."
                ),
                max_length=8,
                validators=[routes.validators.validate_rate],
                verbose_name="login rate limit",
            ),
        ),
        migrations.AddField(
            model_name="deployment",
            name="trusted_proxies",
            field=models.CharField(
                blank=True,
                help_text=(
                    "With behind_proxy: the addresses or networks of the proxies in front, "
                    "separated by spaces, e.g. 10.0.0.0/8 2001:db8::/32."
                ),
                max_length=1000,
                validators=[routes.validators.validate_trusted_proxies],
                verbose_name="trusted proxies",
            ),
        ),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.CheckConstraint(
                condition=models.Q(client_ip="edge")
                | (models.Q(client_ip="behind_proxy") & ~models.Q(trusted_proxies="")),
                name="deployment_client_ip_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.CheckConstraint(
                condition=models.Q(limit_req_burst__gte=1, limit_req_burst__lte=1000),
                name="deployment_limit_req_burst_valid",
            ),
        ),
    ]
