"""Two-factor sign-in: the OTP-aware login form and a self-service TOTP device admin.

Every staff user may enrol authenticator apps for their own account (the secret is shown as text
and as an otpauth:// URI; no QR service, nothing leaves the server). Superusers see and remove
everyone's devices, which is how a lost phone is recovered.
"""

from __future__ import annotations

from base64 import b32encode
from typing import Any

import django_otp
from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django_otp.plugins.otp_totp.models import TOTPDevice

from routes import audit
from routes.admin.options import ConsoleAdmin
from routes.auth import ConsoleLoginForm, owner_2fa_teams, pending_2fa_teams
from routes.models import Deployment

# The default admin site stays the one instance every feature registers on; it only gets the
# OTP-aware form (the token is asked of users who have a device) and a template that shows it.
admin.site.login_form = ConsoleLoginForm
admin.site.login_template = "admin/routes/security/login.html"


class EnrolStartForm(forms.Form):
    name = forms.CharField(
        label=_("Device name"),
        max_length=64,
        initial=_("Authenticator"),
        help_text=_("So you can tell your devices apart, e.g. work phone."),
    )


class EnrolConfirmForm(forms.Form):
    token = forms.RegexField(
        label=_("Code from the app"),
        regex=r"^\s*\d{6}\s*$",
        error_messages={"invalid": _("Enter the 6-digit code your app shows.")},
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


def _grouped_secret(device: TOTPDevice) -> str:
    secret = b32encode(device.bin_key).decode()
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


if admin.site.is_registered(TOTPDevice):
    admin.site.unregister(TOTPDevice)


@admin.register(TOTPDevice)
class TwoFactorDeviceAdmin(ConsoleAdmin):
    list_display = ("name", "user", "confirmed", "created_at", "last_used_at")
    list_filter = ("confirmed",)
    list_select_related = ("user",)
    search_fields = ("name", "user__username")
    # The key is never shown once the device exists.
    fields = ("name", "user", "confirmed", "created_at", "last_used_at")
    readonly_fields = fields
    change_list_template = "admin/routes/security/device_change_list.html"
    # Devices are added through the enrolment page, which proves the app works first, and
    # never edited: the (empty) roles table refuses add and change to everyone.
    roles = {}

    def get_queryset(self, request: HttpRequest) -> QuerySet[TOTPDevice]:
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(user_id=request.user.pk)

    # Not by team: a device belongs to one user, and every staff user manages their own.
    def _own(self, request: HttpRequest, obj: TOTPDevice | None) -> bool:
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        return obj is None or user.is_superuser or obj.user_id == user.pk

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._own(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._own(request, obj)

    def delete_model(self, request: HttpRequest, obj: TOTPDevice) -> None:
        self._record_removal([obj])
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TOTPDevice]) -> None:
        self._record_removal(list(queryset.select_related("user")))
        super().delete_queryset(request, queryset)

    def _record_removal(self, devices: list[TOTPDevice]) -> None:
        for device in devices:
            audit.record(action="otp.remove", obj=device.user, changes={"device": device.name})

    def get_urls(self) -> list[URLPattern]:
        urls = [
            path(
                "enrol/",
                self.admin_site.admin_view(self.enrol_view),
                name="otp_totp_totpdevice_enrol",
            ),
        ]
        return urls + super().get_urls()

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "enrol_url": reverse("admin:otp_totp_totpdevice_enrol"),
            "required_by": owner_2fa_teams(request.user),
        }
        return super().changelist_view(request, extra_context=extra_context)

    @method_decorator(never_cache)
    def enrol_view(self, request: HttpRequest) -> HttpResponse:
        """Enrol a TOTP device for the signed-in user: name it, then prove a code from it."""
        user = request.user
        pending = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()
        start_form = EnrolStartForm()
        confirm_form = EnrolConfirmForm()
        if request.method == "POST":
            step = request.POST.get("step")
            if step == "start":
                start_form = EnrolStartForm(request.POST)
                if start_form.is_valid():
                    # One pending device at a time: a fresh start discards an unconfirmed secret.
                    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
                    TOTPDevice.objects.create(
                        user=user, name=start_form.cleaned_data["name"], confirmed=False
                    )
                    return HttpResponseRedirect(request.path)
            elif step == "cancel":
                TOTPDevice.objects.filter(user=user, confirmed=False).delete()
                return HttpResponseRedirect(request.path)
            elif step == "confirm" and pending is not None:
                confirm_form = EnrolConfirmForm(request.POST)
                if confirm_form.is_valid():
                    if pending.verify_token(confirm_form.cleaned_data["token"].strip()):
                        pending.confirmed = True
                        pending.save(update_fields=["confirmed"])
                        # The code just proved possession: this session counts as verified.
                        django_otp.login(request, pending)
                        audit.record(
                            action="otp.enrol", obj=pending.user, changes={"device": pending.name}
                        )
                        messages.success(
                            request,
                            gettext(
                                "Two-factor device “%(name)s” is active. From now on, sign in "
                                "with your password and a code from the app."
                            )
                            % {"name": pending.name},
                        )
                        return HttpResponseRedirect(reverse("admin:otp_totp_totpdevice_changelist"))
                    confirm_form.add_error(
                        "token",
                        _(
                            "That code does not match; check the phone's clock and try the "
                            "next one."
                        ),
                    )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Enrol a two-factor device"),
            "pending": pending,
            "secret": _grouped_secret(pending) if pending else "",
            "otpauth_uri": pending.config_url if pending else "",
            "start_form": start_form,
            "confirm_form": confirm_form,
            "required_by": owner_2fa_teams(user),
            "verified": bool(getattr(user, "otp_device", None)),
        }
        return TemplateResponse(request, "admin/routes/security/enrol.html", context)


def enrol_link(request: HttpRequest, deployment: Deployment) -> list[tuple[str, str]]:
    """Point owners of 2FA-only teams without a verified session to the enrolment page."""
    if any(team.pk == deployment.team_id for team in pending_2fa_teams(request.user)):
        return [
            (
                str(_("Enrol two-factor to manage keys")),
                reverse("admin:otp_totp_totpdevice_enrol"),
            )
        ]
    return []
