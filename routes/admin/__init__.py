"""The console's admin: each feature registers its own ModelAdmins and pages."""

from routes.admin import base  # noqa: F401  (deployments, teams, keys: registers the core admins)
