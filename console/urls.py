"""URL configuration: the Django admin is the console."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from routes.admin.shortcut import view_on_site

urlpatterns = [
    path("i18n/", include("django.conf.urls.i18n")),
    # Ahead of admin.site.urls, so it replaces Django's unscoped "view on site" shortcut.
    path("admin/r/<int:content_type_id>/<path:object_id>/", admin.site.admin_view(view_on_site)),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
