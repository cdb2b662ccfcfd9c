"""Where keys may go: confirmed key destinations, and base URLs that are origins.

Existing deployments keep working after the upgrade: the origins their checks send keys to today
are marked confirmed (by the upgrade, recorded in the audit trail).
"""

import ipaddress
from urllib.parse import urlsplit

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.utils import timezone

import routes.validators

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url):
    # A frozen copy of routes.destinations.origin_of: migrations must not follow later edits.
    try:
        parts = urlsplit((url or "").strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _destination(url, server_name=""):
    # A frozen copy of routes.destinations.destination_of with host_header: through an IP
    # address, checks send the server name as Host, and that is part of where keys go.
    origin = _origin(url)
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return origin
    if not origin or not server_name or server_name.startswith("*"):
        return origin
    port = urlsplit(url).port
    header = f"{server_name}:{port}" if port else server_name
    return f"{origin} (Host: {header})"


def _derived_base_url(deployment):
    if deployment.verification_base_url:
        return deployment.verification_base_url.rstrip("/")
    if deployment.tls:
        port = "" if deployment.https_port == 443 else f":{deployment.https_port}"
        return f"https://{deployment.server_name}{port}"
    port = "" if deployment.http_port == 80 else f":{deployment.http_port}"
    return f"http://{deployment.server_name}{port}"


def confirm_current_destinations(apps, schema_editor):
    Deployment = apps.get_model("routes", "Deployment")
    VerificationJob = apps.get_model("routes", "VerificationJob")
    AuditEvent = apps.get_model("routes", "AuditEvent")
    jobs = {job.deployment_id: job.base_url for job in VerificationJob.objects.all()}
    now = timezone.now()
    for deployment in Deployment.objects.all():
        base = (jobs.get(deployment.pk) or _derived_base_url(deployment)).rstrip("/")
        origins = {_destination(base, deployment.server_name)}
        if deployment.cpamp_cpa_url:
            origins.add(_origin(deployment.cpamp_cpa_url))
        confirmed = sorted(o for o in origins if o)
        Deployment.objects.filter(pk=deployment.pk).update(
            keys_confirmed_origins=confirmed, keys_confirmed_at=now
        )
        AuditEvent.objects.create(
            actor_label="upgrade",
            team_id=deployment.team_id,
            action="deployment.confirm_destination",
            object_type="deployment",
            object_id=str(deployment.pk),
            object_repr=f"{deployment.name} ({deployment.slug})"[:200],
            changes={"origins": [[], confirmed], "how": "upgrade"},
        )


class Migration(migrations.Migration):
    dependencies = [
        ("routes", "0002_verbose_names"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="keys_confirmed_at",
            field=models.DateTimeField(
                blank=True,
                editable=False,
                null=True,
                verbose_name="key destinations confirmed at",
            ),
        ),
        migrations.AddField(
            model_name="deployment",
            name="keys_confirmed_by",
            field=models.ForeignKey(
                blank=True,
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
                verbose_name="key destinations confirmed by",
            ),
        ),
        migrations.AddField(
            model_name="deployment",
            name="keys_confirmed_origins",
            field=models.JSONField(
                blank=True,
                default=list,
                editable=False,
                help_text=(
                    "Origins an owner confirmed for this deployment's keys, e.g. "
                    "https://api.example.com."
                ),
                verbose_name="confirmed key destinations",
            ),
        ),
        migrations.AlterField(
            model_name="deployment",
            name="cpamp_cpa_url",
            field=models.CharField(
                default="http://cli-proxy-api:8317",
                help_text=(
                    "The CPA URL entered in CPAMP's first setup, e.g. http://cli-proxy-api:8317. "
                    "Never the public domain: that makes a loop CPAMP -> Nginx -> CPAMP/CPA. Only "
                    "an owner may change it: the direct management check sends the CPA "
                    "Management Key there."
                ),
                max_length=300,
                validators=[routes.validators.validate_origin],
                verbose_name="CPA URL used by CPAMP",
            ),
        ),
        migrations.AlterField(
            model_name="deployment",
            name="verification_base_url",
            field=models.CharField(
                blank=True,
                help_text=(
                    "Where checks are sent, as an origin such as https://10.0.0.5:8443; empty "
                    "means derived from server name and HTTPS. Only an owner may change it."
                ),
                max_length=300,
                validators=[routes.validators.validate_origin],
                verbose_name="verification base URL",
            ),
        ),
        migrations.AlterField(
            model_name="verificationjob",
            name="base_url",
            field=models.CharField(
                blank=True,
                help_text=(
                    "An origin such as https://10.0.0.5; empty: the deployment's verification "
                    "base URL, or its domain and scheme. Only an owner may change it."
                ),
                max_length=300,
                validators=[routes.validators.validate_origin],
                verbose_name="base URL",
            ),
        ),
        migrations.RunPython(confirm_current_destinations, migrations.RunPython.noop),
    ]
