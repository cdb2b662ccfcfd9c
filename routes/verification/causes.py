"""A run's failures grouped into root causes: one diagnosis and one fix for every check it explains.

Each failed check carries a diagnosis code (routes.verification.diagnoses). Failures with the same
code (and, where SPECS says so, the same upstream or parameters) are one cause; a failure whose
code another cause explains joins that cause: CPA down explains CPAMP's "cannot reach CPA" on the
checks that cross CPAMP, and the direct check's refused connection; a probe the management lane
held back joins the cause of the refusal that held it back. Causes are stored on the run as JSON
(VerificationRun.causes), most important first, and rendered in the reader's language when shown:

    {"code": str, "upstream": "cpa"|"cpamp"|"", "checks": [check ids], "params": {...},
     "fix": {"kind": "base_url"|"override"|"tls_verify"|"keys"|"deployment"|"upstreams"|
             "cpamp_setup"|"", "override_id": int | None}}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from routes.nginx.regexes import RegexTimeout
from routes.nginx.simulate import BadRequest, simulate
from routes.verification import diagnoses as dx
from routes.verification import remarks
from routes.verification.checks import check_label
from routes.verification.http import CPA, CPAMP

if TYPE_CHECKING:
    from routes.models import CheckResult, Deployment, VerificationRun

# Fix kinds (the page links each to where it is made).
BASE_URL = "base_url"
OVERRIDE = "override"
TLS_VERIFY = "tls_verify"
KEYS = "keys"
DEPLOYMENT = "deployment"
UPSTREAMS = "upstreams"
CPAMP_SETUP = "cpamp_setup"


@dataclass(frozen=True)
class Explainer:
    """A cause that explains a failure: its code, upstream ("" any) and parameters that agree."""

    code: str
    upstream: str = ""
    # (this failure's parameter, the explaining cause's parameter) pairs that must be equal.
    match: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Spec:
    """How failures with one code become a cause."""

    fix: str = ""
    # The cause is about params["upstream"], and failures of different upstreams are two causes.
    upstream: bool = False
    # Parameters that must agree for two failures to be one cause.
    group: tuple[str, ...] = ()
    # The causes that explain this failure when the run has them.
    explained_by: tuple[Explainer, ...] = ()
    # The explanations apply only when this parameter has this value (e.g. target=cpa).
    only_if: tuple[str, str] | None = None


_TO_CPA = (Explainer("upstream_down", CPA),)
# What explains the failures of the chain CPAMP -> CPA (request monitoring's first link).
_CPAMP_TO_CPA = (
    Explainer("upstream_down", CPA),
    Explainer("upstream_down", CPAMP),
    Explainer("setup_incomplete"),
    Explainer("cpamp_cannot_reach_cpa"),
    Explainer("saved_management_key_refused"),
    Explainer("management_rule_missing"),
)
# A key stored in another role's place: that role's own failures follow from it (the admin key
# kept as the API key leaves no admin key, or the two keys swapped).
_MISPLACED = (Explainer("wrong_key_type", match=(("role", "actual"),)),)
# In order of importance: a cause earlier in this table is shown first.
SPECS: dict[str, Spec] = {
    "dns": Spec(fix=BASE_URL, explained_by=_TO_CPA, only_if=("target", CPA)),
    "connection_refused": Spec(fix=BASE_URL, explained_by=_TO_CPA, only_if=("target", CPA)),
    "timeout": Spec(fix=BASE_URL, explained_by=_TO_CPA, only_if=("target", CPA)),
    "tls_untrusted": Spec(fix=TLS_VERIFY),
    "tls_error": Spec(fix=DEPLOYMENT),
    "connection_error": Spec(fix=BASE_URL, explained_by=_TO_CPA, only_if=("target", CPA)),
    "upstream_down": Spec(fix=UPSTREAMS, upstream=True),
    "keys_withheld": Spec(fix=DEPLOYMENT),
    "setup_incomplete": Spec(fix=CPAMP_SETUP),
    "cpamp_cannot_reach_cpa": Spec(fix=CPAMP_SETUP, explained_by=_TO_CPA),
    "upstream_unknown": Spec(fix=DEPLOYMENT),
    "management_rule_missing": Spec(fix=OVERRIDE),
    "plugin_rule_missing": Spec(fix=OVERRIDE),
    "fallback_missing": Spec(fix=OVERRIDE),
    "wrong_upstream": Spec(fix=OVERRIDE, group=("path",)),
    "saved_management_key_refused": Spec(fix=CPAMP_SETUP),
    "cpa_banned": Spec(),
    "cpa_remote_management_disabled": Spec(),
    "cpa_management_disabled": Spec(),
    "wrong_key_type": Spec(fix=KEYS, group=("role",)),
    "admin_key_refused": Spec(fix=KEYS, explained_by=_MISPLACED),
    "keys_mixed": Spec(fix=KEYS, group=("role",), explained_by=_MISPLACED),
    "unknown_api_key": Spec(fix=KEYS),
    "keys_missing": Spec(fix=KEYS, group=("role",), explained_by=_MISPLACED),
    "management_key_refused": Spec(fix=KEYS),
    "cpa_safe_mode": Spec(),
    "cpa_panel_missing": Spec(),
    "not_cpa": Spec(fix=UPSTREAMS),
    "not_cpamp_health": Spec(fix=UPSTREAMS),
    "cpa_usage_unreadable": Spec(fix=CPAMP_SETUP, explained_by=_CPAMP_TO_CPA),
    "request_monitoring_off": Spec(fix=CPAMP_SETUP),
    "usage_publishing_off": Spec(),
    "cpa_too_old_for_usage_queue": Spec(),
    "certificate_name_mismatch": Spec(fix=DEPLOYMENT),
    "certificate_expired": Spec(fix=DEPLOYMENT),
    "https_redirect_missing": Spec(fix=DEPLOYMENT),
    "unexpected_status": Spec(group=("check",)),
    "held_back_for_ban": Spec(),
    "internal_error": Spec(),
}
_RANK = {code: rank for rank, code in enumerate(SPECS)}
# Where the path of an override-kind cause comes from when its parameters have none.
_OVERRIDE_PATHS = {"plugin_rule_missing": "/v0/resource/plugins/"}


class Failed(Protocol):
    """What grouping reads of a check's result (a CheckOutcome or a stored CheckResult)."""

    check_id: str
    passed: bool
    position: int
    diagnosis_code: str
    diagnosis_params: dict[str, Any]


