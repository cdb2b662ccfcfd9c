"""What a check's answer means: the run's context, and the pure step from an answer to an outcome.

Nothing here sends a request (routes/verification/http.py does) or stores a row (runs.py does).
Every URL, excerpt and diagnosis passes the context's Redactor, which removes the deployment's
secrets, before it leaves this module.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.utils.translation import gettext as _

from routes.verification import diagnoses as dx
from routes.verification.checks import Answer, Check, check_label
from routes.verification.http import (
    CPA,
    UNKNOWN,
    Probe,
    Redactor,
    mask_json,
    who_answered,
)

if TYPE_CHECKING:
    from routes.models import Deployment

EXCERPT_CHARS = 500
# CPA's management-auth refusals (reference 1.4); they count toward its 5-strikes IP ban.
CPA_MANAGEMENT_ERRORS = ("invalid management key", "missing management key", "IP banned")
# Answer headers kept in an outcome's details.
KEPT_HEADERS = (
    "x-console-upstream",
    "x-cpa-version",
    "x-cpa-safe-mode",
    "location",
    "content-type",
)
# Network failures that mean "not reachable from here" rather than "answered wrongly".
UNREACHABLE = ("refused", "dns", "timeout", "connection")
# Statuses nginx answers itself when an upstream is down: an OPTIONS would get the same.
GATEWAY = (502, 503, 504)


@dataclass(frozen=True)
class StoredKey:
    """One stored key for a run: its display ("label ••••1234") and its secret (never shown)."""

    display: str
    secret: str


@dataclass
class Context:
    """Everything a check needs: where to send, how, with which keys, and the redactor."""

    deployment: Deployment
    base_url: str
    verify_tls: bool
    timeout: float
    keys: dict[str, str]
    redact: Redactor
    host_header: str = ""
    # Origins keys may be sent to (routes.verification.destinations); a key bound elsewhere
    # stays home.
    key_origins: frozenset[str] = frozenset()
    # Every stored key by role (keys holds the first of each); checks with per_key send each.
    key_sets: dict[str, list[StoredKey]] = field(default_factory=dict)
    # What the run has seen so far, for the checks that read it (cpa_version: X-CPA-VERSION).
    observed: dict[str, str] = field(default_factory=dict)
    # The job's slow threshold: a check that passes slower carries a "slow" warning (flag_slow).
    slow_threshold_ms: int | None = None

    @property
    def tracing(self) -> bool:
        """Return True when the exported config marks who answered (X-Console-Upstream)."""
        return bool(self.deployment.route_tracing)

    @property
    def panel_url(self) -> str:
        """Return the management panel's URL on the run's base URL."""
        return f"{self.base_url}/management.html"

    def url(self, check: Check) -> str:
        """Return the URL check requests in this run."""
        return check.url(deployment=self.deployment, base_url=self.base_url)

    def keys_of(self, role: str) -> list[StoredKey]:
        """Return the keys of role a check sends, in order (the first one when not per key)."""
        if self.key_sets.get(role):
            return list(self.key_sets[role])
        return [StoredKey(display="", secret=self.keys[role])] if role in self.keys else []

    def role_of(self, secret: str, *, sent_as: str) -> str:
        """Return the role secret really has when it is another role's stored key or shape."""
        from routes import keys as keyring

        for role, stored in self.key_sets.items():
            if role != sent_as and any(k.secret == secret for k in stored):
                return role
        for role, value in self.keys.items():
            if role != sent_as and value == secret:
                return role
        if sent_as != keyring.CPAMP_ADMIN and keyring.CPAMP_ADMIN_LIKE.match(secret):
            return keyring.CPAMP_ADMIN
        return ""


@dataclass(frozen=True)
class SentKey:
    """The key a request carried, as a diagnosis may name it (never the secret)."""

    display: str = ""
    # The role the key really has when it is not the check's (Context.role_of), or "".
    role_is: str = ""


