"""How a verification run reads in the admin: its causes first, each with the link to its fix for
a user who may make it, then its checks as compact rows, all in the viewer's language.

The verification page, the run's change page and the run's progress JSON (the page redraws from
it while a run is live) are built from these, so the three always agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.urls import reverse
from django.utils.text import Truncator
from django.utils.translation import gettext as _

from routes.admin.options import with_return
from routes.models import CheckResult, RouteOverride, VerificationRun
from routes.permissions import Action, can
from routes.verification import causes as cz
from routes.verification import diagnoses as dx
from routes.verification.checks import check_label
from routes.verification.runs import FINISHED

if TYPE_CHECKING:
    from routes.models import Deployment
    from routes.permissions import AnyUser

# The deployment page's inline formsets, by their prefix (the related name).
OVERRIDES_ANCHOR = "overrides-group"
KEYS_ANCHOR = "keys-group"
# The deployment field a "deployment" fix is made in, by cause code.
DEPLOYMENT_FIELDS = {
    "tls_error": "ssl_certificate",
    "certificate_name_mismatch": "ssl_certificate",
    "certificate_expired": "ssl_certificate",
    "https_redirect_missing": "tls",
    "keys_withheld": "verification_base_url",
}
# Route causes whose rule no override decides: the served config is not the exported one.
CONFIG_CODES = frozenset(
    {
        "management_rule_missing",
        "plugin_rule_missing",
        "fallback_missing",
        "wrong_upstream",
        "upstream_unknown",
    }
)
# Turning TLS verification off changes the job and queues a run.
TLS_OFF_ACTIONS = (Action.EDIT, Action.VERIFY)


@dataclass(frozen=True)
class Fix:
    """Where a cause is fixed: a link (or a POST button) for a user who may, else who may."""

    label: str = ""
    url: str = ""
    post: bool = False
    # Shown instead of the link to a user who may not make the fix.
    note: str = ""


@dataclass
class CauseView:
    """One root cause as a page shows it: numbered, in words, the checks it explains, its fixes."""

    number: int
    code: str
    upstream: str
    diagnosis: str
    checks: list[dict[str, str]]
    fixes: list[Fix] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        """Return the cause's fragment id on the page (cause-1, ...)."""
        return f"cause-{self.number}"


@dataclass
class CheckRow:
    """One check on one line: verdict, name, request, status, latency and a short note."""

    result: CheckResult
    label: str
    request: str
    state: str  # passed, failed or skipped
    # Who answered, as operators name the upstreams ("" when nobody upstream answers).
    answered_by: str = ""
    note: str = ""
    # The number of the cause that explains this failed check (its note is then left out).
    cause: int | None = None


def _team_note(action: Action, deployment: Deployment) -> str:
    if action in (Action.MANAGE_KEYS, Action.SET_KEY_DESTINATION):
        return _("An owner of team %(team)s can make this fix.") % {"team": deployment.team.slug}
    return _("An operator or owner of team %(team)s can make this fix.") % {
        "team": deployment.team.slug
    }


def _guarded(
    user: AnyUser, deployment: Deployment, actions: Iterable[Action], fix: Fix, note: str = ""
) -> Fix:
    """Return fix when user may do every action on the deployment, else who may instead."""
    for action in actions:
        if not can(user, action, deployment.team_id):
            return Fix(note=note or _team_note(action, deployment))
    return fix


def _deployment_url(deployment: Deployment, anchor: str = "", *, back_to: str = "") -> str:
    """Return the deployment's change page at anchor, which goes back to back_to once saved."""
    url = reverse("admin:routes_deployment_change", args=[deployment.pk])
    return with_return(url, back_to=back_to, anchor=anchor)


def _override_anchor(deployment: Deployment, override_id: int) -> str:
    """Return the fragment id of an override's row in the deployment page's inline."""
    ids = list(RouteOverride.objects.filter(deployment=deployment).values_list("pk", flat=True))
    if override_id not in ids:
        return OVERRIDES_ANCHOR
    return f"overrides-{ids.index(override_id)}"


