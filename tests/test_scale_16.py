"""Scale (issue 16): bulk import, export, the audit list and team scoping ask a fixed number of
queries whatever their size; the trail gets one event per import or export and team; the export
history keeps what CONSOLE_EXPORTS_KEPT says.

Timings are bench/bench_teams_scale.py's business; these tests pin the shape of the queries.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, models
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from routes import audit, portable
from routes.admin import audit_admin
from routes.models import (
    AuditEvent,
    ConfigExport,
    Deployment,
    Membership,
    RouteOverride,
    Team,
    VerificationJob,
)
from routes.nginx import history
from routes.portable import cleaning, importing
from routes.verification import destinations
from routes.workflows.keys import set_key

pytestmark = pytest.mark.django_db

AUDIT = reverse("admin:routes_auditevent_changelist")
DEPLOYMENTS = reverse("admin:routes_deployment_changelist")
INDEX = reverse("admin:index")


def definitions(count: int, *, team: str = "ops", prefix: str = "d", **fields) -> dict:
    """Return a definitions file of count deployments, each with two overrides and a schedule."""
    return {
        "version": 1,
        "deployments": [
            {
                "slug": f"{prefix}{n}",
                "team": team,
                "server_name": f"{prefix}{n}.example.com",
                "route_overrides": [
                    {"match": "prefix", "path": "/config", "target": "cpamp"},
                    {"match": "exact", "path": f"/only-{n}", "target": "cpa"},
                ],
                "verification": {"interval_seconds": 300},
                **fields,
            }
            for n in range(count)
        ],
    }


def statements(action) -> int:
    """Return how many statements action() sends to the database."""
    with CaptureQueriesContext(connection) as queries:
        action()
    return len(queries.captured_queries)


def import_statements(payload: dict, **options) -> int:
    return statements(lambda: portable.import_payload(payload=payload, **options))


# --- import -------------------------------------------------------------------------------------


# Deployments one INSERT takes on every database: SQLite's 999 parameters hold 27 rows of a
# deployment's columns (Django splits larger INSERTs), PostgreSQL takes a CHUNK of them.
MANY = 25


def test_an_import_of_3_or_25_deployments_sends_the_same_statements(team):
    few = import_statements(definitions(3, prefix="a"))
    many = import_statements(definitions(MANY, prefix="b"))
    assert few == many
    assert Deployment.objects.filter(slug__startswith="b").count() == MANY
    assert RouteOverride.objects.filter(deployment__slug__startswith="b").count() == 2 * MANY
    assert VerificationJob.objects.filter(deployment__slug__startswith="b").count() == MANY


def test_an_update_of_3_or_25_deployments_sends_the_same_statements(team):
    portable.import_payload(payload=definitions(3, prefix="a"))
    portable.import_payload(payload=definitions(MANY, prefix="b"))
    changed = {"client_max_body_size": "128m", "verification": {"interval_seconds": 600}}
    few = import_statements(definitions(3, prefix="a", **changed), update=True)
    many = import_statements(definitions(MANY, prefix="b", **changed), update=True)
    assert few == many
    assert set(Deployment.objects.values_list("client_max_body_size", flat=True)) == {"128m"}
    assert set(VerificationJob.objects.values_list("interval_seconds", flat=True)) == {600}


def test_the_statements_grow_by_chunk_not_by_deployment(team, monkeypatch):
    monkeypatch.setattr(importing, "CHUNK", 4)
    one_chunk = import_statements(definitions(4, prefix="a"))
    three_chunks = import_statements(definitions(12, prefix="b"))
    # Per chunk of 4 entries: the lookup of their slugs, the INSERT of the deployments (with
    # where their keys may go), two of their 8 overrides and one of their jobs.
    assert three_chunks - one_chunk == 2 * 5
    assert Deployment.objects.count() == 16


def test_each_entry_is_validated_once(team, monkeypatch):
    calls: list[str] = []
    original = Deployment.full_clean

    def counting(self, *args, **kwargs):
        calls.append(self.slug)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Deployment, "full_clean", counting)
    portable.import_payload(payload=definitions(5))
    assert sorted(calls) == [f"d{n}" for n in range(5)]
    portable.import_payload(payload=definitions(5, notes="again"), update=True)
    assert len(calls) == 10


def test_an_import_records_one_event_per_team_listing_its_slugs(team, other_team):
    payload = definitions(30, prefix="a")
    payload["deployments"] += definitions(2, prefix="o", team="other")["deployments"]
    portable.import_payload(payload=payload)
    events = AuditEvent.objects.filter(action="deployment.import").order_by("team_id")
    assert [e.team for e in events] == [team, other_team]
    ops, other = events
    assert ops.changes["created"] == [f"a{n}" for n in range(30)]
    assert other.changes["created"] == ["o0", "o1"]
    # Each team's event names only its own deployments.
    assert "o0" not in json.dumps(ops.changes) and "a0" not in json.dumps(other.changes)
    assert ops.object_repr.startswith("30 deployments: a0, a1")
    # Confirming where keys go is one event per team too; nothing else is recorded per row.
    actions = sorted(AuditEvent.objects.values_list("action", flat=True))
    assert actions == ["deployment.confirm_destination"] * 2 + ["deployment.import"] * 2


def test_an_import_of_3_or_30_deployments_records_as_many_events(team):
    portable.import_payload(payload=definitions(3, prefix="a"))
    few = AuditEvent.objects.count()
    portable.import_payload(payload=definitions(30, prefix="b"))
    assert AuditEvent.objects.count() == 2 * few


def test_an_update_records_what_changed_and_moves_versions_on_by_one(team):
    portable.import_payload(payload=definitions(3))
    versions = dict(Deployment.objects.values_list("slug", "version"))
    payload = definitions(3)
    payload["deployments"][0]["notes"] = "moved"
    payload["deployments"][1]["route_overrides"] = []
    AuditEvent.objects.all().delete()
    report = portable.import_payload(payload=payload, update=True)
    assert report.updated == ["d0", "d1", "d2"]
    after = dict(Deployment.objects.values_list("slug", "version"))
    # An override change is an edit of its deployment; an unchanged one keeps its version.
    assert after == {"d0": versions["d0"] + 1, "d1": versions["d1"] + 1, "d2": versions["d2"]}
    event = AuditEvent.objects.get(action="deployment.import")
    assert event.changes["updated"] == ["d0", "d1"] and event.changes["unchanged"] == ["d2"]
    assert event.changes["changes"]["d0"]["notes"] == ["", "moved"]
    assert event.changes["changes"]["d0"]["version"] == [versions["d0"], versions["d0"] + 1]
    assert event.changes["changes"]["d1"]["route_overrides"][1] == []
    assert not RouteOverride.objects.filter(deployment__slug="d1").exists()


def test_one_deployment_imported_is_the_events_object_with_its_field_diff(deployment):
    payload = portable.export_payload(deployments=Deployment.objects.all())
    payload["deployments"][0]["notes"] = "edited by import"
    portable.import_payload(payload=payload, update=True)
    event = AuditEvent.objects.get(action="deployment.import")
    assert (event.object_type, event.object_id) == ("deployment", str(deployment.pk))
    assert event.changes["notes"] == ["", "edited by import"]
    assert event.changes["version"] == [deployment.version, deployment.version + 1]


def test_an_update_by_the_administrator_confirms_each_deployments_destinations(team):
    for n in range(3):
        Deployment.objects.create(slug=f"d{n}", name=f"D{n}", team=team, server_name="x.test")
    portable.import_payload(payload=definitions(3), update=True)
    for deployment in Deployment.objects.all():
        # The import moved the server name: that origin is confirmed; the CPA URL was there
        # already, unconfirmed, and stays so (as after an owner's save in the admin).
        assert deployment.keys_confirmed_origins == [f"http://{deployment.slug}.example.com"]
        assert destinations.unconfirmed_origins(deployment) == ["http://cli-proxy-api:8317"]
    event = AuditEvent.objects.get(action="deployment.confirm_destination")
    assert sorted(event.changes["origins"]) == ["d0", "d1", "d2"]
    assert event.changes["how"] == "import"


def test_a_refused_bulk_import_changes_nothing(team):
    portable.import_payload(payload=definitions(3))
    before = list(Deployment.objects.values()), list(AuditEvent.objects.values())
    payload = definitions(40, notes="changed")
    payload["deployments"][37]["http_port"] = 0
    with pytest.raises(portable.ImportFailed) as failed:
        portable.import_payload(payload=payload, update=True)
    assert failed.value.lines() == ["d37: http_port: The port must be between 1 and 65535"]
    assert (list(Deployment.objects.values()), list(AuditEvent.objects.values())) == before


# --- validating without a query per constraint ----------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"tls": True},
        {"http_port": 0, "https_port": 70000},
        {
            "tls": True,
            "ssl_certificate": "/a.pem",
            "ssl_certificate_key": "/a.key",
            "https_port": 80,
        },
        {"client_ip": "behind_proxy", "trusted_proxies": ""},
        {"limit_req_burst": 0},
        {"mode": "elsewhere"},
        {"server_name": "not a host"},
        {},
    ],
)
def test_validation_says_what_full_clean_says(team, values):
    deployment = Deployment(
        **{"slug": "v", "name": "V", "team": team, "server_name": "v.example.com", **values}
    )
    try:
        deployment.full_clean()
        expected = {}
    except ValidationError as exc:
        expected = exc.message_dict
    assert cleaning.clean_errors(deployment, exclude=importing.LINKS) == expected


def _constraint_verdicts(obj) -> tuple[list[bool], list[bool]]:
    """Return each check constraint's verdict on obj, from Python and from the database."""
    python, database = [], []
    for constraint in type(obj)._meta.constraints:
        if not isinstance(constraint, models.CheckConstraint):
            continue
        python.append(cleaning.sql_value(constraint.condition, obj) is not False)
        against = obj._get_field_expression_map(meta=obj._meta)
        database.append(Q(constraint.condition).check(against))
    return python, database


