"""What a failed check means, as a code plus parameters, and its words in the viewer's language.

Drawn from the seed's "Troubleshooting" section (/work/shared/seed/reverse-proxy.md) and the
behaviour reference (/work/shared/reference/cpa-cpamp-behaviour.md, Part 3 measured). A check's
diagnosis (and warning) is stored as a Diagnosis: a stable code and plain parameters (numbers,
hosts, role and upstream ids), never words. render() turns it into words in the active language
when a page, a command or a notification shows it, so a run started in English reads in Chinese
for a Chinese user. The parameters never hold a secret or a library's exception text.

The tables at the end say which diagnosis applies to a failed answer: FIRST for any check, then
BY_CHECK for one check's own causes, then ROUTE (who answered), then BY_CHECK_BODY.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from routes import keys as keyring
from routes.keys import ROLE_LABELS
from routes.verification.http import CERTIFICATE_REASONS, CPA, CPAMP, UNKNOWN

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    from routes.models import CheckResult, Deployment
    from routes.verification.checks import Check

UPSTREAM_LABELS = {CPA: "CPA (:8317)", CPAMP: "CPAMP (:18317)"}
UPSTREAM_NAMES = {CPA: "CPA", CPAMP: "CPAMP"}
HOST = "host"
DOCKER = "docker"
# The lowest CPA with the HTTP usage queue that CPAMP's request monitoring reads (reference 2.7).
MIN_USAGE_QUEUE_VERSION = (6, 10, 8)

Params = Mapping[str, Any]


@dataclass(frozen=True)
class Diagnosis:
    """One diagnosis or warning: a stable code and the parameters its words need."""

    code: str
    params: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """Return the words in the active language."""
        return render(self.code, self.params)


# --- where things run -------------------------------------------------------------------------


def host_of(address: str) -> str:
    """Return the host of host:port, [v6]:port or a URL."""
    if "://" in address:
        return urlsplit(address).hostname or ""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def topology_of(address: str) -> str:
    """Return "host" for a loopback address (nginx on the host), else "docker" (a service name)."""
    host = host_of(address).lower()
    if host == "localhost":
        return HOST
    try:
        return HOST if ipaddress.ip_address(host).is_loopback else DOCKER
    except ValueError:
        return DOCKER


def upstream_address(deployment: Deployment, upstream: str) -> str:
    """Return the address nginx proxies upstream to (host:port)."""
    return deployment.cpa_upstream if upstream == CPA else deployment.cpamp_upstream


# --- words ------------------------------------------------------------------------------------


def _upstream(name: str) -> str:
    """Return an upstream's name with its port, as operators know it."""
    return UPSTREAM_LABELS.get(name, _("the upstream"))


def _role(role: str) -> str:
    return str(ROLE_LABELS.get(role, role))


def docker_checklist() -> str:
    """Return the seed's checklist for an upstream nginx cannot reach on a Docker network."""
    items = [
        _("same Docker network as nginx"),
        _("listening on 0.0.0.0 (CPA 0.0.0.0:8317; CPAMP HTTP_ADDR=0.0.0.0:18317), not 127.0.0.1"),
        _("the service name is right (cli-proxy-api, cpa-manager-plus) or the port is exposed"),
        _("the container is running"),
        _("remote-management.allow-remote: true in CPA's config.yaml"),
    ]
    return _("Check: %(items)s.") % {"items": "; ".join(items)}


def cpamp_to_cpa_checklist() -> str:
    """Return the seed's checklist for "setup cannot save the CPA URL" (CPAMP cannot reach CPA)."""
    items = [
        _("CPA and CPAMP are in the same Docker network"),
        _("CPA listens on 0.0.0.0:8317"),
        _("the service name is really cli-proxy-api"),
        _("the CPA container is running"),
        _("remote-management.allow-remote is set to true"),
    ]
    return _("Check: %(items)s.") % {"items": "; ".join(items)}


def _running_on_host(name: str, address: str) -> str:
    return _("Is %(name)s running and listening on %(address)s?") % {
        "name": name,
        "address": address,
    }


