"""GET on every admin page writes no row and starts no process (issue 10, "no side effects on GET").

The pages are the ones the role crawl discovers from the admin itself (tests/test_role_crawl.py),
so a page added later is opened here too. Each is opened as a superuser and as an operator, with
one of everything in the database: a deployment with overrides and keys, a finished run, a run
whose worker died (the pages used to sweep it), an export, audit events and one row of every other
model the admin shows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.signals import request_started
from django.db import connections, transaction
from django.db.models import Model
from django.test import Client
from django.urls import URLPattern, URLResolver, reverse
from django.urls.resolvers import RegexPattern, RoutePattern
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_tasks_db.models import DBTaskResult

from routes import audit
from routes.models import (
    AuditEvent,
    CheckResult,
    ConfigExport,
    Deployment,
    NginxApply,
    NotificationChannel,
    NotificationDelivery,
    RouteOverride,
    Team,
    VerificationJob,
    VerificationRun,
)
from routes.workflows.keys import set_key
from tests.test_role_crawl import admin_url_names, body

SECRETS = {
    "cpamp_admin": "cpamp_" + "NoWrt7" * 5 + "Qz",
    "cpa_management": "no-writes-management-key-4410",
    "cpa_api": "sk-no-writes-api-key-90321",
}
# Statements that change the database. Django sends parameters apart from the SQL, so the text
# shown in a failure names the table, never a value.
_WRITE = re.compile(
    r"^\s*(?P<verb>INSERT\s+INTO|UPDATE|DELETE\s+FROM|REPLACE\s+INTO|MERGE\s+INTO|TRUNCATE"
    r"|CREATE|DROP|ALTER)\b\s*(?:TABLE\s+)?(?P<table>\S*)",
    re.IGNORECASE,
)


class ProcessRefused(RuntimeError):
    """Raised in place of starting a process while a page is being opened."""


class Watch:
    """What one GET did that it must not: statements that write, processes it tried to start."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def sql(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        """Note a writing statement, then run it as usual (the test's transaction undoes it)."""
        found = _WRITE.match(sql)
        if found:
            verb = " ".join(found["verb"].upper().split())
            self.seen.append(f"writes: {verb} {found['table']}")
        return execute(sql, params, many, context)

    def process(self, what: str) -> Callable[..., Any]:
        """Return a stand-in for a process-starting function that notes the call and refuses."""

        def refuse(*args: Any, **kwargs: Any) -> Any:
            program = args[0] if args else kwargs.get("args", "?")
            if isinstance(program, list | tuple):
                program = program[0] if program else "?"
            self.seen.append(f"starts a process: {what}({program!r})")
            raise ProcessRefused(f"{what} started during a GET")

        return refuse


@contextmanager
def watching() -> Iterator[Watch]:
    """Watch every database connection and every way of starting a process inside the block."""
    watch = Watch()
    starters = [
        (subprocess, "Popen"),  # subprocess.run, check_output, os.popen all go through Popen
        (asyncio, "create_subprocess_exec"),
        (asyncio, "create_subprocess_shell"),
        (os, "system"),
        (os, "posix_spawn"),
        (os, "posix_spawnp"),
        (os, "fork"),
    ]
    with ExitStack() as stack:
        for connection in connections.all():
            stack.enter_context(connection.execute_wrapper(watch.sql))
        for module, name in starters:
            what = f"{module.__name__}.{name}"
            stack.enter_context(mock.patch.object(module, name, watch.process(what)))
        yield watch


def _argument_names(pattern: object) -> tuple[str, ...]:
    if isinstance(pattern, RoutePattern):
        return tuple(pattern.converters)
    if isinstance(pattern, RegexPattern):
        return tuple(pattern.regex.groupindex)
    return ()


def page_arguments() -> dict[str, tuple[str, ...]]:
    """Return the names of the arguments each named admin URL takes."""

    def walk(
        patterns: Iterable[Any], outer: tuple[str, ...]
    ) -> Iterator[tuple[str, tuple[str, ...]]]:
        for p in patterns:
            names = outer + _argument_names(p.pattern)
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, names)
            elif isinstance(p, URLPattern) and p.name:
                yield p.name, names

    return dict(walk(admin.site.get_urls(), ()))


