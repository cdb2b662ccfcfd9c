"""Verification in the admin: run history, jobs, the verify page and its progress, key tests."""

from __future__ import annotations

import pytest
from django.urls import reverse

from routes.models import CheckResult, Deployment, Key, VerificationJob, VerificationRun
from routes.verification import runs
from tests.fakes.stack import API_KEY, running_stack, store_key


@pytest.fixture
def finished_run(deployment):
    job = runs.job_for(deployment)
    run = VerificationRun.objects.create(
        job=job, trigger="manual", status="failed", duration_ms=120, base_url="http://x"
    )
    CheckResult.objects.create(
        run=run,
        position=0,
        check_id="panel",
        method="HEAD",
        url="http://x/management.html",
        expected="200 from CPAMP",
        status_code=200,
        latency_ms=5,
        expected_upstream="cpamp",
        observed_upstream="cpamp",
        passed=True,
    )
    CheckResult.objects.create(
        run=run,
        position=1,
        check_id="plugin_resources",
        method="GET",
        url="http://x/v0/resource/plugins/",
        expected="any",
        status_code=404,
        latency_ms=7,
        expected_upstream="cpamp",
        observed_upstream="cpa",
        passed=False,
        diagnosis="the rule <location> is missing",
    )
    return run


def change_link(run) -> str:
    return reverse("admin:routes_verificationrun_change", args=[run.pk])


def other_run(other_team):
    other = Deployment.objects.create(
        slug="theirs", name="Theirs", team=other_team, server_name="their.example.com"
    )
    return VerificationRun.objects.create(
        job=runs.job_for(other), trigger="manual", status="passed"
    )


@pytest.mark.django_db
def test_the_run_history_lists_only_the_users_teams(client, users, finished_run, other_team):
    theirs = other_run(other_team)
    client.force_login(users["viewer"])
    page = client.get(reverse("admin:routes_verificationrun_changelist"))
    assert page.status_code == 200
    body = page.content.decode()
    assert change_link(finished_run) in body and "prod" in body
    assert "theirs" not in body
    assert 'class="console-badge failed"' in body
    for url in (
        reverse("admin:routes_verificationrun_change", args=[theirs.pk]),
        reverse("admin:routes_verificationrun_progress", args=[theirs.pk]),
    ):
        assert client.get(url).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query", ["status__exact=failed", "q=prod", "trigger__exact=manual", "created_at__year={year}"]
)
def test_the_run_history_filters(client, users, finished_run, query, deployment):
    from django.utils import timezone

    client.force_login(users["viewer"])
    query = query.format(year=timezone.now().year)
    page = client.get(reverse("admin:routes_verificationrun_changelist") + "?" + query)
    assert page.status_code == 200
    assert change_link(finished_run) in page.content.decode()


@pytest.mark.django_db
def test_the_deployment_filter_narrows_the_history(client, users, finished_run, team):
    other = Deployment.objects.create(slug="b", name="B", team=team, server_name="b.example.com")
    run_b = VerificationRun.objects.create(job=runs.job_for(other), trigger="manual")
    client.force_login(users["viewer"])
    url = reverse("admin:routes_verificationrun_changelist")
    body = client.get(f"{url}?deployment={other.pk}").content.decode()
    assert change_link(run_b) in body and change_link(finished_run) not in body


@pytest.mark.django_db
def test_the_history_makes_no_query_per_run(
    client, users, deployment, django_assert_max_num_queries
):
    job = runs.job_for(deployment)
    client.force_login(users["viewer"])
    url = reverse("admin:routes_verificationrun_changelist")
    for _ in range(3):
        VerificationRun.objects.create(job=job, trigger="manual", triggered_by=users["owner"])
    client.get(url)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        client.get(url)
    for _ in range(20):
        VerificationRun.objects.create(job=job, trigger="manual", triggered_by=users["owner"])
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(url)


