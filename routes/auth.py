"""Login protection glue: client address, throttling backend, OTP login form, login audit.

django-axes counts failed logins per username and client IP together, and per client IP alone;
django-otp adds an optional TOTP second factor that becomes mandatory for owners of teams with
``require_owner_2fa``, and throttles wrong codes per device itself.

The login form asks for the code only of users who have a confirmed device, and only once their
password is right: the first step takes username and password, and when a code is needed the
session remembers the user (not the password) for a few minutes while the second step asks for
the code. A client that sends all three fields at once signs in in one step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from axes.backends import AxesStandaloneBackend
from axes.exceptions import AxesBackendPermissionDenied
from django import forms
from django.contrib import messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django_otp import devices_for_user
from django_otp.admin import OTPAdminAuthenticationForm
from django_otp.models import Device

from routes import audit
from routes.audit import client_ip
from routes.models import Role, Team

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import User

USERNAME_MAX = 150
# The session key of the second login step, and how long the password step stays good.
PENDING_2FA = "console_login_2fa"
PENDING_2FA_SECONDS = 300
# The value of the second step's hidden "step" field.
OTP_STEP = "otp"
# The trail's actor for failed logins: whoever typed the password is not known.
_ANONYMOUS = "anonymous"


class LoginThrottleBackend(AxesStandaloneBackend):
    """Refuse locked-out usernames and IPs; authentication itself is left to ModelBackend."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> AbstractBaseUser | None:
        """Return None (ModelBackend authenticates); raise when axes has locked the login out."""
        # Every login form passes the request. Only in-process callers (the test client's
        # login(), shell sessions) authenticate without one; there is no remote client to
        # throttle then, and axes would otherwise raise.
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def has_confirmed_device(user: User) -> bool:
    """Return True when user has at least one confirmed OTP device."""
    return any(True for _ in devices_for_user(user, confirmed=True))


