"""The console's admin: each feature registers its own ModelAdmins and pages."""

from routes.admin import base  # noqa: F401  (deployments, teams, keys: registers the core admins)
from routes.admin import audit_admin  # noqa: F401  (audit trail: read-only, scoped, exports)
from routes.admin import first_setup  # noqa: F401  (owner-only reveal of CPAMP first-setup values)
from routes.admin import nginx_pages  # noqa: F401  (nginx config, routes page, export history)
from routes.admin import otp_admin  # noqa: F401  (two-factor login form and device enrolment)
from routes.admin import wizard  # noqa: F401  (guided "New deployment" flow)
from routes.admin import verification  # noqa: F401  (runs, jobs, verify page, key tests)
