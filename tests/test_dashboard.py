"""The admin index is a dashboard of the user's deployments, runs, exports and changes."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from routes import audit
from routes.admin.dashboard import build_dashboard
from routes.models import (
    CheckResult,
    ConfigExport,
    Deployment,
    VerificationJob,
    VerificationRun,
)

INDEX = "/admin/"


def make_run(deployment, status, *, failures=()):
    job, _ = VerificationJob.objects.get_or_create(deployment=deployment)
    run = VerificationRun.objects.create(job=job, status=status, trigger="manual")
    for position, (check_id, diagnosis) in enumerate(failures):
        CheckResult.objects.create(
            run=run,
            position=position,
            check_id=check_id,
            method="GET",
            url=f"https://{deployment.server_name}/v1/models",
            expected="200 from cpa",
            status_code=401,
            passed=False,
            diagnosis=diagnosis,
        )
    return run


def make_deployments(team, count, *, prefix="d"):
    made = []
    for n in range(count):
        deployment = Deployment.objects.create(
            slug=f"{prefix}{n}",
            name=f"Deployment {prefix}{n}",
            team=team,
            server_name=f"{prefix}{n}.example.com",
        )
        make_run(deployment, "passed")
        make_run(deployment, "failed", failures=[("api_models", f"diagnosis {prefix}{n}")])
        ConfigExport.objects.create(
            deployment=deployment, content_hash="ab" * 32, text="server {}\n", source="admin"
        )
        audit.record(action="deployment.create", team=team, obj=deployment)
        made.append(deployment)
    return made


def test_it_sends_anonymous_visitors_to_the_login_page(client, db):
    response = client.get(INDEX)
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_it_shows_only_the_deployments_of_the_users_teams(client, make_user, team, other_team):
    Deployment.objects.create(
        slug="prod", name="Production", team=team, server_name="a.example.com"
    )
    Deployment.objects.create(
        slug="hidden", name="Hidden one", team=other_team, server_name="b.example.com"
    )
    client.force_login(make_user("vera", team=team, role="viewer"))
    page = client.get(INDEX).content.decode()
    assert "Production" in page
    assert "a.example.com" in page
    assert "Hidden one" not in page
    assert "b.example.com" not in page


def test_it_shows_every_team_to_a_superuser(client, make_user, team, other_team):
    Deployment.objects.create(
        slug="prod", name="Production", team=team, server_name="a.example.com"
    )
    Deployment.objects.create(slug="lab", name="Lab", team=other_team, server_name="b.example.com")
    client.force_login(make_user("root", superuser=True))
    page = client.get(INDEX).content.decode()
    assert 'id="team-ops"' in page
    assert 'id="team-other"' in page


def test_it_shows_the_last_verification_status_of_each_deployment(client, make_user, deployment):
    make_run(deployment, "failed", failures=[("api_models", "x")])
    latest = make_run(deployment, "passed")
    client.force_login(make_user("vera", team=deployment.team))
    page = client.get(INDEX).content.decode()
    row = page.split('id="team-ops"')[1].split("</table>")[0]
    assert f'class="console-badge {latest.status}"' in row
    assert "Passed" in row or "passed" in row
    assert 'console-badge failed"' not in row


def test_it_says_never_run_for_a_deployment_without_runs(client, make_user, deployment):
    client.force_login(make_user("vera", team=deployment.team))
    assert "never run" in client.get(INDEX).content.decode()


def test_it_lists_the_causes_of_failing_runs_with_their_checks(client, make_user, deployment):
    make_run(
        deployment,
        "failed",
        failures=[
            ("api_models", "401 on /v1/models: the wrong key type."),
            ("plugin_resources", "The /v0/resource/plugins/ rule is missing."),
        ],
    )
    client.force_login(make_user("vera", team=deployment.team))
    failing = client.get(INDEX).content.decode().split('id="failing-checks"')[1]
    failing = failing.split('id="recent-exports"')[0]
    # A run stored before causes were: one cause per failed check, named by its label.
    assert "Explains: CPA API with the API key" in failing
    assert "Explains: Plugin resources" in failing
    assert failing.count("401 on /v1/models: the wrong key type.") == 1
    assert failing.count("The /v0/resource/plugins/ rule is missing.") == 1


def test_it_ignores_failures_of_runs_that_are_no_longer_the_latest(client, make_user, deployment):
    make_run(deployment, "failed", failures=[("cpa_health", "old failure")])
    make_run(deployment, "passed")
    client.force_login(make_user("vera", team=deployment.team))
    page = client.get(INDEX).content.decode()
    assert "old failure" not in page
    assert "No failing checks in the latest runs." in page


def test_it_lists_recent_exports_and_changes_of_the_users_teams_only(
    client, make_user, team, other_team
):
    mine = Deployment.objects.create(
        slug="prod", name="Production", team=team, server_name="a.example.com"
    )
    theirs = Deployment.objects.create(
        slug="lab", name="Secret lab", team=other_team, server_name="b.example.com"
    )
    for deployment, digest in ((mine, "1" * 64), (theirs, "2" * 64)):
        ConfigExport.objects.create(
            deployment=deployment, content_hash=digest, text="x\n", source="admin"
        )
        audit.record(action="deployment.change", team=deployment.team, obj=deployment)
    client.force_login(make_user("vera", team=team))
    page = client.get(INDEX).content.decode()
    exports = page.split('id="recent-exports"')[1].split('id="recent-changes"')[0]
    changes = page.split('id="recent-changes"')[1].split('id="administration"')[0]
    assert "1" * 12 in exports
    assert "2" * 12 not in exports
    assert "Production (prod)" in changes
    assert "Secret lab" not in changes


def test_it_offers_the_wizard_only_to_users_who_may_create(client, make_user, team):
    client.force_login(make_user("vera", team=team, role="viewer"))
    assert "New deployment" not in client.get(INDEX).content.decode()
    client.force_login(make_user("otto", team=team, role="operator"))
    page = client.get(INDEX).content.decode()
    assert "New deployment" in page
    assert reverse("admin:routes_deployment_wizard") in page


def test_it_invites_an_operator_without_deployments_to_the_wizard(client, make_user, team):
    client.force_login(make_user("otto", team=team, role="operator"))
    page = client.get(INDEX).content.decode()
    assert 'id="team-ops"' in page
    assert "No deployment in this team yet." in page


def test_it_explains_the_empty_state_to_a_user_without_teams(client, make_user):
    client.force_login(make_user("lonely"))
    page = client.get(INDEX).content.decode()
    assert "No deployments yet" in page
    assert "Ask a team owner to add you." in page


def test_it_keeps_the_app_list_reachable(client, make_user, team):
    client.force_login(make_user("root", superuser=True))
    page = client.get(INDEX).content.decode()
    assert 'id="administration"' in page
    assert reverse("admin:routes_deployment_changelist") in page


def test_it_loads_the_console_assets_without_inline_script(client, make_user, team):
    client.force_login(make_user("root", superuser=True))
    page = client.get(INDEX).content.decode()
    assert "console/console.css" in page
    assert "console/console.js" in page
    assert "<script>" not in page
    assert " style=" not in page.split('id="content-main"')[1]


def test_it_runs_the_same_number_of_queries_for_3_or_30_deployments(make_user, team):
    first, second = (make_user(name, team=team, role="operator") for name in ("otto", "olga"))
    make_deployments(team, 3, prefix="a")
    with CaptureQueriesContext(connection) as few:
        build_dashboard(user=first)
    make_deployments(team, 27, prefix="b")
    with CaptureQueriesContext(connection) as many:
        dashboard = build_dashboard(user=second)
    assert len(many.captured_queries) == len(few.captured_queries)
    assert sum(len(g.rows) for g in dashboard.groups) == 30
    assert len(dashboard.failing) == 10


def test_the_page_stays_within_a_fixed_query_budget(
    client, make_user, team, django_assert_max_num_queries
):
    make_deployments(team, 3, prefix="a")
    client.force_login(make_user("otto", team=team, role="operator"))
    with CaptureQueriesContext(connection) as few:
        client.get(INDEX)
    make_deployments(team, 25, prefix="b")
    # The admin's app list asks one permission query per model; the dashboard adds a fixed few.
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(INDEX)
    assert response.status_code == 200
    assert response.content.decode().count("Deployment b") >= 25
    assert len(few.captured_queries) <= 30


@pytest.mark.parametrize("status", ["queued", "running", "passed", "failed", "error"])
def test_every_status_gets_a_badge_class(client, make_user, deployment, status):
    make_run(deployment, status)
    client.force_login(make_user("vera", team=deployment.team))
    assert f'console-badge {status}"' in client.get(INDEX).content.decode()