def _owner(name: str) -> type[Model] | None:
    """Return the model whose admin serves the URL name (app_model_...), or None."""
    prefixes = {f"{m._meta.app_label}_{m._meta.model_name}_": m for m in admin.site._registry}
    matching = [prefix for prefix in prefixes if name.startswith(prefix)]
    return prefixes[max(matching, key=len)] if matching else None


def _first(model: type[Model], name: str) -> str:
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"{name}: no {model.__name__} to open; add one to the world fixture"
    return str(obj.pk)


def page_url(name: str, arguments: tuple[str, ...]) -> str:
    """Return the URL of the admin page with every argument filled from the stored rows."""
    kwargs: dict[str, str] = {}
    for argument in arguments:
        if argument in ("object_id", "pk", "id"):
            # The shortcut (view_on_site) has no model of its own: it opens a deployment.
            kwargs[argument] = _first(_owner(name) or Deployment, name)
        elif argument == "content_type_id":
            kwargs[argument] = str(ContentType.objects.get_for_model(Deployment).pk)
        elif argument == "app_label":
            kwargs[argument] = "routes"
        elif argument.endswith("_id"):
            kwargs[argument] = _first(apps.get_model("routes", argument.removesuffix("_id")), name)
        else:
            raise AssertionError(f"{name}: no value for its argument {argument!r}; add one here")
    return reverse(f"admin:{name}", kwargs=kwargs)


def crawl(client: Client, names: Iterable[str]) -> list[str]:
    """GET every named admin page; return what each did that a GET must not."""
    arguments = page_arguments()
    problems = []
    for name in sorted(names):
        url = page_url(name, arguments[name])
        status, location = None, ""
        # Each page sees the same rows: whatever one page wrongly changed is undone before the
        # next, so that (say) a swept run is still there to be swept by the next page too.
        with transaction.atomic(), watching() as watch:
            try:
                response = client.get(url)
                body(response)  # a streamed download runs its generator only when read
                status, location = response.status_code, response.get("Location", "")
            except ProcessRefused:
                pass  # noted by the watch; the page cannot go on without its process
            transaction.set_rollback(True)
        problems += [f"GET {url} ({name}) {what}" for what in dict.fromkeys(watch.seen)]
        if status is not None and status >= 500:
            problems.append(f"GET {url} ({name}) answered {status}")
        if "/login/" in location and name != "login":
            # Signed out, the crawl would only ever see the login page.
            problems.append(f"GET {url} ({name}) sent the signed-in user to the login page")
    return problems


