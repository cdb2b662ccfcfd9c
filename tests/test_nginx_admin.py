"""Admin pages of the nginx config: preview, diff, check, download, export, routes, history."""

from __future__ import annotations

import io
import tarfile

import pytest
from django.urls import reverse

from routes.models import AuditEvent, ConfigExport, Deployment, RouteOverride
from routes.nginx.export import sha256, write_export
from routes.nginx.render import render_site


def config_url(deployment) -> str:
    return reverse("admin:routes_deployment_config", args=[deployment.pk])


def download_url(deployment) -> str:
    return reverse("admin:routes_deployment_config_download", args=[deployment.pk])


def routes_url(deployment) -> str:
    return reverse("admin:routes_deployment_routes", args=[deployment.pk])


# --- Config page ----------------------------------------------------------------------------


@pytest.mark.nginx
def test_a_viewer_sees_the_rendered_config_lint_and_the_nginx_check(client, users, deployment):
    RouteOverride.objects.create(deployment=deployment, match="prefix", path="/v1/", target="cpamp")
    # Reading the page never runs nginx: an operator's "Test with nginx" stores the result.
    client.force_login(users["operator"])
    client.post(reverse("admin:routes_deployment_config_test", args=[deployment.pk]))
    client.force_login(users["viewer"])
    response = client.get(config_url(deployment))
    assert response.status_code == 200
    page = response.content.decode()
    assert "location ^~ /v0/management/ {" in page
    assert "map $http_upgrade $connection_upgrade" in page
    assert "boundary_moved" in page
    assert "nginx -t accepts this config" in page
    assert "Never exported" in page
    # A viewer may read and download (GET links) but not export (a POST).
    assert f'href="{download_url(deployment)}"' in page
    assert 'method="post"' not in page.split('id="content-main"')[1]


def test_the_config_page_says_plainly_when_nginx_is_not_installed(
    client, users, deployment, settings
):
    settings.CONSOLE_NGINX_BIN = ""
    client.force_login(users["viewer"])
    page = client.get(config_url(deployment)).content.decode()
    assert "nginx is not installed on the console host" in page


def test_the_config_page_shows_the_diff_against_the_last_export(
    client, users, deployment, tmp_path
):
    write_export(deployments=[deployment], output_dir=tmp_path)
    deployment.client_max_body_size = "128m"
    deployment.save()
    client.force_login(users["viewer"])
    page = client.get(config_url(deployment)).content.decode()
    assert '<del class="console-diff-line removed">-    client_max_body_size 64m;</del>' in page
    assert '<ins class="console-diff-line added">+    client_max_body_size 128m;</ins>' in page
    assert "a command" in page  # who exported: the command has no user


def test_the_config_page_says_when_nothing_changed_since_the_last_export(
    client, users, deployment, tmp_path
):
    write_export(deployments=[deployment], output_dir=tmp_path)
    client.force_login(users["viewer"])
    page = client.get(config_url(deployment)).content.decode()
    assert "Identical to the last export" in page
    assert sha256(render_site(deployment))[:12] in page


def test_the_config_page_lists_what_makes_a_deployment_unrenderable(client, users, deployment):
    Deployment.objects.filter(pk=deployment.pk).update(resolver="not-an-ip")
    client.force_login(users["viewer"])
    page = client.get(config_url(deployment)).content.decode()
    assert "cannot be rendered" in page
    assert "<code>resolver</code>" in page


def test_another_teams_config_page_is_a_404(client, users, theirs):
    client.force_login(users["viewer"])
    assert client.get(config_url(theirs)).status_code == 404
    assert client.get(download_url(theirs)).status_code == 404
    assert client.get(routes_url(theirs)).status_code == 404


def test_anonymous_users_are_sent_to_the_login_page(client, deployment):
    response = client.get(config_url(deployment))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


# --- Download and export from the admin -----------------------------------------------------


def test_a_viewer_may_download_but_not_export(client, users, deployment, settings, tmp_path):
    settings.CONSOLE_EXPORT_DIR = tmp_path
    client.force_login(users["viewer"])
    download = client.get(download_url(deployment))
    assert download.status_code == 200
    assert download["Content-Disposition"] == 'attachment; filename="prod.conf"'
    assert client.post(config_url(deployment)).status_code == 403
    assert not ConfigExport.objects.exists()
    assert not any(tmp_path.iterdir())


def test_an_operator_downloads_the_config_and_only_a_post_is_recorded(client, users, deployment):
    client.force_login(users["operator"])
    response = client.get(download_url(deployment))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="prod.conf"'
    assert response.content.decode() == render_site(deployment)
    # A GET never records an export or an audit event.
    assert not ConfigExport.objects.exists()
    assert not AuditEvent.objects.filter(action="config.export").exists()
    response = client.post(download_url(deployment))
    assert response.content.decode() == render_site(deployment)
    row = ConfigExport.objects.get()
    assert (row.source, row.created_by, row.content_hash) == (
        "admin",
        users["operator"],
        sha256(render_site(deployment)),
    )
    event = AuditEvent.objects.get(action="config.export")
    assert event.actor == users["operator"]
    assert event.changes["content_hash"] == row.content_hash


def test_the_shared_file_can_be_downloaded_too(client, users, deployment):
    client.force_login(users["operator"])
    response = client.get(download_url(deployment) + "?file=common")
    assert response["Content-Disposition"] == 'attachment; filename="00-console-common.conf"'
    assert "map $http_upgrade $connection_upgrade" in response.content.decode()


