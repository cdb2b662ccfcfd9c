"""The "Import nginx config" page: upload a hand-written site config, preview, then save.

Step 1 (POST with the file) reads and checks everything as a dry run and shows the preview:
what was recognised, the built-in routes, the overrides, what the console adds, what could not
be mapped (with line numbers) and the lint. Step 2 (POST of the preview's form) saves. Between
the two the page carries only the file's text, signed with the user's id, the team and the
options: the mapping is done again on the server from that text, never taken from the browser.
A GET shows the empty form and writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import messages
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from routes.admin.options import DeploymentPages
from routes.adoption import Adoption, adopt, config_limit, decode_config, display_name
from routes.models import Deployment, Team
from routes.nginx.adopt import strip_comments
from routes.permissions import Action, teams_where

if TYPE_CHECKING:
    from django.contrib.auth.models import User

SALT = "routes.admin.adopt_page"
# The preview's form is good for an hour: long enough to read it, short enough to go stale.
TOKEN_MAX_AGE = 3600


class UploadForm(forms.Form):
    """Step 1: the file and where it goes."""

    config = forms.FileField(
        label=_("Site config"),
        help_text=_("The nginx site file, e.g. /etc/nginx/conf.d/api.example.com.conf."),
    )
    team = forms.ModelChoiceField(label=_("Team"), queryset=Team.objects.none(), empty_label=None)
    slug = forms.SlugField(label=_("Slug"), max_length=50, help_text=_("Stable id, e.g. prod."))
    name = forms.CharField(
        label=_("Name"), max_length=100, required=False, help_text=_("Default: the slug.")
    )
    update = forms.BooleanField(
        label=_("Replace the definition of this team's deployment of that slug (never its keys)"),
        required=False,
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file_name = ""
        team = cast(forms.ModelChoiceField, self.fields["team"])
        team.queryset = teams_where(user, Action.CREATE).order_by("name")

    def clean_config(self) -> bytes:
        """Return the uploaded bytes, at most the limit plus one (a larger file is refused)."""
        upload = self.cleaned_data["config"]
        self.file_name = display_name(upload.name or "")
        limit = config_limit()
        if upload.size is not None and upload.size > limit:
            raise forms.ValidationError(
                _("The file is larger than %(limit)d bytes; a site config is a few KB."),
                code="too_large",
                params={"limit": limit},
            )
        return cast(bytes, upload.read(limit + 1))


def _token(
    adoption: Adoption, *, text: str, team: Team, name: str, update: bool, user_id: int
) -> str:
    """Return the signed form of what step 2 needs: the text and the choices of step 1."""
    values = {
        "text": text,
        "source": adoption.source,
        "slug": adoption.slug,
        "team": team.pk,
        "name": name,
        "update": update,
        "user": user_id,
    }
    return signing.dumps(values, salt=SALT, compress=True)


class AdoptPages(DeploymentPages):
    """The deployment admin's page that imports a hand-written nginx config."""

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("import-nginx/", wrap(self.adopt_view), name="routes_deployment_import_nginx"),
            *super().get_urls(),
        ]

    @method_decorator(require_http_methods(["GET", "POST"]))
    @method_decorator(sensitive_post_parameters())
    def adopt_view(self, request: HttpRequest) -> HttpResponse:
        """GET: the upload form. POST: the preview (dry run), or with the preview's token: save."""
        if not teams_where(request.user, Action.CREATE).exists():
            raise PermissionDenied
        # Only signed-in staff reach an admin view: the user is never anonymous here.
        user = cast("User", request.user)
        if request.method == "POST" and "token" in request.POST:
            return self._save(request, user)
        form = UploadForm(request.POST or None, request.FILES or None, user=request.user)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            adoption = adopt(
                data=data["config"],
                source=form.file_name,
                slug=data["slug"],
                team=data["team"],
                name=data["name"],
                update=data["update"],
                dry_run=True,
                as_user=user,
            )
            token = ""
            if adoption.ok:
                text, _reason = decode_config(data["config"])
                token = _token(
                    adoption,
                    # Comments may say anything; the statements and their lines are what counts.
                    text=strip_comments(text or ""),
                    team=data["team"],
                    name=data["name"],
                    update=data["update"],
                    user_id=user.pk,
                )
            return self._preview(request, adoption, token=token, team=data["team"])
        context = self.page_context(request, None, title=_("Import nginx config"), form=form)
        context["limit"] = config_limit()
        return TemplateResponse(request, "admin/routes/adopt/upload.html", context)

    def _save(self, request: HttpRequest, user: User) -> HttpResponse:
        """Step 2: check the token, import the text it carries for real."""
        upload_url = reverse("admin:routes_deployment_import_nginx")
        try:
            values = signing.loads(request.POST["token"], salt=SALT, max_age=TOKEN_MAX_AGE)
        except signing.BadSignature:
            self.message_user(
                request,
                gettext("The preview has expired or was changed; upload the file again."),
                messages.ERROR,
            )
            return HttpResponseRedirect(upload_url)
        if values.get("user") != user.pk:
            raise PermissionDenied
        team = teams_where(user, Action.CREATE).filter(pk=values.get("team")).first()
        if team is None:
            raise PermissionDenied
        adoption = adopt(
            data=str(values["text"]).encode("utf-8"),
            source=str(values["source"]),
            slug=str(values["slug"]),
            team=team,
            name=str(values["name"]),
            update=bool(values["update"]),
            as_user=user,
        )
        if not adoption.saved:
            return self._preview(request, adoption, token="", team=team)
        deployment = Deployment.objects.get(slug=adoption.slug)
        self.message_user(
            request,
            (
                gettext("Deployment %(name)s imported from %(file)s.")
                if adoption.created
                else gettext("Deployment %(name)s updated from %(file)s.")
            )
            % {"name": deployment, "file": adoption.source},
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:routes_deployment_change", args=[deployment.pk]))

    def _preview(
        self, request: HttpRequest, adoption: Adoption, *, token: str, team: Team
    ) -> HttpResponse:
        """Show what the file becomes and its problems; with a token, the form that saves it."""
        proposal = adoption.proposal
        overrides = (
            [
                {**values, "where": proposal.where(line)}
                for line, values in zip(proposal.override_lines, proposal.overrides, strict=True)
            ]
            if proposal is not None
            else []
        )
        context = self.page_context(
            request,
            None,
            title=_("Import nginx config: preview"),
            adoption=adoption,
            proposal=proposal,
            overrides=overrides,
            team=team,
            token=token,
            upload_url=reverse("admin:routes_deployment_import_nginx"),
        )
        return TemplateResponse(request, "admin/routes/adopt/preview.html", context)
