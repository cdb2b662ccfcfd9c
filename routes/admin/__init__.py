"""The console's admin: each feature registers its own ModelAdmins and pages."""

from django.contrib import admin

from routes.admin import (
    audit_admin,  # noqa: F401  (audit trail: read-only, scoped, exports)
    base,  # noqa: F401  (deployments, teams, keys: registers the core admins)
    first_setup,  # noqa: F401  (owner-only reveal of CPAMP first-setup values)
    nginx_pages,  # noqa: F401  (nginx config, routes page, export history)
    otp_admin,  # noqa: F401  (two-factor login form and device enrolment)
    verification,  # noqa: F401  (runs, jobs, verify page, key tests)
    wizard,  # noqa: F401  (guided "New deployment" flow)
)

# The admin is the whole console: "/" only redirects here, so "View site" would lead nowhere new.
admin.site.site_url = None
