"""The seed's verification checks as data, and the parallel check runner.

Requests go out through routes/probes.py, the one HTTP seam; routes/verify.py stores runs around
this module. Every URL, excerpt and diagnosis passes a Redactor that removes the deployment's
secrets before anything is stored.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import ssl
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from routes import diagnoses as dx
from routes import keys as keyring
from routes.destinations import confirmed_origins, destination_of, host_header, withheld_message
from routes.probes import (
    CPA,
    CPAMP,
    UNKNOWN,
    Probe,
    Redactor,
    chain_error,
    classify,
    fetch_certificate,
    mask_json,
    send,
    who_answered,
)

MANAGER_SERVER = "manager_server"
CPA_PANEL = "cpa_panel"
BOTH_MODES = (MANAGER_SERVER, CPA_PANEL)

EXCERPT_CHARS = 500
# CPA's management-auth refusals (reference 1.4); they count toward its 5-strikes IP ban.
CPA_MANAGEMENT_ERRORS = ("invalid management key", "missing management key", "IP banned")


@dataclass(frozen=True)
class Check:
    """One verification check: what to send and what a healthy deployment answers."""

    id: str
    label: Any
    method: str
    path: str
    expected_upstream: str
    # Accepted statuses; empty means any answer below 500.
    statuses: tuple[int, ...] = (200,)
    key_role: str = ""
    needs_key: bool = False
    modes: tuple[str, ...] = (MANAGER_SERVER,)
    needs_tls: bool = False
    # Probes on /v0/management/ that CPA may refuse: scheduled by _ManagementLane.
    lane: bool = False
    kind: str = "http"  # http | redirect | certificate | direct

    def expected_text(self) -> str:
        """Return the expectation in words, e.g. "200 from CPAMP"."""
        who = {CPA: "CPA", CPAMP: "CPAMP"}.get(self.expected_upstream, "")
        if self.kind == "redirect":
            return _("301 to https://")
        if self.kind == "certificate":
            return _("a certificate for the server name, not expired")
        if not self.statuses:
            status = _("any answer below 500")
        else:
            status = _(" or ").join(str(s) for s in self.statuses)
        return _("%(status)s from %(who)s") % {"status": status, "who": who} if who else status


CHECKS: dict[str, Check] = {
    c.id: c
    for c in (
        Check(
            "panel",
            gettext_lazy("Management panel"),
            "HEAD",
            "/management.html",
            CPAMP,
            modes=BOTH_MODES,
        ),
        Check("cpamp_health", gettext_lazy("CPAMP health"), "GET", "/health", CPAMP),
        Check("cpa_health", gettext_lazy("CPA health"), "GET", "/healthz", CPA, modes=BOTH_MODES),
        Check(
            "usage_service_info",
            gettext_lazy("CPAMP runtime info"),
            "GET",
            "/usage-service/info",
            CPAMP,
        ),
        Check(
            "api_models",
            gettext_lazy("CPA API with the API key"),
            "GET",
            "/v1/models",
            CPA,
            key_role=keyring.CPA_API,
            modes=BOTH_MODES,
        ),
        Check(
            "management_config",
            gettext_lazy("Management API through CPAMP"),
            "GET",
            "/v0/management/config",
            CPAMP,
            key_role=keyring.CPAMP_ADMIN,
            lane=True,
        ),
        Check(
            "plugin_resources",
            gettext_lazy("Plugin resources"),
            "GET",
            "/v0/resource/plugins/",
            CPAMP,
            statuses=(),
        ),
        Check(
            "models_compat",
            gettext_lazy("/models compatibility proxy"),
            "GET",
            "/models",
            CPAMP,
            statuses=(),
            key_role=keyring.CPA_API,
        ),
        Check(
            "cpa_fallback",
            gettext_lazy("Fallback to CPA for new paths"),
            "GET",
            "/console-fallback-probe",
            CPA,
            statuses=(),
        ),
        Check(
            "management_refuses_api_key",
            gettext_lazy("Management API refuses the API key"),
            "GET",
            "/v0/management/config",
            CPAMP,
            statuses=(401, 403),
            key_role=keyring.CPA_API,
            needs_key=True,
            lane=True,
        ),
        Check(
            "api_refuses_admin_key",
            gettext_lazy("CPA API refuses the Admin Key"),
            "GET",
            "/v1/models",
            CPA,
            statuses=(401, 403),
            key_role=keyring.CPAMP_ADMIN,
            needs_key=True,
        ),
        Check(
            "https_redirect",
            gettext_lazy("HTTP redirects to HTTPS"),
            "GET",
            "/",
            "",
            statuses=(301,),
            modes=BOTH_MODES,
            needs_tls=True,
            kind="redirect",
        ),
        Check(
            "certificate",
            gettext_lazy("Certificate"),
            "TLS",
            "",
            "",
            modes=BOTH_MODES,
            needs_tls=True,
            kind="certificate",
        ),
        Check(
            "cpa_direct",
            gettext_lazy("CPA Management Key against CPA directly"),
            "GET",
            "/v0/management/config",
            CPA,
            key_role=keyring.CPA_MANAGEMENT,
            needs_key=True,
            modes=BOTH_MODES,
            lane=True,
            kind="direct",
        ),
    )
}
# The seed's seven curl requests, in its order.
SEED_CHECKS = (
    "panel",
    "cpamp_health",
    "cpa_health",
    "usage_service_info",
    "api_models",
    "management_config",
    "plugin_resources",
)
NEGATIVE_CHECKS = ("management_refuses_api_key", "api_refuses_admin_key")


def check_for_mode(check: Check, mode: str) -> Check:
    """Return the check as it applies to a deployment mode."""
    if mode == CPA_PANEL and check.id == "panel":
        # CPA Panel mode: CPA serves /management.html itself, for GET only (gin maps no HEAD).
        return replace(check, method="GET", expected_upstream=CPA)
    return check


def plan_checks(deployment, *, roles: Iterable[str], enabled: Iterable[str] = ()) -> list[Check]:
    """Return the checks that apply to deployment, given the key roles it has stored."""
    roles = set(roles)
    wanted = set(enabled or ())
    plan = []
    for check in CHECKS.values():
        if wanted and check.id not in wanted:
            continue
        if deployment.mode not in check.modes:
            continue
        if check.needs_tls and not deployment.tls:
            continue
        if check.needs_key and check.key_role not in roles:
            continue
        if check.kind == "direct" and not deployment.cpamp_cpa_url:
            continue
        plan.append(check_for_mode(check, deployment.mode))
    return plan


# --- running checks -------------------------------------------------------------------------


@dataclass
class Context:
    """Everything a check needs: where to send, how, with which keys, and the redactor."""

    deployment: Any
    base_url: str
    verify_tls: bool
    timeout: float
    keys: dict[str, str]
    redact: Redactor
    host_header: str = ""
    # Origins keys may be sent to (routes.destinations); a key bound elsewhere stays home.
    key_origins: frozenset[str] = frozenset()

    @property
    def tracing(self) -> bool:
        return bool(self.deployment.route_tracing)

    @property
    def panel_url(self) -> str:
        return f"{self.base_url}/management.html"


@dataclass
class CheckOutcome:
    """The result of one check, already redacted; the JSON form is a contract."""

    check_id: str
    method: str
    url: str
    expected: str
    expected_upstream: str
    passed: bool
    status_code: int | None = None
    latency_ms: int | None = None
    observed_upstream: str = ""
    diagnosis: str = ""
    excerpt: str = ""
    details: dict = field(default_factory=dict)
    position: int = 0
    # Whether CPA's management auth refused a key here (counts toward its IP ban).
    cpa_refused: bool = False
    timed_out: bool = False

    def as_json(self) -> dict:
        """Return the check object of `manage.py verify --json` (a contract)."""
        return {
            "id": self.check_id,
            "method": self.method,
            "url": self.url,
            "status_code": self.status_code,
            "expected_upstream": self.expected_upstream,
            "observed_upstream": self.observed_upstream,
            "latency_ms": self.latency_ms,
            "passed": self.passed,
            "diagnosis": self.diagnosis,
        }


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
    parts = urlsplit(url)
    return parts.netloc or url


def _transport_outcome(check: Check, probe: Probe, ctx: Context, url: str) -> CheckOutcome:
    detail = ctx.redact.cut(probe.error_detail, 300)
    return CheckOutcome(
        check_id=check.id,
        method=check.method,
        url=ctx.redact(url),
        expected=check.expected_text(),
        expected_upstream=check.expected_upstream,
        passed=False,
        latency_ms=probe.latency_ms,
        diagnosis=ctx.redact(
            dx.transport(probe.error, host=_url_host(url), timeout=ctx.timeout, detail=detail)
        ),
        details={"error": probe.error},
        timed_out=probe.error == "timeout",
    )


def _cpa_refused(probe: Probe) -> bool:
    if probe.status_code not in (401, 403):
        return False
    data = probe.json()
    message = data.get("error") if isinstance(data, dict) else None
    if isinstance(message, str) and any(m in message for m in CPA_MANAGEMENT_ERRORS):
        return True
    return "x-cpa-version" in probe.headers or probe.headers.get("x-console-upstream") == CPA


def _request_url(check: Check, ctx: Context) -> str:
    if check.kind == "direct":
        return ctx.deployment.cpamp_cpa_url.rstrip("/") + check.path
    if check.kind == "redirect":
        parts = urlsplit(ctx.base_url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = ctx.deployment.http_port
        return f"http://{host}{'' if port == 80 else f':{port}'}{check.path}"
    return ctx.base_url + check.path


def _evaluate(check: Check, probe: Probe, ctx: Context, url: str) -> CheckOutcome:
    """Turn one answer into a redacted outcome with a diagnosis when it failed."""
    if probe.error and probe.status_code is None:
        outcome = _transport_outcome(check, probe, ctx, url)
        if check.kind == "direct" and probe.error in ("refused", "dns", "timeout", "connection"):
            # "When the console can reach CPA directly": an unreachable CPA is not a failure.
            outcome.passed = True
            outcome.diagnosis = dx.skipped_unreachable(ctx.redact(url), probe.error)
            outcome.details = {"skipped": True, "error": probe.error}
        return outcome
    status = probe.status_code or 0
    observed = who_answered(probe)
    details: dict[str, Any] = {}
    for name in ("x-console-upstream", "x-cpa-version", "location", "content-type"):
        if name in probe.headers:
            details[name] = ctx.redact.cut(probe.headers[name], 200)
    if check.statuses:
        status_ok = status in check.statuses
    elif check.id == "models_compat":
        status_ok = status < 500 and status not in (412, 428)
    else:
        status_ok = status < 500
    extra_ok = True
    if check.id == "management_config" and observed != CPAMP and status == 200:
        if "x-console-upstream" not in probe.headers:
            # Only CPAMP turns the Admin Key into the CPA Management Key; CPA alone refuses it.
            observed = CPAMP
            details["inferred"] = "CPA answered 200 to the Admin Key, so CPAMP proxied it"
    if check.kind == "direct" and observed == UNKNOWN and status == 200:
        extra_ok = False  # something answered 200 without being CPA's management API
    if check.id == "cpamp_health":
        extra_ok = probe.json() == {"ok": True, "service": "cpa-manager-plus"}
    if check.id == "usage_service_info":
        data = probe.json()
        if isinstance(data, dict):
            details["setupRequired"] = data.get("setupRequired")
            details["configured"] = data.get("configured")
    if check.kind == "redirect":
        extra_ok = probe.location.lower().startswith("https://")
        observed = ""
    if not check.expected_upstream or check.kind == "redirect":
        upstream_ok = True
    elif observed == check.expected_upstream:
        upstream_ok = True
    else:
        # Without route tracing an answer may be unattributable; that alone is no failure.
        upstream_ok = observed == UNKNOWN and not ctx.tracing
        if upstream_ok:
            details["upstream_note"] = "route tracing is off; who answered is not confirmed"
    passed = status_ok and upstream_ok and extra_ok
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
        cpa_refused=check.lane and _cpa_refused(probe),
    )
    if not passed:
        outcome.diagnosis = ctx.redact(
            dx.diagnose(
                check,
                probe,
                observed,
                ctx,
                cpa_refused=_cpa_refused(probe),
                excerpt=excerpt(probe, ctx.redact),
            )
        )
    return outcome


def _certificate(check: Check, ctx: Context) -> CheckOutcome:
    """Fetch the served certificate; check its names against server_name and its expiry."""
    from cryptography import x509

    parts = urlsplit(ctx.base_url)
    host = parts.hostname or ctx.deployment.server_name
    # An http:// base URL (say, a job that checks port 80) still has its TLS on https_port.
    port = (parts.port or 443) if parts.scheme == "https" else ctx.deployment.https_port
    server_name = ctx.deployment.server_name
    sni = host if server_name.startswith("*") else server_name
    shown = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    url = f"https://{shown}"
    base = CheckOutcome(
        check_id=check.id,
        method=check.method,
        url=url,
        expected=check.expected_text(),
        expected_upstream="",
        passed=False,
    )
    started = time.monotonic()
    try:
        der = fetch_certificate(host=host, port=port, sni=sni, timeout=ctx.timeout)
    except (OSError, ssl.SSLError) as exc:
        kind = classify(exc)
        base.latency_ms = int((time.monotonic() - started) * 1000)
        base.diagnosis = ctx.redact(
            dx.transport(
                kind, host=shown, timeout=ctx.timeout, detail=ctx.redact.cut(str(exc), 200)
            )
        )
        base.details = {"error": kind}
        return base
    base.latency_ms = int((time.monotonic() - started) * 1000)
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]
    not_after = cert.not_valid_after_utc
    days_left = (not_after - dt.datetime.now(dt.UTC)).days
    trusted_error = (
        chain_error(host=host, port=port, sni=sni, timeout=ctx.timeout) if ctx.verify_tls else ""
    )
    matches = any(dx.name_matches(n, server_name) for n in names)
    base.passed = matches and days_left >= 0 and not trusted_error
    base.details = {
        "names": list(names),
        "days_left": days_left,
        "not_after": not_after.isoformat(),
        "issuer": cert.issuer.rfc4514_string()[:200],
        "trusted": None if not ctx.verify_tls else not trusted_error,
    }
    base.excerpt = _("names: %(names)s; expires %(date)s (in %(days)d days)") % {
        "names": ", ".join(names) or "-",
        "date": not_after.date().isoformat(),
        "days": days_left,
    }
    if not base.passed:
        base.diagnosis = dx.certificate_problem(
            server_name=server_name,
            names=list(names),
            days_left=days_left,
            trusted_error=trusted_error,
        )
    return base


def run_check(check: Check, ctx: Context) -> CheckOutcome:
    """Run one check; any unexpected error becomes a failed outcome, never an exception."""
    try:
        if check.kind == "certificate":
            return _certificate(check, ctx)
        url = _request_url(check, ctx)
        headers = {}
        withheld = ""
        if check.key_role and check.key_role in ctx.keys:
            # Where the key would go: the origin, and the server block a Host header picks.
            origin = destination_of(url, "" if check.kind == "direct" else ctx.host_header)
            if origin in ctx.key_origins:
                headers["Authorization"] = f"Bearer {ctx.keys[check.key_role]}"
            elif check.needs_key or check.lane:
                # Without its key this probe proves nothing, and on /v0/management/ a missing
                # key counts toward CPA's 5-strikes ban: it is not sent at all.
                return _withheld_outcome(check, ctx, url, origin)
            else:
                withheld = origin
        if ctx.host_header and check.kind != "direct":
            headers["Host"] = ctx.host_header
        probe = send(
            method=check.method,
            url=url,
            timeout=ctx.timeout,
            verify=ctx.verify_tls,
            headers=headers,
        )
        outcome = _evaluate(check, probe, ctx, url)
        if withheld:
            _mark_withheld(outcome, withheld)
        return outcome
    except Exception as exc:  # a bug in one check must not lose the others
        return CheckOutcome(
            check_id=check.id,
            method=check.method,
            url=ctx.redact(ctx.base_url + check.path),
            expected=check.expected_text(),
            expected_upstream=check.expected_upstream,
            passed=False,
            diagnosis=_("Internal error while checking: %(error)s")
            % {"error": ctx.redact.cut(f"{type(exc).__name__}: {exc}", 300)},
        )


def _mark_withheld(outcome: CheckOutcome, origin: str) -> None:
    """Record on outcome that its key stayed home: an owner has not confirmed origin."""
    # What answered a keyless request says nothing about the key: never a pass.
    outcome.passed = False
    outcome.details = {**outcome.details, "keys_withheld": True, "origin": origin}
    outcome.diagnosis = withheld_message(origin)


def _withheld_outcome(check: Check, ctx: Context, url: str, origin: str) -> CheckOutcome:
    """Return the outcome of a key probe not sent because its destination is unconfirmed."""
    outcome = CheckOutcome(
        check_id=check.id,
        method=check.method,
        url=ctx.redact(url),
        expected=check.expected_text(),
        expected_upstream=check.expected_upstream,
        passed=False,
        details={"skipped": True},
    )
    _mark_withheld(outcome, origin)
    return outcome


def skipped_outcome(check: Check, ctx: Context) -> CheckOutcome:
    """Return the outcome of a lane probe held back so CPA does not ban the console."""
    return CheckOutcome(
        check_id=check.id,
        method=check.method,
        url=ctx.redact(_request_url(check, ctx)),
        expected=check.expected_text(),
        expected_upstream=check.expected_upstream,
        passed=False,
        diagnosis=dx.skipped_for_ban(),
        details={"skipped": True},
    )


class _ManagementLane:
    """Schedules the probes CPA's management auth may refuse: at most one refusal per run.

    CPA bans an IP after 5 refused management keys (reference 1.4). A risky probe starts only
    when no other risky probe is in flight and none was refused. The API-key negative probe is
    safe once /v0/management/ is seen answered by CPAMP: CPAMP refuses the "config" head itself
    and never forwards it without the Admin Key (reference 2.5).
    """

    def __init__(self, checks: list[Check]) -> None:
        self.pending = list(checks)
        self.route = ""
        self.refused = False
        self.risky_in_flight = False

    def _risky(self, check: Check) -> bool:
        if check.id == "management_refuses_api_key":
            return self.route != CPAMP
        return True

    def ready(self) -> tuple[list[tuple[Check, bool]], list[Check]]:
        """Return (checks to start now with their riskiness, checks to skip)."""
        start: list[tuple[Check, bool]] = []
        skip: list[Check] = []
        for check in list(self.pending):
            risky = self._risky(check)
            if risky and self.refused:
                skip.append(check)
            elif risky and self.risky_in_flight:
                continue
            else:
                start.append((check, risky))
                self.risky_in_flight = self.risky_in_flight or risky
            self.pending.remove(check)
        return start, skip

    def done(self, check: Check, outcome: CheckOutcome, risky: bool) -> None:
        if check.kind != "direct" and outcome.observed_upstream in (CPA, CPAMP):
            self.route = outcome.observed_upstream
        # A timeout may hide a refusal: count it, to stay on the safe side of the ban.
        if outcome.cpa_refused or (risky and outcome.timed_out):
            self.refused = True
        if risky:
            self.risky_in_flight = False


def build_context(
    deployment,
    *,
    base_url: str,
    verify_tls: bool,
    timeout: float,
    keys: dict[str, str],
    secrets: Iterable[str] = (),
    key_origins: Iterable[str] | None = None,
) -> Context:
    """Return the context of one run: keys by role and a redactor for every secret.

    Keys go only to key_origins; by default the origins an owner confirmed for the deployment.
    """
    base_url = base_url.rstrip("/")
    if key_origins is None:
        key_origins = confirmed_origins(deployment)
    return Context(
        deployment=deployment,
        base_url=base_url,
        verify_tls=verify_tls,
        timeout=timeout,
        keys=keys,
        redact=Redactor([*keys.values(), *secrets]),
        host_header=host_header(base_url, deployment.server_name),
        key_origins=frozenset(key_origins) - {""},
    )


# Seconds a run may overrun its checks' worst case: thread start-up and bookkeeping.
RUN_SLACK = 1.0


def _pool_size(plan: list[Check]) -> int:
    return max(1, min(int(settings.CONSOLE_VERIFY_POOL), len(plan) or 1))


def run_budget(plan: list[Check], *, timeout: float) -> float:
    """Return the seconds a run of plan takes at most: run_checks stops waiting after them.

    Every request is bounded in total by timeout (the certificate check makes two). Checks are
    started as soon as a worker is free, except the lane's, which may run one after another: such
    a schedule ends within the pool's share of all the work plus the longest chain of checks
    that wait for each other (Graham's bound for list scheduling).
    """
    if not plan:
        return RUN_SLACK
    cost = [2 if check.kind == "certificate" else 1 for check in plan]
    lane = sum(1 for check in plan if check.lane)
    units = sum(cost) / _pool_size(plan) + max(lane, *cost)
    return timeout * units + RUN_SLACK


def _deadline_outcome(check: Check, ctx: Context, budget: float) -> CheckOutcome:
    """Return the outcome of a check that had not finished when the run's deadline passed."""
    return CheckOutcome(
        check_id=check.id,
        method=check.method,
        url=ctx.redact(_request_url(check, ctx)),
        expected=check.expected_text(),
        expected_upstream=check.expected_upstream,
        passed=False,
        diagnosis=_(
            "Not finished by the run's deadline, %(budget)d s after the run started: the "
            "deployment answered too slowly."
        )
        % {"budget": math.ceil(budget)},
        details={"error": "timeout", "run_deadline": True},
        timed_out=True,
    )


def run_checks(
    ctx: Context,
    plan: list[Check],
    *,
    on_results: Callable[[list[CheckOutcome]], None] | None = None,
) -> list[CheckOutcome]:
    """Run the planned checks in parallel on a bounded pool; return outcomes in plan order.

    The run ends by its deadline, run_budget() after it starts: a check still unfinished then
    is reported as timed out and left to end on its own (its request is bounded too), so one
    slow deployment holds its worker no longer than that. on_results is called in the calling
    thread with the outcomes that arrived together (runs store them at once, so the admin shows
    progress, in few transactions).
    """
    positions = {c.id: i for i, c in enumerate(plan)}
    lane = _ManagementLane([c for c in plan if c.lane])
    outcomes: list[CheckOutcome] = []
    batch: list[CheckOutcome] = []
    budget = run_budget(plan, timeout=ctx.timeout)
    deadline = time.monotonic() + budget

    def finish(outcome: CheckOutcome) -> None:
        outcome.position = positions[outcome.check_id]
        outcomes.append(outcome)
        batch.append(outcome)

    def flush() -> None:
        if batch and on_results is not None:
            on_results(list(batch))
        batch.clear()

    # Diagnoses are written in the caller's language; the language is per thread.
    language = translation.get_language()

    def work(check: Check) -> CheckOutcome:
        with translation.override(language):
            return run_check(check, ctx)

    executor = ThreadPoolExecutor(max_workers=_pool_size(plan), thread_name_prefix="verify")
    running: dict = {}
    try:

        def start_lane() -> None:
            start, skip = lane.ready()
            for check, risky in start:
                running[executor.submit(work, check)] = (check, risky)
            for check in skip:
                finish(skipped_outcome(check, ctx))

        # The lane's first probe is submitted first so it gets a worker in the first batch:
        # its answer gates the others, and waiting for a free worker would add a round trip.
        start_lane()
        for check in plan:
            if not check.lane:
                running[executor.submit(work, check)] = (check, False)
        while running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done, _pending = wait(running, timeout=remaining, return_when=FIRST_COMPLETED)
            for future in done:
                check, risky = running.pop(future)
                outcome = future.result()
                finish(outcome)
                if check.lane:
                    lane.done(check, outcome, risky)
                    start_lane()
            flush()
        # Left only when the deadline passed: what still runs, waits in the queue or is held
        # back by the lane has timed out.
        for future, (check, _risky) in running.items():
            if future.done() and not future.cancelled():
                finish(future.result())
            else:
                finish(_deadline_outcome(check, ctx, budget))
        for check in lane.pending:
            finish(_deadline_outcome(check, ctx, budget))
        lane.pending.clear()
    finally:
        # Never wait for stragglers: each ends by its own request deadline.
        executor.shutdown(wait=False, cancel_futures=True)
    flush()
    return sorted(outcomes, key=lambda o: o.position)
