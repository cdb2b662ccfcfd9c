"""The live status board and the drift badges in the admin.

The dashboard and each deployment's verification page show a heartbeat bar of the last runs,
uptime over 24 h, 7 d and 30 d, the latest latency and a latency chart per check; the pages poll
the board's JSON (static/console/board.js) and redraw in place. The numbers come from
routes.verification.history, a fixed number of queries for any number of deployments; the drift
badges come from routes.nginx.drift.

Both JSON views are GET only and write nothing: the dashboard's lists the deployments the
dashboard shows (the user's teams only), a deployment's answers 404 for another team's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.safestring import SafeString
from django.utils.timezone import localtime
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET

from routes.admin.dashboard import MAX_DEPLOYMENTS
from routes.admin.options import DeploymentPages, visible_deployment
from routes.models import Deployment, VerificationRun
from routes.nginx.drift import Drift, drift_for, drift_of
from routes.verification import history

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    from routes.permissions import AnyUser

WINDOW_LABELS: dict[str, StrOrPromise] = {"24h": _("24 h"), "7d": _("7 d"), "30d": _("30 d")}
# A run id no database reaches: reversed once, then swapped for each run's id.
_RUN_ID_SLOT = 987654321987


@dataclass(frozen=True)
class Beat:
    """One run of a heartbeat bar, ready to draw: its colour, hover text and link."""

    id: int
    status: str
    title: str
    url: str
    finished_at: str
    duration_ms: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "title": self.title,
            "url": self.url,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True)
class Uptime:
    """Uptime over one window: the percentage (None without runs) and how it reads."""

    window: str
    label: StrOrPromise
    percent: float | None
    text: str


@dataclass
class BoardRow:
    """One deployment on the board."""

    deployment: Deployment
    beats: list[Beat]
    uptime: list[Uptime]
    latency_ms: int | None
    latency_text: str
    verify_url: str
    drift: Drift | None = None

    @property
    def empty_slots(self) -> range:
        """Return the places of the bar no run fills yet (drawn grey, oldest side)."""
        return range(max(0, history.HEARTBEATS - len(self.beats)))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.deployment.pk,
            "slug": self.deployment.slug,
            "name": self.deployment.name,
            "verify_url": self.verify_url,
            "heartbeats": [beat.as_json() for beat in self.beats],
            "uptime": {u.window: u.percent for u in self.uptime},
            "uptime_text": {u.window: u.text for u in self.uptime},
            "latency_ms": self.latency_ms,
            "latency_text": self.latency_text,
        }


@dataclass
class Board:
    """The board of some deployments, with the latency chart of one of them."""

    rows: list[BoardRow]
    url: str
    chart_deployment: Deployment | None = None
    chart: history.LatencySeries | None = None
    limit: int = history.HEARTBEATS
    windows: list[tuple[str, StrOrPromise]] = field(
        default_factory=lambda: list(WINDOW_LABELS.items())
    )

    def chart_json(self) -> dict[str, Any] | None:
        """Return the chart as uPlot wants it: x as epoch seconds, one series per check."""
        if self.chart_deployment is None or self.chart is None:
            return None
        return {
            "deployment": self.chart_deployment.pk,
            "slug": self.chart_deployment.slug,
            "runs": [run.id for run in self.chart.runs],
            "x": [run.finished_at.timestamp() for run in self.chart.runs],
            "series": [
                {"check": check_id, "latency_ms": values}
                for check_id, values in self.chart.checks.items()
            ],
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "deployments": [row.as_json() for row in self.rows],
            "chart": self.chart_json(),
        }


def percent_text(percent: float | None) -> str:
    """Return an uptime as it reads: "99.5%", "100%", or a dash without runs."""
    if percent is None:
        return "—"
    return f"{percent:.2f}".rstrip("0").rstrip(".") + "%"


def latency_text(latency_ms: int | None) -> str:
    """Return a latency as it reads: "120 ms", or a dash."""
    return "—" if latency_ms is None else gettext("%(ms)d ms") % {"ms": latency_ms}


class _RunLinks:
    """Run page URLs and hover texts, reversing the run page's URL once for all runs."""

    def __init__(self) -> None:
        self.pattern = reverse("admin:routes_verificationrun_change", args=[_RUN_ID_SLOT])
        self.labels = dict(VerificationRun.Status.choices)

    def beat(self, run: history.Heartbeat) -> Beat:
        when = date_format(localtime(run.finished_at), "Y-m-d H:i:s")
        title = gettext("Run #%(id)d · %(status)s · %(when)s · %(duration)s") % {
            "id": run.id,
            "status": self.labels.get(run.status, run.status),
            "when": when,
            "duration": latency_text(run.duration_ms),
        }
        return Beat(
            id=run.id,
            status=run.status,
            title=title,
            url=self.pattern.replace(str(_RUN_ID_SLOT), str(run.id)),
            finished_at=run.finished_at.isoformat(),
            duration_ms=run.duration_ms,
        )


