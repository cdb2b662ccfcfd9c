"""Teams, deployments, route overrides, keys, exports, verification jobs and the audit trail."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext

from routes import keys as keyring
from routes import validators as v

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User
    from django_stubs_ext import StrOrPromise

MIN_CPA_VERSION = (6, 10, 8)
RECOMMENDED_CPA_VERSION = (7, 1, 39)
# The shortest schedule: a run of every check takes a few seconds, and CPA bans an address
# after repeated management-key failures, so a tighter loop would only hammer it.
MIN_INTERVAL_SECONDS = 20

# CPA and CPAMP's own ports, and the names the seed's docker-compose gives their services.
CPA_PORT = 8317
CPAMP_PORT = 18317
CPA_SERVICE = "cli-proxy-api"
CPAMP_SERVICE = "cpa-manager-plus"
# The upstream fields a topology preset fills in, and the two presets.
UPSTREAM_FIELDS = ("cpa_upstream", "cpamp_upstream", "cpamp_cpa_url")


def _preset(cpa_host: str, cpamp_host: str) -> dict[str, str]:
    """Return the upstream fields for CPA and CPAMP on these hosts, at their own ports."""
    return {
        "cpa_upstream": f"{cpa_host}:{CPA_PORT}",
        "cpamp_upstream": f"{cpamp_host}:{CPAMP_PORT}",
        "cpamp_cpa_url": f"http://{cpa_host}:{CPA_PORT}",
    }


DOCKER_PRESET = _preset(CPA_SERVICE, CPAMP_SERVICE)
HOST_PRESET = _preset("127.0.0.1", "127.0.0.1")
PRESETS = {"docker": DOCKER_PRESET, "host": HOST_PRESET}

# Hardening at the edge: whose address CPA sees, rate limits, the ACME webroot (issue 14).
EDGE_FIELDS = ("client_ip", "trusted_proxies", "limit_req_rate", "limit_req_burst", "acme_webroot")
# Requests above limit_req_rate let through at once: the panel's page load (a dozen requests at
# a time) and its polling pass under it (tests/test_edge_hardening.py measures it).
DEFAULT_LIMIT_REQ_BURST = 20
MAX_LIMIT_REQ_BURST = 1000

# The fields people give a deployment, grouped as the admin shows them. The deployment form, the
# admin's fieldsets, the wizard and the definitions format are all built from these groups, so a
# new field is added here once.
DEPLOYMENT_FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "identity": ("name", "slug", "team", "mode", "server_name"),
    "listening": (
        "listen_address",
        "tls",
        "http_port",
        "https_port",
        "ssl_certificate",
        "ssl_certificate_key",
        "http2",
    ),
    "upstreams": (*UPSTREAM_FIELDS, "resolver"),
    "proxy": ("client_max_body_size", "proxy_read_timeout", "proxy_send_timeout", "route_tracing"),
    "edge": EDGE_FIELDS,
    "verification": ("cpa_version", "verification_base_url"),
    "notes": ("notes",),
}
DEPLOYMENT_FIELDS = tuple(name for names in DEPLOYMENT_FIELD_GROUPS.values() for name in names)


def user_link(verbose_name: StrOrPromise, *, editable: bool = False) -> models.ForeignKey:
    """Return the link to the user who did something: kept as NULL when that user is deleted."""
    return models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=editable,
        verbose_name=verbose_name,
    )


class Role(models.TextChoices):
    VIEWER = "viewer", _("Viewer")
    OPERATOR = "operator", _("Operator")
    OWNER = "owner", _("Owner")


ROLE_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.OWNER: 3}


class Team(models.Model):
    name = models.CharField(_("name"), max_length=100, help_text=_("For example: Platform ops."))
    slug = models.SlugField(
        _("slug"), max_length=50, unique=True, help_text=_("Short id used by commands, e.g. ops.")
    )
    require_owner_2fa = models.BooleanField(
        _("require two-factor for owners"),
        default=False,
        help_text=_("Owners of this team must sign in with a TOTP device."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("team")
        verbose_name_plural = _("teams")

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="memberships",
        verbose_name=_("user"),
    )
    team = models.ForeignKey(
        Team, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("team")
    )
    role = models.CharField(
        _("role"),
        max_length=16,
        choices=Role.choices,
        default=Role.VIEWER,
        help_text=_(
            "Viewer reads everything but secrets; operator also edits, exports and verifies; "
            "owner also manages keys and members."
        ),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        ordering = ["team__name", "user__username"]
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="membership_user_team_unique"),
            models.CheckConstraint(
                condition=Q(role__in=["viewer", "operator", "owner"]), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.team} ({self.get_role_display()})"


class DeploymentQuerySet(models.QuerySet):
    def visible_to(self, user: User | AnonymousUser) -> DeploymentQuerySet:
        """Return the deployments of user's teams (all of them for a superuser)."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_superuser:
            return self
        # EXISTS rather than a join plus DISTINCT: DISTINCT makes every annotation of a list
        # (last run, last export, ...) run for each visible row before the page is cut.
        return self.filter(
            Exists(Membership.objects.filter(team_id=OuterRef("team_id"), user_id=user.pk))
        )


