"""The audit trail admin: scoped, read-only, exportable; superuser pruning; no secrets."""

import csv
import datetime as dt
import io
import json
from urllib.parse import urlencode

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from routes import audit
from routes import keys as keyring
from routes.models import AuditEvent, Key

PASSWORD = "pw-Str0ng-enough!"


@pytest.fixture
def events(team, other_team):
    """One event in each team and one without a team."""
    return {
        "ops": audit.record(action="deployment.change", team=team, object_repr="ops-dep"),
        "other": audit.record(action="deployment.change", team=other_team, object_repr="oth-dep"),
        "global": audit.record(action="keys.reencrypt", object_repr="no-team"),
    }


def changelist(client, **params):
    return client.get(reverse("admin:routes_auditevent_changelist"), params)


def export_url(fmt, **params):
    """Return the export URL with the changelist's filters, as the export button posts to."""
    query = urlencode(params)
    return reverse(f"admin:routes_auditevent_export_{fmt}") + (f"?{query}" if query else "")


def export(client, fmt, **params):
    response = client.post(export_url(fmt, **params))
    assert response.status_code == 200, response.status_code
    return b"".join(response.streaming_content).decode()


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def jsonl_rows(text):
    return [json.loads(line) for line in text.splitlines()]


# --- scoping --------------------------------------------------------------------------------


def test_members_see_their_teams_events_and_their_own_only(client, make_user, team, events):
    viewer = make_user("vera", team=team, role="viewer")
    mine = audit.record(action="login", actor=viewer, obj=viewer)
    client.force_login(viewer)
    html = changelist(client).content.decode()
    assert "ops-dep" in html
    assert "oth-dep" not in html and "no-team" not in html
    assert str(viewer) in html  # own login event
    other_page = client.get(reverse("admin:routes_auditevent_change", args=[events["other"].pk]))
    assert other_page.status_code == 302  # not in the user's queryset: "does not exist"
    own_page = client.get(reverse("admin:routes_auditevent_change", args=[mine.pk]))
    assert own_page.status_code == 200


def test_superusers_see_every_event(client, make_user, events):
    client.force_login(make_user("root", superuser=True))
    html = changelist(client).content.decode()
    assert all(name in html for name in ("ops-dep", "oth-dep", "no-team"))


def test_staff_without_a_team_cannot_open_the_trail(client, make_user, events):
    client.force_login(make_user("drifter"))
    assert changelist(client).status_code == 403
    assert client.get(reverse("admin:routes_auditevent_export_csv")).status_code == 403
    assert client.post(reverse("admin:routes_auditevent_export_csv")).status_code == 403


def test_filters_by_team_user_object_and_action(client, make_user, team, events):
    owner = make_user("olga", team=team, role="owner")
    audit.record(action="key.rotate", actor=owner, team=team, object_repr="rotated-key")
    client.force_login(owner)
    by_action = changelist(client, action="key.rotate").content.decode()
    assert "rotated-key" in by_action and "ops-dep" not in by_action
    by_actor = changelist(client, actor__id__exact=owner.pk).content.decode()
    assert "rotated-key" in by_actor and "ops-dep" not in by_actor
    by_team = changelist(client, team__id__exact=team.pk).content.decode()
    assert "ops-dep" in by_team
    search = changelist(client, q="rotated").content.decode()
    assert "rotated-key" in search and "ops-dep" not in search


# --- append-only ----------------------------------------------------------------------------


def test_nobody_adds_or_edits_events(client, make_user, team, events):
    client.force_login(make_user("root", superuser=True))
    assert client.get(reverse("admin:routes_auditevent_add")).status_code == 403
    url = reverse("admin:routes_auditevent_change", args=[events["ops"].pk])
    page = client.get(url).content.decode()
    assert 'name="_save"' not in page
    client.post(url, {"action": "forged", "object_repr": "forged"})
    events["ops"].refresh_from_db()
    assert events["ops"].action == "deployment.change"