@pytest.fixture
def world(db: None, make_user: Callable[..., Any], settings: Any) -> dict[str, Any]:
    """Return the users; store one of everything the admin shows."""
    # Signed-cookie sessions: the database session backend saves its row on requests that only
    # touch the session (messages, the OTP state), a write of the session framework, not of the
    # page. With cookies the crawl sees every row a page itself writes.
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    # A binary that exists wherever the tests run, so that a page that would run `nginx -t` on
    # GET is caught even on a host without nginx (the watch refuses to start it).
    settings.CONSOLE_NGINX_BIN = "true"
    team = Team.objects.create(name="Alpha", slug="alpha")
    superuser = make_user("root", superuser=True)
    operator = make_user("alpha_operator", team=team, role="operator")
    deployment = Deployment.objects.create(
        slug="alpha-prod",
        name="Alpha production",
        team=team,
        server_name="alpha.example.com",
        verification_base_url="http://127.0.0.1:9",
        cpamp_cpa_url="http://127.0.0.1:9",
    )
    RouteOverride.objects.create(
        deployment=deployment, match="prefix", path="/config", target="cpamp"
    )
    for role, secret in SECRETS.items():
        set_key(deployment=deployment, role=role, secret=secret)
    job = VerificationJob.objects.create(deployment=deployment)
    now = timezone.now()
    finished = VerificationRun.objects.create(
        job=job,
        trigger="manual",
        status="failed",
        started_at=now - dt.timedelta(minutes=5),
        finished_at=now - dt.timedelta(minutes=4),
        duration_ms=60000,
    )
    CheckResult.objects.create(
        run=finished,
        check_id="panel",
        method="HEAD",
        url="http://127.0.0.1:9/management.html",
        expected="200",
        passed=False,
        diagnosis="Nothing answered.",
    )
    # Its worker died long ago: pages used to sweep such runs (an UPDATE and an audit event).
    VerificationRun.objects.create(
        job=job,
        trigger="manual",
        status="running",
        started_at=now - dt.timedelta(days=1),
        deadline_at=now - dt.timedelta(days=1),
    )
    ConfigExport.objects.create(
        deployment=deployment, content_hash="0" * 64, text="# config\n", source="admin"
    )
    channel = NotificationChannel.objects.create(team=team, name="hook", kind="webhook")
    NotificationDelivery.objects.create(channel=channel, run=finished, event="failed")
    applied = NginxApply.objects.create(
        team=team, slugs=["alpha-prod"], directory="/tmp/nowhere", source="command"
    )
    applied.deployments.set([deployment])
    audit.record(action="deployment.change", actor=operator, team=team, obj=deployment)
    Group.objects.create(name="auditors")
    TOTPDevice.objects.create(user=operator, name="phone", confirmed=False)
    DBTaskResult.objects.create(
        args_kwargs={"args": [], "kwargs": {}},
        task_path="routes.tasks.run_verification",
        backend_name="default",
        run_after=now,
        exception_class_path="",
        traceback="",
    )
    attempt = {"user_agent": "test", "ip_address": "127.0.0.1", "username": "alpha_operator"}
    AccessAttempt.objects.create(
        **attempt, http_accept="*/*", path_info="/admin/login/", failures_since_start=1
    )
    AccessLog.objects.create(**attempt, http_accept="*/*", path_info="/admin/login/")
    AccessFailureLog.objects.create(**attempt, http_accept="*/*", path_info="/admin/login/")
    assert AuditEvent.objects.filter(team=team).exists()
    return {"superuser": superuser, "operator": operator}


@pytest.mark.parametrize("who", ["superuser", "operator"])
def test_get_on_every_admin_page_writes_no_row_and_starts_no_process(
    client: Client, world: dict[str, Any], who: str
) -> None:
    client.force_login(world[who])
    problems = crawl(client, admin_url_names())
    assert not problems, "GET must not change anything:\n" + "\n".join(problems)


def test_the_crawl_reports_a_page_that_writes_or_starts_a_process(
    client: Client, world: dict[str, Any]
) -> None:
    def planted(**kwargs: Any) -> None:
        AuditEvent.objects.create(action="planted")
        subprocess.run(["nginx", "-t"], check=False)

    client.force_login(world["superuser"])
    request_started.connect(planted, dispatch_uid="planted")
    try:
        problems = crawl(client, ["index"])
    finally:
        request_started.disconnect(dispatch_uid="planted")
    assert any("writes: INSERT INTO" in p and "routes_auditevent" in p for p in problems), problems
    assert any("starts a process: subprocess.Popen('nginx')" in p for p in problems), problems


def test_the_crawl_fills_every_argument_of_every_admin_page(world: dict[str, Any]) -> None:
    arguments = page_arguments()
    assert admin_url_names() <= set(arguments)
    for name in admin_url_names():
        assert page_url(name, arguments[name]).startswith("/admin/")