class ConstraintVerdictTests(TestCase):
    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(
        mode=st.sampled_from(["manager_server", "cpa_panel", "other"]),
        tls=st.booleans(),
        ports=st.tuples(st.integers(-2, 70000), st.integers(-2, 70000)),
        certificate=st.sampled_from(["", "/etc/ssl/a.pem"]),
        key=st.sampled_from(["", "/etc/ssl/a.key"]),
        client_ip=st.sampled_from(["edge", "behind_proxy", "elsewhere"]),
        proxies=st.sampled_from(["", " ", "10.0.0.1"]),
        burst=st.one_of(st.none(), st.integers(-1, 1200)),
    )
    def test_python_and_the_database_agree_on_every_check_constraint(
        self, mode, tls, ports, certificate, key, client_ip, proxies, burst
    ):
        deployment = Deployment(
            slug="c",
            server_name="c.example.com",
            mode=mode,
            tls=tls,
            http_port=ports[0],
            https_port=ports[1],
            ssl_certificate=certificate,
            ssl_certificate_key=key,
            client_ip=client_ip,
            trusted_proxies=proxies,
            limit_req_burst=burst,
        )
        python, database = _constraint_verdicts(deployment)
        assert python and python == database

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(
        match=st.sampled_from(["exact", "prefix", "regex", "regex_i", "nope"]),
        target=st.sampled_from(["cpa", "cpamp", "nginx"]),
    )
    def test_they_agree_on_the_overrides_constraints_too(self, match, target):
        python, database = _constraint_verdicts(
            RouteOverride(match=match, path="/a", target=target)
        )
        assert python and python == database