# Reasons (http.reason codes) as words.
REASONS: dict[str, StrOrPromise] = {
    "self_signed": gettext_lazy("self-signed"),
    "unknown_issuer": gettext_lazy("issued by an authority the trust store does not know"),
    "expired": gettext_lazy("expired"),
    "not_yet_valid": gettext_lazy("not valid yet"),
    "hostname_mismatch": gettext_lazy("issued for another name"),
    "untrusted": gettext_lazy("refused by the trust store"),
    "handshake": gettext_lazy("the TLS handshake failed"),
    "closed": gettext_lazy("the server closed the connection without an answer"),
    "reset": gettext_lazy("the connection was reset"),
    "not_http": gettext_lazy("the answer was not HTTP"),
    "unreachable": gettext_lazy("the network or the host is unreachable"),
    "refused": gettext_lazy("connection refused"),
    "dns": gettext_lazy("the name does not resolve"),
    "timeout": gettext_lazy("no answer in time"),
    "tls": gettext_lazy("the TLS handshake failed"),
    "connection": gettext_lazy("the connection failed"),
}


def _reason(code: str) -> str:
    return str(REASONS.get(code, REASONS["connection"]))


def _setup_incomplete(p: Params) -> str:
    values = {"panel": p["panel"], "cpa_url": p.get("cpa_url") or "http://cli-proxy-api:8317"}
    status = p.get("status")
    if status and status != 200:
        return _(
            "%(status)d: CPAMP's first setup is not finished, so it cannot proxy to CPA yet. Open "
            "%(panel)s, enter the CPAMP Admin Key, the CPA URL (%(cpa_url)s for this deployment) "
            "and the CPA Management Key, then run verification again."
        ) % {"status": status, **values}
    return (
        _(
            "CPAMP's first setup is not finished, so it cannot proxy to CPA yet. Open %(panel)s, "
            "enter the CPAMP Admin Key, the CPA URL (%(cpa_url)s for this deployment) and the CPA "
            "Management Key, then run verification again."
        )
        % values
    )


def _upstream_down(p: Params) -> str:
    upstream, address = p["upstream"], p["address"]
    if p.get("topology") == HOST:
        return _(
            "%(status)d from nginx: %(upstream)s at %(address)s does not answer. %(question)s"
        ) % {
            "status": p["status"],
            "upstream": _upstream(upstream),
            "address": address,
            "question": _running_on_host(UPSTREAM_NAMES.get(upstream) or upstream, address),
        }
    return _(
        "%(status)d from nginx: it could not get an answer from %(upstream)s at %(address)s. The "
        "service is down or the upstream address is wrong. %(checklist)s"
    ) % {
        "status": p["status"],
        "upstream": _upstream(upstream),
        "address": address,
        "checklist": docker_checklist(),
    }


def _cpamp_cannot_reach_cpa(p: Params) -> str:
    text = _(
        "%(status)d from CPAMP: CPAMP could not reach CPA at the CPA URL saved in its setup "
        "(the console expects %(cpa_url)s)."
    ) % {"status": p["status"], "cpa_url": p["cpa_url"]}
    saved = p.get("saved_cpa_url", "")
    if saved and origin(saved) != origin(p["cpa_url"]):
        text += " " + _(
            "CPAMP's setup has %(saved)s instead: save %(cpa_url)s as the CPA URL in CPAMP."
        ) % {"saved": saved, "cpa_url": p["cpa_url"]}
    if p.get("topology") == HOST:
        advice = _running_on_host("CPA", host_port(p["cpa_url"]))
    else:
        loop = _(
            "Use the Docker internal URL, never the public domain (CPAMP -> nginx -> CPAMP "
            "is a loop)."
        )
        advice = f"{loop} {cpamp_to_cpa_checklist()}"
    return f"{text} {advice}"


def origin(url: str) -> str:
    """Return scheme://host:port of url, the default port spelled out ("" when not a URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return f"{parts.scheme.lower()}://{host_port(url)}" if parts.scheme else ""


def host_port(url: str) -> str:
    """Return host:port of an http(s) URL (the default port spelled out)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return url
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _keys_missing(p: Params) -> str:
    if p["role"] == keyring.CPA_API:
        return _(
            "401 Missing API key: no CPA API Key was sent. Add a CPA API Key (one of CPA's "
            "api-keys) to this deployment's keys."
        )
    if p["role"] == keyring.CPAMP_ADMIN:
        return _(
            "401 on /v0/management/config: no CPAMP Admin Key is stored. This path goes to "
            "CPAMP first; add the CPAMP Admin Key (cpamp_… from CPAMP's first startup log)."
        )
    return _("No %(role)s is stored for this deployment: add it to its keys.") % {
        "role": _role(p["role"])
    }