@pytest.mark.nginx
def test_an_operator_exports_into_the_export_directory(
    client, users, deployment, settings, tmp_path
):
    settings.CONSOLE_EXPORT_DIR = tmp_path
    client.force_login(users["operator"])
    response = client.post(config_url(deployment), follow=True)
    assert response.status_code == 200
    assert (tmp_path / "prod.conf").read_text() == render_site(deployment)
    assert "Exported to" in response.content.decode()
    assert ConfigExport.objects.get().source == "admin"


# --- Archive action -------------------------------------------------------------------------


def _archive(client, deployments):
    return client.post(
        reverse("admin:routes_deployment_changelist"),
        {"action": "download_archive", "_selected_action": [d.pk for d in deployments]},
    )


def test_the_archive_action_downloads_every_selected_config(client, users, deployment, team):
    staging = Deployment.objects.create(
        slug="staging", name="Staging", team=team, server_name="staging.example.com"
    )
    client.force_login(users["operator"])
    response = _archive(client, [deployment, staging])
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        assert archive.getnames() == [
            "conf.d/00-console-common.conf",
            "conf.d/prod.conf",
            "conf.d/staging.conf",
        ]
    assert set(ConfigExport.objects.values_list("source", flat=True)) == {"archive"}
    assert ConfigExport.objects.count() == 2


def test_a_viewer_may_use_the_archive_action(client, users, deployment):
    client.force_login(users["viewer"])
    response = _archive(client, [deployment])
    assert response.get("Content-Type") == "application/gzip"


def test_the_archive_holds_only_the_users_teams_deployments(
    client, make_user, team, deployment, theirs
):
    client.force_login(make_user("member", team=team, role="viewer"))
    response = _archive(client, [deployment, theirs])
    assert response.get("Content-Type") == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        names = archive.getnames()
    assert "conf.d/prod.conf" in names
    assert not any("theirs" in name for name in names)
    assert set(ConfigExport.objects.values_list("deployment__slug", flat=True)) == {"prod"}


# --- Routes page ----------------------------------------------------------------------------


def test_the_routes_page_shows_the_effective_table_with_overrides(client, users, deployment):
    RouteOverride.objects.create(
        deployment=deployment, match="prefix", path="/v0/resource/plugins/", target="cpa"
    )
    RouteOverride.objects.create(
        deployment=deployment, match="regex", path=r"^/t/\d+$", target="cpamp"
    )
    client.force_login(users["viewer"])
    page = client.get(routes_url(deployment)).content.decode()
    table = page.split('id="routing-table"')[1]
    assert "location ^~ /v0/resource/plugins/" in table
    assert "override, replaces the built-in route to CPAMP :18317" in table
    assert r"location ~ ^/t/\d+$" in table
    assert "built-in fallback" in table
    assert table.count("<tr") == 2 + 20  # header, the seed's 20 locations, one added override


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models", "proxied to CPA :8317"),
        ("/v0/management/config", "proxied to CPAMP :18317"),
        ("/v0/management", "301 redirect to /v0/management/"),
        ("/", "302 redirect to /management.html"),
        ("/a/../../x", "400 Bad Request from nginx"),
        ("//v1/./models", "proxied to CPA :8317"),
    ],
)
def test_the_path_tester_says_where_a_request_goes(client, users, deployment, path, expected):
    client.force_login(users["viewer"])
    response = client.get(routes_url(deployment), {"path": path})
    page = response.content.decode()
    result = page.split('id="tester-result"')[1].split("</dl>")[0]
    assert expected in result


def test_the_deployment_page_links_to_the_pages_the_user_may_use(client, users, deployment):
    change = reverse("admin:routes_deployment_change", args=[deployment.pk])
    client.force_login(users["viewer"])
    page = client.get(change).content.decode()
    assert config_url(deployment) in page and routes_url(deployment) in page
    # A viewer downloads what they may read.
    assert download_url(deployment) in page
    client.force_login(users["outsider"])
    assert client.get(change).status_code == 404


# --- Export history -------------------------------------------------------------------------


def test_the_export_history_is_scoped_to_the_users_teams(
    client, users, deployment, theirs, tmp_path
):
    write_export(deployments=Deployment.objects.all(), output_dir=tmp_path)
    mine = ConfigExport.objects.get(deployment=deployment)
    other = ConfigExport.objects.get(deployment=theirs)
    client.force_login(users["viewer"])
    listing = client.get(reverse("admin:routes_configexport_changelist")).content.decode()
    assert mine.content_hash[:12] in listing
    assert other.content_hash[:12] not in listing
    detail = client.get(reverse("admin:routes_configexport_change", args=[mine.pk]))
    assert detail.status_code == 200
    assert "location ^~ /v0/management/ {" in detail.content.decode()
    missing = client.get(reverse("admin:routes_configexport_change", args=[other.pk]))
    assert missing.status_code == 404


def test_the_export_history_is_read_only_except_superuser_deletion(
    client, users, deployment, tmp_path
):
    write_export(deployments=[deployment], output_dir=tmp_path)
    row = ConfigExport.objects.get()
    client.force_login(users["operator"])
    assert client.get(reverse("admin:routes_configexport_add")).status_code == 403
    delete = reverse("admin:routes_configexport_delete", args=[row.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    client.force_login(users["superuser"])
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert not ConfigExport.objects.exists()
