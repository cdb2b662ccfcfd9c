"""Plain-language causes and fixes for failed verification checks.

Drawn from the seed's "Troubleshooting" section (/work/shared/seed/reverse-proxy.md) and the
behaviour reference (/work/shared/reference/cpa-cpamp-behaviour.md). Every function returns
translated text for one failure; diagnose() (at the end) picks the one that applies to a failed
check. None of them is ever given a secret.
"""

from __future__ import annotations

from django.utils.translation import gettext as _

from routes import keys as keyring
from routes.keys import ROLE_LABELS

CPA, CPAMP, UNKNOWN = "cpa", "cpamp", "unknown"

UPSTREAM_LABELS = {"cpa": "CPA (:8317)", "cpamp": "CPAMP (:18317)"}


def _upstream(name: str) -> str:
    return UPSTREAM_LABELS.get(name, _("the upstream"))


def checklist() -> str:
    """Return the seed's checklist for an unreachable upstream (troubleshooting, 502s)."""
    items = [
        _("same Docker network as nginx"),
        _("listening on 0.0.0.0 (CPA 0.0.0.0:8317; CPAMP HTTP_ADDR=0.0.0.0:18317), not 127.0.0.1"),
        _("the service name is right (cli-proxy-api, cpa-manager-plus) or the port is exposed"),
        _("the container is running"),
        _("remote-management.allow-remote: true in CPA's config.yaml"),
    ]
    return _("Check: %(items)s.") % {"items": "; ".join(items)}


def setup_not_finished(panel_url: str, status: int) -> str:
    """412/428: CPAMP has not finished its first setup."""
    return _(
        "%(status)d: CPAMP's first setup is not finished, so it cannot proxy to CPA yet. Open "
        "%(panel)s, enter the CPAMP Admin Key, the CPA URL (e.g. http://cli-proxy-api:8317) and "
        "the CPA Management Key, then run verification again."
    ) % {"status": status, "panel": panel_url}


def upstream_down(*, upstream: str, address: str, status: int) -> str:
    """502/504 from nginx: the upstream is down or its address is wrong."""
    return _(
        "%(status)d from nginx: it could not get an answer from %(upstream)s at %(address)s. The "
        "service is down or the upstream address is wrong. %(checklist)s"
    ) % {
        "status": status,
        "upstream": _upstream(upstream),
        "address": address,
        "checklist": checklist(),
    }


def cpamp_cannot_reach_cpa(*, cpa_url: str, status: int) -> str:
    """502 request_failed from CPAMP: CPAMP's saved CPA URL does not answer."""
    return _(
        "%(status)d from CPAMP: CPAMP could not reach CPA at the CPA URL saved in its setup "
        "(the console expects %(cpa_url)s). CPA is down or the URL is wrong; use the Docker "
        "internal URL, never the public domain. %(checklist)s"
    ) % {"status": status, "cpa_url": cpa_url, "checklist": checklist()}


def api_key_refused(*, missing: bool) -> str:
    """401 on /v1/models."""
    if missing:
        return _(
            "401 Missing API key: no CPA API Key was sent. Add a CPA API Key (one of CPA's "
            "api-keys) to this deployment's keys."
        )
    return _(
        "401 on /v1/models: CPA did not accept the key. Either it is the wrong key type "
        "(/v1/models needs a CPA API Key, not the CPAMP Admin Key or the CPA Management Key: do "
        "not mix these three keys), or it is an API key CPA does not know: add it to api-keys in "
        "CPA's config.yaml."
    )


def admin_key_refused(*, missing: bool) -> str:
    """401 invalid_admin_key from CPAMP on /v0/management/config."""
    if missing:
        return _(
            "401 on /v0/management/config: no CPAMP Admin Key is stored. This path goes to "
            "CPAMP first; add the CPAMP Admin Key (cpamp_… from CPAMP's first startup log)."
        )
    return _(
        "401 on /v0/management/config: CPAMP refused the key. This path goes to CPAMP first: use "
        "the CPAMP Admin Key (cpamp_… or cmp_admin_… from CPAMP's startup log), not the CPA "
        "Management Key or an API key."
    )


def saved_management_key_refused(status: int) -> str:
    """CPA refused the management key CPAMP saved at setup (the answer came through CPAMP)."""
    return _(
        "%(status)d from CPA through CPAMP: CPAMP accepted the Admin Key, but CPA refused the CPA "
        "Management Key saved in CPAMP's setup. Update it in CPAMP (it must equal "
        "remote-management.secret-key) and check allow-remote: true. CPA bans an IP for 30 "
        "minutes after 5 refused keys."
    ) % {"status": status}


