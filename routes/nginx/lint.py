"""Lint a deployment before export: overrides that shadow or break the seed's route boundaries.

Shadowing is decided by the simulator, not by string comparison: for sample paths of every seed
route, the override-free config and the real one are compared, so regex and prefix overrides are
judged by what nginx would actually do.

Every regex runs under CONSOLE_REGEX_TIMEOUT through the simulator's Router: a pattern that
takes longer becomes a ``regex_timeout`` warning and the checks go on without it, so a crafted
override can neither hang the config page nor ``export_nginx --all``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from django.utils.translation import gettext as _

from routes import validators as v
from routes.models import Deployment, RouteOverride
from routes.nginx import boundaries as b
from routes.nginx.regexes import RegexTimeout
from routes.nginx.render import Location, chosen_overrides, effective_locations
from routes.nginx.simulate import Router, Simulation

_REGEX_META = re.compile(r"[.^$*+?()\[\]{}|\\]")
_TARGET_LABEL = {b.CPA: "CPA", b.CPAMP: "CPAMP"}
_BUCKET_SAFE_LENGTH = 46  # longest server name that fits nginx's default 64-byte hash bucket
# CPAMP's collector polls every 500 ms (USAGE_POLL_INTERVAL_MS, reference 2.1 and 3.3): a login
# rate below that would refuse a poll routed through nginx.
POLLS_PER_SECOND = 2.0


@dataclass(frozen=True)
class LintWarning:
    """One reason an export may not behave like the seed: a code and a readable message."""

    code: str
    message: str
    subject: str = ""  # the override or field it is about, e.g. "prefix /v1/"

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


def _label(match: str, path: str) -> str:
    return f"{b.MODIFIERS[match]} {path}"


def _loc_label(location: Location) -> str:
    return f"location {location.display}"


def lint(
    deployment: Deployment, overrides: Sequence[RouteOverride] | None = None
) -> list[LintWarning]:
    """Return the warnings for the deployment and its enabled overrides, in a stable order."""
    overrides = chosen_overrides(deployment, overrides)
    router = Router(effective_locations(deployment, overrides))
    warnings: list[LintWarning] = []
    warnings += _boundaries(deployment, overrides, router)
    warnings += _exact_without_prefix(overrides)
    warnings += _unreachable_paths(overrides)
    warnings += _regexes_never_reached(router)
    warnings += _panel_mode(deployment, overrides)
    warnings += _upstreams(deployment)
    warnings += _server_name(deployment)
    warnings += _edge(deployment)
    warnings += _slow_regexes(router)
    return warnings


def _samples(overrides: Sequence[RouteOverride]) -> list[str]:
    """Return request paths worth checking: the seed's own samples, then each override's."""
    samples: list[str] = []
    for route in b.BUILTIN_ROUTES:
        samples += b.sample_paths(route)
    samples += b.FALLBACK_SAMPLES
    for override in overrides:
        if override.match == b.EXACT:
            samples.append(override.path)
        elif override.match == b.PREFIX:
            samples += [override.path, override.path + "x"]
        else:
            literal = _literal_prefix(override.path)
            if literal:
                samples += [literal, literal + "x", literal + "/x"]
    return list(dict.fromkeys(samples))


def _may_touch(overrides: Sequence[RouteOverride], sample: str, router: Router) -> bool:
    """Return whether some override can change where nginx sends sample (a normalised path)."""
    for override in overrides:
        path = override.path
        if override.match == b.EXACT and (sample == path or sample + "/" == path):
            return True
        if override.match == b.PREFIX and (sample.startswith(path) or sample + "/" == path):
            return True
        if override.match in (b.REGEX, b.REGEX_I):
            try:
                found = router.matches(
                    path, sample.encode("utf-8"), caseless=override.match == b.REGEX_I
                )
            except RegexTimeout:
                return True  # unknown: the simulator decides, or reports the same timeout
            # A pattern that does not compile is judged by the simulator, which skips it.
            if found or found is None:
                return True
    return False


def _owner(location: Location | None) -> b.Route | None:
    if location is None or location.origin == "redirect":
        return None
    if location.origin == "fallback":
        return b.FALLBACK
    return b.BUILTIN_BY_KEY.get((location.match, location.path))


@lru_cache(maxsize=4)
def _baseline_router(mode: str) -> Router:
    # An unsaved deployment: without overrides the locations depend on the mode alone.
    return Router(effective_locations(Deployment(mode=mode), []))


@lru_cache(maxsize=2048)
def _baseline(mode: str, sample: str) -> Simulation:
    # The seed without overrides only depends on the mode: shared by every deployment.
    return _baseline_router(mode).simulate(sample)


def _boundaries(
    deployment: Deployment, overrides: Sequence[RouteOverride], router: Router
) -> list[LintWarning]:
    found: list[LintWarning] = []
    seen: set[tuple[str, str, str]] = set()
    for sample in _samples(overrides):
        if not _may_touch(overrides, sample, router):
            continue
        try:
            after = router.simulate(sample)
        except RegexTimeout:
            continue  # reported once per pattern by _slow_regexes
        before = _baseline(deployment.mode, sample)
        route = _owner(before.location)
        loc = after.location
        if route is None or loc is None or loc.origin != "override" or not after.proxied:
            continue
        if not before.proxied or after.upstream == before.upstream:
            continue
        # The seed allows precise CPAMP routes such as /config when the panel needs them; only
        # overrides that also swallow arbitrary new paths are flagged.
        if route is b.FALLBACK and (after.upstream != b.CPAMP or sample not in b.FALLBACK_SAMPLES):
            continue
        key = (loc.match, loc.path, route.path)
        if key in seen:
            continue
        seen.add(key)
        subject = _label(loc.match, loc.path)
        params = {
            "override": subject,
            "sample": sample,
            "target": _TARGET_LABEL[after.upstream],
            "seed": _label(route.match, route.path),
            "owner": _TARGET_LABEL[before.upstream],
            "consequence": route.consequence,
        }
        if route is b.FALLBACK:
            message = _(
                "Override %(override)s sends paths without explicit ownership (such as "
                "%(sample)s) to CPAMP. The seed keeps them on CPA: %(consequence)s."
            )
            code = "fallback_to_cpamp"
        elif loc.replaces is not None:
            message = _(
                "Override %(override)s moves the seed's route from %(owner)s to %(target)s: "
                "%(consequence)s."
            )
            code = "boundary_moved"
        else:
            message = _(
                "Override %(override)s takes %(sample)s away from the seed's route %(seed)s "
                "(%(owner)s) and sends it to %(target)s: %(consequence)s."
            )
            code = "boundary_shadowed"
        found.append(LintWarning(code, message % params, subject))
    return found


def _exact_without_prefix(overrides: Sequence[RouteOverride]) -> list[LintWarning]:
    found = []
    prefixes = {r.path for r in b.BUILTIN_ROUTES if r.match == b.PREFIX}
    for override in overrides:
        if override.match != b.EXACT or override.path + "/" not in prefixes:
            continue
        found.append(
            LintWarning(
                "exact_not_prefix",
                _(
                    "Override %(override)s matches only that one URL. The seed needs the prefix "
                    "^~ %(prefix)s (with the trailing slash) for everything under it."
                )
                % {
                    "override": _label(override.match, override.path),
                    "prefix": override.path + "/",
                },
                _label(override.match, override.path),
            )
        )
    return found


def _unreachable_paths(overrides: Sequence[RouteOverride]) -> list[LintWarning]:
    found = []
    for override in overrides:
        if override.match not in (b.EXACT, b.PREFIX):
            continue
        path = override.path
        reason = ""
        if "%" in path:
            reason = _(
                "nginx compares decoded paths, so a percent-encoded location never matches the "
                "request as the client sends it"
            )
        elif "?" in path:
            reason = _("a ? starts the query string, which nginx does not match against")
        elif "//" in path:
            reason = _("nginx merges repeated slashes before matching")
        elif re.search(r"/\.\.?(/|$)", path):
            reason = _("nginx resolves . and .. segments before matching")
        if reason:
            label = _label(override.match, path)
            found.append(
                LintWarning(
                    "never_matches",
                    _("Override %(override)s never matches a normal request: %(reason)s.")
                    % {"override": label, "reason": reason},
                    label,
                )
            )
    return found


def _literal_prefix(pattern: str) -> str:
    if not pattern.startswith("^/"):
        return ""
    meta = _REGEX_META.search(pattern, 1)
    literal = pattern[1 : meta.start()] if meta else pattern[1:]
    # "a?" or "a*" makes the last literal character optional.
    if meta and pattern[meta.start()] in "?*{":
        literal = literal[:-1]
    return literal


def _regexes_never_reached(router: Router) -> list[LintWarning]:
    found = []
    for location in router.locations:
        if not location.is_regex or location.origin != "override":
            continue
        literal = _literal_prefix(location.path)
        if len(literal) < 2:
            continue
        caseless = location.match == b.REGEX_I
        try:
            sample = next(
                (
                    s
                    for s in (literal, literal + "x", literal + "/x")
                    if router.matches(location.path, s.encode("utf-8"), caseless=caseless)
                ),
                None,
            )
            if sample is None:
                continue
            result = router.simulate(sample)
        except RegexTimeout:
            continue  # reported once per pattern by _slow_regexes
        if result.location is None or result.location == location:
            continue
        label = _label(location.match, location.path)
        found.append(
            LintWarning(
                "regex_never_reached",
                _(
                    "Override %(override)s is not used for %(sample)s: %(winner)s wins first (an "
                    "exact match, a ^~ prefix or an earlier regex stops the regex search)."
                )
                % {"override": label, "sample": sample, "winner": _loc_label(result.location)},
                label,
            )
        )
    return found


def _slow_regexes(router: Router) -> list[LintWarning]:
    found = []
    for (pattern, caseless), exc in router.slow.items():
        label = _label(b.REGEX_I if caseless else b.REGEX, pattern)
        found.append(
            LintWarning(
                "regex_timeout",
                _(
                    "Override %(override)s: the regular expression took longer than %(seconds)s "
                    "s to match %(sample)s, so the lint could not check where it sends requests "
                    "(and nginx may spend as long on such a request); simplify it."
                )
                % {"override": label, "seconds": f"{exc.seconds:g}", "sample": exc.subject},
                label,
            )
        )
    return found


def _panel_mode(deployment: Deployment, overrides: Sequence[RouteOverride]) -> list[LintWarning]:
    if deployment.mode != "cpa_panel":
        return []
    return [
        LintWarning(
            "cpamp_in_cpa_panel",
            _(
                "Override %(override)s sends requests to CPAMP although the deployment is in CPA "
                "panel mode, where CPA serves everything itself."
            )
            % {"override": _label(o.match, o.path)},
            _label(o.match, o.path),
        )
        for o in overrides
        if o.target == b.CPAMP
    ]


def _upstreams(deployment: Deployment) -> list[LintWarning]:
    found = []
    for field, target in (("cpa_upstream", b.CPA), ("cpamp_upstream", b.CPAMP)):
        value = getattr(deployment, field)
        try:
            host, _port = v.split_host_port(value)
        except Exception:  # noqa: BLE001 - validation reports it; lint only adds advice
            continue
        if host == "localhost" or host.endswith(".localhost"):
            found.append(
                LintWarning(
                    "localhost_upstream",
                    _(
                        "%(target)s upstream %(value)s is a host name, so nginx resolves it per "
                        "request through the resolver (%(resolver)s), which does not know "
                        "localhost. Use 127.0.0.1 instead."
                    )
                    % {
                        "target": _TARGET_LABEL[target],
                        "value": value,
                        "resolver": deployment.resolver,
                    },
                    field,
                )
            )
    return found


def _server_name(deployment: Deployment) -> list[LintWarning]:
    if len(deployment.server_name or "") <= _BUCKET_SAFE_LENGTH:
        return []
    return [
        LintWarning(
            "long_server_name",
            _(
                "The server name is longer than %(max)d characters, more than nginx's default "
                "server_names_hash_bucket_size allows. The shared file sets a larger bucket; "
                "remove any server_names_hash_bucket_size line from nginx.conf."
            )
            % {"max": _BUCKET_SAFE_LENGTH},
            "server_name",
        )
    ]


def _edge(deployment: Deployment) -> list[LintWarning]:
    """Return advice on the edge hardening fields: a rate below the polling, an unused webroot."""
    found = []
    rate = deployment.limit_req_rate or ""
    try:
        per_second = v.rate_per_second(rate) if rate else None
    except ValueError:
        per_second = None  # validation reports it
    if per_second is not None and per_second < POLLS_PER_SECOND:
        found.append(
            LintWarning(
                "rate_below_polling",
                _(
                    "The login rate limit %(rate)s is below the panel's polling (CPAMP polls every "
                    "500 ms: 2r/s), so its own requests get 429 once the burst of %(burst)d is "
                    "spent. Give 2r/s or more."
                )
                % {"rate": rate, "burst": deployment.limit_req_burst},
                "limit_req_rate",
            )
        )
    if deployment.acme_webroot and not deployment.tls:
        found.append(
            LintWarning(
                "acme_without_tls",
                _(
                    "The ACME webroot %(root)s is only served by an HTTPS deployment's port-80 "
                    "server; this deployment serves HTTP only, so it is not written."
                )
                % {"root": deployment.acme_webroot},
                "acme_webroot",
            )
        )
    return found