def _redacted(params: dict[str, Any], redact: Redactor) -> dict[str, Any]:
    """Return params with every text redacted: they are stored and shown."""
    clean: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, str):
            clean[name] = redact(value)
        elif isinstance(value, list):
            clean[name] = [redact(v) if isinstance(v, str) else v for v in value]
        else:
            clean[name] = value
    return clean


@dataclass
class CheckOutcome:
    """The result of one check, already redacted; the JSON form is a contract.

    The diagnosis and the warning are codes plus parameters (routes.verification.diagnoses);
    ``diagnosis`` and ``warning`` are their words in the active language.
    """

    check_id: str
    method: str
    url: str
    expected: str
    expected_upstream: str
    passed: bool
    status_code: int | None = None
    latency_ms: int | None = None
    observed_upstream: str = ""
    diagnosis_code: str = ""
    diagnosis_params: dict[str, Any] = field(default_factory=dict)
    warning_code: str = ""
    warning_params: dict[str, Any] = field(default_factory=dict)
    excerpt: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    position: int = 0
    # Whether CPA's management auth refused a key here (counts toward its IP ban).
    cpa_refused: bool = False
    timed_out: bool = False

    @classmethod
    def failed(
        cls, check: Check, *, url: str, diagnosis: dx.Diagnosis | None = None, **fields: Any
    ) -> CheckOutcome:
        """Return a failed outcome of check at url (already redacted), with fields set."""
        outcome = cls(
            check_id=check.id,
            method=check.method,
            url=url,
            expected=check.expected_text(),
            expected_upstream=check.expected_upstream,
            passed=False,
            **fields,
        )
        if diagnosis is not None:
            outcome.diagnose(diagnosis)
        return outcome

    @property
    def diagnosis(self) -> str:
        """Return the diagnosis in the active language ("" when none)."""
        return dx.render(self.diagnosis_code, self.diagnosis_params) if self.diagnosis_code else ""

    @property
    def warning(self) -> str:
        """Return the warning in the active language ("" when none)."""
        return dx.render(self.warning_code, self.warning_params) if self.warning_code else ""

    def diagnose(self, diagnosis: dx.Diagnosis, redact: Redactor | None = None) -> None:
        """Set the diagnosis (its texts redacted when a redactor is given)."""
        self.diagnosis_code = diagnosis.code
        params = dict(diagnosis.params)
        self.diagnosis_params = _redacted(params, redact) if redact is not None else params

    def warn(self, warning: dx.Diagnosis, redact: Redactor | None = None) -> None:
        """Set the warning (its texts redacted when a redactor is given)."""
        self.warning_code = warning.code
        params = dict(warning.params)
        self.warning_params = _redacted(params, redact) if redact is not None else params

    def as_json(self) -> dict[str, Any]:
        """Return the check object of `manage.py verify --json` (a contract)."""
        data: dict[str, Any] = {
            "id": self.check_id,
            "label": check_label(self.check_id),
            "method": self.method,
            "url": self.url,
            "status_code": self.status_code,
            "expected_upstream": self.expected_upstream,
            "observed_upstream": self.observed_upstream,
            "latency_ms": self.latency_ms,
            "passed": self.passed,
            "diagnosis": self.diagnosis,
            "warning": self.warning,
        }
        if isinstance(self.details.get("keys"), list):
            data["keys"] = [dict(k) for k in self.details["keys"]]
        return data


def excerpt(probe: Probe, redact: Redactor) -> str:
    """Return a short, redacted excerpt of the body (JSON with secret-looking fields masked)."""
    if not probe.body:
        return ""
    data = probe.json()
    if data is not None:
        text = json.dumps(mask_json(data), separators=(",", ":"), ensure_ascii=False)
    else:
        # One line: nginx error pages and panels are HTML over many lines.
        text = " ".join(probe.body.decode("utf-8", errors="replace").split())
    # Redact the whole text before cutting, so a secret is never left half-visible at the cut.
    return redact.cut(text, EXCERPT_CHARS, marker="…")


