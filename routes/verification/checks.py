"""The seed's verification checks as data: what each sends, where, and what a healthy answer is.

Every check's own judgement sits in its entry: the statuses it accepts, who must answer, where
the request goes (a Target), and a judge for what a special answer means. The runner
(routes/verification/runner.py) and the evaluation (outcomes.py) read these fields and never ask
which check they hold, so a new check is one new entry here (and, if it deserves its own words
for a failure, one entry in diagnoses.BY_CHECK).

``request_monitoring`` walks the seed's "Request monitoring has no data" chain; its judge names
the first broken link (diagnoses codes), reading CPAMP's /usage-service/config (whose saved CPA
Management Key is masked before anything looks at the answer) and the X-CPA-VERSION the run saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.utils.translation import gettext_lazy

from routes import keys as keyring
from routes.verification import diagnoses as dx
from routes.verification.destinations import destination_of, host_header, origin_of
from routes.verification.http import CPA, CPAMP, UNKNOWN, Probe, mask_json

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    from routes.models import Deployment

MANAGER_SERVER = "manager_server"
CPA_PANEL = "cpa_panel"
BOTH_MODES = (MANAGER_SERVER, CPA_PANEL)
# How a check talks to the deployment: one HTTP request, or a TLS handshake that reads the
# certificate (and a second one that asks the trust store, when TLS is verified).
HTTP = "http"
TLS = "tls"
UPSTREAM_NAMES = dx.UPSTREAM_NAMES


# --- where a request goes -------------------------------------------------------------------


def _run_base_url(deployment: Deployment, base_url: str) -> str:
    return base_url


def _plain_http(deployment: Deployment, base_url: str) -> str:
    # The same host on the deployment's HTTP port, where nginx must redirect to HTTPS.
    host = urlsplit(base_url).hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = deployment.http_port
    return f"http://{host}{'' if port == 80 else f':{port}'}"


def _cpa_url(deployment: Deployment, base_url: str) -> str:
    return deployment.cpamp_cpa_url


def _always(deployment: Deployment) -> bool:
    return True


def _has_cpa_url(deployment: Deployment) -> bool:
    return bool(deployment.cpamp_cpa_url)


@dataclass(frozen=True)
class Target:
    """Where a check's request goes: a base URL for the deployment and the run's base URL."""

    base: Callable[[Deployment, str], str]
    # Through the deployment's nginx, the Host header picks the server block, and so where a key
    # goes; a service reached directly gets no Host header.
    via_nginx: bool = True
    # Whether the deployment has this destination at all (a check without one is not planned).
    available: Callable[[Deployment], bool] = _always

    def url(self, check: Check, *, deployment: Deployment, base_url: str) -> str:
        """Return the URL check requests for deployment when a run goes to base_url."""
        return self.base(deployment, base_url).rstrip("/") + check.path

    def destination(self, *, deployment: Deployment, base_url: str) -> str:
        """Return where a key goes when a check of this target sends it (destination_of)."""
        host = host_header(base_url, deployment.server_name) if self.via_nginx else ""
        return destination_of(self.base(deployment, base_url), host)


# The run's base URL, through nginx (most checks).
NGINX = Target(base=_run_base_url)
# nginx's plain HTTP port on the run's host.
NGINX_HTTP = Target(base=_plain_http)
# CPA itself at the CPA URL CPAMP was set up with, when the console can reach it.
CPA_DIRECT = Target(base=_cpa_url, via_nginx=False, available=_has_cpa_url)


# --- what an answer means -------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP answer as a judge sees it: a judge may correct who answered and add details.

    seen holds what the run observed so far (``cpa_version``: an X-CPA-VERSION); a judge may set
    a warning on an answer that holds.
    """

    probe: Probe
    observed: str
    details: dict[str, Any] = field(default_factory=dict)
    seen: Mapping[str, str] = field(default_factory=dict)
    warning: dx.Diagnosis | None = None

    @property
    def status(self) -> int:
        """Return the status code (0 when there was none)."""
        return self.probe.status_code or 0


