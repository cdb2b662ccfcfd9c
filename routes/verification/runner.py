"""Running checks: one check through the HTTP seam, and a run's checks on a bounded pool.

A run's checks go out in one wave: the pool has a worker for every planned check (at least
CONSOLE_VERIFY_POOL), and the run ends by its deadline (run_budget). The probes CPA's management
auth may refuse go through the management lane, so a run never adds more than one refusal to
CPA's 5-strikes IP ban; the lane holds back only those, so with every answer delayed by D a run
costs at most 2·D more (management_config crosses CPAMP and then CPA; the probes it gates follow).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography import x509
from django.conf import settings
from django.utils import translation

from routes.models import STORED_LANGUAGE
from routes.verification import http
from routes.verification import outcomes as out
from routes.verification.checks import TLS, Check
from routes.verification.destinations import confirmed_origins, host_header
from routes.verification.outcomes import CheckOutcome, Context, SentKey, StoredKey

if TYPE_CHECKING:
    from collections.abc import Mapping

    from routes.models import Deployment

logger = logging.getLogger(__name__)

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
    key_sets: Mapping[str, list[StoredKey]] | None = None,
    slow_threshold_ms: int | None = None,
) -> Context:
    """Return the context of one run: keys by role and a redactor for every secret.

    Keys go only to key_origins; by default the origins an owner confirmed for the deployment.
    key_sets: every stored key by role, for the checks that send each one (api_models).
    slow_threshold_ms: the job's; a check passing slower carries a "slow" warning.
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
        key_sets={role: list(stored) for role, stored in (key_sets or {}).items()},
        slow_threshold_ms=slow_threshold_ms,
    )


# --- one check ------------------------------------------------------------------------------


def _send(check: Check, ctx: Context, *, url: str, headers: dict[str, str]) -> http.Probe:
    return http.send(
        method=check.method, url=url, timeout=ctx.timeout, verify=ctx.verify_tls, headers=headers
    )


def _identify(check: Check, ctx: Context, *, url: str, probe: http.Probe) -> str:
    """Return who answered, from an OPTIONS without credentials, when the answer cannot tell."""
    if not out.needs_fingerprint(check, probe, ctx):
        return ""
    headers = {"Host": ctx.host_header} if ctx.host_header else {}
    options = http.send(
        method="OPTIONS", url=url, timeout=ctx.timeout, verify=ctx.verify_tls, headers=headers
    )
    found = http.options_fingerprint(options)
    return "" if found == http.UNKNOWN else found


def _one_request(
    check: Check, ctx: Context, *, url: str, headers: dict[str, str], key: SentKey | None
) -> CheckOutcome:
    probe = _send(check, ctx, url=url, headers=headers)
    identified = _identify(check, ctx, url=url, probe=probe)
    return out.evaluate(check, probe, ctx, url, identified=identified, key=key)


def _http_check(check: Check, ctx: Context) -> CheckOutcome:
    """Send check's request (with its key when it may go there) and judge the answer.

    A per_key check sends one request per stored key of its role and passes only when every
    key is accepted.
    """
    url = ctx.url(check)
    headers = {}
    if ctx.host_header and check.target.via_nginx:
        headers["Host"] = ctx.host_header
    keys = ctx.keys_of(check.key_role) if check.key_role else []
    if keys:
        # Where the key would go: the origin, and the server block a Host header picks.
        origin = check.target.destination(deployment=ctx.deployment, base_url=ctx.base_url)
        if origin not in ctx.key_origins:
            if check.needs_key or check.lane:
                # Without its key this probe proves nothing, and on /v0/management/ a missing
                # key counts toward CPA's 5-strikes ban: it is not sent at all.
                return out.withheld(check, ctx, url=url, origin=origin)
            outcome = _one_request(check, ctx, url=url, headers=headers, key=None)
            out.mark_withheld(outcome, origin)
            return outcome
    if not keys:
        return _one_request(check, ctx, url=url, headers=headers, key=None)
    sent = keys if check.per_key else keys[:1]
    results = []
    for stored in sent:
        key = SentKey(
            display=stored.display,
            role_is=ctx.role_of(stored.secret, sent_as=check.key_role),
        )
        with_key = {**headers, "Authorization": f"Bearer {stored.secret}"}
        results.append(
            (stored.display, _one_request(check, ctx, url=url, headers=with_key, key=key))
        )
    if check.per_key:
        return out.combine_keys(check, results)
    return results[0][1]


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
            check, ctx, url=url, kind=http.classify(exc), reason=http.reason(exc)
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
        self_signed=cert.issuer == cert.subject,
    )