def _unknown_api_key(p: Params) -> str:
    return _(
        "401 on /v1/models: CPA did not accept the CPA API Key %(key)s. Either it is the wrong key "
        "type (/v1/models needs a CPA API Key, not the CPAMP Admin Key or the CPA Management Key: "
        "do not mix these three keys), or it is an API key CPA does not know: add it to api-keys "
        "in CPA's config.yaml."
    ) % {"key": p.get("key") or "••••"}


def _wrong_key_type(p: Params) -> str:
    return _(
        "Wrong key type: the key stored as the %(role)s is the %(actual)s, and %(path)s needs "
        "a %(role)s. Do not mix these three keys: store each role's own key."
    ) % {"role": _role(p["role"]), "actual": _role(p["actual"]), "path": p["path"]}


def _admin_key_refused(p: Params) -> str:
    return _(
        "401 on %(path)s: CPAMP refused the key. This path goes to CPAMP first: use the CPAMP "
        "Admin Key (cpamp_… or cmp_admin_… from CPAMP's startup log), not the CPA Management Key "
        "or an API key."
    ) % {"path": p.get("path", "/v0/management/config")}


def _wrong_upstream(p: Params) -> str:
    return _(
        "%(path)s was answered by %(observed)s, but it belongs to %(expected)s: its location "
        "rule is missing or overridden. Re-export the config and reload nginx."
    ) % {
        "path": p["path"],
        "observed": _upstream(p["observed"]),
        "expected": _upstream(p["upstream"]),
    }


def expected_words(*, statuses: tuple[int, ...] | list[int], upstream: str) -> str:
    """Return an expectation in words, e.g. "200 from CPAMP" (no statuses: any below 500)."""
    who = UPSTREAM_NAMES.get(upstream, "")
    if not statuses:
        status = _("any answer below 500")
    else:
        status = _(" or ").join(str(s) for s in statuses)
    return _("%(status)s from %(who)s") % {"status": status, "who": who} if who else status


def _unexpected_status(p: Params) -> str:
    expected = expected_words(
        statuses=list(p.get("statuses") or []), upstream=p.get("upstream", "")
    )
    return _("Expected %(expected)s, got %(status)d.") % {
        "expected": expected,
        "status": p["status"],
    }


def _keys_mixed(p: Params) -> str:
    return _(
        "%(path)s accepted the %(role)s, which must not work there: the three keys are mixed "
        "(the same value is configured for two roles). Give each role its own key."
    ) % {"path": p["path"], "role": _role(p["role"])}


def _https_redirect_missing(p: Params) -> str:
    status, location = p.get("status"), p.get("location", "")
    return _(
        "The HTTP port should answer 301 to https://, got %(status)s%(location)s. Add the "
        "`return 301 https://$host$request_uri;` server on port 80."
    ) % {
        "status": status if status else "-",
        "location": f" (Location: {location})" if location else "",
    }


def _keys_withheld(p: Params) -> str:
    from routes.verification.destinations import withheld_message

    return withheld_message(p.get("origin", ""))


def _connection_refused(p: Params) -> str:
    if p.get("target") == CPA:
        return _("Connection refused by %(host)s: nothing listens there. %(question)s") % {
            "host": p["host"],
            "question": _running_on_host("CPA", p["host"]),
        }
    return _(
        "Connection refused by %(host)s: nothing listens there. Is nginx running, and are "
        "the address and port of the base URL right?"
    ) % {"host": p["host"]}


def _timeout(p: Params) -> str:
    if "budget" in p:
        return _(
            "Not finished by the run's deadline, %(budget)d s after the run started: the "
            "deployment answered too slowly."
        ) % {"budget": p["budget"]}
    return _("Timed out after %(timeout)s s waiting for %(host)s.") % {
        "timeout": p["timeout"],
        "host": p["host"],
    }