# --- export -------------------------------------------------------------------------------------


def export_statements() -> int:
    return statements(lambda: call_command("export_deployments", stdout=io.StringIO()))


def test_export_deployments_sends_the_same_statements_for_3_or_30(team):
    portable.import_payload(payload=definitions(3, prefix="a"))
    set_key(deployment=Deployment.objects.get(slug="a0"), role="cpa_api", secret="sk-a0-key-001")
    few = export_statements()
    portable.import_payload(payload=definitions(27, prefix="b"))
    for slug in ("b0", "b1"):
        set_key(
            deployment=Deployment.objects.get(slug=slug), role="cpa_api", secret=f"sk-{slug}-x1"
        )
    assert export_statements() == few
    out = io.StringIO()
    call_command("export_deployments", stdout=out)
    exported = json.loads(out.getvalue())["deployments"]
    assert len(exported) == 30
    b0 = next(e for e in exported if e["slug"] == "b0")
    assert b0["keys"] == ["cpa_api"] and len(b0["route_overrides"]) == 2
    assert b0["verification"]["interval_seconds"] == 300


def test_an_export_records_one_event_per_team(team, other_team):
    payload = definitions(5, prefix="a")
    payload["deployments"] += definitions(1, prefix="o", team="other")["deployments"]
    portable.import_payload(payload=payload)
    call_command("export_deployments", stdout=io.StringIO())
    events = AuditEvent.objects.filter(action="definitions.export").order_by("team_id")
    assert [e.team for e in events] == [team, other_team]
    assert events[0].changes == {"deployments": [f"a{n}" for n in range(5)]}
    assert events[1].object_id == str(Deployment.objects.get(slug="o0").pk)
    call_command("export_deployments", "a1", "a2", stdout=io.StringIO())
    assert AuditEvent.objects.filter(action="definitions.export").count() == 3