def management_reached_cpa(status: int) -> str:
    """/v0/management/ answered by CPA directly: the CPAMP rule is missing."""
    return _(
        "%(status)d from CPA: /v0/management/ reached CPA directly instead of CPAMP, so the rule "
        "`location ^~ /v0/management/ { proxy_pass http://cpamp; }` is missing or overridden. "
        "Keep the trailing slash (not location = /v0/management)."
    ) % {"status": status}


def plugin_rule_missing() -> str:
    """/v0/resource/plugins/ answered by CPA."""
    return _(
        "/v0/resource/plugins/ was answered by CPA: the rule `location ^~ /v0/resource/plugins/ "
        "{ proxy_pass http://cpamp; }` is missing, so plugin pages stay blank or their assets "
        "return 404."
    )


def fallback_missing(status: int) -> str:
    """A path owned by nobody but the fallback reached CPAMP."""
    return _(
        "A new CPA path was answered %(status)d by CPAMP: the fallback rule `location / { "
        "proxy_pass http://cpa_api; }` is missing (or sends everything to CPAMP), so new CPA "
        "endpoints do not work."
    ) % {"status": status}


def wrong_upstream(*, path: str, expected: str, observed: str) -> str:
    """Any other path answered by the other upstream."""
    return _(
        "%(path)s was answered by %(observed)s, but it belongs to %(expected)s: its location "
        "rule is missing or overridden. Re-export the config and reload nginx."
    ) % {"path": path, "observed": _upstream(observed), "expected": _upstream(expected)}


def upstream_unknown() -> str:
    """Route tracing is on but the answer does not say who answered."""
    return _(
        "Could not tell who answered: the X-Console-Upstream header is missing although route "
        "tracing is on. The served nginx config is probably not the console's export: export it "
        "again and reload nginx."
    )


def unexpected_status(*, expected: str, status: int) -> str:
    return _("Expected %(expected)s, got %(status)d.") % {"expected": expected, "status": status}


def not_cpamp_health(excerpt: str) -> str:
    return _(
        '/health answered, but not with CPAMP\'s {"ok":true,"service":"cpa-manager-plus"}: '
        "another service answers this path. Got: %(excerpt)s"
    ) % {"excerpt": excerpt}


def negative_accepted(*, path: str, role: str) -> str:
    """A negative key probe was accepted: keys are mixed."""
    return _(
        "%(path)s accepted the %(role)s, which must not work there: the three keys are mixed "
        "(the same value is configured for two roles). Give each role its own key."
    ) % {"path": path, "role": role}


def no_redirect(status: int | None, location: str) -> str:
    return _(
        "The HTTP port should answer 301 to https://, got %(status)s%(location)s. Add the "
        "`return 301 https://$host$request_uri;` server on port 80."
    ) % {
        "status": status if status is not None else "-",
        "location": f" (Location: {location})" if location else "",
    }


def skipped_for_ban() -> str:
    return _(
        "Skipped: another management-key probe of this run was refused. CPA bans an IP for 30 "
        "minutes after 5 refused management keys, so a run sends at most one that can fail."
    )


def skipped_unreachable(url: str, reason: str) -> str:
    return _(
        "Skipped: CPA is not reachable from the console at %(url)s (%(reason)s). That is normal "
        "when CPA is only on the Docker network."
    ) % {"url": url, "reason": reason}


def direct_refused(status: int, message: str) -> str:
    """cpa_direct: CPA's own answer to the stored CPA Management Key."""
    if "banned" in message:
        return _(
            "403: CPA has banned the console's IP for 30 minutes after 5 refused management "
            "keys. Wait, then fix the key."
        )
    if "remote management disabled" in message:
        return _(
            "403 remote management disabled: set remote-management.allow-remote: true in CPA's "
            "config.yaml (CPA does not see CPAMP or the console as localhost)."
        )
    if status == 404:
        return _(
            "404: CPA's management API is off (remote-management.secret-key is empty), so CPAMP "
            "cannot connect either. Set a secret key."
        )
    return _(
        "%(status)d: CPA refused the stored CPA Management Key. It must equal "
        "remote-management.secret-key (or MANAGEMENT_PASSWORD)."
    ) % {"status": status}