# How each transport runs a check.
_TRANSPORTS: dict[str, Callable[[Check, Context], CheckOutcome]] = {TLS: _tls_check}


def run_check(check: Check, ctx: Context) -> CheckOutcome:
    """Run one check; any unexpected error becomes a failed outcome, never an exception."""
    try:
        outcome = _TRANSPORTS.get(check.transport, _http_check)(check, ctx)
    except Exception as exc:  # a bug in one check must not lose the others
        logger.exception("verification check %s failed", check.id)
        return out.internal_error(check, ctx, exc)
    # Every check passes through here once, whatever its transport: the one place for this.
    out.flag_slow(outcome, ctx)
    return outcome


# --- a run's checks -------------------------------------------------------------------------


class ManagementLane:
    """Schedules the probes CPA's management auth may refuse: at most one refusal per run.

    CPA bans an IP after 5 refused management keys (reference 1.4). A risky probe starts only
    when no other risky probe is in flight and none was refused. A probe with safe_behind is safe
    once /v0/management/ is seen answered by that upstream (CPAMP refuses the API key's "config"
    head itself and never forwards it without the Admin Key, reference 2.5); one with safe_after
    is safe once that check passed (it proved the key the probe relies on).
    """

    def __init__(self, checks: list[Check]) -> None:
        self.pending = list(checks)
        self.route = ""
        self.refused = False
        # The check whose refusal (or timeout) stopped the lane.
        self.refused_by = ""
        self.passed: set[str] = set()
        self.risky_in_flight = False

    def _risky(self, check: Check) -> bool:
        if check.safe_behind and self.route == check.safe_behind:
            return False
        return not (check.safe_after and check.safe_after in self.passed)

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
        if outcome.passed:
            self.passed.add(check.id)
        # A timeout may hide a refusal: count it, to stay on the safe side of the ban.
        if outcome.cpa_refused or (risky and outcome.timed_out):
            self.refused = True
            self.refused_by = self.refused_by or check.id
        if risky:
            self.risky_in_flight = False


def pool_size(plan: list[Check]) -> int:
    """Return the workers a run of plan gets: one wave, a worker for every check."""
    # One wave: a worker for every check (CONSOLE_VERIFY_POOL is the least a run gets).
    return max(1, int(settings.CONSOLE_VERIFY_POOL), len(plan))


def run_budget(
    plan: list[Check], *, timeout: float, key_counts: Mapping[str, int] | None = None
) -> float:
    """Return the seconds a run of plan takes at most: run_checks stops waiting after them.

    Every request is bounded in total by timeout; a check makes at most check.cost() of them
    (one per key for per_key checks, given key_counts by role; one more for a fingerprint).
    Checks are started as soon as a worker is free, except the lane's, which may run one after
    another: such a schedule ends within the pool's share of all the work plus the longest chain
    of checks that wait for each other (Graham's bound for list scheduling).
    """
    if not plan:
        return RUN_SLACK
    counts = key_counts or {}
    cost = [check.cost(counts.get(check.key_role, 1)) for check in plan]
    lane = sum(c for check, c in zip(plan, cost, strict=True) if check.lane)
    units = sum(cost) / pool_size(plan) + max(lane, *cost)
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
    key_counts = {role: len(ctx.keys_of(role)) for role in {c.key_role for c in plan} - {""}}
    budget = run_budget(plan, timeout=ctx.timeout, key_counts=key_counts)
    deadline = time.monotonic() + budget

    def finish(outcome: CheckOutcome) -> None:
        outcome.position = positions[outcome.check_id]
        outcomes.append(outcome)
        batch.append(outcome)

    def flush() -> None:
        if batch and on_results is not None:
            on_results(list(batch))
        batch.clear()

    def work(check: Check) -> CheckOutcome:
        # The language is per thread: stored texts are English (models.STORED_LANGUAGE).
        with translation.override(STORED_LANGUAGE):
            return run_check(check, ctx)

    executor = ThreadPoolExecutor(max_workers=pool_size(plan), thread_name_prefix="verify")
    running: dict[Future[CheckOutcome], tuple[Check, bool]] = {}
    try:

        def start_lane() -> None:
            start, skip = lane.ready()
            for check, risky in start:
                running[executor.submit(work, check)] = (check, risky)
            for check in skip:
                finish(out.skipped_for_ban(check, ctx, after=lane.refused_by))

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