@dataclass
class _Cause:
    code: str
    upstream: str
    params: dict[str, Any]
    checks: list[tuple[int, str]] = field(default_factory=list)
    # The key of the cause that explains this one, when the run has it.
    parent: tuple[str, str, tuple[Any, ...]] | None = None


def _key(code: str, params: Mapping[str, Any]) -> tuple[str, str, tuple[Any, ...]]:
    spec = SPECS.get(code, Spec())
    upstream = str(params.get("upstream", "")) if spec.upstream else ""
    group = tuple(repr(params.get(name)) for name in spec.group)
    return code, upstream, group


def _explainer(
    cause: _Cause, found: Mapping[tuple[str, str, tuple[Any, ...]], _Cause]
) -> tuple[str, str, tuple[Any, ...]] | None:
    spec = SPECS.get(cause.code, Spec())
    if spec.only_if is not None and cause.params.get(spec.only_if[0]) != spec.only_if[1]:
        return None
    for explainer in spec.explained_by:
        for key, other in found.items():
            if other is cause or other.code != explainer.code:
                continue
            if explainer.upstream and other.upstream != explainer.upstream:
                continue
            if all(
                cause.params.get(mine) == other.params.get(theirs)
                for mine, theirs in explainer.match
            ):
                return key
    return None


def _fix(code: str, params: Mapping[str, Any], deployment: Deployment | None) -> dict[str, Any]:
    kind = SPECS.get(code, Spec()).fix
    if code in ("connection_refused", "dns", "timeout", "connection_error"):
        # The direct check's own target is the deployment's CPA URL, not the base URL.
        kind = UPSTREAMS if params.get("target") == CPA else kind
    override_id = None
    if kind == OVERRIDE:
        path = params.get("path") or _OVERRIDE_PATHS.get(code, "")
        override_id = _override_for(deployment, str(path)) if path else None
        kind = OVERRIDE if override_id is not None else DEPLOYMENT
    return {"kind": kind, "override_id": override_id}


def _override_for(deployment: Deployment | None, path: str) -> int | None:
    """Return the id of the override that decides where path goes, if one does."""
    if deployment is None:
        return None
    try:
        found = simulate(deployment, path)
    except (BadRequest, RegexTimeout, ValueError):
        return None
    return found.location.override_id if found.location is not None else None