def _certificate(p: Params) -> str:
    parts = []
    names, server_name = p.get("names") or [], p.get("server_name", "")
    if server_name and not any(name_matches(n, server_name) for n in names):
        parts.append(
            _("The certificate is for %(names)s, not %(server)s.")
            % {"names": ", ".join(names) or "-", "server": server_name}
        )
    days_left = p.get("days_left")
    if days_left is not None and days_left < 0:
        parts.append(_("The certificate expired %(days)d days ago.") % {"days": -days_left})
    if p.get("trust"):
        parts.append(_("It is not trusted: %(reason)s.") % {"reason": _reason(p["trust"])})
    return " ".join(parts)


def _tls_untrusted(p: Params) -> str:
    if "server_name" in p:  # the certificate check itself
        return _certificate(p)
    return _(
        "TLS error talking to %(host)s: the certificate is not trusted (%(reason)s). Install a "
        "certificate from a trusted authority, or turn TLS verification off for a self-signed "
        "certificate and run again."
    ) % {"host": p["host"], "reason": _reason(p.get("reason", "untrusted"))}


def _tls_error(p: Params) -> str:
    return _(
        "TLS error talking to %(host)s: %(reason)s. Check the certificate and key paths and the "
        "HTTPS port."
    ) % {"host": p["host"], "reason": _reason(p.get("reason", "handshake"))}


def _connection_error(p: Params) -> str:
    return _("Connection error talking to %(host)s: %(reason)s.") % {
        "host": p["host"],
        "reason": _reason(p.get("reason", "")),
    }


# Warnings: a check that passed, with something the operator should know.


def _certificate_not_verified(p: Params) -> str:
    if p.get("reason"):
        return _("Not verified: %(reason)s.") % {"reason": _reason(p["reason"])}
    return _("Not verified: TLS verification is off for this job.")


def _slow(p: Params) -> str:
    text = _("Slow: %(latency)d ms, above the job's %(threshold)d ms threshold.") % {
        "latency": p["latency_ms"],
        "threshold": p["threshold_ms"],
    }
    # The warning the check had before it was slow, in its own words.
    also = render(p["also"], p.get("also_params") or {}) if p.get("also") else ""
    return f"{text} {also}" if also else text


def _cpa_not_reachable(p: Params) -> str:
    return _(
        "Skipped: CPA is not reachable from the console at %(url)s (%(reason)s). That is normal "
        "when CPA is only on the Docker network."
    ) % {"url": p["url"], "reason": _reason(p.get("reason", ""))}