@pytest.mark.django_db
def test_a_run_page_shows_the_checks_escaped_and_read_only(client, users, finished_run):
    client.force_login(users["viewer"])
    page = client.get(reverse("admin:routes_verificationrun_change", args=[finished_run.pk]))
    body = page.content.decode()
    assert page.status_code == 200
    assert "plugin_resources" in body and "the rule &lt;location&gt; is missing" in body
    assert 'class="console-badge passed"' in body
    assert "7 ms" in body
    assert 'name="_save"' not in body


@pytest.mark.django_db
def test_the_progress_json_reports_checks_done(client, users, deployment):
    job = runs.job_for(deployment)
    run = VerificationRun.objects.create(job=job, trigger="manual", status="running")
    CheckResult.objects.create(
        run=run, check_id="panel", method="HEAD", url="u", expected="e", passed=True
    )
    client.force_login(users["viewer"])
    data = client.get(reverse("admin:routes_verificationrun_progress", args=[run.pk])).json()
    assert data["status"] == "running" and data["finished"] is False
    assert data["done"] == 1
    # Manager Server mode with no keys: panel, health x2, info, api, management, plugins,
    # models_compat, fallback.
    assert data["total"] == 9
    assert data["results"][0]["id"] == "panel"


@pytest.mark.django_db
def test_the_deployment_page_links_to_verification(client, users, deployment):
    client.force_login(users["viewer"])
    page = client.get(reverse("admin:routes_deployment_change", args=[deployment.pk]))
    assert reverse("admin:routes_deployment_verify", args=[deployment.pk]) in page.content.decode()


@pytest.mark.django_db
def test_a_viewer_sees_the_verify_page_without_the_run_button(client, users, finished_run):
    deployment = finished_run.job.deployment
    client.force_login(users["viewer"])
    url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    page = client.get(url)
    body = page.content.decode()
    assert page.status_code == 200
    assert "console/verify.js" in body
    assert reverse("admin:routes_verificationrun_progress", args=[finished_run.pk]) in body
    assert 'data-finished="1"' in body
    assert "Run verification</button>" not in body
    assert client.post(url).status_code == 403
    assert VerificationRun.objects.count() == 1


@pytest.mark.django_db
def test_an_operator_queues_a_run_from_the_verify_page(
    client, users, deployment, django_capture_on_commit_callbacks
):
    client.force_login(users["operator"])
    url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    assert "Run verification</button>" in client.get(url).content.decode()
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(url)
    run = VerificationRun.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"?run={run.pk}")
    assert run.status == "queued" and run.triggered_by == users["operator"]
    assert len(callbacks) == 1
    page = client.get(response["Location"])
    assert 'data-finished="0"' in page.content.decode()
    assert "Waiting for the task worker" in page.content.decode()


@pytest.mark.django_db
def test_another_teams_verify_page_does_not_exist(client, users, deployment):
    client.force_login(users["outsider"])
    url = reverse("admin:routes_deployment_verify", args=[deployment.pk])
    assert client.get(url).status_code == 404
    assert client.post(url).status_code == 404


@pytest.mark.django_db
def test_the_run_verification_action_queues_runs(client, users, deployment, team):
    second = Deployment.objects.create(slug="b", name="B", team=team, server_name="b.example.com")
    client.force_login(users["operator"])
    response = client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": "run_verification", "_selected_action": [deployment.pk, second.pk]},
    )
    assert response.status_code == 302
    assert VerificationRun.objects.filter(trigger="manual").count() == 2


@pytest.mark.django_db
def test_a_viewer_does_not_get_the_run_verification_action(client, users, deployment):
    client.force_login(users["viewer"])
    page = client.get(reverse("admin:routes_deployment_changelist"))
    assert "run_verification" not in page.content.decode()
    client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": "run_verification", "_selected_action": [deployment.pk]},
    )
    assert not VerificationRun.objects.exists()