def _url_host(url: str) -> str:
    return urlsplit(url).netloc or url


def cpa_refused(probe: Probe) -> bool:
    """Return True when CPA's management auth refused the request's key."""
    if probe.status_code not in (401, 403):
        return False
    data = probe.json()
    message = data.get("error") if isinstance(data, dict) else None
    if isinstance(message, str) and any(m in message for m in CPA_MANAGEMENT_ERRORS):
        return True
    return "x-cpa-version" in probe.headers or probe.headers.get("x-console-upstream") == CPA


def needs_fingerprint(check: Check, probe: Probe, ctx: Context) -> bool:
    """Return True when an OPTIONS should tell who answered (reference 3.4).

    Only without route tracing (with it, a missing header is itself the finding): when the
    answer carries no fingerprint, or when a CPA refusal came through /v0/management/, which
    CPAMP passes through byte for byte from CPA when CPA refuses its saved key.
    """
    if ctx.tracing or not check.fingerprints or probe.status_code is None:
        return False
    observed = who_answered(probe)
    if observed == UNKNOWN:
        return probe.status_code not in GATEWAY
    return observed == CPA and check.path.startswith("/v0/management/") and cpa_refused(probe)


def unreachable(
    check: Check, ctx: Context, *, url: str, kind: str, reason: str = ""
) -> CheckOutcome:
    """Return the outcome of a check whose target did not answer (kind: http.classify())."""
    target = "" if check.target.via_nginx else check.expected_upstream
    outcome = CheckOutcome.failed(
        check, url=ctx.redact(url), details={"error": kind}, timed_out=kind == "timeout"
    )
    outcome.diagnose(
        dx.transport(
            kind=kind, reason=reason, host=_url_host(url), timeout=ctx.timeout, target=target
        ),
        ctx.redact,
    )
    return outcome


def _unanswered(check: Check, probe: Probe, ctx: Context, url: str) -> CheckOutcome:
    outcome = unreachable(check, ctx, url=url, kind=probe.error, reason=probe.error_reason)
    outcome.latency_ms = probe.latency_ms
    if check.unreachable_skips and probe.error in UNREACHABLE and dx.topology_of(url) == dx.DOCKER:
        # CPA on a Docker network is often out of the console's reach; on the host it is not.
        outcome.passed = True
        outcome.diagnosis_code, outcome.diagnosis_params = "", {}
        outcome.warn(
            dx.Diagnosis("cpa_not_reachable_from_console", {"url": url, "reason": probe.error}),
            ctx.redact,
        )
        outcome.details = {"skipped": True, "error": probe.error}
    return outcome


def _warning(
    check: Check, answer: Answer, *, passed: bool, unconfirmed: bool
) -> dx.Diagnosis | None:
    """Return what a passing answer should say beside its pass, or None."""
    if not passed:
        return None
    if answer.warning is not None:
        return answer.warning
    if unconfirmed:
        return dx.Diagnosis("upstream_not_confirmed", {})
    if answer.status == 404 and not check.statuses:
        return dx.Diagnosis("not_found_is_fine", {})
    return None