# Words that need nothing but their parameters (%-formatted with them).
PLAIN: dict[str, StrOrPromise] = {
    "cpa_banned": gettext_lazy(
        "403: CPA has banned the console's IP for 30 minutes after 5 refused management "
        "keys. Wait, then fix the key."
    ),
    "cpa_remote_management_disabled": gettext_lazy(
        "403 remote management disabled: set remote-management.allow-remote: true in CPA's "
        "config.yaml (CPA does not see CPAMP or the console as localhost)."
    ),
    "cpa_management_disabled": gettext_lazy(
        "404: CPA's management API is off (remote-management.secret-key is empty), so CPAMP "
        "cannot connect either. Set a secret key."
    ),
    "management_key_refused": gettext_lazy(
        "%(status)d: CPA refused the stored CPA Management Key. It must equal "
        "remote-management.secret-key (or MANAGEMENT_PASSWORD)."
    ),
    "saved_management_key_refused": gettext_lazy(
        "%(status)d from CPA through CPAMP: CPAMP accepted the Admin Key, but CPA refused the CPA "
        "Management Key saved in CPAMP's setup. Update it in CPAMP (it must equal "
        "remote-management.secret-key) and check allow-remote: true. CPA bans an IP for 30 "
        "minutes after 5 refused keys."
    ),
    "management_rule_missing": gettext_lazy(
        "%(status)d from CPA: /v0/management/ reached CPA directly instead of CPAMP, so the rule "
        "`location ^~ /v0/management/ { proxy_pass http://cpamp; }` is missing or overridden. "
        "Keep the trailing slash (not location = /v0/management)."
    ),
    "plugin_rule_missing": gettext_lazy(
        "/v0/resource/plugins/ was answered by CPA: the rule `location ^~ /v0/resource/plugins/ "
        "{ proxy_pass http://cpamp; }` is missing, so plugin pages stay blank or their assets "
        "return 404."
    ),
    "fallback_missing": gettext_lazy(
        "A new CPA path was answered %(status)d by CPAMP: the fallback rule `location / { "
        "proxy_pass http://cpa_api; }` is missing (or sends everything to CPAMP), so new CPA "
        "endpoints do not work."
    ),
    "upstream_unknown": gettext_lazy(
        "Could not tell who answered: the X-Console-Upstream header is missing although route "
        "tracing is on. The served nginx config is probably not the console's export: export it "
        "again and reload nginx."
    ),
    "cpa_safe_mode": gettext_lazy(
        "403 unsafe_example_api_key: CPA is in safe mode because its api-keys still hold a "
        "template key (your-api-key-1, -2 or -3), so every API request is refused. Replace the "
        "template keys in CPA's config.yaml (or open /management.html?safe-mode=configure), then "
        "run verification again."
    ),
    "cpa_panel_missing": gettext_lazy(
        "404 for /management.html from CPA: in CPA Panel mode CPA serves the panel itself, but its "
        "panel is off (remote-management.disable-control-panel: true) or could not be downloaded "
        "(an offline or air-gapped host). Turn the panel on, or let CPA download it once "
        "(panel-github-repository), then run verification again."
    ),
    "cpa_usage_unreadable": gettext_lazy(
        "Request monitoring has no data: CPAMP could not read CPA's configuration with the CPA "
        "Management Key saved in its setup. CPA's Management API is off, the saved key is wrong, "
        "or CPAMP cannot reach CPA: check CPAMP's setup."
    ),
    "request_monitoring_off": gettext_lazy(
        "Request monitoring has no data: request monitoring (the usage collector) is turned off "
        "in CPAMP. Turn it on in CPAMP's panel."
    ),
    "usage_publishing_off": gettext_lazy(
        "Request monitoring has no data: CPA's usage-statistics-enabled is off, so CPA publishes "
        "no usage records. Set usage-statistics-enabled: true in CPA's config.yaml, or save "
        "CPAMP's setup again (it turns it on)."
    ),
    "cpa_too_old_for_usage_queue": gettext_lazy(
        "Request monitoring has no data: CPA %(version)s is older than v6.10.8, which added the "
        "HTTP usage queue CPAMP reads. Upgrade CPA (v7.1.39 or later is recommended)."
    ),
    "dns": gettext_lazy(
        "DNS error: %(host)s does not resolve from the console. Check the DNS record or set "
        "the job's base URL."
    ),
    "internal_error": gettext_lazy(
        "Internal error while checking; the console's log has the details."
    ),
    "not_found_is_fine": gettext_lazy(
        "A 404 is fine here: the check proves which upstream answered."
    ),
    "upstream_not_confirmed": gettext_lazy(
        "Route tracing is off and the answer carries no fingerprint: who answered is not confirmed."
    ),
    "cpa_version_unknown": gettext_lazy(
        "CPA's version is unknown (no X-CPA-VERSION in this run), so the last link, CPA v6.10.8 "
        "or later, is not checked."
    ),
    "held_back_for_ban": gettext_lazy(
        "Skipped: another management-key probe of this run was refused. CPA bans an IP for 30 "
        "minutes after 5 refused management keys, so a run sends at most one that can fail."
    ),
    "not_cpa": gettext_lazy(
        "%(url)s answered %(status)d, but not as CPA's management API: the CPA URL points at "
        "another service."
    ),
    "not_cpamp_health": gettext_lazy(
        '/health answered, but not with CPAMP\'s {"ok":true,"service":"cpa-manager-plus"}: '
        "another service answers this path. Got: %(excerpt)s"
    ),
}


TEXTS: dict[str, Callable[[Params], str]] = {
    "setup_incomplete": _setup_incomplete,
    "upstream_down": _upstream_down,
    "cpamp_cannot_reach_cpa": _cpamp_cannot_reach_cpa,
    "keys_missing": _keys_missing,
    "unknown_api_key": _unknown_api_key,
    "wrong_key_type": _wrong_key_type,
    "admin_key_refused": _admin_key_refused,
    "wrong_upstream": _wrong_upstream,
    "unexpected_status": _unexpected_status,
    "keys_mixed": _keys_mixed,
    "https_redirect_missing": _https_redirect_missing,
    "keys_withheld": _keys_withheld,
    "connection_refused": _connection_refused,
    "timeout": _timeout,
    "tls_untrusted": _tls_untrusted,
    "tls_error": _tls_error,
    "connection_error": _connection_error,
    "certificate_name_mismatch": _certificate,
    "certificate_expired": _certificate,
    # warnings
    "certificate_not_verified": _certificate_not_verified,
    "cpa_not_reachable_from_console": _cpa_not_reachable,
    "slow": _slow,
}