class Deployment(models.Model):
    class Mode(models.TextChoices):
        MANAGER_SERVER = "manager_server", _("Manager Server (mixed routing)")
        CPA_PANEL = "cpa_panel", _("CPA Panel (everything to CPA)")

    class ClientIP(models.TextChoices):
        EDGE = "edge", _("edge: nginx is the first hop")
        BEHIND_PROXY = "behind_proxy", _("behind_proxy: trusted proxies in front")

    slug = models.SlugField(
        _("slug"), max_length=50, unique=True, help_text=_("Stable id, e.g. prod.")
    )
    name = models.CharField(_("name"), max_length=100, help_text=_("For example: Production."))
    team = models.ForeignKey(
        Team, on_delete=models.PROTECT, related_name="deployments", verbose_name=_("team")
    )
    mode = models.CharField(
        _("mode"),
        max_length=20,
        choices=Mode.choices,
        default=Mode.MANAGER_SERVER,
        help_text=_(
            "Manager Server: the seed's mixed routing between CPAMP and CPA. CPA Panel: CPA itself "
            "serves /management.html, so everything goes to CPA."
        ),
    )
    server_name = models.CharField(
        _("server name"),
        max_length=253,
        validators=[v.validate_server_name],
        help_text=_("The public domain, e.g. api.example.com (IDN is stored as punycode)."),
    )
    tls = models.BooleanField(
        _("HTTPS"),
        default=False,
        help_text=_("Serve HTTPS on the HTTPS port; the HTTP port answers 301 to https."),
    )
    listen_address = models.CharField(
        _("listen address"),
        max_length=64,
        blank=True,
        validators=[v.validate_listen_address],
        help_text=_("Empty listens on every interface; e.g. 127.0.0.1 for a host-local nginx."),
    )
    http_port = models.PositiveIntegerField(_("HTTP port"), default=80, help_text=_("e.g. 80."))
    https_port = models.PositiveIntegerField(_("HTTPS port"), default=443, help_text=_("e.g. 443."))
    ssl_certificate = models.CharField(
        _("certificate path"),
        max_length=255,
        blank=True,
        validators=[v.validate_file_path],
        help_text=_("Absolute path, e.g. /etc/nginx/ssl/api.example.com/fullchain.pem."),
    )
    ssl_certificate_key = models.CharField(
        _("certificate key path"),
        max_length=255,
        blank=True,
        validators=[v.validate_file_path],
        help_text=_("Absolute path, e.g. /etc/nginx/ssl/api.example.com/privkey.pem."),
    )
    http2 = models.BooleanField(_("HTTP/2"), default=True, help_text=_("Only used with HTTPS."))
    cpa_upstream = models.CharField(
        _("CPA upstream"),
        max_length=300,
        default=DOCKER_PRESET["cpa_upstream"],
        validators=[v.validate_upstream],
        help_text=_("host:port of CPA: cli-proxy-api:8317 (Docker) or 127.0.0.1:8317 (host)."),
    )
    cpamp_upstream = models.CharField(
        _("CPAMP upstream"),
        max_length=300,
        default=DOCKER_PRESET["cpamp_upstream"],
        validators=[v.validate_upstream],
        help_text=_(
            "host:port of CPA Manager Plus: cpa-manager-plus:18317 (Docker) or 127.0.0.1:18317 "
            "(host)."
        ),
    )
    cpamp_cpa_url = models.CharField(
        _("CPA URL used by CPAMP"),
        max_length=300,
        default=DOCKER_PRESET["cpamp_cpa_url"],
        validators=[v.validate_origin],
        help_text=_(
            "The CPA URL entered in CPAMP's first setup, e.g. http://cli-proxy-api:8317. Never the "
            "public domain: that makes a loop CPAMP -> Nginx -> CPAMP/CPA. Only an owner may "
            "change it: the direct management check sends the CPA Management Key there."
        ),
    )
    resolver = models.CharField(
        _("resolver"),
        max_length=200,
        default="127.0.0.11",
        validators=[v.validate_resolver],
        help_text=_(
            "DNS server(s) nginx uses to resolve upstream names at request time. 127.0.0.11 is "
            "Docker's embedded DNS."
        ),
    )
    client_max_body_size = models.CharField(
        _("client max body size"),
        max_length=12,
        default="64m",
        validators=[v.validate_size],
        help_text=_("e.g. 64m."),
    )
    proxy_read_timeout = models.PositiveIntegerField(
        _("proxy read timeout (s)"), default=3600, help_text=_("Seconds, e.g. 3600.")
    )
    proxy_send_timeout = models.PositiveIntegerField(
        _("proxy send timeout (s)"), default=3600, help_text=_("Seconds, e.g. 3600.")
    )
    route_tracing = models.BooleanField(
        _("route tracing"),
        default=True,
        help_text=_(
            "Add X-Console-Upstream (cpa or cpamp) to every proxied answer so verification can "
            "tell who answered."
        ),
    )
    client_ip = models.CharField(
        _("client address"),
        max_length=16,
        choices=ClientIP.choices,
        default=ClientIP.EDGE,
        help_text=_(
            "edge: nginx is the first hop, so X-Forwarded-For and X-Real-IP are set to the "
            "connecting address and a client-sent X-Forwarded-For: 127.0.0.1 never reaches CPA. "
            "behind_proxy: a CDN or load balancer is in front; its X-Forwarded-For is believed "
            "only from the trusted proxies."
        ),
    )
    trusted_proxies = models.CharField(
        _("trusted proxies"),
        max_length=1000,
        blank=True,
        validators=[v.validate_trusted_proxies],
        help_text=_(
            "With behind_proxy: the addresses or networks of the proxies in front, separated by "
            "spaces, e.g. 10.0.0.0/8 2001:db8::/32."
        ),
    )
    limit_req_rate = models.CharField(
        _("login rate limit"),
        max_length=8,
        blank=True,
        validators=[v.validate_rate],
        help_text=_(
            "Requests per client address to /v0/management/ and the panel's login paths, e.g. "
            "5r/s or 300r/m; more get 429. Empty: no limit."
        ),
    )
    limit_req_burst = models.PositiveIntegerField(
        _("login rate burst"),
        default=DEFAULT_LIMIT_REQ_BURST,
        help_text=_(
            "Requests above the rate let through at once, e.g. 20: the panel loads a dozen "
            "endpoints at a time."
        ),
    )
    acme_webroot = models.CharField(
        _("ACME webroot"),
        max_length=255,
        blank=True,
        validators=[v.validate_file_path],
        help_text=_(
            "Only used with HTTPS. The directory of certbot --webroot, e.g. /var/www/certbot: "
            "port 80 serves /.well-known/acme-challenge/ from it and redirects the rest."
        ),
    )
    cpa_version = models.CharField(
        _("CPA version"),
        max_length=20,
        blank=True,
        validators=[v.validate_cpa_version],
        help_text=_("Optional, e.g. v7.1.39. Below v6.10.8 the HTTP usage queue is missing."),
    )
    verification_base_url = models.CharField(
        _("verification base URL"),
        max_length=300,
        blank=True,
        validators=[v.validate_origin],
        help_text=_(
            "Where checks are sent, as an origin such as https://10.0.0.5:8443; empty means "
            "derived from server name and HTTPS. Only an owner may change it."
        ),
    )
    # Where keys may go. Written only by routes.verification.destinations, never by a form.
    keys_confirmed_origins = models.JSONField(
        _("confirmed key destinations"),
        default=list,
        blank=True,
        editable=False,
        help_text=_(
            "Origins an owner confirmed for this deployment's keys, e.g. https://api.example.com."
        ),
    )
    keys_confirmed_at = models.DateTimeField(
        _("key destinations confirmed at"), null=True, blank=True, editable=False
    )
    keys_confirmed_by = user_link(_("key destinations confirmed by"))
    notes = models.TextField(_("notes"), blank=True)
    version = models.PositiveIntegerField(
        _("version"),
        default=1,
        editable=False,
        help_text=_("Bumped on every save; a save based on an older version is refused."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    created_by = user_link(_("created by"))
    updated_by = user_link(_("updated by"))

    objects = DeploymentQuerySet.as_manager()

    CONFIRMATION_FIELDS = ("keys_confirmed_origins", "keys_confirmed_at", "keys_confirmed_by")

    class Meta:
        ordering = ["slug"]
        verbose_name = _("deployment")
        verbose_name_plural = _("deployments")
        constraints = [
            models.CheckConstraint(
                condition=Q(mode__in=["manager_server", "cpa_panel"]), name="deployment_mode_valid"
            ),
            models.CheckConstraint(
                condition=Q(http_port__gte=1, http_port__lte=65535)
                & Q(https_port__gte=1, https_port__lte=65535),
                name="deployment_ports_valid",
            ),
            models.CheckConstraint(
                condition=Q(tls=False) | (~Q(ssl_certificate="") & ~Q(ssl_certificate_key="")),
                name="deployment_tls_needs_certificate",
            ),
            models.CheckConstraint(
                condition=Q(client_ip="edge")
                | (Q(client_ip="behind_proxy") & ~Q(trusted_proxies="")),
                name="deployment_client_ip_valid",
            ),
            models.CheckConstraint(
                condition=Q(limit_req_burst__gte=1, limit_req_burst__lte=MAX_LIMIT_REQ_BURST),
                name="deployment_limit_req_burst_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.server_name:
            self.server_name = v.normalize_server_name(self.server_name)
        updating = not (self._state.adding or kwargs.get("force_insert"))
        if updating and kwargs.get("update_fields") is None:
            # A form or import that loaded this row earlier must not put back an older
            # confirmation of where keys may go: verification.destinations writes those columns.
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in self.CONFIRMATION_FIELDS
            ]
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("admin:routes_deployment_change", args=[self.pk])

    def clean(self) -> None:
        errors: dict[str, list] = {}
        if self.server_name:
            self.server_name = v.normalize_server_name(self.server_name)
        if self.tls:
            for field in ("ssl_certificate", "ssl_certificate_key"):
                if not getattr(self, field):
                    errors.setdefault(field, []).append(
                        ValidationError(_("Required when HTTPS is on."), code="required")
                    )
            if self.http_port == self.https_port:
                errors.setdefault("https_port", []).append(
                    ValidationError(_("Must differ from the HTTP port."), code="invalid")
                )
        for field in ("http_port", "https_port"):
            value = getattr(self, field)
            if value is not None and not 1 <= value <= 65535:
                errors.setdefault(field, []).append(
                    ValidationError(_("The port must be between 1 and 65535."), code="invalid")
                )
        for field in ("proxy_read_timeout", "proxy_send_timeout"):
            value = getattr(self, field)
            if value is not None and not 1 <= value <= 86400:
                errors.setdefault(field, []).append(
                    ValidationError(_("Give 1 to 86400 seconds."), code="invalid")
                )
        if self.client_ip == self.ClientIP.BEHIND_PROXY and not self.trusted_proxies.strip():
            errors.setdefault("trusted_proxies", []).append(
                ValidationError(
                    _(
                        "Required with behind_proxy: without the proxies' addresses nginx cannot "
                        "tell a proxy's X-Forwarded-For from one a client made up."
                    ),
                    code="required",
                )
            )
        burst = self.limit_req_burst
        if burst is not None and not 1 <= burst <= MAX_LIMIT_REQ_BURST:
            errors.setdefault("limit_req_burst", []).append(
                ValidationError(
                    _("Give 1 to %(max)d requests."),
                    code="invalid",
                    params={"max": MAX_LIMIT_REQ_BURST},
                )
            )
        if self.cpamp_cpa_url and self.server_name:
            if v.url_host(self.cpamp_cpa_url) == self.server_name.lower():
                errors.setdefault("cpamp_cpa_url", []).append(
                    ValidationError(
                        _(
                            "This is the deployment's own public domain. CPAMP would reach CPA "
                            "through Nginx (CPAMP -> Nginx -> CPAMP/CPA), a loop; use the direct "
                            "address such as http://cli-proxy-api:8317."
                        ),
                        code="loop",
                    )
                )
        if errors:
            raise ValidationError(errors)

    @property
    def base_url(self) -> str:
        """Return the URL verification talks to by default."""
        if self.verification_base_url:
            return self.verification_base_url.rstrip("/")
        if self.tls:
            port = "" if self.https_port == 443 else f":{self.https_port}"
            return f"https://{self.server_name}{port}"
        port = "" if self.http_port == 80 else f":{self.http_port}"
        return f"http://{self.server_name}{port}"

    def version_warnings(self) -> list[str]:
        """Return warnings about cpa_version (empty when it is unset or recommended)."""
        found = v.parse_version(self.cpa_version)
        if found is None:
            return []
        if found < MIN_CPA_VERSION:
            return [
                str(_("CPA below v6.10.8 has no HTTP usage queue; upgrade to v7.1.39 or newer."))
            ]
        if found < RECOMMENDED_CPA_VERSION:
            return [str(_("CPA v7.1.39 or newer is recommended."))]
        return []


class RouteOverride(models.Model):
    class Match(models.TextChoices):
        EXACT = "exact", _("exact (location =)")
        PREFIX = "prefix", _("prefix (location ^~)")
        REGEX = "regex", _("regex (location ~)")
        REGEX_I = "regex_i", _("case-insensitive regex (location ~*)")

    class Target(models.TextChoices):
        CPA = "cpa", _("CPA :8317")
        CPAMP = "cpamp", _("CPAMP :18317")

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="overrides", verbose_name=_("deployment")
    )
    match = models.CharField(
        _("match"),
        max_length=10,
        choices=Match.choices,
        default=Match.PREFIX,
        help_text=_("How nginx compares the path: exact, prefix (^~), regex (~) or regex_i (~*)."),
    )
    path = models.CharField(
        _("path"),
        max_length=1024,
        help_text=_("e.g. /config for a prefix, or ^/v2/.+ for a regex."),
    )
    target = models.CharField(
        _("target"),
        max_length=10,
        choices=Target.choices,
        default=Target.CPA,
        help_text=_("Which upstream answers."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    position = models.PositiveIntegerField(
        _("position"),
        default=0,
        help_text=_("Order among overrides; regex locations are tried in this order."),
    )
    note = models.CharField(
        _("note"),
        max_length=200,
        blank=True,
        help_text=_("Why this route exists, e.g. the failing panel path."),
    )

    class Meta:
        ordering = ["deployment", "position", "id"]
        verbose_name = _("route override")
        verbose_name_plural = _("route overrides")
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "match", "path"], name="override_unique_match_path"
            ),
            models.CheckConstraint(
                condition=Q(match__in=["exact", "prefix", "regex", "regex_i"]),
                name="override_match_valid",
            ),
            models.CheckConstraint(
                condition=Q(target__in=["cpa", "cpamp"]), name="override_target_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_match_display()} {self.path} -> {self.target}"

    def clean(self) -> None:
        try:
            if self.match in (self.Match.REGEX, self.Match.REGEX_I):
                v.validate_location_regex(self.path)
            else:
                v.validate_location_path(self.path)
        except ValidationError as exc:
            raise ValidationError({"path": exc.error_list}) from None


class KeyQuerySet(models.QuerySet):
    def visible_to(self, user: User | AnonymousUser) -> KeyQuerySet:
        """Return keys of deployments user can see."""
        return self.filter(deployment__in=Deployment.objects.visible_to(user))


class Key(models.Model):
    class Role(models.TextChoices):
        CPAMP_ADMIN = keyring.CPAMP_ADMIN, _("CPAMP Admin Key (panel login)")
        CPA_MANAGEMENT = keyring.CPA_MANAGEMENT, _("CPA Management Key (CPAMP -> CPA)")
        CPA_API = keyring.CPA_API, _("CPA API Key (normal API requests)")

    SINGLE_ROLES = (keyring.CPAMP_ADMIN, keyring.CPA_MANAGEMENT)

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="keys", verbose_name=_("deployment")
    )
    role = models.CharField(_("role"), max_length=20, choices=Role.choices)
    label = models.CharField(
        _("label"),
        max_length=100,
        blank=True,
        help_text=_("e.g. ci-runner. Helps tell API keys apart."),
    )
    ciphertext = models.TextField(editable=False)
    fingerprint = models.CharField(max_length=64, editable=False, db_index=True)
    last4 = models.CharField(max_length=4, editable=False)
    custom_format = models.BooleanField(
        _("custom format"),
        default=False,
        help_text=_(
            "Allow a CPAMP Admin Key that does not look like cpamp_…/cmp_admin_… "
            "(CPAMP accepts any key set through CPA_MANAGER_ADMIN_KEY)."
        ),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    created_by = user_link(_("created by"))
    rotated_at = models.DateTimeField(_("rotated at"), null=True, blank=True, editable=False)
    rotated_by = user_link(_("rotated by"))
    last_validated_at = models.DateTimeField(
        _("last validated at"), null=True, blank=True, editable=False
    )
    last_validation_ok = models.BooleanField(
        _("last validation passed"), null=True, blank=True, editable=False
    )
    last_validation_detail = models.TextField(
        _("last validation detail"), blank=True, editable=False
    )

    objects = KeyQuerySet.as_manager()

    class Meta:
        ordering = ["deployment", "role", "id"]
        verbose_name = _("key")
        verbose_name_plural = _("keys")
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "role"],
                condition=Q(role__in=[keyring.CPAMP_ADMIN, keyring.CPA_MANAGEMENT]),
                name="key_single_role_per_deployment",
            ),
            models.UniqueConstraint(
                fields=["deployment", "fingerprint"], name="key_no_reuse_in_deployment"
            ),
            models.CheckConstraint(
                condition=Q(
                    role__in=[keyring.CPAMP_ADMIN, keyring.CPA_MANAGEMENT, keyring.CPA_API]
                ),
                name="key_role_valid",
            ),
        ]

    def __str__(self) -> str:
        label = f" {self.label}" if self.label else ""
        return f"{self.get_role_display()}{label} {self.masked}"

    @property
    def masked(self) -> str:
        return keyring.masked(self.last4)

    def set_secret(self, secret: str) -> None:
        """Store secret encrypted, with its fingerprint and last four characters."""
        self.ciphertext = keyring.encrypt(secret)
        self.fingerprint = keyring.fingerprint(secret)
        self.last4 = keyring.last4(secret)

    def reveal(self) -> str:
        """Return the clear secret. Callers must never log, render or store it."""
        return keyring.decrypt(self.ciphertext)