# A check's own test of an answer beyond its status and who answered: True when it holds.
Judge = Callable[[Answer], bool]


def is_cpamp_health(answer: Answer) -> bool:
    """CPAMP's /health body, exactly (reference 2.3): another service may answer /health too."""
    return answer.probe.json() == {"ok": True, "service": "cpa-manager-plus"}


def reports_setup_state(answer: Answer) -> bool:
    """Keep CPAMP's setup flags from /usage-service/info in the details; any such answer holds."""
    data = answer.probe.json()
    if isinstance(data, dict):
        answer.details["setupRequired"] = data.get("setupRequired")
        answer.details["configured"] = data.get("configured")
    return True


def admin_key_proves_cpamp(answer: Answer) -> bool:
    """A 200 to the Admin Key came through CPAMP, even when CPA's fingerprint is on it."""
    if answer.observed != CPAMP and answer.status == 200:
        if "x-console-upstream" not in answer.probe.headers:
            # Only CPAMP turns the Admin Key into the CPA Management Key; CPA alone refuses it.
            answer.observed = CPAMP
            answer.details["inferred"] = "CPA answered 200 to the Admin Key, so CPAMP proxied it"
    return True


def is_cpa_itself(answer: Answer) -> bool:
    """Something that answers 200 without being recognisably CPA is not CPA's management API."""
    return not (answer.observed == UNKNOWN and answer.status == 200)


def walks_request_monitoring(answer: Answer) -> bool:
    """The seed's "Request monitoring has no data" chain holds; details["link"] names the break.

    In the seed's order: CPAMP is connected to CPA, it can read CPA's config with its saved key
    (CPA's Management API is on and the key works), its collector is on, CPA publishes usage,
    and CPA is at least v6.10.8. Only flags and the version are kept.
    """
    data = answer.probe.json()
    config = data.get("config") if isinstance(data, dict) else None
    if answer.status != 200 or not isinstance(config, dict):
        return answer.status != 200  # another answer is judged by its status and upstream
    connection = config.get("cpaConnection") or {}
    collector = config.get("collector") or {}
    usage = data.get("cpaUsage")
    version = answer.seen.get("cpa_version", "")
    details = answer.details
    details["collector_enabled"] = collector.get("enabled") if isinstance(collector, dict) else None
    if isinstance(usage, dict):
        details["usage_statistics_enabled"] = usage.get("usageStatisticsEnabled")
    details["cpa_version"] = version[:40]
    saved_url = connection.get("cpaBaseUrl") if isinstance(connection, dict) else ""
    if isinstance(saved_url, str) and saved_url:
        # Only the origin: a URL may carry user info, and the rest says nothing here.
        details["saved_cpa_url"] = origin_of(saved_url)
    parsed = dx.parse_version(version)
    link = ""
    if not isinstance(connection, dict) or not connection.get("cpaBaseUrl"):
        link = "setup_incomplete"
    elif not isinstance(usage, dict):
        link = "cpa_usage_unreadable"
    elif isinstance(collector, dict) and collector.get("enabled") is False:
        link = "request_monitoring_off"
    elif usage.get("usageStatisticsEnabled") is not True:
        link = "usage_publishing_off"
    elif parsed is not None and parsed < dx.MIN_USAGE_QUEUE_VERSION:
        link = "cpa_too_old_for_usage_queue"
    elif parsed is None:
        answer.warning = dx.Diagnosis("cpa_version_unknown", {})
    if link:
        details["link"] = link
    return not link


def without_saved_key(probe: Probe) -> Probe:
    """Return probe with every secret-looking field of its JSON masked (reference 3.3).

    CPAMP's /usage-service/config returns the saved CPA Management Key in clear to the admin:
    it is masked here, before the answer is judged, excerpted or stored.
    """
    data = probe.json()
    if data is None:
        return probe
    masked = json.dumps(mask_json(data), separators=(",", ":"), ensure_ascii=False).encode()
    return replace(probe, body=masked)