def render(code: str, params: Params | None = None) -> str:
    """Return the words of a diagnosis code with its parameters, in the active language."""
    text, plain = TEXTS.get(code), PLAIN.get(code)
    if text is None and plain is None:
        return ""
    try:
        return text(params or {}) if text is not None else str(plain) % dict(params or {})
    except (KeyError, TypeError, ValueError):
        # Parameters from an older release that no longer fit its words: name the code.
        return code


def render_result_diagnosis(result: CheckResult) -> str:
    """Return a stored check result's diagnosis in the active language (old rows: their text)."""
    if result.diagnosis_code:
        return render(result.diagnosis_code, result.diagnosis_params or {}) or result.diagnosis
    return result.diagnosis


def render_result_warning(result: CheckResult) -> str:
    """Return a stored check result's warning in the active language, or ""."""
    if not result.warning_code:
        return ""
    return render(result.warning_code, result.warning_params or {})


# --- network failures and certificates --------------------------------------------------------


def transport(*, kind: str, reason: str, host: str, timeout: float, target: str = "") -> Diagnosis:
    """Return the diagnosis of a network failure of kind (http.classify) talking to host.

    target is "cpa" when the request went to CPA itself (cpa_direct), "" through nginx.
    """
    if kind == "refused":
        return Diagnosis("connection_refused", {"host": host, "target": target})
    if kind == "dns":
        return Diagnosis("dns", {"host": host})
    if kind == "timeout":
        return Diagnosis("timeout", {"host": host, "timeout": f"{timeout:g}"})
    if kind == "tls":
        if reason in CERTIFICATE_REASONS:
            return Diagnosis("tls_untrusted", {"host": host, "reason": reason})
        return Diagnosis("tls_error", {"host": host, "reason": reason or "handshake"})
    return Diagnosis("connection_error", {"host": host, "reason": reason})


def certificate_problem(
    *, server_name: str, names: list[str], days_left: int | None, trust: str
) -> Diagnosis:
    """Return what is wrong with a served certificate: its names, its expiry, its trust."""
    params = {"server_name": server_name, "names": list(names), "days_left": days_left}
    if trust:
        params["trust"] = trust
    # Trust first: every HTTPS check of the run fails with it too, so it is the one cause.
    if trust:
        return Diagnosis("tls_untrusted", params)
    if server_name and not any(name_matches(n, server_name) for n in names):
        return Diagnosis("certificate_name_mismatch", params)
    return Diagnosis("certificate_expired", params)


def name_matches(pattern: str, host: str) -> bool:
    """Return True when a certificate name (maybe *.example.com) covers host (RFC 6125)."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _sep, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def parse_version(text: str) -> tuple[int, int, int] | None:
    """Return (major, minor, patch) of an X-CPA-VERSION such as v7.1.39, or None."""
    core = text.strip().lstrip("vV").split("-", 1)[0].split("+", 1)[0]
    parts = core.split(".")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
    return numbers[0], numbers[1], numbers[2]


# --- which diagnosis applies to a failed HTTP check -------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A failed HTTP check as its diagnosis sees it: already redacted, no secret in it."""

    check: Check
    status: int
    # Who answered: cpa, cpamp, unknown, or "" when nobody upstream answers (a redirect).
    observed: str
    data: Any
    location: str
    excerpt: str
    deployment: Deployment
    panel_url: str
    tracing: bool
    key_missing: bool
    # CPA's management auth refused a key here (it counts toward CPA's 5-strikes IP ban).
    cpa_refused: bool
    # What the check's judge found (request_monitoring's broken link, kept headers).
    details: Mapping[str, Any] = field(default_factory=dict)
    # The role the sent key really has, when it is another role's stored key or shape ("").
    key_is: str = ""
    # The sent key as "label ••••1234", for the checks that name it.
    key_label: str = ""
    url: str = ""

    @property
    def message(self) -> str:
        """Return the answer's "error" text (CPA's and CPAMP's JSON errors), or ""."""
        message = self.data.get("error", "") if isinstance(self.data, dict) else ""
        return message if isinstance(message, str) else ""


