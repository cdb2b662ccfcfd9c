"""The console's 403 and 404 pages: in the admin's frame, with the reason and a way back.

The 500 page is templates/500.html, rendered by Django's own handler without a request or a
database, so it stays a static page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.functional import Promise
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext

from routes.permissions import RoleRequired

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise


def _back_url(request: HttpRequest) -> str:
    """Return the page the user came from when it is on this site, else ""."""
    referer = request.META.get("HTTP_REFERER", "")
    same_site = url_has_allowed_host_and_scheme(
        referer, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return referer if referer and same_site and referer != request.build_absolute_uri() else ""


def _frame(request: HttpRequest, *, title: StrOrPromise) -> dict[str, Any]:
    """Return the admin's context (header, user links, language switcher) for an error page."""
    context: dict[str, Any] = {}
    if getattr(request, "user", None) is not None:
        context.update(admin.site.each_context(request))
    return {
        **context,
        "title": title,
        "index_url": reverse("admin:index"),
        "back_url": _back_url(request),
    }


def explain(refusal: RoleRequired, *, superuser: bool = False) -> tuple[str, str]:
    """Return (what the page needs, what the user has) as sentences, from refusal."""
    team = refusal.team.name if refusal.team is not None else ""
    if refusal.action is None:
        needs = gettext("Nobody may do this here: the console keeps these records read-only.")
    elif refusal.required is None:
        needs = gettext("Only the server administrator (a superuser) may do this.")
    elif refusal.otp:
        needs = gettext(
            "Your role is enough, but team %(team)s requires owners to sign in with a "
            "two-factor code."
        ) % {"team": team}
    elif team:
        needs = gettext("This page needs the %(role)s role in team %(team)s.") % {
            "role": refusal.required.label,
            "team": team,
        }
    else:
        needs = gettext("This page needs the %(role)s role in a team.") % {
            "role": refusal.required.label
        }
    if superuser:
        has = gettext("You are a superuser.")
    elif refusal.actual is None:
        has = gettext("You have no role in a team that this page belongs to.")
    elif team:
        has = gettext("Your role in team %(team)s is %(role)s.") % {
            "team": team,
            "role": refusal.actual.label,
        }
    else:
        has = gettext("Your highest role in your teams is %(role)s.") % {
            "role": refusal.actual.label
        }
    return needs, has


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403: the refusal in the console's frame, with the role needed and the role held."""
    context = _frame(request, title=gettext("You may not open this page"))
    if isinstance(exception, RoleRequired):
        user = getattr(request, "user", None)
        needs, has = explain(exception, superuser=bool(getattr(user, "is_superuser", False)))
        context.update({"needs": needs, "has": has, "otp": exception.otp})
        if exception.otp:
            context["enrol_url"] = reverse("admin:otp_totp_totpdevice_enrol")
    return render(request, "admin/routes/errors/403.html", context, status=403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: "not found" in the console's frame; another team's object reads the same."""
    context = _frame(request, title=gettext("Page not found"))
    # Only the console's own messages ("No such deployment in your teams."); the resolver's
    # are a dict of tried patterns, which is no reading for users.
    message = exception.args[0] if isinstance(exception, Http404) and exception.args else ""
    context["message"] = str(message) if isinstance(message, str | Promise) else ""
    return render(request, "admin/routes/errors/404.html", context, status=404)
