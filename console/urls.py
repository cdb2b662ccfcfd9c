"""URL configuration: the Django admin is the console."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.utils.functional import lazy
from django.views.generic import RedirectView

from routes.admin.shortcut import view_on_site

urlpatterns = [
    path("i18n/", include("django.conf.urls.i18n")),
    # Browsers ask for /favicon.ico whatever the page links. Not permanent, and the static URL
    # is looked up per request: its hashed name changes with each release.
    path("favicon.ico", RedirectView.as_view(url=lazy(static, str)("console/favicon.svg"))),
    # Ahead of admin.site.urls, so it replaces Django's unscoped "view on site" shortcut.
    path("admin/r/<int:content_type_id>/<path:object_id>/", admin.site.admin_view(view_on_site)),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]

# In the console's frame, with the reason and a way back; 500 stays Django's static handler.
handler403 = "routes.errors.permission_denied"
handler404 = "routes.errors.page_not_found"
