"""``{% console_dashboard as dashboard %}``: the admin index's data (see routes.admin.dashboard)."""

from django import template
from django.template import Context

from routes.admin.dashboard import Dashboard, build_dashboard

register = template.Library()


@register.simple_tag(takes_context=True)
def console_dashboard(context: Context) -> Dashboard:
    """Return the dashboard of the requesting user."""
    return build_dashboard(user=context["request"].user)