def _override_fix(
    user: AnyUser, deployment: Deployment, override_id: int | None, *, back_to: str
) -> Fix:
    override = (
        RouteOverride.objects.filter(pk=override_id, deployment=deployment).first()
        if override_id is not None
        else None
    )
    if override is None:
        fix = Fix(
            _("Open the route overrides"),
            _deployment_url(deployment, OVERRIDES_ANCHOR, back_to=back_to),
        )
    else:
        fix = Fix(
            _("Open the override %(match)s %(path)s → %(target)s")
            % {
                "match": override.get_match_display(),
                "path": override.path,
                "target": override.get_target_display(),
            },
            _deployment_url(deployment, _override_anchor(deployment, override.pk), back_to=back_to),
        )
    return _guarded(user, deployment, [Action.EDIT], fix)


def _upstream_field(cause: Mapping[str, Any]) -> tuple[str, Action]:
    upstream = cause.get("upstream") or ""
    if upstream == "cpamp" or cause.get("code") == "not_cpamp_health":
        return "cpamp_upstream", Action.EDIT
    direct = (cause.get("params") or {}).get("target") == "cpa" or cause.get("code") == "not_cpa"
    if not upstream and direct:
        # The direct check goes to the CPA URL, a place keys are sent: an owner's field.
        return "cpamp_cpa_url", Action.SET_KEY_DESTINATION
    return "cpa_upstream", Action.EDIT


def _cpamp_setup_fixes(
    user: AnyUser, deployment: Deployment, run: VerificationRun, params: Mapping[str, Any]
) -> list[Fix]:
    panel = str(params.get("panel") or (f"{run.base_url}/management.html" if run.base_url else ""))
    fixes = []
    if panel:
        fixes.append(_guarded(user, deployment, [Action.EDIT], Fix(_("Open CPAMP's setup"), panel)))
    if can(user, Action.MANAGE_KEYS, deployment.team_id):
        url = reverse("admin:routes_deployment_first_setup", args=[deployment.pk])
        fixes.append(Fix(_("First-setup values"), url))
    return fixes


def fixes_for(
    cause: Mapping[str, Any],
    *,
    user: AnyUser,
    run: VerificationRun,
    deployment: Deployment,
    back_to: str = "",
) -> list[Fix]:
    """Return the fix links of one cause (render_causes form) for user, by its fix kind.

    back_to: the page showing the cause; every link to an edit form carries it (?next=), so
    that saving the form goes back there.
    """
    fix = cause.get("fix") or {}
    kind, code = fix.get("kind") or "", str(cause.get("code", ""))
    if kind == cz.BASE_URL:
        url = reverse("admin:routes_verificationjob_change", args=[run.job_id])
        only_owner = _("Only an owner of team %(team)s may change the base URL: keys go there.")
        return [
            _guarded(
                user,
                deployment,
                [Action.SET_KEY_DESTINATION],
                Fix(
                    _("Edit the base URL"), with_return(url, back_to=back_to, anchor="id_base_url")
                ),
                note=only_owner % {"team": deployment.team.slug},
            )
        ]
    if kind == cz.OVERRIDE:
        return [_override_fix(user, deployment, fix.get("override_id"), back_to=back_to)]
    if kind == cz.TLS_VERIFY:
        url = reverse("admin:routes_deployment_verify_tls_off", args=[deployment.pk])
        button = Fix(_("Turn TLS verification off and run again"), url, post=True)
        return [_guarded(user, deployment, TLS_OFF_ACTIONS, button)]
    if kind == cz.KEYS:
        keys = Fix(_("Open the keys"), _deployment_url(deployment, KEYS_ANCHOR, back_to=back_to))
        return [_guarded(user, deployment, [Action.MANAGE_KEYS], keys)]
    if kind == cz.UPSTREAMS:
        name, action = _upstream_field(cause)
        edit = Fix(
            _("Edit the upstream addresses"),
            _deployment_url(deployment, f"id_{name}", back_to=back_to),
        )
        return [_guarded(user, deployment, [action], edit)]
    if kind == cz.DEPLOYMENT and code in CONFIG_CODES:
        url = reverse("admin:routes_deployment_config", args=[deployment.pk])
        export = Fix(_("Export the Nginx config again"), url)
        return [_guarded(user, deployment, [Action.EXPORT], export)]
    if kind == cz.DEPLOYMENT:
        field_name = DEPLOYMENT_FIELDS.get(code)
        anchor = f"id_{field_name}" if field_name else ""
        edit = Fix(_("Edit the deployment"), _deployment_url(deployment, anchor, back_to=back_to))
        return [_guarded(user, deployment, [Action.EDIT], edit)]
    if kind == cz.CPAMP_SETUP:
        return _cpamp_setup_fixes(user, deployment, run, cause.get("params") or {})
    return []