def transport(kind: str, *, host: str, timeout: float, detail: str) -> str:
    """Connection refused, DNS, TLS and timeouts, each named as such."""
    if kind == "refused":
        return _(
            "Connection refused by %(host)s: nothing listens there. Is nginx running, and are "
            "the address and port of the base URL right?"
        ) % {"host": host}
    if kind == "dns":
        return _(
            "DNS error: %(host)s does not resolve from the console. Check the DNS record or set "
            "the job's base URL."
        ) % {"host": host}
    if kind == "tls":
        return _(
            "TLS error talking to %(host)s: %(detail)s. Check the certificate and key paths, or "
            "turn TLS verification off for a self-signed certificate."
        ) % {"host": host, "detail": detail}
    if kind == "timeout":
        return _("Timed out after %(timeout)s s waiting for %(host)s.") % {
            "timeout": f"{timeout:g}",
            "host": host,
        }
    return _("Connection error talking to %(host)s: %(detail)s.") % {
        "host": host,
        "detail": detail,
    }


def certificate_problem(
    *, server_name: str, names: list[str], days_left: int | None, trusted_error: str
) -> str:
    parts = []
    if names is not None and server_name and not any(name_matches(n, server_name) for n in names):
        parts.append(
            _("The certificate is for %(names)s, not %(server)s.")
            % {"names": ", ".join(names) or "-", "server": server_name}
        )
    if days_left is not None and days_left < 0:
        parts.append(_("The certificate expired %(days)d days ago.") % {"days": -days_left})
    if trusted_error:
        parts.append(_("It is not trusted: %(reason)s.") % {"reason": trusted_error})
    return " ".join(parts)


def name_matches(pattern: str, host: str) -> bool:
    """Return True when a certificate name (maybe *.example.com) covers host (RFC 6125)."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _sep, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def diagnose(check, probe, observed: str, ctx, *, cpa_refused: bool, excerpt: str) -> str:
    """Return the cause and fix for a failed HTTP check: the first rule that applies.

    check and ctx are routes.verify_checks' Check and Context, probe is routes.probes' Probe;
    observed is who answered (cpa, cpamp or unknown); cpa_refused tells whether CPA's
    management auth refused.
    """
    status = probe.status_code or 0
    data = probe.json()
    message = data.get("error", "") if isinstance(data, dict) else ""
    message = message if isinstance(message, str) else ""
    key_missing = bool(check.key_role) and check.key_role not in ctx.keys
    if status in (412, 428):
        return setup_not_finished(ctx.panel_url, status)
    if status in (502, 503, 504):
        if observed == CPAMP and isinstance(data, dict) and data.get("code") == "request_failed":
            return cpamp_cannot_reach_cpa(cpa_url=ctx.deployment.cpamp_cpa_url, status=status)
        upstream = observed if observed in (CPA, CPAMP) else check.expected_upstream
        address = ctx.deployment.cpa_upstream if upstream == CPA else ctx.deployment.cpamp_upstream
        return upstream_down(upstream=upstream, address=address, status=status)
    if check.id == "plugin_resources" and observed == CPA:
        return plugin_rule_missing()
    if check.id == "cpa_fallback" and observed == CPAMP:
        return fallback_missing(status)
    if check.id in ("management_config", "management_refuses_api_key") and observed == CPA:
        return management_reached_cpa(status)
    if check.id == "management_config" and status in (401, 403):
        if cpa_refused:
            return saved_management_key_refused(status)
        return admin_key_refused(missing=key_missing)
    if check.id == "api_models" and status == 401:
        return api_key_refused(missing=key_missing or message == "Missing API key")
    if check.id == "management_refuses_api_key" and status < 400:
        return negative_accepted(path=check.path, role=str(ROLE_LABELS[keyring.CPA_API]))
    if check.id == "api_refuses_admin_key" and status < 400:
        return negative_accepted(path=check.path, role=str(ROLE_LABELS[keyring.CPAMP_ADMIN]))
    if check.kind == "redirect":
        return no_redirect(probe.status_code, probe.location)
    if check.kind == "direct":
        return direct_refused(status, message)
    if check.expected_upstream and observed in (CPA, CPAMP) and observed != check.expected_upstream:
        return wrong_upstream(path=check.path, expected=check.expected_upstream, observed=observed)
    if observed == UNKNOWN and ctx.tracing and check.expected_upstream:
        return upstream_unknown()
    if check.id == "cpamp_health":
        return not_cpamp_health(excerpt)
    return unexpected_status(expected=check.expected_text(), status=status)