def evaluate(
    check: Check,
    probe: Probe,
    ctx: Context,
    url: str,
    *,
    identified: str = "",
    key: SentKey | None = None,
) -> CheckOutcome:
    """Turn one HTTP answer into a redacted outcome, with a diagnosis when it failed.

    identified: who answered an OPTIONS fingerprint (needs_fingerprint), when it told.
    key: the key the request carried, for the diagnoses that name it.
    """
    if check.scrub is not None:
        probe = check.scrub(probe)
    if probe.error and probe.status_code is None:
        return _unanswered(check, probe, ctx, url)
    version = probe.headers.get("x-cpa-version", "")
    if version:
        ctx.observed.setdefault("cpa_version", version.strip())
    seen = dict(ctx.observed)
    if "cpa_version" not in seen and ctx.deployment.cpa_version:
        seen["cpa_version"] = ctx.deployment.cpa_version
    answer = Answer(probe=probe, observed=identified or who_answered(probe), seen=seen)
    for name in KEPT_HEADERS:
        if name in probe.headers:
            answer.details[name] = ctx.redact.cut(probe.headers[name], 200)
    if identified:
        answer.details["identified_by"] = "options"
    status_ok = check.accepts(answer.status)
    judged_ok = check.judge(answer) if check.judge is not None else True
    observed, details = answer.observed, answer.details
    unconfirmed = False
    if not check.expected_upstream or observed == check.expected_upstream:
        upstream_ok = True
    else:
        # Without route tracing an answer may be unattributable; that alone is no failure.
        upstream_ok = unconfirmed = observed == UNKNOWN and not ctx.tracing
        if upstream_ok:
            details["upstream_note"] = "route tracing is off; who answered is not confirmed"
    passed = status_ok and upstream_ok and judged_ok
    refused = cpa_refused(probe)
    outcome = CheckOutcome(
        check_id=check.id,
        method=check.method,
        url=ctx.redact(url),
        expected=check.expected_text(),
        expected_upstream=check.expected_upstream,
        passed=passed,
        status_code=probe.status_code,
        latency_ms=probe.latency_ms,
        observed_upstream=observed,
        excerpt=excerpt(probe, ctx.redact),
        details=details,
        # A refusal CPAMP passed through from CPA counts as CPA's, wherever it was seen.
        cpa_refused=check.lane and refused,
    )
    warning = _warning(check, answer, passed=passed, unconfirmed=unconfirmed)
    if warning is not None:
        outcome.warn(warning, ctx.redact)
    if not passed:
        key = key or SentKey()
        failure = dx.Failure(
            check=check,
            status=answer.status,
            observed=observed,
            data=probe.json(),
            location=probe.location,
            excerpt=outcome.excerpt,
            deployment=ctx.deployment,
            panel_url=ctx.panel_url,
            tracing=ctx.tracing,
            key_missing=bool(check.key_role) and check.key_role not in ctx.keys,
            cpa_refused=refused,
            details=details,
            key_is=key.role_is,
            key_label=key.display,
            url=url,
        )
        outcome.diagnose(dx.diagnose(failure), ctx.redact)
    return outcome


def combine_keys(check: Check, per_key: list[tuple[str, CheckOutcome]]) -> CheckOutcome:
    """Return one outcome for a check sent once per key: passed only when every key was.

    The outcome is the first refused key's (its status code and diagnosis), else the first
    key's; details["keys"] lists each key as "label ••••1234" with its status and result.
    """
    chosen = next((o for _d, o in per_key if not o.passed), per_key[0][1])
    chosen.passed = all(o.passed for _d, o in per_key)
    chosen.details = {
        **chosen.details,
        "keys": [
            {"key": display, "status_code": o.status_code, "passed": o.passed}
            for display, o in per_key
        ],
    }
    chosen.latency_ms = sum(o.latency_ms or 0 for _d, o in per_key)
    return chosen