def test_nobody_deletes_events_in_the_admin_pruning_is_the_commands_job(
    client, make_user, team, events
):
    url = reverse("admin:routes_auditevent_delete", args=[events["ops"].pk])
    for user in (make_user("olga", team=team, role="owner"), make_user("root", superuser=True)):
        client.force_login(user)
        assert client.post(url, {"post": "yes"}).status_code == 403
        listing = client.get(reverse("admin:routes_auditevent_changelist")).content.decode()
        assert 'value="delete_selected"' not in listing
        bulk = client.post(
            reverse("admin:routes_auditevent_changelist"),
            {"action": "delete_selected", "_selected_action": [events["ops"].pk], "post": "yes"},
        )
        assert bulk.status_code in (200, 302)
    assert AuditEvent.objects.filter(pk=events["ops"].pk).exists()
    assert not AuditEvent.objects.filter(action="audit.prune").exists()


# --- export ---------------------------------------------------------------------------------


def test_csv_export_respects_scope_and_filters(client, make_user, team, events):
    owner = make_user("olga", team=team, role="owner")
    audit.record(action="key.rotate", actor=owner, team=team, object_repr="rotated-key")
    client.force_login(owner)
    rows = csv_rows(export(client, "csv"))
    # The team's events and the owner's own login; not other teams', not team-less ones.
    assert {r["object"] for r in rows} == {"ops-dep", "rotated-key", "olga"}
    assert rows[0].keys() >= {"created_at", "actor", "team", "action", "object", "changes", "ip"}
    filtered = csv_rows(export(client, "csv", action="key.rotate"))
    assert [r["object"] for r in filtered] == ["rotated-key"]
    assert filtered[0]["actor"] == "olga" and filtered[0]["team"] == "ops"


def test_jsonl_export_gives_one_event_per_line(client, make_user, team, events):
    client.force_login(make_user("root", superuser=True))
    rows = jsonl_rows(export(client, "jsonl", q="dep"))
    assert sorted(r["object"] for r in rows) == ["ops-dep", "oth-dep"]
    assert all(isinstance(r["changes"], dict) for r in rows)


def test_the_changelist_export_links_keep_the_current_filters(client, make_user, team, events):
    client.force_login(make_user("olga", team=team, role="owner"))
    html = changelist(client, action="deployment.change").content.decode()
    assert reverse("admin:routes_auditevent_export_csv") + "?action=deployment.change" in html
    assert reverse("admin:routes_auditevent_export_jsonl") + "?action=deployment.change" in html


def test_an_unknown_export_filter_is_a_clear_400(client, make_user, team, events):
    client.force_login(make_user("olga", team=team, role="owner"))
    response = client.post(export_url("csv", bogus__x="1"))
    assert response.status_code == 400


def test_selected_events_export_as_an_action(client, make_user, team, events):
    client.force_login(make_user("olga", team=team, role="owner"))
    response = client.post(
        reverse("admin:routes_auditevent_changelist"),
        {"action": "export_jsonl", "_selected_action": [events["ops"].pk]},
    )
    rows = jsonl_rows(b"".join(response.streaming_content).decode())
    assert [r["id"] for r in rows] == [events["ops"].pk]


def test_exports_are_recorded(client, make_user, team, events):
    owner = make_user("olga", team=team, role="owner")
    client.force_login(owner)
    export(client, "csv", action="deployment.change")
    event = AuditEvent.objects.get(action="audit.export")
    assert event.actor == owner
    assert event.changes == {"format": "csv", "count": 1, "filters": "action=deployment.change"}


def test_a_get_of_the_export_is_refused_and_records_nothing(client, make_user, team, events):
    client.force_login(make_user("olga", team=team, role="owner"))
    for fmt in ("csv", "jsonl"):
        response = client.get(export_url(fmt, action="deployment.change"))
        assert response.status_code == 405
        assert response["Allow"] == "POST"
    assert not AuditEvent.objects.filter(action="audit.export").exists()


def test_the_changelist_offers_the_exports_as_post_buttons(client, make_user, team, events):
    client.force_login(make_user("olga", team=team, role="owner"))
    html = changelist(client).content.decode()
    for fmt in ("csv", "jsonl"):
        assert f'<form method="post" action="{export_url(fmt)}"' in html


