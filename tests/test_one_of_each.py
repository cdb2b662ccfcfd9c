"""One of each: the deployment's field list, the upstream presets, user links, atomic writes."""

import io
import json
import os
import stat

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import models

from routes import portable
from routes.admin.wizard import DeploymentStepForm
from routes.files import TEMP_NAME, atomic_write, replace_all
from routes.forms import DeploymentForm
from routes.models import (
    DEPLOYMENT_FIELD_GROUPS,
    DEPLOYMENT_FIELDS,
    DOCKER_PRESET,
    HOST_PRESET,
    UPSTREAM_FIELDS,
    Deployment,
    Membership,
)

# Fields of the deployment form that are no model field: the preset picker and the edit lock.
FORM_ONLY = {"topology", "loaded_version"}


def flattened(fieldsets) -> list[str]:
    return [name for _title, options in fieldsets for name in options["fields"]]


# --- One list of deployment fields ------------------------------------------------------------


def test_the_list_holds_every_field_people_edit_once():
    editable = {
        f.name for f in Deployment._meta.concrete_fields if f.editable and not f.primary_key
    }
    assert len(DEPLOYMENT_FIELDS) == len(set(DEPLOYMENT_FIELDS))
    assert set(DEPLOYMENT_FIELDS) == editable


def test_the_form_the_admin_the_wizard_and_the_file_are_built_from_the_list():
    assert list(DeploymentForm.Meta.fields) == list(DEPLOYMENT_FIELDS)
    admin_fields = flattened(admin.site._registry[Deployment].fieldsets)
    assert [n for n in admin_fields if n in DEPLOYMENT_FIELDS] == list(DEPLOYMENT_FIELDS)
    assert set(DeploymentForm.base_fields) - set(DEPLOYMENT_FIELDS) == FORM_ONLY
    assert FORM_ONLY <= set(admin_fields)
    wizard = [n for n in DeploymentStepForm.base_fields if n != "topology"]
    assert wizard == [n for n in DEPLOYMENT_FIELDS if n in wizard]
    assert {*UPSTREAM_FIELDS, "server_name", "team", "slug"} <= set(wizard)
    file_fields = set(portable.DEPLOYMENT_FIELDS) | set(portable.FILE_NAMES)
    assert file_fields == set(DEPLOYMENT_FIELDS)


def test_the_admin_shows_each_group_under_its_own_heading():
    fieldsets = admin.site._registry[Deployment].fieldsets
    by_title = {str(title) if title else None: options["fields"] for title, options in fieldsets}
    assert by_title["Upstreams"] == ("topology", *DEPLOYMENT_FIELD_GROUPS["upstreams"])
    assert by_title[None][-1] == "loaded_version"
    assert by_title["Versions and verification"][-1] == "key_destination"


def test_the_file_keeps_its_order_and_types():
    assert list(portable.DEPLOYMENT_FIELDS)[:3] == ["slug", "name", "team"]
    assert portable.DEPLOYMENT_FIELDS["tls"] == (bool, False)
    assert portable.DEPLOYMENT_FIELDS["http_port"] == (int, False)
    assert portable.DEPLOYMENT_FIELDS["team"] == (str, True)
    assert portable.DEPLOYMENT_FIELDS["server_name"] == (str, True)
    assert "verification_base_url" not in portable.DEPLOYMENT_FIELDS


# --- One set of upstream constants ------------------------------------------------------------


def test_the_presets_are_the_seeds_docker_and_host_addresses():
    assert DOCKER_PRESET == {
        "cpa_upstream": "cli-proxy-api:8317",
        "cpamp_upstream": "cpa-manager-plus:18317",
        "cpamp_cpa_url": "http://cli-proxy-api:8317",
    }
    assert HOST_PRESET == {
        "cpa_upstream": "127.0.0.1:8317",
        "cpamp_upstream": "127.0.0.1:18317",
        "cpamp_cpa_url": "http://127.0.0.1:8317",
    }
    assert tuple(DOCKER_PRESET) == tuple(HOST_PRESET) == UPSTREAM_FIELDS
    defaults = {name: Deployment._meta.get_field(name).get_default() for name in UPSTREAM_FIELDS}
    assert defaults == DOCKER_PRESET


# --- One "done by" user link ------------------------------------------------------------------


def test_every_link_to_who_did_something_outlives_the_user():
    links = [
        field
        for model in apps.get_app_config("routes").get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, models.ForeignKey)
        and field.related_model._meta.label == settings.AUTH_USER_MODEL
        and model is not Membership
    ]
    assert len(links) >= 9
    for field in links:
        where = f"{field.model.__name__}.{field.name}"
        assert field.remote_field.on_delete is models.SET_NULL, where
        assert field.null and field.blank, where
        assert field.remote_field.related_name == "+", where


# --- One atomic write -------------------------------------------------------------------------


def test_an_atomic_write_replaces_the_file_with_the_mode_asked_for(tmp_path):
    target = tmp_path / "secrets.json"
    target.write_text("old")
    atomic_write(target, "new", mode=0o600)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["secrets.json"]


def test_a_batch_that_cannot_stage_every_file_changes_none(tmp_path):
    first = tmp_path / "a.conf"
    first.write_text("a1")
    with pytest.raises(FileNotFoundError):
        replace_all({first: "a2", tmp_path / "missing" / "b.conf": "b2"})
    assert first.read_text() == "a1"
    assert os.listdir(tmp_path) == ["a.conf"]


def test_a_rename_that_fails_midway_leaves_no_temp_file_behind(tmp_path, monkeypatch):
    first, second = tmp_path / "a.conf", tmp_path / "b.conf"
    first.write_text("a1")
    second.write_text("b1")
    renames = []

    def replace_once(src, dst):
        if renames:
            raise OSError(28, "No space left on device")
        renames.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(OSError):
        replace_all({first: "a2", second: "b2"})
    assert sorted(os.listdir(tmp_path)) == ["a.conf", "b.conf"]
    assert (first.read_text(), second.read_text()) == ("a2", "b1")


def test_temp_files_have_the_shape_cleanup_looks_for(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(os, "replace", lambda src, dst: seen.append(os.path.basename(src)))
    atomic_write(tmp_path / "prod.conf", "x")
    assert TEMP_NAME.match(seen[0]).group("target") == "prod.conf"


def test_export_definitions_writes_its_file_whole_or_says_why_not(deployment, tmp_path):
    target = tmp_path / "defs.json"
    call_command("export_deployments", "--output", str(target), stderr=io.StringIO())
    assert [d["slug"] for d in json.loads(target.read_text())["deployments"]] == ["prod"]
    missing = tmp_path / "no-such-dir" / "defs.json"
    with pytest.raises(CommandError, match="defs.json: cannot write: No such file or directory"):
        call_command("export_deployments", "--output", str(missing), stderr=io.StringIO())