def group(results: Iterable[Failed], *, deployment: Deployment | None = None) -> list[dict]:
    """Return the causes of a run's failed checks, most important first (VerificationRun.causes)."""
    failed = sorted((r for r in results if not r.passed), key=lambda r: r.position)
    found: dict[tuple[str, str, tuple[Any, ...]], _Cause] = {}
    held: list[Failed] = []
    for result in failed:
        code, params = result.diagnosis_code, dict(result.diagnosis_params or {})
        if code == "held_back_for_ban" and params.get("after"):
            held.append(result)
            continue
        key = _key(code, params)
        cause = found.get(key)
        if cause is None:
            cause = found[key] = _Cause(code=code, upstream=key[1], params=params)
        cause.checks.append((result.position, result.check_id))
    for cause in found.values():
        cause.parent = _explainer(cause, found)
    roots: dict[tuple[str, str, tuple[Any, ...]], _Cause] = {}
    for key, cause in found.items():
        root_key, seen = key, {key}
        while found[root_key].parent is not None and found[root_key].parent not in seen:
            root_key = found[root_key].parent  # type: ignore[assignment]
            seen.add(root_key)
        root = roots.setdefault(root_key, found[root_key])
        if root is not cause:
            root.checks.extend(cause.checks)
            # What an explained failure knew beyond the cause's own check (CPAMP's saved URL).
            for name, value in cause.params.items():
                root.params.setdefault(name, value)
    by_check = {check_id: root for root in roots.values() for _p, check_id in root.checks}
    for result in held:
        after = str((result.diagnosis_params or {}).get("after", ""))
        holder = by_check.get(after)
        if holder is None:
            # The refused probe is not in this run's results (not planned, or passed): its own.
            key = _key(result.diagnosis_code, result.diagnosis_params or {})
            holder = roots.setdefault(
                key, _Cause(code=result.diagnosis_code, upstream="", params={})
            )
        holder.checks.append((result.position, result.check_id))
    ordered = sorted(
        roots.values(), key=lambda c: (_RANK.get(c.code, len(_RANK)), min(c.checks)[0])
    )
    return [
        {
            "code": cause.code,
            "upstream": cause.upstream if cause.upstream in (CPA, CPAMP) else "",
            "checks": [check_id for _p, check_id in sorted(cause.checks)],
            "params": cause.params,
            "fix": _fix(cause.code, cause.params, deployment),
        }
        for cause in ordered
    ]


def _old_row_causes(run: VerificationRun, failed: Sequence[CheckResult] | None) -> list[dict]:
    """Return causes for a run stored before causes were (one per failed check)."""
    if failed is None:
        rows = list(run.results.filter(passed=False).order_by("position", "id"))
    else:
        rows = sorted((r for r in failed if not r.passed), key=lambda r: (r.position, r.pk))
    if any(r.diagnosis_code for r in rows):
        # Loaded by the caller (the dashboard): no query here, so no override is looked up.
        return group(rows, deployment=run.job.deployment if failed is None else None)
    # Without a code, the check's id stands for the cause (as notifications always named it).
    return [
        {
            "code": r.check_id,
            "upstream": "",
            "checks": [r.check_id],
            "params": {},
            "fix": {"kind": "", "override_id": None},
            "text": r.diagnosis,
        }
        for r in rows
    ]


def render_causes(
    run: VerificationRun, *, failed: Sequence[CheckResult] | None = None
) -> list[dict[str, Any]]:
    """Return the run's causes with "diagnosis" (and "labels" of its checks) in the active language.

    Empty while the run is unfinished or when it passed. failed: the run's failed results when
    the caller has loaded them, for runs stored before causes were.
    """
    stored: Sequence[Mapping[str, Any]] = run.causes or []
    if not stored and run.status == "failed":
        stored = _old_row_causes(run, failed)
    rendered = []
    for cause in stored:
        code = str(cause.get("code", ""))
        text = dx.render(code, cause.get("params") or {}) if "text" not in cause else ""
        rendered.append(
            {
                "code": code,
                "upstream": str(cause.get("upstream", "")),
                "checks": list(cause.get("checks", [])),
                "labels": [check_label(c) for c in cause.get("checks", [])],
                "params": dict(cause.get("params") or {}),
                "fix": dict(cause.get("fix") or {"kind": "", "override_id": None}),
                "diagnosis": text or str(cause.get("text", "")),
            }
        )
    return rendered


def run_causes(run: VerificationRun) -> list[dict[str, Any]]:
    """Return the causes a notification of run names: its causes, or its error (run_error)."""
    causes = render_causes(run)
    said = remarks.run_text(run)
    if not causes and run.status == "error" and said:
        causes.append({"code": "run_error", "diagnosis": said})
    return causes