def redirects_to_https(answer: Answer) -> bool:
    """The redirect points at https://; nobody upstream answers a redirect."""
    answer.observed = ""
    return answer.probe.location.lower().startswith("https://")


@dataclass(frozen=True)
class Check:
    """One verification check: what to send, where, and what a healthy deployment answers."""

    id: str
    label: StrOrPromise
    method: str
    path: str
    expected_upstream: str
    # Accepted statuses; empty means any answer below 500 except those in `rejects`.
    statuses: tuple[int, ...] = (200,)
    rejects: tuple[int, ...] = ()
    key_role: str = ""
    # A negative probe: without its key it proves nothing, so it is not planned without one.
    needs_key: bool = False
    modes: tuple[str, ...] = (MANAGER_SERVER,)
    # How the check changes in another mode: field values by mode.
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)
    needs_tls: bool = False
    target: Target = NGINX
    judge: Judge | None = None
    # The expectation in words when statuses and upstream do not say it.
    expectation: StrOrPromise = ""
    # Probes on /v0/management/ that CPA may refuse: scheduled by the runner's management lane.
    lane: bool = False
    # A lane probe CPA cannot be asked once this upstream is seen answering /v0/management/.
    safe_behind: str = ""
    # A lane probe that is safe once this check passed (it proved the key the probe relies on).
    safe_after: str = ""
    # An unreachable target on a Docker network is a skip, not a failure (CPA is often only on
    # that network); on the host topology it fails.
    unreachable_skips: bool = False
    transport: str = HTTP
    # Requests one run of the check makes at most, each bounded by the timeout.
    requests: int = 1
    # One request per stored key of key_role: passes only when every key is accepted.
    per_key: bool = False
    # Applied to the answer before anything reads it: masks what must never be kept.
    scrub: Callable[[Probe], Probe] | None = None

    @property
    def fingerprints(self) -> bool:
        """Return True when an OPTIONS may follow, to tell who answered (tracing off)."""
        return self.transport == HTTP and self.target.via_nginx and bool(self.expected_upstream)

    def cost(self, keys: int = 1) -> int:
        """Return the requests this check makes at most with keys stored for its role."""
        count = self.requests * (max(1, keys) if self.per_key else 1)
        return count + (1 if self.fingerprints else 0)

    def expected_text(self) -> str:
        """Return the expectation in words, e.g. "200 from CPAMP"."""
        if self.expectation:
            return str(self.expectation)
        return dx.expected_words(statuses=self.statuses, upstream=self.expected_upstream)

    def accepts(self, status: int) -> bool:
        """Return True when status is one this check accepts."""
        if self.statuses:
            return status in self.statuses
        return status < 500 and status not in self.rejects

    def url(self, *, deployment: Deployment, base_url: str) -> str:
        """Return the URL this check requests when a run goes to base_url."""
        return self.target.url(self, deployment=deployment, base_url=base_url)


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
            # CPA Panel mode: CPA serves /management.html itself, for GET only (gin maps no HEAD).
            variants={CPA_PANEL: {"method": "GET", "expected_upstream": CPA}},
        ),
        Check(
            "cpamp_health",
            gettext_lazy("CPAMP health"),
            "GET",
            "/health",
            CPAMP,
            judge=is_cpamp_health,
        ),
        Check("cpa_health", gettext_lazy("CPA health"), "GET", "/healthz", CPA, modes=BOTH_MODES),
        Check(
            "usage_service_info",
            gettext_lazy("CPAMP runtime info"),
            "GET",
            "/usage-service/info",
            CPAMP,
            judge=reports_setup_state,
        ),
        Check(
            "api_models",
            gettext_lazy("CPA API with the API key"),
            "GET",
            "/v1/models",
            CPA,
            key_role=keyring.CPA_API,
            modes=BOTH_MODES,
            per_key=True,
        ),
        Check(
            "management_config",
            gettext_lazy("Management API through CPAMP"),
            "GET",
            "/v0/management/config",
            CPAMP,
            key_role=keyring.CPAMP_ADMIN,
            judge=admin_key_proves_cpamp,
            lane=True,
        ),
        Check(
            "plugin_resources",
            gettext_lazy("Plugin resources"),
            "GET",
            "/v0/resource/plugins/",
            CPAMP,
            statuses=(),
            # CPAMP before its first setup cannot serve plugin resources either.
            rejects=(412, 428),
        ),
        Check(
            "models_compat",
            gettext_lazy("/models compatibility proxy"),
            "GET",
            "/models",
            CPAMP,
            statuses=(),
            # CPAMP before its first setup: the proxy exists but cannot reach CPA yet.
            rejects=(412, 428),
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
            # CPAMP refuses the "config" head itself and never forwards it without the Admin Key
            # (reference 2.5): once /v0/management/ is seen going to CPAMP, CPA never sees it.
            safe_behind=CPAMP,
        ),
        Check(
            "request_monitoring",
            gettext_lazy("Request monitoring"),
            "GET",
            "/usage-service/config",
            CPAMP,
            key_role=keyring.CPAMP_ADMIN,
            needs_key=True,
            judge=walks_request_monitoring,
            scrub=without_saved_key,
            expectation=gettext_lazy("200 from CPAMP, with every link of request monitoring on"),
            # CPAMP reads CPA's config with its saved key to answer: a stale key is one more
            # refusal at CPA. Once management_config passed, that key is known to work.
            lane=True,
            safe_after="management_config",
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
            target=NGINX_HTTP,
            judge=redirects_to_https,
            expectation=gettext_lazy("301 to https://"),
        ),
        Check(
            "certificate",
            gettext_lazy("Certificate"),
            "TLS",
            "",
            "",
            modes=BOTH_MODES,
            needs_tls=True,
            expectation=gettext_lazy("a certificate for the server name, not expired"),
            transport=TLS,
            requests=2,
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
            target=CPA_DIRECT,
            judge=is_cpa_itself,
            lane=True,
            unreachable_skips=True,
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
# "Test this key": each role's probes, the positive one first (reference 1.3, 1.4, 2.2).
KEY_PROBES = {
    keyring.CPA_API: ("api_models", "management_refuses_api_key"),
    keyring.CPAMP_ADMIN: ("management_config", "api_refuses_admin_key"),
    keyring.CPA_MANAGEMENT: ("cpa_direct",),
}


def check_label(check_id: str) -> str:
    """Return a check's human name in the active language (its id when it is not a check)."""
    check = CHECKS.get(check_id)
    return str(check.label) if check is not None else check_id


def expected_label(check_id: str, mode: str, *, stored: str = "") -> str:
    """Return what a check expects in the active language, in a mode (stored: when unknown)."""
    check = CHECKS.get(check_id)
    return check_for_mode(check, mode).expected_text() if check is not None else stored


def check_for_mode(check: Check, mode: str) -> Check:
    """Return the check as it applies to a deployment mode."""
    changes = check.variants.get(mode)
    return replace(check, **changes) if changes else check


def plan_checks(
    deployment: Deployment, *, roles: Iterable[str], enabled: Iterable[str] = ()
) -> list[Check]:
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
        if not check.target.available(deployment):
            continue
        plan.append(check_for_mode(check, deployment.mode))
    return plan


def key_probes(deployment: Deployment, role: str) -> list[Check]:
    """Return the checks "Test this key" runs for a key of role on deployment."""
    probes = (
        check_for_mode(CHECKS[check_id], deployment.mode) for check_id in KEY_PROBES.get(role, ())
    )
    return [check for check in probes if check.target.available(deployment)]
