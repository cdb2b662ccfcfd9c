"""Running checks: one check through the HTTP seam, and a run's checks on a bounded pool.

A run's checks go out in parallel on at most CONSOLE_VERIFY_POOL threads and the run ends by its
deadline (run_budget). The probes CPA's management auth may refuse go through the management
lane, so a run never adds more than one refusal to CPA's 5-strikes IP ban.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography import x509
from django.conf import settings
from django.utils import translation

from routes.verification import http
from routes.verification import outcomes as out
from routes.verification.checks import TLS, Check
from routes.verification.destinations import confirmed_origins, host_header
from routes.verification.outcomes import CheckOutcome, Context

if TYPE_CHECKING:
    from routes.models import Deployment

# Seconds a run may overrun its checks' worst case: thread start-up and bookkeeping.
RUN_SLACK = 1.0


def build_context(
    deployment: Deployment,
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
        redact=http.Redactor([*keys.values(), *secrets]),
        host_header=host_header(base_url, deployment.server_name),
        key_origins=frozenset(key_origins) - {""},
    )


# --- one check ------------------------------------------------------------------------------


def _http_check(check: Check, ctx: Context) -> CheckOutcome:
    """Send check's request (with its key when it may go there) and judge the answer."""
    url = ctx.url(check)
    headers = {}
    withheld = ""
    if check.key_role and check.key_role in ctx.keys:
        # Where the key would go: the origin, and the server block a Host header picks.
        origin = check.target.destination(deployment=ctx.deployment, base_url=ctx.base_url)
        if origin in ctx.key_origins:
            headers["Authorization"] = f"Bearer {ctx.keys[check.key_role]}"
        elif check.needs_key or check.lane:
            # Without its key this probe proves nothing, and on /v0/management/ a missing key
            # counts toward CPA's 5-strikes ban: it is not sent at all.
            return out.withheld(check, ctx, url=url, origin=origin)
        else:
            withheld = origin
    if ctx.host_header and check.target.via_nginx:
        headers["Host"] = ctx.host_header
    probe = http.send(
        method=check.method, url=url, timeout=ctx.timeout, verify=ctx.verify_tls, headers=headers
    )
    outcome = out.evaluate(check, probe, ctx, url)
    if withheld:
        out.mark_withheld(outcome, withheld)
    return outcome


def _tls_check(check: Check, ctx: Context) -> CheckOutcome:
    """Fetch the served certificate and judge its names, its expiry and (if asked) its trust."""
    parts = urlsplit(ctx.base_url)
    host = parts.hostname or ctx.deployment.server_name
    # An http:// base URL (say, a job that checks port 80) still has its TLS on https_port.
    port = (parts.port or 443) if parts.scheme == "https" else ctx.deployment.https_port
    server_name = ctx.deployment.server_name
    sni = host if server_name.startswith("*") else server_name
    shown = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    url = f"https://{shown}"
    started = time.monotonic()
    try:
        der = http.fetch_certificate(host=host, port=port, sni=sni, timeout=ctx.timeout)
    except (OSError, ssl.SSLError) as exc:
        outcome = out.unreachable(
            check, ctx, url=url, kind=http.classify(exc), detail=ctx.redact.cut(str(exc), 200)
        )
        outcome.latency_ms = int((time.monotonic() - started) * 1000)
        return outcome
    latency_ms = int((time.monotonic() - started) * 1000)
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = list(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        common_names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        names = [str(a.value) for a in common_names]
    trusted_error = (
        http.chain_error(host=host, port=port, sni=sni, timeout=ctx.timeout)
        if ctx.verify_tls
        else ""
    )
    return out.certificate(
        check,
        ctx,
        url=url,
        names=names,
        not_after=cert.not_valid_after_utc,
        issuer=cert.issuer.rfc4514_string(),
        trusted_error=trusted_error,
        latency_ms=latency_ms,
    )


# How each transport runs a check.
_TRANSPORTS: dict[str, Callable[[Check, Context], CheckOutcome]] = {TLS: _tls_check}


def run_check(check: Check, ctx: Context) -> CheckOutcome:
    """Run one check; any unexpected error becomes a failed outcome, never an exception."""
    try:
        return _TRANSPORTS.get(check.transport, _http_check)(check, ctx)
    except Exception as exc:  # a bug in one check must not lose the others
        return out.internal_error(check, ctx, exc)


# --- a run's checks -------------------------------------------------------------------------


class ManagementLane:
    """Schedules the probes CPA's management auth may refuse: at most one refusal per run.

    CPA bans an IP after 5 refused management keys (reference 1.4). A risky probe starts only
    when no other risky probe is in flight and none was refused. A probe with safe_behind is safe
    once /v0/management/ is seen answered by that upstream (CPAMP refuses the API key's "config"
    head itself and never forwards it without the Admin Key, reference 2.5).
    """

    def __init__(self, checks: list[Check]) -> None:
        self.pending = list(checks)
        self.route = ""
        self.refused = False
        self.risky_in_flight = False

    def _risky(self, check: Check) -> bool:
        return not (check.safe_behind and self.route == check.safe_behind)

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
        """Take a finished lane probe into account: the route it saw, and any refusal."""
        if check.target.via_nginx and outcome.observed_upstream in (http.CPA, http.CPAMP):
            self.route = outcome.observed_upstream
        # A timeout may hide a refusal: count it, to stay on the safe side of the ban.
        if outcome.cpa_refused or (risky and outcome.timed_out):
            self.refused = True
        if risky:
            self.risky_in_flight = False


def _pool_size(plan: list[Check]) -> int:
    return max(1, min(int(settings.CONSOLE_VERIFY_POOL), len(plan) or 1))


def run_budget(plan: list[Check], *, timeout: float) -> float:
    """Return the seconds a run of plan takes at most: run_checks stops waiting after them.

    Every request is bounded in total by timeout (a check makes at most check.requests).
    Checks are started as soon as a worker is free, except the lane's, which may run one after
    another: such a schedule ends within the pool's share of all the work plus the longest chain
    of checks that wait for each other (Graham's bound for list scheduling).
    """
    if not plan:
        return RUN_SLACK
    cost = [check.requests for check in plan]
    lane = sum(1 for check in plan if check.lane)
    units = sum(cost) / _pool_size(plan) + max(lane, *cost)
    return timeout * units + RUN_SLACK


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
    lane = ManagementLane([c for c in plan if c.lane])
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
    running: dict[Future[CheckOutcome], tuple[Check, bool]] = {}
    try:

        def start_lane() -> None:
            start, skip = lane.ready()
            for check, risky in start:
                running[executor.submit(work, check)] = (check, risky)
            for check in skip:
                finish(out.skipped_for_ban(check, ctx))

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
                finish(out.past_deadline(check, ctx, budget=budget))
        for check in lane.pending:
            finish(out.past_deadline(check, ctx, budget=budget))
        lane.pending.clear()
    finally:
        # Never wait for stragglers: each ends by its own request deadline.
        executor.shutdown(wait=False, cancel_futures=True)
    flush()
    return sorted(outcomes, key=lambda o: o.position)