# --- the audit list ---------------------------------------------------------------------------


def add_events(count: int, *, teams: list[Team], actors: list) -> None:
    for n in range(count):
        audit.record(
            action=("deployment.change", "key.rotate", "login")[n % 3],
            team=teams[n % len(teams)],
            actor=actors[n % len(actors)],
            object_repr=f"event {n}",
        )


FILTERED = [
    "",
    "?action=key.rotate",
    "?object_type=deployment",
    "?created_at__gte=2000-01-01+00:00:00%2B00:00",
]


def audit_counts(client, team: Team, user) -> list[int]:
    urls = [
        *(AUDIT + query for query in FILTERED),
        f"{AUDIT}?team__id__exact={team.pk}&action=deployment.change",
        f"{AUDIT}?actor__id__exact={user.pk}",
        f"{AUDIT}?q=event",
    ]
    counts = []
    for url in urls:
        assert client.get(url).status_code == 200
        counts.append(statements(lambda url=url: client.get(url)))
    return counts


@pytest.mark.parametrize("role", ["superuser", "owner"])
def test_the_audit_list_and_its_filters_ask_the_same_queries_for_5_or_50_events(
    client, make_user, team, other_team, role
):
    user = (
        make_user("root", superuser=True)
        if role == "superuser"
        else make_user("olga", team=team, role="owner")
    )
    other = make_user("otto", team=other_team, role="operator")
    client.force_login(user)
    add_events(5, teams=[team, other_team], actors=[user, other])
    few = audit_counts(client, team, user)
    add_events(45, teams=[team, other_team], actors=[user, other])
    assert audit_counts(client, team, user) == few


def test_the_audit_filters_offer_bounded_constant_choices(client, superuser, monkeypatch):
    monkeypatch.setattr(audit_admin, "MAX_FILTER_CHOICES", 3)
    teams = [Team.objects.create(name=f"Team {n}", slug=f"t{n}") for n in range(5)]
    client.force_login(superuser)
    audit.record(action="deployment.change", team=teams[4], object_repr="x")

    def choices(url: str) -> dict[str, list[str]]:
        specs = client.get(url).context["cl"].filter_specs
        return {
            str(spec.title): [str(c[0]) for c in getattr(spec, "lookup_choices", [])]
            for spec in specs
        }

    listed = choices(AUDIT)
    assert listed["team"] == [str(t.pk) for t in teams[:3]]
    assert "key.rotate" in listed["action"] and "definitions.export" in listed["action"]
    assert {"deployment", "key", "user", "verificationrun"} <= set(listed["object type"])
    chosen = choices(f"{AUDIT}?team__id__exact={teams[4].pk}")
    assert chosen["team"] == [str(t.pk) for t in (*teams[:3], teams[4])]


def test_a_members_user_filter_lists_the_people_of_their_teams(client, make_user, team, other_team):
    owner = make_user("olga", team=team, role="owner")
    colleague = make_user("vera", team=team, role="viewer")
    stranger = make_user("sam", team=other_team, role="owner")
    audit.record(action="login", actor=stranger, obj=stranger)
    client.force_login(owner)
    specs = client.get(AUDIT).context["cl"].filter_specs
    users = next(s for s in specs if str(s.title) == "actor").lookup_choices
    assert [label for _pk, label in users] == [owner.username, colleague.username]


