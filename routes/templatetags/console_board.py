"""``{% dashboard_board dashboard as board %}`` and ``{% deployment_board deployment as board %}``.

The board's templates ask for their data themselves (see routes.admin.board), the way the index
asks for the dashboard's, so the pages that include them need no context of their own for it.
"""

from django import template

from routes.admin import board as status_board
from routes.admin.dashboard import Dashboard
from routes.models import Deployment

register = template.Library()


@register.simple_tag
def dashboard_board(dashboard: Dashboard) -> status_board.Board:
    """Return the board of the deployments the dashboard shows, drift badges included."""
    deployments = [row.deployment for group in dashboard.groups for row in group.rows]
    return status_board.dashboard_board(deployments=deployments)


@register.simple_tag
def deployment_board(deployment: Deployment) -> status_board.Board:
    """Return the board of one deployment, with its latency chart."""
    return status_board.deployment_board(deployment=deployment)