# A rule returns the diagnosis when its cause is the one at hand, else None.
Rule = Callable[[Failure], "Diagnosis | None"]


def _setup_params(failure: Failure, status: int) -> dict[str, Any]:
    return {
        "status": status,
        "panel": failure.panel_url,
        "cpa_url": failure.deployment.cpamp_cpa_url,
    }


def _setup(failure: Failure) -> Diagnosis | None:
    if failure.status in (412, 428):
        return Diagnosis("setup_incomplete", _setup_params(failure, failure.status))
    return None


def _safe_mode(failure: Failure) -> Diagnosis | None:
    # 3.2: CPA v7.2 with a template key in api-keys refuses every API request.
    if failure.status == 403 and (
        "x-cpa-safe-mode" in failure.details or failure.message == "unsafe_example_api_key"
    ):
        return Diagnosis("cpa_safe_mode", {})
    return None


def _gateway(failure: Failure) -> Diagnosis | None:
    if failure.status not in (502, 503, 504):
        return None
    data, observed, deployment = failure.data, failure.observed, failure.deployment
    if observed == CPAMP and isinstance(data, dict) and data.get("code") == "request_failed":
        cpa_url = deployment.cpamp_cpa_url
        return Diagnosis(
            "cpamp_cannot_reach_cpa",
            {"status": failure.status, "cpa_url": cpa_url, "topology": topology_of(cpa_url)},
        )
    upstream = observed if observed in (CPA, CPAMP) else failure.check.expected_upstream
    address = upstream_address(deployment, upstream)
    return Diagnosis(
        "upstream_down",
        {
            "status": failure.status,
            "upstream": upstream,
            "address": address,
            "topology": topology_of(address),
        },
    )


def _wrong_upstream_rule(failure: Failure) -> Diagnosis | None:
    expected, observed = failure.check.expected_upstream, failure.observed
    if expected and observed in (CPA, CPAMP) and observed != expected:
        return Diagnosis(
            "wrong_upstream",
            {"path": failure.check.path, "upstream": expected, "observed": observed},
        )
    return None


def _unattributed(failure: Failure) -> Diagnosis | None:
    if failure.observed == UNKNOWN and failure.tracing and failure.check.expected_upstream:
        return Diagnosis("upstream_unknown", {})
    return None


def _plugins_at_cpa(failure: Failure) -> Diagnosis | None:
    if failure.observed != CPA:
        return None
    return Diagnosis("plugin_rule_missing", {"path": failure.check.path})


def _fallback_at_cpamp(failure: Failure) -> Diagnosis | None:
    if failure.observed != CPAMP:
        return None
    return Diagnosis("fallback_missing", {"status": failure.status, "path": failure.check.path})


def _management_at_cpa(failure: Failure) -> Diagnosis | None:
    if failure.observed != CPA:
        return None
    return Diagnosis(
        "management_rule_missing", {"status": failure.status, "path": failure.check.path}
    )


def _panel_missing(failure: Failure) -> Diagnosis | None:
    # CPA Panel mode (reference 3.1): 404 with an empty body when the panel is off or absent.
    by_cpa = failure.observed == CPA or (failure.observed == UNKNOWN and not failure.tracing)
    if failure.check.expected_upstream == CPA and by_cpa and failure.status == 404:
        return Diagnosis("cpa_panel_missing", {})
    return None


def _wrong_type(failure: Failure) -> Diagnosis | None:
    if not failure.key_is or failure.key_is == failure.check.key_role:
        return None
    return Diagnosis(
        "wrong_key_type",
        {"role": failure.check.key_role, "actual": failure.key_is, "path": failure.check.path},
    )


def _admin_key(failure: Failure) -> Diagnosis | None:
    if failure.status not in (401, 403):
        return None
    if failure.cpa_refused:
        return Diagnosis("saved_management_key_refused", {"status": failure.status})
    if failure.key_missing:
        return Diagnosis("keys_missing", {"role": keyring.CPAMP_ADMIN})
    return _wrong_type(failure) or Diagnosis(
        "admin_key_refused", {"path": failure.check.path, "role": keyring.CPAMP_ADMIN}
    )


