"""The console's admin: each feature module registers its ModelAdmins; the deployment admin
(routes.admin.base) is put together from the feature modules' page mixins."""

from django.contrib import admin

from routes.admin import (
    alerts,  # noqa: F401  (notification channels and their deliveries)
    applies,  # noqa: F401  (apply history: read-only, scoped)
    audit_admin,  # noqa: F401  (audit trail: read-only, scoped, exports)
    base,  # noqa: F401  (deployments, teams, keys: registers the core admins)
    nginx_pages,  # noqa: F401  (export history)
    otp_admin,  # noqa: F401  (two-factor login form and device enrolment)
    verification,  # noqa: F401  (runs, jobs)
)
from routes.admin.demo import install as install_demo_page
from routes.admin.stock import list_sections_by_role, name_stock_sections, record_stock_admins

# Django's and third-party admins record their changes in the one audit trail too.
record_stock_admins(admin.site)
# Their sections are listed for superusers (Users also for owners), in the user's language.
list_sections_by_role(admin.site)
name_stock_sections()
# The demo controls page, only while `make demo` runs (settings.CONSOLE_DEMO_CONTROL_URL).
install_demo_page(admin.site)

# The admin is the whole console: "/" only redirects here, so "View site" would lead nowhere new.
admin.site.site_url = None
