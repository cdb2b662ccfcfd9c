"""The admin's "view on site" shortcut (``/admin/r/<content type>/<id>/``), scoped to the user.

Django's own shortcut loads any object of any model for any staff user and redirects to its
``get_absolute_url()``: a 302 for another team's deployment and a 404 for a missing one tell
apart what exists. Here an object the user's ModelAdmin does not show is a 404, the same 404 as
an id that does not exist.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.contenttypes.models import ContentType
from django.contrib.contenttypes.views import shortcut
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.translation import gettext

from routes.admin.bulk import valid_pk


def view_on_site(request: HttpRequest, content_type_id: int, object_id: str) -> HttpResponse:
    """Redirect like Django's shortcut, for objects the user's admin shows; else 404."""
    content_type = None
    if valid_pk(ContentType, content_type_id):
        content_type = ContentType.objects.filter(pk=content_type_id).first()
    model = content_type.model_class() if content_type is not None else None
    model_admin = None
    if model is not None:
        try:
            model_admin = admin.site.get_model_admin(model)
        except NotRegistered:
            pass
    obj = None
    if model is not None and model_admin is not None and valid_pk(model, object_id):
        obj = model_admin.get_queryset(request).filter(pk=object_id).first()
    if model_admin is None or obj is None or not model_admin.has_view_permission(request, obj):
        raise Http404(gettext("No such object in your teams."))
    return shortcut(request, content_type_id, object_id)