def test_the_audit_list_counts_no_further_than_its_bound(client, superuser, team, monkeypatch):
    from routes.admin import verification as run_admin

    monkeypatch.setattr(run_admin.BoundedCountPaginator, "bound", 3)
    add_events(5, teams=[team], actors=[superuser])
    client.force_login(superuser)
    body = client.get(AUDIT).content.decode()
    assert "The newest 3 events; filter by team, user, action or date" in body
    body = client.get(f"{AUDIT}?action=key.rotate").content.decode()
    assert "The newest" not in body


# --- team scoping -------------------------------------------------------------------------------


def page_counts(client) -> dict[str, int]:
    counts = {}
    for url in (INDEX, DEPLOYMENTS):
        assert client.get(url).status_code == 200
        counts[url] = statements(lambda url=url: client.get(url))
    return counts


def test_an_operator_of_many_teams_asks_what_a_superuser_asks_plus_a_constant(client, make_user):
    teams = [Team.objects.create(name=f"Team {n}", slug=f"t{n}") for n in range(6)]
    operator = make_user("otto")
    root = make_user("root", superuser=True)

    def counts(n: int, memberships: int) -> tuple[dict[str, int], dict[str, int]]:
        for team in teams:
            prefix = f"{team.slug}-{n}-"
            portable.import_payload(payload=definitions(n, team=team.slug, prefix=prefix))
        for team in teams[:memberships]:
            Membership.objects.get_or_create(user=operator, team=team, role="operator")
        client.force_login(root)
        superuser = page_counts(client)
        client.force_login(operator)
        return superuser, page_counts(client)

    few_root, few_operator = counts(1, memberships=2)
    many_root, many_operator = counts(9, memberships=6)
    # Neither more deployments nor more teams ask more: the scope is one EXISTS.
    assert (many_root, many_operator) == (few_root, few_operator)
    # The operator's constant: their memberships, Django's permissions, the team filter.
    assert all(few_operator[url] - few_root[url] <= 6 for url in few_root)
    client.force_login(operator)
    assert client.get(DEPLOYMENTS).context["cl"].result_count == 60


# --- export history retention ------------------------------------------------------------------


def add_exports(deployment: Deployment, count: int) -> list[ConfigExport]:
    made = []
    start = timezone.now() - dt.timedelta(days=1)
    for n in range(count):
        export = ConfigExport.objects.create(
            deployment=deployment, content_hash=f"{n:064d}", text=f"# {n}\n", source="command"
        )
        ConfigExport.objects.filter(pk=export.pk).update(created_at=start + dt.timedelta(minutes=n))
        made.append(export)
    return made


def test_prune_exports_keeps_the_newest_n_of_each_deployment(deployment, theirs, settings):
    settings.CONSOLE_EXPORTS_KEPT = 3
    ours = add_exports(deployment, 5)
    others = add_exports(theirs, 2)
    out = io.StringIO()
    call_command("prune_exports", stdout=out)
    assert "Deleted 2 export(s); kept up to 3 per deployment." in out.getvalue()
    kept = set(ConfigExport.objects.values_list("pk", flat=True))
    assert kept == {e.pk for e in ours[2:]} | {e.pk for e in others}
    event = AuditEvent.objects.get(action="config.prune")
    assert event.changes == {"deleted": 2, "keep": 3}
    assert history.prune_exports(keep=1, team=theirs.team) == 1
    assert set(ConfigExport.objects.filter(deployment=theirs).values_list("pk", flat=True)) == {
        others[1].pk
    }


def test_prune_exports_always_keeps_the_newest(deployment):
    add_exports(deployment, 2)
    with pytest.raises(CommandError, match="--keep: give 1 or more exports"):
        call_command("prune_exports", "--keep", "0", stdout=io.StringIO())
    with pytest.raises(ValueError):
        history.prune_exports(keep=0)
    assert ConfigExport.objects.count() == 2


def test_prune_exports_is_one_statement_whatever_the_deployments(team):
    portable.import_payload(payload=definitions(6))
    for deployment in Deployment.objects.all():
        add_exports(deployment, 3)
    assert statements(lambda: history.prune_exports(keep=1)) == 1
    assert ConfigExport.objects.count() == 6
