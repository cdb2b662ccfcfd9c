"""App configuration that names django-otp's TOTP app in the console's words (and languages)."""

from django.utils.translation import gettext_lazy as _
from django_otp.plugins.otp_totp.apps import DefaultConfig


class TwoFactorConfig(DefaultConfig):
    # Same app (label otp_totp, same migrations); only the sidebar heading changes.
    verbose_name = _("Two-factor authentication")