class ConsoleLoginForm(OTPAdminAuthenticationForm):
    """The admin login form: the OTP token is required only of users with a confirmed device.

    ``otp_step`` says whether the page asks for the code (the password step is done) and
    ``otp_username`` whose code it is.
    """

    otp_token = forms.CharField(
        label=_("Two-factor code"),
        required=False,
        max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
        help_text=_("The 6-digit code your authenticator app shows now."),
    )
    otp_error_messages = {
        **OTPAdminAuthenticationForm.otp_error_messages,
        "token_required": _(
            "This account uses two-factor authentication: enter the code from your "
            "authenticator app."
        ),
        "invalid_token": _("The two-factor code is wrong or has expired; try the next code."),
    }

    def __init__(self, request: HttpRequest | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        self.otp_step = False
        self.otp_username = ""
        # The second step posts the code alone: the password was checked by the first.
        if self.data.get("step") == OTP_STEP:
            self.fields["username"].required = False
            self.fields["password"].required = False

    def clean(self) -> dict[str, Any]:
        """Return the cleaned data; the OTP code is checked only for users with a device."""
        if self.data.get("step") == OTP_STEP:
            user = self._pending_user()
        else:
            self.cleaned_data = AdminAuthenticationForm.clean(self)
            user = self.get_user()
        if user is not None and has_confirmed_device(user):
            self._remember(user)
            try:
                self.clean_otp(user)
            except forms.ValidationError as error:
                if error.code == "invalid_token":
                    # django-otp throttles the guessing of codes: each wrong code doubles the
                    # wait before the device accepts another (OTP_TOTP_THROTTLE_FACTOR). This
                    # signal only adds the failure to the trail and to axes's counts of the
                    # username and address, like a wrong password.
                    user_login_failed.send(
                        sender=__name__,
                        credentials={"username": user.get_username(), "reason": "otp"},
                        request=self.request,
                    )
                raise
            self._forget()
        return self.cleaned_data

    def shown_errors(self) -> list[str]:
        """Return the form-wide errors to show; on the code step, "enter the code" is its prompt."""
        return [
            message
            for error in self.non_field_errors().as_data()
            if not (self.otp_step and error.code == "token_required")
            for message in error.messages
        ]

    def _session(self) -> Any:
        return getattr(self.request, "session", None)

    def _remember(self, user: User) -> None:
        """Keep who passed the password step (never the password) for the code step."""
        self.otp_step, self.otp_username = True, user.get_username()
        self.fields["otp_token"].widget.attrs["autofocus"] = True
        session = self._session()
        if session is not None:
            session[PENDING_2FA] = {
                "user": user.pk,
                "backend": getattr(user, "backend", ""),
                "hash": user.get_session_auth_hash(),
                "at": int(time.time()),
            }

    def _forget(self) -> None:
        session = self._session()
        if session is not None:
            session.pop(PENDING_2FA, None)

    def _pending_user(self) -> User:
        """Return the user of a fresh password step, else raise: the code step starts over."""
        session = self._session()
        stored = session.get(PENDING_2FA) if session is not None else None
        pending: dict[str, Any] = stored if isinstance(stored, dict) else {}
        user = None
        if pending and time.time() - pending.get("at", 0) < PENDING_2FA_SECONDS:
            User = get_user_model()
            user = User._default_manager.filter(pk=pending.get("user") or 0).first()
        # A password changed since the first step voids it, as it voids sessions.
        if user is None or user.get_session_auth_hash() != pending.get("hash"):
            self._forget()
            raise forms.ValidationError(
                _("Your sign-in took too long; enter your username and password again."),
                code="expired",
            )
        self._refuse_when_locked_out(user)
        self.confirm_login_allowed(user)
        user.backend = pending.get("backend") or "django.contrib.auth.backends.ModelBackend"
        self.user_cache = user
        self.cleaned_data["username"] = user.get_username()
        return user

    def _refuse_when_locked_out(self, user: User) -> None:
        """Raise when axes has locked the username or address out, as the password step would."""
        try:
            LoginThrottleBackend().authenticate(self.request, username=user.get_username())
        except AxesBackendPermissionDenied:
            # As django.contrib.auth.authenticate does for a refusing backend: the failure is
            # recorded, and axes's middleware answers with its lockout page.
            user_login_failed.send(
                sender=__name__,
                credentials={"username": user.get_username()},
                request=self.request,
            )
            raise forms.ValidationError(
                self.error_messages["invalid_login"],
                code="invalid_login",
                params={"username": self.username_field.verbose_name},
            ) from None

    def _chosen_device(self, user: User) -> Device | None:
        """Return the device to verify the code with: the chosen one, else the only one."""
        device = super()._chosen_device(user)
        if device is None:
            # With a single device there is nothing to choose; pick it (locked for verify).
            candidates = list(devices_for_user(user, confirmed=True))
            if len(candidates) == 1:
                device = Device.from_persistent_id(candidates[0].persistent_id, for_verify=True)
        return device


def owner_2fa_teams(user: User | AnonymousUser) -> list[Team]:
    """Return the teams that require two-factor of owners where user is an owner."""
    if isinstance(user, AnonymousUser):  # the one kind of user that is not authenticated
        return []
    return list(
        Team.objects.filter(
            require_owner_2fa=True,
            memberships__user=user,
            memberships__role=Role.OWNER,
        ).order_by("name")
    )


def is_verified(user: User | AnonymousUser) -> bool:
    """Return True when user's session was verified with an OTP device."""
    check = getattr(user, "is_verified", None)
    return bool(callable(check) and check())


def pending_2fa_teams(user: User | AnonymousUser) -> list[Team]:
    """Return the teams whose owner-level actions user cannot use until signing in with OTP."""
    if getattr(user, "is_superuser", False) or is_verified(user):
        return []
    return owner_2fa_teams(user)


def enrol_url() -> str:
    """Return the URL of the two-factor enrolment page."""
    return reverse("admin:otp_totp_totpdevice_enrol")


# --- Audit of logins ----------------------------------------------------------------------------


@receiver(user_logged_in, dispatch_uid="routes.auth.logged_in")
def record_login(sender: object, request: HttpRequest | None, user: User, **kwargs: object) -> None:
    """Record a login, and tell owners of 2FA teams without a verified session to enrol."""
    verified = getattr(user, "otp_device", None) is not None
    audit.record(
        action="login",
        actor=user,
        obj=user,
        changes={"otp": verified},
        ip=client_ip(request),
    )
    if request is None or verified or user.is_superuser:
        return
    teams = owner_2fa_teams(user)
    if teams:
        messages.warning(
            request,
            _(
                "%(teams)s require owners to use two-factor authentication. Until you sign in "
                "with an authenticator code, owner actions (keys, members, first-setup values) "
                "are refused. Enrol a device under Two-factor devices, then sign in again."
            )
            % {"teams": ", ".join(t.name for t in teams)},
            fail_silently=True,
        )


@receiver(user_logged_out, dispatch_uid="routes.auth.logged_out")
def record_logout(
    sender: object, request: HttpRequest | None, user: User | None, **kwargs: object
) -> None:
    """Record a logout (user is None when nobody was logged in)."""
    if user is None:
        return
    audit.record(action="logout", actor=user, obj=user, ip=client_ip(request))


def _attempted_username(credentials: dict[str, Any]) -> str:
    field = get_user_model().USERNAME_FIELD
    value = credentials.get(field) or credentials.get("username") or ""
    return str(value)[:USERNAME_MAX]


@receiver(user_login_failed, dispatch_uid="routes.auth.login_failed")
def record_login_failed(
    sender: object,
    credentials: dict[str, Any] | None,
    request: HttpRequest | None = None,
    **kwargs: object,
) -> None:
    """Record a failed login with the attempted username only (Django already hides the rest)."""
    username = _attempted_username(credentials or {})
    User = get_user_model()
    target = (
        User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
        if username
        else None
    )
    audit.record(
        action="login.failed",
        actor_label=_ANONYMOUS,
        obj=target,
        object_repr=username,
        changes={
            "username": username,
            "locked_out": bool(getattr(request, "axes_locked_out", False)),
            **({"reason": "otp"} if (credentials or {}).get("reason") == "otp" else {}),
        },
        ip=client_ip(request),
    )
