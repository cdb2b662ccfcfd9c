"""Extension points of the deployment admin, so feature modules plug in without editing it.

- ``deployment_urls``: functions ``(model_admin) -> list[URLPattern]`` added to the deployment
  admin's ``get_urls()`` (config page, routes page, verification, ...).
- ``deployment_actions``: admin actions (functions decorated with ``@admin.action``) added to the
  deployment changelist.
- ``deployment_links``: functions ``(request, deployment) -> list[tuple[label, url]]`` shown as
  buttons on the deployment change page (already permission-filtered by the function).
"""

from collections.abc import Callable

deployment_urls: list[Callable] = []
deployment_actions: list[Callable] = []
deployment_links: list[Callable] = []