class KeyRotation(models.Model):
    """One replaced secret of a key: who replaced it and when (never the value)."""

    key = models.ForeignKey(
        Key, on_delete=models.CASCADE, related_name="rotations", verbose_name=_("key")
    )
    previous_fingerprint = models.CharField(max_length=64)
    previous_last4 = models.CharField(max_length=4)
    rotated_at = models.DateTimeField(auto_now_add=True)
    rotated_by = user_link(_("rotated by"), editable=True)
    reason = models.CharField(max_length=100, blank=True, help_text=_("e.g. set_key, admin."))

    class Meta:
        ordering = ["-rotated_at", "-id"]
        verbose_name = _("key rotation")
        verbose_name_plural = _("key rotations")

    def __str__(self) -> str:
        return f"{self.key} rotated at {self.rotated_at:%Y-%m-%d %H:%M}"


class ConfigExport(models.Model):
    """A rendered config as it was exported: the text, its hash, who and when."""

    class Source(models.TextChoices):
        ADMIN = "admin", _("admin")
        COMMAND = "command", _("command")
        ARCHIVE = "archive", _("archive download")

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="exports", verbose_name=_("deployment")
    )
    content_hash = models.CharField(_("SHA-256"), max_length=64)
    text = models.TextField(_("config"))
    source = models.CharField(_("source"), max_length=10, choices=Source.choices)
    created_at = models.DateTimeField(_("exported at"), auto_now_add=True, db_index=True)
    created_by = user_link(_("created by"), editable=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("config export")
        verbose_name_plural = _("config exports")

    def __str__(self) -> str:
        return f"{self.deployment.slug} {self.content_hash[:12]}"


class NginxTest(models.Model):
    """The last ``nginx -t`` of a deployment's config, one per config hash.

    Pages show it instead of running nginx on every view; a POST ("Test with nginx") runs a new
    one (routes/nginx/tested.py).
    """

    deployment = models.ForeignKey(
        Deployment,
        on_delete=models.CASCADE,
        related_name="nginx_tests",
        verbose_name=_("deployment"),
    )
    config_hash = models.CharField(
        _("config SHA-256"),
        max_length=64,
        help_text=_("SHA-256 of the files tested, e.g. prod.conf with 00-console-common.conf."),
    )
    ok = models.BooleanField(_("accepted by nginx"))
    timed_out = models.BooleanField(_("timed out"), default=False)
    output = models.TextField(_("nginx output"), blank=True)
    # routes/nginx/gixy.py Report.as_json(); NULL: gixy-next is not installed or did not run.
    gixy = models.JSONField(
        _("gixy-next findings"),
        null=True,
        blank=True,
        editable=False,
        help_text=_('What gixy-next reported, e.g. {"findings": [], "error": ""}.'),
    )
    tested_at = models.DateTimeField(_("tested at"))
    tested_by = user_link(_("tested by"))

    class Meta:
        ordering = ["-tested_at", "-id"]
        verbose_name = _("nginx test")
        verbose_name_plural = _("nginx tests")
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "config_hash"], name="nginx_test_one_per_config"
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment.slug} {self.config_hash[:12]} {'ok' if self.ok else 'refused'}"