def test_csv_cells_cannot_become_spreadsheet_formulas(client, make_user, team):
    anonymous = Client()
    anonymous.post(reverse("admin:login"), {"username": "=HYPERLINK(1)", "password": "x"})
    client.force_login(make_user("root", superuser=True))
    rows = csv_rows(export(client, "csv", action="login.failed"))
    assert rows[0]["object"] == "'=HYPERLINK(1)"


def test_no_secret_reaches_the_trail_or_its_exports(client, make_user, team, deployment):
    secret = "sk-never-in-the-audit-log-1234"
    owner = make_user("olga", team=team, role="owner")
    key = Key(deployment=deployment, role=keyring.CPA_API, label="ci")
    key.set_secret("sk-first-value-of-this-key-000")
    key.save()
    before = audit.snapshot(key)
    key.set_secret(secret)
    key.save()
    audit.record(
        action="key.change",
        actor=owner,
        team=team,
        obj=key,
        changes=audit.field_diff({**before, "secret": 1}, {**audit.snapshot(key), "secret": 2}),
    )
    Client().post(reverse("admin:login"), {"username": "olga", "password": secret})
    client.force_login(make_user("root", superuser=True))
    dumps = [
        export(client, "csv"),
        export(client, "jsonl"),
        repr(list(AuditEvent.objects.values())),
    ]
    for dump in dumps:
        assert secret not in dump
        assert key.ciphertext not in dump
        assert key.fingerprint not in dump
    assert AuditEvent.objects.get(action="key.change").changes["secret"] == "changed"


# --- prune_audit ----------------------------------------------------------------------------


def age(event, days):
    AuditEvent.objects.filter(pk=event.pk).update(
        created_at=timezone.now() - dt.timedelta(days=days)
    )


def test_prune_audit_deletes_events_before_the_date_and_records_it(events):
    age(events["ops"], 400)
    age(events["other"], 10)
    cutoff = (timezone.localdate() - dt.timedelta(days=30)).isoformat()
    out = io.StringIO()
    call_command("prune_audit", "--before", cutoff, stdout=out)
    assert "Deleted 1 audit event" in out.getvalue()
    assert not AuditEvent.objects.filter(pk=events["ops"].pk).exists()
    assert AuditEvent.objects.filter(pk=events["other"].pk).exists()
    prune = AuditEvent.objects.get(action="audit.prune")
    assert prune.actor_label == "command" and prune.changes["count"] == 1


def test_prune_audit_dry_run_and_team_limit(events, team):
    for event in events.values():
        age(event, 400)
    cutoff = (timezone.localdate() - dt.timedelta(days=30)).isoformat()
    out = io.StringIO()
    call_command("prune_audit", "--before", cutoff, "--dry-run", "--json", stdout=out)
    assert json.loads(out.getvalue())["matching"] == 3
    assert AuditEvent.objects.count() == 3
    call_command("prune_audit", "--before", cutoff, "--team", "ops", stdout=io.StringIO())
    assert not AuditEvent.objects.filter(pk=events["ops"].pk).exists()
    assert AuditEvent.objects.filter(pk=events["other"].pk).exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("last tuesday", "is not a date"),
        ("2999-01-01", "in the future"),
        ("2024-02-30", "not a date"),
    ],
)
def test_prune_audit_refuses_a_bad_date(db, value, message):
    with pytest.raises(CommandError, match=message):
        call_command("prune_audit", "--before", value)


def test_prune_audit_refuses_an_unknown_team(db):
    with pytest.raises(CommandError, match="--team: no team"):
        call_command("prune_audit", "--before", "2020-01-01", "--team", "nope")


def test_the_changelist_query_count_does_not_grow_with_events(
    client, make_user, team, other_team, django_assert_max_num_queries
):
    owner = make_user("olga", team=team, role="owner")
    client.force_login(owner)
    audit.record(action="deployment.change", actor=owner, team=team, object_repr="first")
    with CaptureQueriesContext(connection) as few:
        assert changelist(client).status_code == 200
    for n in range(30):
        audit.record(action=f"action.{n % 3}", actor=owner, team=team, object_repr=f"e{n}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert changelist(client).status_code == 200