@pytest.mark.django_db
def test_an_operator_edits_the_job_and_a_viewer_cannot(client, users, deployment):
    job = runs.job_for(deployment)
    url = reverse("admin:routes_verificationjob_change", args=[job.pk])
    data = {
        # Where keys go is an owner's call (tests/test_key_destinations.py); the rest is not.
        "base_url": "",
        "verify_tls": "",
        "timeout_seconds": "5",
        "enabled_checks": ["plugin_resources", "panel"],
        "interval_seconds": "900",
    }
    client.force_login(users["viewer"])
    assert client.post(url, data).status_code == 403
    client.force_login(users["operator"])
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    job.refresh_from_db()
    assert job.base_url == "" and job.verify_tls is False
    assert job.enabled_checks == ["panel", "plugin_resources"]
    assert job.interval_seconds == 900
    from routes.models import AuditEvent

    event = AuditEvent.objects.get(action="verification_job.change")
    assert event.changes["interval_seconds"] == [None, 900]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timeout_seconds", "0", "Give 0.5 to 120 seconds."),
        ("interval_seconds", "19", "Interval: give 20 to 604800 seconds"),
        ("base_url", "ftp://x", "Give an http:// or https:// URL"),
        ("enabled_checks", "nope", "Select a valid choice"),
    ],
)
def test_the_job_form_names_the_field_and_the_reason(
    client, users, deployment, field, value, message
):
    job = runs.job_for(deployment)
    data = {"base_url": "", "verify_tls": "on", "timeout_seconds": "10", "interval_seconds": ""}
    data[field] = value
    client.force_login(users["operator"])
    page = client.post(reverse("admin:routes_verificationjob_change", args=[job.pk]), data)
    assert page.status_code == 200
    assert message in page.content.decode()


@pytest.mark.django_db
def test_test_key_refuses_get_and_viewers(client, users, deployment):
    key = store_key(deployment, "cpa_api", API_KEY)
    url = reverse("admin:routes_deployment_test_key", args=[deployment.pk, key.pk])
    client.force_login(users["operator"])
    assert client.get(url).status_code == 405
    client.force_login(users["viewer"])
    assert client.post(url).status_code == 403
    client.force_login(users["outsider"])
    assert client.post(url).status_code == 404
    key.refresh_from_db()
    assert key.last_validated_at is None


@pytest.mark.nginx
@pytest.mark.django_db(transaction=True)
def test_test_this_key_reports_back_on_the_deployment_page(client, users, deployment):
    with running_stack(deployment) as stack:
        key = Key.objects.get(deployment=stack.deployment, role="cpa_api")
        client.force_login(users["operator"])
        url = reverse("admin:routes_deployment_test_key", args=[deployment.pk, key.pk])
        response = client.post(url, follow=True)
    body = response.content.decode()
    assert response.redirect_chain[-1][0] == reverse(
        "admin:routes_deployment_change", args=[deployment.pk]
    )
    assert "the key works" in body
    assert API_KEY not in body
    key.refresh_from_db()
    assert key.last_validation_ok is True


@pytest.mark.django_db
def test_the_job_changelist_is_scoped(client, users, deployment, other_team):
    theirs = other_run(other_team).job
    runs.job_for(deployment)
    client.force_login(users["viewer"])
    body = client.get(reverse("admin:routes_verificationjob_changelist")).content.decode()
    assert "prod" in body and "theirs" not in body
    assert (
        client.get(reverse("admin:routes_verificationjob_change", args=[theirs.pk])).status_code
        == 404
    )
    assert VerificationJob.objects.count() == 2


def test_the_deployment_list_and_page_show_the_last_run(client, users, finished_run, deployment):
    client.force_login(users["viewer"])
    listing = client.get(reverse("admin:routes_deployment_changelist"))
    assert listing.status_code == 200
    assert b"console-badge failed" in listing.content
    page = client.get(reverse("admin:routes_deployment_change", args=[deployment.pk]))
    assert page.status_code == 200
    assert reverse("admin:routes_verificationrun_change", args=[finished_run.pk]).encode() in (
        page.content
    )