class VerificationJob(models.Model):
    deployment = models.OneToOneField(
        Deployment,
        on_delete=models.CASCADE,
        related_name="verification_job",
        verbose_name=_("deployment"),
    )
    base_url = models.CharField(
        _("base URL"),
        max_length=300,
        blank=True,
        validators=[v.validate_origin],
        help_text=_(
            "An origin such as https://10.0.0.5; empty: the deployment's verification base URL, "
            "or its domain and scheme. Only an owner may change it."
        ),
    )
    verify_tls = models.BooleanField(_("verify TLS"), default=True)
    timeout_seconds = models.FloatField(
        _("timeout (s)"), default=10.0, help_text=_("Per request, e.g. 10.")
    )
    enabled_checks = models.JSONField(
        _("enabled checks"),
        default=list,
        blank=True,
        help_text=_("Check ids to run; empty runs every check that applies."),
    )
    interval_seconds = models.PositiveIntegerField(
        _("interval (s)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(MIN_INTERVAL_SECONDS)],
        help_text=_(
            "Run every this many seconds from `manage.py run_scheduler`, e.g. 300; at least 20. "
            "Empty: manual only."
        ),
    )
    # The scheduler claims a due job by moving this forward with a conditional UPDATE, so
    # two schedulers never enqueue the same due run (routes.verification.runs.claim_due_runs).
    next_run_at = models.DateTimeField(
        _("next run"), null=True, blank=True, editable=False, db_index=True
    )
    slow_threshold_ms = models.PositiveIntegerField(
        _("slow threshold (ms)"),
        null=True,
        blank=True,
        help_text=_('A check that passes slower than this, e.g. 1500, carries a "slow" warning.'),
    )
    last_enqueued_at = models.DateTimeField(
        _("last queued at"), null=True, blank=True, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["deployment__slug"]
        verbose_name = _("verification job")
        verbose_name_plural = _("verification jobs")

    def __str__(self) -> str:
        return f"{self.deployment.slug} verification"

    @property
    def effective_base_url(self) -> str:
        return (self.base_url or self.deployment.base_url).rstrip("/")


class VerificationRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        PASSED = "passed", _("passed")
        FAILED = "failed", _("failed")
        ERROR = "error", _("error")

    class Trigger(models.TextChoices):
        MANUAL = "manual", _("manual")
        SCHEDULED = "scheduled", _("scheduled")
        COMMAND = "command", _("command")
        APPLY = "apply", _("apply")

    job = models.ForeignKey(
        VerificationJob, on_delete=models.CASCADE, related_name="runs", verbose_name=_("job")
    )
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.QUEUED
    )
    trigger = models.CharField(_("trigger"), max_length=10, choices=Trigger.choices)
    triggered_by = user_link(_("triggered by"), editable=True)
    base_url = models.CharField(_("base URL"), max_length=300, blank=True)
    created_at = models.DateTimeField(_("queued at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    # Set when a worker claims the run: its checks have ended by then (runner.run_budget),
    # so a run still marked running well past it has lost its worker.
    deadline_at = models.DateTimeField(_("deadline"), null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), null=True, blank=True)
    # Counted from the stored results when the run finishes (runs.stored_counts), so the history
    # lists runs without counting every check result; empty while the run is queued or running.
    check_count = models.PositiveIntegerField(
        _("checks"), null=True, blank=True, editable=False, help_text=_("e.g. 12.")
    )
    failed_count = models.PositiveIntegerField(
        _("failed checks"), null=True, blank=True, editable=False, help_text=_("e.g. 2.")
    )
    task_id = models.CharField(max_length=64, blank=True)
    # The English words of the remarks below, or an exception's text (list_runs, grep).
    error = models.TextField(_("error"), blank=True)
    # What the run says beyond its checks (keys left out or held back, why it stopped) as codes
    # and parameters (routes.verification.remarks), rendered in the reader's language.
    remarks = models.JSONField(
        _("remarks"),
        default=list,
        blank=True,
        editable=False,
        help_text=_(
            'e.g. [{"code": "keys_withheld", "params": {"origins": ["https://a.example"]}}].'
        ),
    )
    # Root causes, most important first (routes.verification.causes): codes and parameters,
    # rendered in the reader's language when shown.
    causes = models.JSONField(
        _("causes"),
        default=list,
        blank=True,
        editable=False,
        help_text=_('e.g. [{"code": "upstream_down", "upstream": "cpa", "checks": [...]}].'),
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("verification run")
        verbose_name_plural = _("verification runs")
        indexes = [
            # The history's order, overall and within one job: a page reads the newest rows of
            # an index instead of sorting every run.
            models.Index(fields=["-created_at", "-id"], name="run_newest_idx"),
            models.Index(fields=["job", "-created_at", "-id"], name="run_job_newest_idx"),
            # Every status but the common one, newest first: the status filter, the scheduler's
            # busy jobs and the sweep; passed runs fill most pages of the newest-first index.
            # Partial, so that SQLite, which keeps no statistics, never reads every finished run
            # through it for the status board's `status IN (?, ?, ?)` per deployment: SQLite
            # takes it for `status = ?` (or an OR of those), never for IN.
            models.Index(
                fields=["status", "-created_at", "-id"],
                condition=Q(status="queued")
                | Q(status="running")
                | Q(status="failed")
                | Q(status="error"),
                name="run_not_passed_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "passed", "failed", "error"]),
                name="run_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.job.deployment.slug} {self.status}"

    def get_absolute_url(self) -> str:
        return reverse("admin:routes_verificationrun_change", args=[self.pk])


class CheckResult(models.Model):
    run = models.ForeignKey(
        VerificationRun, on_delete=models.CASCADE, related_name="results", verbose_name=_("run")
    )
    position = models.PositiveIntegerField(default=0)
    check_id = models.CharField(_("check"), max_length=40)
    method = models.CharField(_("method"), max_length=8)
    url = models.CharField(_("URL"), max_length=500)
    expected = models.CharField(_("expected"), max_length=200)
    status_code = models.PositiveIntegerField(_("status"), null=True, blank=True)
    latency_ms = models.PositiveIntegerField(_("latency (ms)"), null=True, blank=True)
    expected_upstream = models.CharField(_("expected upstream"), max_length=10, blank=True)
    observed_upstream = models.CharField(_("observed upstream"), max_length=10, blank=True)
    passed = models.BooleanField(_("passed"))
    diagnosis = models.TextField(_("diagnosis"), blank=True)
    excerpt = models.TextField(_("response excerpt"), blank=True)
    details = models.JSONField(_("details"), default=dict, blank=True)
    # The diagnosis and warning as code plus parameters (routes.verification.diagnoses), rendered
    # in the reader's language; `diagnosis` keeps the English words.
    diagnosis_code = models.CharField(
        _("diagnosis code"), max_length=40, blank=True, help_text=_("e.g. upstream_down.")
    )
    diagnosis_params = models.JSONField(_("diagnosis parameters"), default=dict, blank=True)
    warning_code = models.CharField(
        _("warning code"), max_length=40, blank=True, help_text=_("e.g. not_found_is_fine.")
    )
    warning_params = models.JSONField(_("warning parameters"), default=dict, blank=True)

    class Meta:
        ordering = ["run", "position", "id"]
        verbose_name = _("check result")
        verbose_name_plural = _("check results")

    def __str__(self) -> str:
        return f"{self.check_id}: {'pass' if self.passed else 'fail'}"


# The language of the words rows store (run texts, audit object names): pages render codes and
# map stored words into the reader's language.
STORED_LANGUAGE = "en"
# The actor label of what a management command or the task worker did without a user.
COMMAND_ACTOR = "command"


@functools.cache
def _key_role_names() -> tuple[re.Pattern[str], dict[str, tuple[str, bool]]]:
    """Return a pattern of every key role label in every language, and label -> (role, long).

    long: the role's choice label ("CPA API Key (normal API requests)"), else its short one.
    """
    names: dict[str, tuple[str, bool]] = {}
    for code, _name in settings.LANGUAGES:
        with translation.override(code):
            for role, short in keyring.ROLE_LABELS.items():
                names.setdefault(str(Key.Role(role).label), (role, True))
                names.setdefault(str(short), (role, False))
    # Longest first: a long label holds the short one.
    ordered = sorted(names, key=len, reverse=True)
    return re.compile("|".join(re.escape(name) for name in ordered)), names


class AuditEvent(models.Model):
    """One recorded action. Append-only: only superusers may prune."""

    created_at = models.DateTimeField(_("at"), auto_now_add=True, db_index=True)
    actor = user_link(_("actor"), editable=True)
    actor_label = models.CharField(
        _("actor"), max_length=150, blank=True, help_text=_("Username at the time, or 'command'.")
    )
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("team"),
    )
    action = models.CharField(_("action"), max_length=40, db_index=True)
    object_type = models.CharField(_("object type"), max_length=40, blank=True)
    object_id = models.CharField(_("object id"), max_length=64, blank=True)
    object_repr = models.CharField(_("object"), max_length=200, blank=True)
    changes = models.JSONField(_("changes"), default=dict, blank=True)
    ip = models.GenericIPAddressField(_("IP"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        # The list's order, alone and after each of its filters and the team scope: a page reads
        # the newest rows of one index however long the trail grows. (object_type, object_id)
        # is an object's History page and the changes a stale deployment form lists.
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="audit_newest_idx"),
            models.Index(fields=["team", "-created_at", "-id"], name="audit_team_newest_idx"),
            models.Index(fields=["actor", "-created_at", "-id"], name="audit_actor_newest_idx"),
            models.Index(fields=["action", "-created_at", "-id"], name="audit_action_newest_idx"),
            models.Index(
                fields=["object_type", "object_id", "-created_at", "-id"], name="audit_object_idx"
            ),
        ]

    def __str__(self) -> str:
        # Named as the trail's pages name it: key roles in the reader's language.
        return (
            f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_text()} {self.action} "
            f"{self.object_text()}"
        )

    def actor_text(self) -> str:
        """Return who acted: the username, or "command" (manage.py) in the active language."""
        if self.actor_id is None and self.actor_label == COMMAND_ACTOR:
            return pgettext("audit actor", "command")
        return self.actor_label

    def object_text(self) -> str:
        """Return what the event is about, key roles and run statuses in the active language.

        A key's events name it by its role's label, stored in English (rows stored before that:
        in the language of whoever acted); the label is mapped back to its role and shown through
        the role's choices, as the trail's reader reads them.
        """
        if self.action == "verification.run":
            # "#12 prod failed" (VerificationRun.__str__): the status as the reader reads it.
            run, _space, status = self.object_repr.rpartition(" ")
            if run and status in VerificationRun.Status.values:
                return f"{run} {VerificationRun.Status(status).label}"
            return self.object_repr
        if not self.action.startswith("key."):
            return self.object_repr
        pattern, names = _key_role_names()

        def label(match: re.Match[str]) -> str:
            role, long = names[match.group(0)]
            return str(Key.Role(role).label if long else keyring.ROLE_LABELS[role])

        return pattern.sub(label, self.object_repr)


# Notification channels, deliveries and alert states live in routes/alerts/ (issue 12).
from routes.alerts.models import (  # noqa: E402, F401
    DeploymentAlertState,
    NotificationChannel,
    NotificationDelivery,
)
from routes.nginx.records import NginxApply  # noqa: E402, F401  (applies to nginx, issue 13)