def cause_views(
    run: VerificationRun,
    *,
    user: AnyUser | None,
    deployment: Deployment | None = None,
    failed: Sequence[CheckResult] | None = None,
    back_to: str = "",
) -> list[CauseView]:
    """Return the run's causes, most important first, with their fixes for user (None: none).

    deployment: the run's, when the caller has it loaded (with its team). back_to: the page
    that shows them, where their edit forms go back to once saved.
    """
    deployment = deployment or run.job.deployment
    views = []
    for number, cause in enumerate(cz.render_causes(run, failed=failed), start=1):
        views.append(
            CauseView(
                number=number,
                code=cause["code"],
                upstream=cause["upstream"],
                diagnosis=cause["diagnosis"],
                checks=[
                    {"id": check_id, "label": label}
                    for check_id, label in zip(cause["checks"], cause["labels"], strict=False)
                ],
                fixes=(
                    fixes_for(cause, user=user, run=run, deployment=deployment, back_to=back_to)
                    if user is not None
                    else []
                ),
            )
        )
    return views


def request_text(result: CheckResult) -> str:
    """Return "METHOD /path" of a check's request (the host is the run's, shown once)."""
    try:
        parts = urlsplit(result.url)
    except ValueError:
        return f"{result.method} {result.url}"
    if not parts.scheme:
        return f"{result.method} {result.url}".strip()
    path = parts.path or "/"
    return f"{result.method} {path}{'?' + parts.query if parts.query else ''}"


def _answered_by(observed: str) -> str:
    if observed in dx.UPSTREAM_NAMES:
        return dx.UPSTREAM_NAMES[observed]
    return _("unknown") if observed else ""


def check_rows(results: Iterable[CheckResult], causes: Sequence[CauseView]) -> list[CheckRow]:
    """Return one compact row per check result; a failure a cause explains points at it."""
    explained = {c["id"]: cause.number for cause in causes for c in cause.checks}
    rows = []
    for result in results:
        skipped = bool((result.details or {}).get("skipped"))
        state = "skipped" if skipped else "passed" if result.passed else "failed"
        cause = explained.get(result.check_id) if not result.passed else None
        note = ""
        if cause is None:
            # Passing rows keep their warning; an unexplained failure, its own diagnosis.
            note = dx.render_result_warning(result)
            if not result.passed:
                note = dx.render_result_diagnosis(result) or note
        rows.append(
            CheckRow(
                result=result,
                label=check_label(result.check_id),
                request=request_text(result),
                state=state,
                answered_by=_answered_by(result.observed_upstream),
                note=note,
                cause=cause,
            )
        )
    return rows


def progress_extras(
    run: VerificationRun, *, user: AnyUser, results: Sequence[CheckResult], back_to: str = ""
) -> dict[str, Any]:
    """Return what the progress JSON adds for the page to redraw: causes with fixes, row notes.

    back_to: the page that polls, where the fixes' edit forms go back to.
    """
    views = cause_views(run, user=user, back_to=back_to) if run.status in FINISHED else []
    rows = check_rows(results, views)
    return {
        "cause_views": [{**asdict(view), "anchor": view.anchor} for view in views],
        "rows": [
            {
                "id": row.result.check_id,
                "label": row.label,
                "request": row.request,
                "state": row.state,
                "status_code": row.result.status_code,
                "answered_by": row.answered_by,
                "latency_ms": row.result.latency_ms,
                # As check_table.html shows it (|truncatechars:300): live and reloaded agree.
                "excerpt": Truncator(row.result.excerpt).chars(300),
                "note": row.note,
                "cause": row.cause,
            }
            for row in rows
        ],
    }