def build_board(
    *,
    deployments: list[Deployment],
    url: str,
    chart_deployment_id: int | None = None,
    with_drift: bool = False,
) -> Board:
    """Return the board of the deployments, in a fixed number of queries however many.

    The chart shows chart_deployment_id when it is one of them, else the first deployment that
    has a finished run. ``with_drift`` adds the drift badges (two queries, and a render and a
    bounded file read per deployment): the pages show them, the polled JSON leaves them out.
    """
    ids = [d.pk for d in deployments]
    beats = history.heartbeats(ids)
    shares = history.uptime(ids)
    latencies = history.latest_latency(beats)
    drifts = drift_for(deployments) if with_drift else {}
    links = _RunLinks()
    verify = reverse("admin:routes_deployment_verify", args=[_RUN_ID_SLOT])
    rows = [
        BoardRow(
            deployment=d,
            beats=[links.beat(run) for run in beats[d.pk]],
            uptime=[
                Uptime(key, label, shares[d.pk][key], percent_text(shares[d.pk][key]))
                for key, label in WINDOW_LABELS.items()
            ],
            latency_ms=latencies[d.pk],
            latency_text=latency_text(latencies[d.pk]),
            verify_url=verify.replace(str(_RUN_ID_SLOT), str(d.pk)),
            drift=drifts.get(d.pk),
        )
        for d in deployments
    ]
    charted = next((d for d in deployments if d.pk == chart_deployment_id), None)
    if charted is None:
        charted = next((d for d in deployments if beats[d.pk]), None)
    chart = history.latency_series(charted.pk) if charted is not None else None
    return Board(rows=rows, url=url, chart_deployment=charted, chart=chart)


def dashboard_deployments(user: AnyUser) -> list[Deployment]:
    """Return the deployments the dashboard shows the user, in its order (at most its bound)."""
    visible: QuerySet[Deployment] = Deployment.objects.visible_to(user)
    return list(visible.order_by("team__name", "team_id", "name", "slug")[:MAX_DEPLOYMENTS])


def _chart_id(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 19 else None


def dashboard_board(*, deployments: list[Deployment]) -> Board:
    """Return the dashboard's board of deployments it already loaded, with drift badges."""
    return build_board(
        deployments=deployments, url=reverse("admin:routes_deployment_board"), with_drift=True
    )


def deployment_board(*, deployment: Deployment) -> Board:
    """Return the board of one deployment, for its verification page."""
    return build_board(
        deployments=[deployment],
        url=reverse("admin:routes_deployment_board_detail", args=[deployment.pk]),
        chart_deployment_id=deployment.pk,
    )


def drift_badges(deployment: Deployment) -> SafeString:
    """Return the drift badges of a deployment loaded through routes.nginx.drift's annotation."""
    return render_to_string(
        "admin/routes/board/drift.html", {"drift": drift_of(deployment), "empty": "—"}
    )


class BoardPages(DeploymentPages):
    """The board's JSON: one for the dashboard, one per deployment (GET only, writes nothing)."""

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("board/", wrap(self.board_view), name="routes_deployment_board"),
            path(
                "<path:object_id>/board/",
                wrap(self.deployment_board_view),
                name="routes_deployment_board_detail",
            ),
            *super().get_urls(),
        ]

    @method_decorator(require_GET)
    def board_view(self, request: HttpRequest) -> HttpResponse:
        """The dashboard's board as JSON; ?chart=<deployment id> picks the charted deployment."""
        board = build_board(
            deployments=dashboard_deployments(request.user),
            url=request.path,
            chart_deployment_id=_chart_id(request.GET.get("chart")),
        )
        return JsonResponse(board.as_json())

    @method_decorator(require_GET)
    def deployment_board_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One deployment's board as JSON, with its latency chart (404 for another team's)."""
        deployment = visible_deployment(request, object_id)
        board = build_board(
            deployments=[deployment], url=request.path, chart_deployment_id=deployment.pk
        )
        return JsonResponse(board.as_json())
