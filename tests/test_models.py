"""Model rules: deployment invariants, override paths, constraints and version warnings."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from routes.models import Deployment, Membership, RouteOverride


def errors_of(obj) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        obj.full_clean()
    return caught.value.message_dict


def test_a_new_deployment_gets_the_seed_defaults(deployment):
    assert (deployment.http_port, deployment.https_port) == (80, 443)
    assert deployment.client_max_body_size == "64m"
    assert (deployment.proxy_read_timeout, deployment.proxy_send_timeout) == (3600, 3600)
    assert deployment.cpa_upstream == "cli-proxy-api:8317"
    assert deployment.cpamp_upstream == "cpa-manager-plus:18317"
    assert deployment.version == 1
    assert str(deployment) == "Production (prod)"


def test_cpamp_may_not_reach_cpa_through_the_public_domain(deployment):
    deployment.cpamp_cpa_url = "https://API.example.com/"
    assert "loop" in " ".join(errors_of(deployment)["cpamp_cpa_url"])


def test_https_needs_both_certificate_paths_and_distinct_ports(deployment):
    deployment.tls = True
    deployment.https_port = 80
    errors = errors_of(deployment)
    assert set(errors) >= {"ssl_certificate", "ssl_certificate_key", "https_port"}


def test_the_database_refuses_https_without_a_certificate(deployment):
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(tls=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("http_port", 0),
        ("https_port", 70000),
        ("proxy_read_timeout", 0),
        ("proxy_send_timeout", 90000),
    ],
)
def test_ports_and_timeouts_stay_in_range(deployment, field, value):
    setattr(deployment, field, value)
    assert field in errors_of(deployment)


def test_server_names_are_stored_as_lower_case_punycode(team):
    deployment = Deployment.objects.create(
        slug="idn", name="IDN", team=team, server_name="Bücher.Example."
    )
    assert deployment.server_name == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("tls", "port", "base_url"),
    [
        (False, 80, "http://api.example.com"),
        (False, 8080, "http://api.example.com:8080"),
        (True, 443, "https://api.example.com"),
        (True, 8443, "https://api.example.com:8443"),
    ],
)
def test_base_url_follows_scheme_and_port(deployment, tls, port, base_url):
    deployment.tls = tls
    if tls:
        deployment.https_port = port
    else:
        deployment.http_port = port
    assert deployment.base_url == base_url
    deployment.verification_base_url = "https://check.example.net/"
    assert deployment.base_url == "https://check.example.net"


@pytest.mark.parametrize(
    ("version", "warning"),
    [
        ("", None),
        ("v6.9.9", "below v6.10.8"),
        ("6.10.8", "v7.1.39 or newer is recommended"),
        ("v7.1.39", None),
        ("v8.0.0", None),
    ],
)
def test_cpa_version_warnings(deployment, version, warning):
    deployment.cpa_version = version
    warnings = deployment.version_warnings()
    if warning is None:
        assert warnings == []
    else:
        assert warning in warnings[0]


@pytest.mark.parametrize(
    ("match", "path", "ok"),
    [
        ("prefix", "/config/", True),
        ("exact", "/v1internal:method", True),
        ("prefix", "config", False),
        ("exact", "/a b", False),
        ("prefix", "/a;b", False),
        ("regex", "^/v1/(models|chat)$", True),
        ("regex_i", "^/logs/.{1,8}$", True),
        ("regex", "^/v1/(", False),
        ("regex", "^/a b", False),
        ("regex", "(?P<x>a)", True),
        ("regex", "^/(?<id>[0-9]+)$", True),
        ("regex", "(?<x>a", False),
    ],
)
def test_override_paths_are_validated_by_match(deployment, match, path, ok):
    override = RouteOverride(deployment=deployment, match=match, path=path, target="cpamp")
    if ok:
        override.full_clean()
    else:
        assert "path" in errors_of(override)


def test_an_override_path_is_unique_per_match(deployment):
    RouteOverride.objects.create(deployment=deployment, match="exact", path="/a")
    RouteOverride.objects.create(deployment=deployment, match="prefix", path="/a")
    with pytest.raises(IntegrityError), transaction.atomic():
        RouteOverride.objects.create(deployment=deployment, match="exact", path="/a")


def test_a_membership_is_unique_per_user_and_team(make_user, team):
    user = make_user("ann", team=team, role="viewer")
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(user=user, team=team, role="owner")
    assert str(user.memberships.get()) == "ann @ Ops (Viewer)"


def test_a_team_with_deployments_cannot_be_deleted(deployment, team):
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        team.delete()