def _api_key(failure: Failure) -> Diagnosis | None:
    if failure.status != 401:
        return None
    if failure.key_missing or failure.message == "Missing API key":
        return Diagnosis("keys_missing", {"role": keyring.CPA_API})
    return _wrong_type(failure) or Diagnosis("unknown_api_key", {"key": failure.key_label})


def _accepted(role: str) -> Rule:
    """Return the rule of a negative probe that sends a key of role where it must not work."""

    def rule(failure: Failure) -> Diagnosis | None:
        if failure.status >= 400:
            return None
        return _wrong_type(failure) or Diagnosis(
            "keys_mixed", {"path": failure.check.path, "role": role}
        )

    return rule


def _redirect(failure: Failure) -> Diagnosis | None:
    return Diagnosis(
        "https_redirect_missing", {"status": failure.status, "location": failure.location}
    )


def _direct(failure: Failure) -> Diagnosis | None:
    if failure.status < 400:
        return None
    message = failure.message
    if "banned" in message:
        return Diagnosis("cpa_banned", {})
    if "remote management disabled" in message:
        return Diagnosis("cpa_remote_management_disabled", {})
    if failure.status == 404:
        return Diagnosis("cpa_management_disabled", {})
    return Diagnosis("management_key_refused", {"status": failure.status})


def _not_cpa_rule(failure: Failure) -> Diagnosis | None:
    return Diagnosis("not_cpa", {"url": failure.url, "status": failure.status})


def _health_body(failure: Failure) -> Diagnosis | None:
    return Diagnosis("not_cpamp_health", {"excerpt": failure.excerpt})


def _monitoring_link(failure: Failure) -> Diagnosis | None:
    # request_monitoring's judge names the first broken link of the seed's chain.
    link = failure.details.get("link")
    if failure.status != 200 or not isinstance(link, str) or not link:
        return None
    params: dict[str, Any] = {}
    if link == "setup_incomplete":
        params = _setup_params(failure, 200)
    elif link == "cpa_too_old_for_usage_queue":
        params = {"version": failure.details.get("cpa_version", "")}
    elif link == "cpa_usage_unreadable" and failure.details.get("saved_cpa_url"):
        # Joins "CPAMP cannot reach CPA", whose words compare it with the deployment's.
        params = {"saved_cpa_url": failure.details["saved_cpa_url"]}
    return Diagnosis(link, params)


# Causes any check may have, before its own: CPAMP not set up, CPA's safe mode, an upstream down.
FIRST = (_setup, _safe_mode, _gateway)
# Each check's own causes, in the order they are tried.
BY_CHECK: dict[str, tuple[Rule, ...]] = {
    "panel": (_panel_missing,),
    "plugin_resources": (_plugins_at_cpa,),
    "cpa_fallback": (_fallback_at_cpamp,),
    "management_config": (_management_at_cpa, _admin_key),
    "request_monitoring": (_admin_key, _monitoring_link),
    "management_refuses_api_key": (_management_at_cpa, _accepted(keyring.CPA_API)),
    "api_models": (_api_key,),
    "api_refuses_admin_key": (_accepted(keyring.CPAMP_ADMIN),),
    "https_redirect": (_redirect,),
    "cpa_direct": (_direct,),
}
# Then who answered: the other upstream, or nobody can tell although tracing is on.
ROUTE = (_wrong_upstream_rule, _unattributed)
# A check's causes that only count once the right upstream answered: what its body says.
BY_CHECK_BODY: dict[str, tuple[Rule, ...]] = {
    "cpamp_health": (_health_body,),
    "cpa_direct": (_not_cpa_rule,),
}


def diagnose(failure: Failure) -> Diagnosis:
    """Return the diagnosis of a failed HTTP check: the first rule that applies."""
    check_id = failure.check.id
    rules = (*FIRST, *BY_CHECK.get(check_id, ()), *ROUTE, *BY_CHECK_BODY.get(check_id, ()))
    for rule in rules:
        found = rule(failure)
        if found is not None:
            return found
    return Diagnosis(
        "unexpected_status",
        {
            "check": check_id,
            "statuses": list(failure.check.statuses),
            "upstream": failure.check.expected_upstream,
            "status": failure.status,
        },
    )