def certificate(
    check: Check,
    ctx: Context,
    *,
    url: str,
    names: list[str],
    not_after: dt.datetime,
    issuer: str,
    trusted_error: str,
    latency_ms: int,
    self_signed: bool = False,
) -> CheckOutcome:
    """Judge a served certificate: it names the server, is not expired and, if asked, trusted.

    trusted_error is http.chain_error()'s code ("" when trusted or not asked). Unverified, a
    pass says so in its warning.
    """
    server_name = ctx.deployment.server_name
    days_left = (not_after - dt.datetime.now(dt.UTC)).days
    matches = any(dx.name_matches(n, server_name) for n in names)
    outcome = CheckOutcome(
        check_id=check.id,
        method=check.method,
        url=url,
        expected=check.expected_text(),
        expected_upstream="",
        passed=matches and days_left >= 0 and not trusted_error,
        latency_ms=latency_ms,
        details={
            "names": list(names),
            "days_left": days_left,
            "not_after": not_after.isoformat(),
            "issuer": issuer[:200],
            "trusted": None if not ctx.verify_tls else not trusted_error,
        },
        excerpt=_("names: %(names)s; expires %(date)s (in %(days)d days)")
        % {
            "names": ", ".join(names) or "-",
            "date": not_after.date().isoformat(),
            "days": days_left,
        },
    )
    if not outcome.passed:
        outcome.diagnose(
            dx.certificate_problem(
                server_name=server_name, names=list(names), days_left=days_left, trust=trusted_error
            ),
            ctx.redact,
        )
    elif not ctx.verify_tls:
        reason = "self_signed" if self_signed else ""
        outcome.warn(dx.Diagnosis("certificate_not_verified", {"reason": reason}))
    return outcome


def flag_slow(outcome: CheckOutcome, ctx: Context) -> None:
    """Warn on outcome when it passed slower than the job's slow threshold; it still passes.

    A warning it had already is kept inside the slow one, and shown after it.
    """
    threshold, latency = ctx.slow_threshold_ms, outcome.latency_ms
    if threshold is None or latency is None or latency <= threshold:
        return
    if not outcome.passed or outcome.details.get("skipped"):
        return
    params: dict[str, Any] = {"latency_ms": latency, "threshold_ms": threshold}
    if outcome.warning_code:
        params["also"], params["also_params"] = outcome.warning_code, outcome.warning_params
    outcome.warn(dx.Diagnosis("slow", params))


def mark_withheld(outcome: CheckOutcome, origin: str) -> None:
    """Record on outcome that its key stayed home: an owner has not confirmed origin."""
    # What answered a keyless request says nothing about the key: never a pass.
    outcome.passed = False
    outcome.details = {**outcome.details, "keys_withheld": True, "origin": origin}
    outcome.warning_code, outcome.warning_params = "", {}
    outcome.diagnose(dx.Diagnosis("keys_withheld", {"origin": origin}))


def withheld(check: Check, ctx: Context, *, url: str, origin: str) -> CheckOutcome:
    """Return the outcome of a key probe not sent because its destination is unconfirmed."""
    outcome = CheckOutcome.failed(check, url=ctx.redact(url), details={"skipped": True})
    mark_withheld(outcome, origin)
    return outcome


def skipped_for_ban(check: Check, ctx: Context, *, after: str = "") -> CheckOutcome:
    """Return the outcome of a lane probe held back so CPA does not ban the console.

    after: the check whose refusal held it back (its cause explains this one too).
    """
    return CheckOutcome.failed(
        check,
        url=ctx.redact(ctx.url(check)),
        diagnosis=dx.Diagnosis("held_back_for_ban", {"after": after}),
        details={"skipped": True},
    )


def past_deadline(check: Check, ctx: Context, *, budget: float) -> CheckOutcome:
    """Return the outcome of a check that had not finished when the run's deadline passed."""
    return CheckOutcome.failed(
        check,
        url=ctx.redact(ctx.url(check)),
        diagnosis=dx.Diagnosis("timeout", {"budget": math.ceil(budget)}),
        details={"error": "timeout", "run_deadline": True},
        timed_out=True,
    )


def internal_error(check: Check, ctx: Context, exc: Exception) -> CheckOutcome:
    """Return the outcome of a check that raised: a bug in one check must not lose the others.

    The exception goes to the log (routes.verification.runner); the diagnosis only says so.
    """
    return CheckOutcome.failed(
        check,
        url=ctx.redact(ctx.base_url + check.path),
        diagnosis=dx.Diagnosis("internal_error", {}),
        details={"error": "internal"},
    )
