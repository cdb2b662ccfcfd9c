"""Settings for the CPA gateway console.

Every setting has a working local default (SQLite under ``data/``, generated secrets in a
git-ignored file); production values come from the environment. ``.env.example`` lists them all.
"""

import json
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from csp.constants import NONE, SELF
from django.utils.translation import gettext_lazy as _

from routes.files import atomic_write

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env is read when present; the real environment always wins.
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

DATA_DIR = Path(env("CONSOLE_DATA_DIR", default=str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _local_secret(name: str, factory: Callable[[], str]) -> str:
    """Return the named secret from the git-ignored local secrets file, generating it once."""
    path = DATA_DIR / "local-secrets.json"
    try:
        stored = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        stored = {}
    if name not in stored:
        stored[name] = factory()
        atomic_write(path, json.dumps(stored, indent=2, sort_keys=True), mode=0o600)
    return stored[name]


SECRET_KEY = env("SECRET_KEY", default=None) or _local_secret(
    "SECRET_KEY", lambda: secrets.token_urlsafe(50)
)
# Comma-separated Fernet keys; the first encrypts, all decrypt (MultiFernet). Rotate with
# `manage.py rotate_encryption_key`.
CONSOLE_ENCRYPTION_KEYS = env.list("CONSOLE_ENCRYPTION_KEYS", default=[]) or [
    _local_secret("CONSOLE_ENCRYPTION_KEYS", lambda: Fernet.generate_key().decode())
]
# HMAC key for key fingerprints. Separate from the encryption keys so that rotating those does
# not change fingerprints.
CONSOLE_FINGERPRINT_KEY = env("CONSOLE_FINGERPRINT_KEY", default=None) or _local_secret(
    "CONSOLE_FINGERPRINT_KEY", lambda: secrets.token_urlsafe(32)
)

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_tasks",
    "django_tasks_db",
    "django_otp",
    "routes.otp_apps.TwoFactorConfig",  # django_otp.plugins.otp_totp, renamed
    "axes",
    "csp",  # only for django-csp's system checks on CONTENT_SECURITY_POLICY
    "routes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The header middlewares sit before WhiteNoise, so static files carry the same headers as
    # pages: WhiteNoise answers those requests itself and skips everything below it.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "routes.middleware.PermissionsPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    # Who is acting and from where, for workflows and the audit trail (routes/context.py).
    "routes.middleware.ActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # After CSRF: a changelist POST with an impossible selected id is a 400, not a 500.
    "routes.admin.bulk.ActionSelectionMiddleware",
    # Last, so it turns a lockout flagged during authentication into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "console.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "console.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'console.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the task worker share the file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Login protection and transport ------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    # Refuses locked-out users and IPs before the password is even checked.
    "routes.auth.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# django-axes: failed logins are counted per username and client IP together, and per client
# IP alone. Not per username alone: five wrong passwords from anywhere would lock its owner out
# from everywhere. An address that guesses at many usernames is still locked.
AXES_ENABLED = env.bool("CONSOLE_LOGIN_THROTTLING", default=True)
AXES_FAILURE_LIMIT = env.int("CONSOLE_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("CONSOLE_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
# Not reset on success: an attacker with an account of their own could otherwise clear the
# per-IP counter between guesses at other accounts.
AXES_RESET_ON_SUCCESS = False
AXES_CLIENT_IP_CALLABLE = "routes.audit.client_ip"
AXES_LOCKOUT_TEMPLATE = "admin/routes/security/locked_out.html"
AXES_VERBOSE = False
# Reverse proxies (IP addresses) whose X-Forwarded-For is believed, e.g. 127.0.0.1 when the
# console itself sits behind a local nginx. Empty: the TCP peer is the client.
CONSOLE_TRUSTED_PROXIES = env.list("CONSOLE_TRUSTED_PROXIES", default=[])
# django-otp: the issuer shown by authenticator apps.
OTP_TOTP_ISSUER = env("CONSOLE_OTP_ISSUER", default="CPA gateway console")

# One switch for a console served over HTTPS by a TLS-terminating proxy.
CONSOLE_BEHIND_TLS = env.bool("CONSOLE_BEHIND_TLS", default=False)
if CONSOLE_BEHIND_TLS:
    SECURE_SSL_REDIRECT = True
    # The proxy must set this header itself (and drop any client copy), e.g. nginx
    # `proxy_set_header X-Forwarded-Proto $scheme;`.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("CONSOLE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("CONSOLE_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = False
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    LANGUAGE_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True

# Security headers. Django sets X-Frame-Options, nosniff, Referrer-Policy, COOP and (behind TLS)
# HSTS; django-csp sets the policy below; routes.middleware adds Permissions-Policy, which Django
# has no setting for.
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# The admin and the console's own pages load scripts and styles from 'self' only; no inline
# script runs anywhere, so no nonce is needed. style-src stays 'self' too: Django's admin
# templates carry no inline style attributes, and its JavaScript changes styles through the
# CSSOM, which CSP allows.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    },
}

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGIN_URL = "admin:login"

TASKS = {
    "default": {
        "BACKEND": env("CONSOLE_TASK_BACKEND", default="django_tasks_db.DatabaseBackend"),
    }
}

# --- Product settings ---------------------------------------------------------------------
# Directory `export_nginx` writes to when --output-dir is not given.
CONSOLE_EXPORT_DIR = Path(env("CONSOLE_EXPORT_DIR", default=str(DATA_DIR / "nginx")))
# nginx binary used for `nginx -t` checks; empty string disables them.
CONSOLE_NGINX_BIN = env("CONSOLE_NGINX_BIN", default="nginx")
# Seconds one `nginx -t` may take, plus 0.05 s per file it includes; then the check is reported
# as not finished.
CONSOLE_NGINX_CHECK_TIMEOUT = env.int("CONSOLE_NGINX_CHECK_TIMEOUT", default=60)
# Site files per `nginx -t` run: larger exports are checked in parts (each with the shared file),
# because one run over thousands of sites takes minutes and gigabytes of memory.
CONSOLE_NGINX_CHECK_PART = env.int("CONSOLE_NGINX_CHECK_PART", default=500)
# Put a catch-all server (`return 444` for Host names no deployment serves) into the shared file
# on every port the exported sites use. Only for an export directory whose nginx has no other
# default server on those ports: nginx refuses two. `export_nginx --default-server` does it once.
CONSOLE_NGINX_DEFAULT_SERVER = env.bool("CONSOLE_NGINX_DEFAULT_SERVER", default=False)
# Seconds gixy-next (when installed) may take to lint one deployment's config on the config page.
CONSOLE_GIXY_TIMEOUT = env.float("CONSOLE_GIXY_TIMEOUT", default=20.0)
# Largest definitions file `import_deployments` reads, in bytes.
CONSOLE_IMPORT_MAX_BYTES = env.int("CONSOLE_IMPORT_MAX_BYTES", default=50 * 1024 * 1024)
# Seconds one match of a user's location regex may take (lint, simulator, routes tester).
CONSOLE_REGEX_TIMEOUT = env.float("CONSOLE_REGEX_TIMEOUT", default=0.2)
# Verification runs kept per job; older ones are pruned by `manage.py prune_runs`.
CONSOLE_RUNS_KEPT = env.int("CONSOLE_RUNS_KEPT", default=50)
# Exported configs kept per deployment (the export history); older ones are pruned by
# `manage.py prune_exports`. At least one stays: the next export compares with it.
CONSOLE_EXPORTS_KEPT = env.int("CONSOLE_EXPORTS_KEPT", default=20)
# Base URLs on link-local and cloud-metadata addresses (169.254.0.0/16, fe80::/10,
# fd00:ec2::254) are refused: a check sent there reads the host's instance credentials. Turn this
# on only for a deployment that really is reached through such an address.
CONSOLE_ALLOW_LINK_LOCAL = env.bool("CONSOLE_ALLOW_LINK_LOCAL", default=False)
# At least this many parallel requests in one verification run (a run always gets one per planned
# check, so its checks go out in one wave).
CONSOLE_VERIFY_POOL = env.int("CONSOLE_VERIFY_POOL", default=8)
# Grace in seconds past a run's own deadline (when its checks have ended at the latest:
# routes.verification.runner.run_budget, stored when a worker claims it) after which a run still
# running counts as dead, its worker stopped. It covers storing the results; a run claimed
# without a stored deadline counts from its start.
CONSOLE_RUN_STALE_AFTER = env.int("CONSOLE_RUN_STALE_AFTER", default=60)

# Set by `make demo` only (tests/fakes/demo.py): the loopback URL of its emulators' control
# server. When set, the admin has a demo page that stops and starts CPAMP; empty: no such page.
CONSOLE_DEMO_CONTROL_URL = env("CONSOLE_DEMO_CONTROL_URL", default="")

# --- Apply (routes/nginx/apply.py, `manage.py apply_nginx`) --------------------------------
# The directory the live nginx includes (e.g. /etc/nginx/conf.d for `include conf.d/*.conf;`):
# apply writes there, tests the live configuration, reloads it, and restores it on failure.
CONSOLE_NGINX_DIR = Path(env("CONSOLE_NGINX_DIR", default=str(CONSOLE_EXPORT_DIR)))
# The commands that test and reload the live nginx, split like a shell would (shlex) but run
# without one, e.g. `docker exec cpa-nginx nginx -t` for nginx in a container.
CONSOLE_NGINX_TEST_CMD = env("CONSOLE_NGINX_TEST_CMD", default="nginx -t")
CONSOLE_NGINX_RELOAD_CMD = env("CONSOLE_NGINX_RELOAD_CMD", default="nginx -s reload")
# Seconds each of those commands may take before it is stopped.
CONSOLE_NGINX_COMMAND_TIMEOUT = env.float("CONSOLE_NGINX_COMMAND_TIMEOUT", default=60.0)
# Seconds after a reload within which every deployment must answer with its new config hash.
CONSOLE_APPLY_CONFIRM_TIMEOUT = env.float("CONSOLE_APPLY_CONFIRM_TIMEOUT", default=20.0)
# Seconds an apply waits for another apply or export into the same directory to finish.
CONSOLE_APPLY_LOCK_TIMEOUT = env.float("CONSOLE_APPLY_LOCK_TIMEOUT", default=30.0)
# Tests only: stop an apply after this step (e.g. written) until it is killed.
CONSOLE_APPLY_PAUSE_AT = env("CONSOLE_APPLY_PAUSE_AT", default="")

# --- Notifications (routes/alerts/) ----------------------------------------------------------
# Email channels go through Django's email backend: EMAIL_URL such as smtp://host:25,
# smtp+tls://user:password@host:587 or smtp+ssl://…:465; the default prints mail to the console.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="CPA gateway console <console@localhost>")
# Where the console is reached from outside: notifications link to runs under it.
CONSOLE_BASE_URL = env("CONSOLE_BASE_URL", default="http://127.0.0.1:8000")
# Seconds before each retry of a failed delivery; one attempt plus one per delay (3 in all).
CONSOLE_NOTIFY_RETRY_DELAYS = [
    float(s) for s in env.list("CONSOLE_NOTIFY_RETRY_DELAYS", default=["30", "120"])
]
# Seconds a webhook POST may take.
CONSOLE_NOTIFY_TIMEOUT = env.float("CONSOLE_NOTIFY_TIMEOUT", default=10.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "null": {"class": "logging.NullHandler"},
    },
    "filters": {
        "one_line_permission_denied": {"()": "routes.log_filters.OneLinePermissionDenied"},
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # A refused request (403) is one line with its reason, not a traceback.
        "django.request": {"filters": ["one_line_permission_denied"]},
        # Apprise logs URLs, tokens included: its lines go nowhere, and routes.alerts.deliver
        # keeps its warnings, redacted, with the delivery (its debug lines are never made).
        "apprise": {"handlers": ["null"], "propagate": False, "level": "WARNING"},
        # At DEBUG urllib3 logs each request line, a webhook's token in its path.
        "urllib3": {"level": "INFO"},
    },
}
