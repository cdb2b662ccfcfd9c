"""Drift badges: "changed since last export" and "edited on disk", on the dashboard and the list."""

from __future__ import annotations

import os

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from routes.models import Deployment, RouteOverride
from routes.nginx import drift
from routes.nginx.export import MANIFEST, build_archive, write_export
from routes.nginx.render import COMMON_FILENAME

CHANGELIST = "/admin/routes/deployment/"
INDEX = "/admin/"
CHANGED = 'data-drift="changed"'
EDITED = 'data-drift="edited"'


@pytest.fixture
def export_dir(tmp_path, settings):
    settings.CONSOLE_EXPORT_DIR = tmp_path / "conf.d"
    return settings.CONSOLE_EXPORT_DIR


@pytest.fixture
def deployment(team):
    return Deployment.objects.create(
        slug="prod", name="Production", team=team, server_name="api.example.com"
    )


@pytest.fixture
def viewer_client(client, make_user, team):
    client.force_login(make_user("vic", team=team, role="viewer"))
    return client


def export(deployment, directory):
    write_export(deployments=Deployment.objects.filter(pk=deployment.pk), output_dir=directory)


def badges(client) -> tuple[str, str]:
    """Return the drift cell of the changelist row and of the dashboard's board row."""
    listed = client.get(CHANGELIST).content.decode()
    cell = listed.split('class="field-drift"')[1].split("</td>")[0]
    board = client.get(INDEX).content.decode().split('class="console-board-drift"')[1]
    return cell, board.split("</td>")[0]


def test_a_deployment_never_exported_has_no_badge(viewer_client, deployment, export_dir):
    cell, board = badges(viewer_client)
    assert CHANGED not in cell + board and EDITED not in cell + board
    assert "—" in cell


def test_an_export_as_rendered_has_no_badge(viewer_client, deployment, export_dir):
    export(deployment, export_dir)
    cell, board = badges(viewer_client)
    assert CHANGED not in cell + board and EDITED not in cell + board


def test_changing_the_deployment_shows_changed_since_last_export_until_it_is_exported(
    viewer_client, deployment, export_dir
):
    export(deployment, export_dir)
    deployment.client_max_body_size = "128m"
    deployment.save()
    cell, board = badges(viewer_client)
    assert CHANGED in cell and CHANGED in board
    assert "changed since last export" in cell
    assert EDITED not in cell

    export(deployment, export_dir)
    cell, board = badges(viewer_client)
    assert CHANGED not in cell + board


def test_a_new_override_counts_as_a_change(viewer_client, deployment, export_dir):
    export(deployment, export_dir)
    RouteOverride.objects.create(
        deployment=deployment, match="prefix", path="/config", target="cpamp"
    )
    cell, _board = badges(viewer_client)
    assert CHANGED in cell


def test_an_archive_download_is_an_export_and_leaves_the_directory_alone(
    viewer_client, deployment, export_dir
):
    export(deployment, export_dir)
    deployment.client_max_body_size = "128m"
    deployment.save()
    build_archive(deployments=Deployment.objects.filter(pk=deployment.pk))
    cell, board = badges(viewer_client)
    # The config matches the archive now; the files on disk are still what the console wrote.
    assert CHANGED not in cell + board and EDITED not in cell + board


def test_editing_the_site_file_shows_edited_on_disk_until_the_next_export(
    viewer_client, deployment, export_dir
):
    export(deployment, export_dir)
    site = export_dir / "prod.conf"
    site.write_text(site.read_text() + "# a hand edit\n")
    cell, board = badges(viewer_client)
    assert EDITED in cell and EDITED in board
    assert "edited on disk" in cell and "prod.conf: edited by hand" in cell
    assert CHANGED not in cell

    export(deployment, export_dir)
    cell, board = badges(viewer_client)
    assert EDITED not in cell + board


def test_a_removed_file_counts_as_edited_and_is_named_missing(
    viewer_client, deployment, export_dir
):
    export(deployment, export_dir)
    (export_dir / "prod.conf").unlink()
    cell, _board = badges(viewer_client)
    assert EDITED in cell and "prod.conf: missing" in cell


def test_an_edit_of_the_shared_file_shows_on_each_deployment_that_uses_it(
    deployment, team, export_dir
):
    other = Deployment.objects.create(
        slug="stage", name="Stage", team=team, server_name="stage.example.com"
    )
    write_export(deployments=Deployment.objects.all(), output_dir=export_dir)
    (export_dir / COMMON_FILENAME).write_text("# emptied by hand\n")
    for each in (deployment, other):
        found = drift.disk_drift(each, directory=export_dir)
        assert found.files == {COMMON_FILENAME: drift.EDITED}


def test_a_fifo_or_an_oversized_file_is_edited_without_being_read(deployment, export_dir):
    export(deployment, export_dir)
    site = export_dir / "prod.conf"
    site.unlink()
    os.mkfifo(site)
    assert drift.disk_drift(deployment, directory=export_dir).files == {"prod.conf": drift.EDITED}
    site.unlink()
    site.write_bytes(b"#" * (drift.MAX_FILE_BYTES + 1))
    assert drift.disk_drift(deployment, directory=export_dir).files == {"prod.conf": drift.EDITED}


def test_a_deployment_the_manifest_does_not_list_is_not_edited(deployment, team, export_dir):
    other = Deployment.objects.create(
        slug="stage", name="Stage", team=team, server_name="stage.example.com"
    )
    export(other, export_dir)
    found = drift.disk_drift(deployment, directory=export_dir)
    assert not found.tracked and not found.edited


def test_a_malformed_manifest_tells_nothing(deployment, export_dir):
    export(deployment, export_dir)
    (export_dir / "prod.conf").write_text("# edited\n")
    (export_dir / MANIFEST).write_text("{not json")
    found = drift.disk_drift(deployment, directory=export_dir)
    assert not found.tracked and not found.edited


def test_a_deployment_that_cannot_be_rendered_counts_as_changed(deployment, export_dir):
    export(deployment, export_dir)
    Deployment.objects.filter(pk=deployment.pk).update(client_max_body_size="lots")
    loaded = drift.with_drift_data(Deployment.objects.filter(pk=deployment.pk)).get()
    assert drift.drift_of(loaded, directory=export_dir).changed_since_export


def test_the_changelist_takes_the_same_queries_for_2_or_8_exported_deployments(
    viewer_client, team, export_dir
):
    def add(count: int, prefix: str) -> None:
        made = [
            Deployment.objects.create(
                slug=f"{prefix}{n}",
                name=f"D {prefix}{n}",
                team=team,
                server_name=f"{prefix}{n}.example.com",
            )
            for n in range(count)
        ]
        for d in made:
            RouteOverride.objects.create(deployment=d, match="prefix", path="/x", target="cpa")
        write_export(
            deployments=Deployment.objects.filter(slug__startswith=prefix), output_dir=export_dir
        )
        Deployment.objects.filter(pk=made[0].pk).update(client_max_body_size="1m")

    add(2, "a")
    with CaptureQueriesContext(connection) as few:
        assert viewer_client.get(CHANGELIST).status_code == 200
    add(6, "b")
    with CaptureQueriesContext(connection) as many:
        page = viewer_client.get(CHANGELIST).content.decode()
    assert len(many.captured_queries) == len(few.captured_queries)
    assert page.count(CHANGED) == 2


def test_the_changelist_column_is_there_for_viewers(viewer_client, deployment):
    page = viewer_client.get(reverse("admin:routes_deployment_changelist")).content.decode()
    assert 'class="column-drift"' in page
