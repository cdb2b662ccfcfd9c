"""CPA and CPAMP emulators behind real nginx serving a deployment's exported config.

``running_stack(...)`` starts both emulators on 127.0.0.1 ephemeral ports, points a Deployment at
them (listen 127.0.0.1:<free port>, upstreams 127.0.0.1:<emulator port>), exports the config the
way `export_nginx` does (the same renderer) into a temporary directory, serves it with real nginx
and yields a Stack. Scenarios are made the way operators break things: RouteOverrides (a missing
rule), a stopped emulator (a service down), CPAMP before setup, wrong keys.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from routes import keys as keyring
from routes.models import Deployment, Key, RouteOverride
from routes.nginx.export import render_files, self_signed_certificate
from routes.nginx.sandbox import running_nginx
from routes.verification.destinations import confirm_destination
from tests.fakes.cpa import FakeCPA
from tests.fakes.cpamp import FakeCPAMP

ADMIN_KEY = "cpamp_" + "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lm"
MANAGEMENT_KEY = "cpa-mgmt-Secret-7f3a9c2e41"
API_KEY = "sk-console-api-5d8e1b7c93aa"


def free_port() -> int:
    """Return a port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_export(deployments: list[Deployment]) -> dict[str, str]:
    """Return {filename: text} exactly as the console exports the deployments."""
    return render_files(deployments)


def self_signed(directory: Path, server_name: str, *, days: int = 30) -> tuple[Path, Path]:
    """Write a self-signed certificate for server_name; return (cert path, key path)."""
    return self_signed_certificate(directory, server_name, days=days)


def store_key(deployment: Deployment, role: str, secret: str, **extra) -> Key:
    """Store a key on the deployment (encrypted), bypassing the shape rules on purpose."""
    key = Key(deployment=deployment, role=role, **extra)
    key.set_secret(secret)
    key.save()
    return key


@dataclass
class Stack:
    """A running deployment: its emulators, its nginx and the URL verification talks to."""

    deployment: Deployment
    cpa: FakeCPA
    cpamp: FakeCPAMP
    base_url: str
    conf_dir: Path
    files: dict[str, str]


def configure(
    deployment: Deployment,
    cpa: FakeCPA,
    cpamp: FakeCPAMP,
    *,
    tls_dir: Path | None = None,
) -> Deployment:
    """Point deployment at the emulators on loopback, with free listen ports; save it."""
    deployment.listen_address = "127.0.0.1"
    deployment.cpa_upstream = cpa.address
    deployment.cpamp_upstream = cpamp.address
    deployment.cpamp_cpa_url = cpa.url
    deployment.http_port = free_port()
    if tls_dir is not None:
        cert, key = self_signed(tls_dir, deployment.server_name)
        deployment.tls = True
        deployment.https_port = free_port()
        deployment.ssl_certificate, deployment.ssl_certificate_key = str(cert), str(key)
        deployment.verification_base_url = f"https://127.0.0.1:{deployment.https_port}"
    else:
        deployment.tls = False
        deployment.verification_base_url = f"http://127.0.0.1:{deployment.http_port}"
    deployment.save()
    # The test stands in for the owner who points the deployment at its emulators.
    confirm_destination(deployment=deployment)
    return deployment


@contextmanager
def running_stack(
    deployment: Deployment,
    *,
    setup_done: bool = True,
    delay: float = 0.0,
    tls: bool = False,
    overrides: tuple[tuple[str, str, str], ...] = (),
    cpa_down: bool = False,
    cpamp_down: bool = False,
    keys: dict[str, str] | None = None,
    cpa_api_keys: list[str] | None = None,
    cpamp_management_key: str | None = None,
    cpa_version: str = "v7.1.39",
    cpa_panel_available: bool = True,
    usage_statistics_enabled: bool | None = None,
    collector_enabled: bool = True,
    cpamp_cpa_url: str | None = None,
    cpamp_source_address: str = "127.0.0.1",
) -> Iterator[Stack]:
    """Run the deployment behind real nginx with CPA and CPAMP emulators; yield the Stack.

    keys: {role: secret} stored on the deployment (default: the three matching keys; pass {}
    for none). overrides: (match, path, target) RouteOverrides. cpamp_management_key: the CPA
    Management Key saved in CPAMP's setup (default: the right one). cpamp_cpa_url: the CPA URL
    saved in CPAMP's setup (default: the CPA emulator; a dead port for "CPAMP cannot reach CPA").
    usage_statistics_enabled: CPA's flag (default: on after setup, which turns it on).
    cpa_version, cpa_panel_available, collector_enabled, cpamp_source_address: see FakeCPA and
    FakeCPAMP. Every option is also an attribute of stack.cpa / stack.cpamp, to flip at run time.
    """
    cpa = FakeCPA(
        api_keys=cpa_api_keys if cpa_api_keys is not None else [API_KEY],
        management_key=MANAGEMENT_KEY,
        version=cpa_version,
        panel_available=cpa_panel_available,
        # CPAMP's setup PUTs usage-statistics-enabled=true at CPA (reference 2.4, 3.3).
        usage_statistics_enabled=(
            setup_done if usage_statistics_enabled is None else usage_statistics_enabled
        ),
        delay=delay,
    ).start()
    cpamp = FakeCPAMP(
        admin_key=ADMIN_KEY,
        cpa_url=cpamp_cpa_url or cpa.url,
        management_key=cpamp_management_key or MANAGEMENT_KEY,
        setup_done=setup_done,
        collector_enabled=collector_enabled,
        source_address=cpamp_source_address,
        delay=delay,
    ).start()
    try:
        with tempfile.TemporaryDirectory(prefix="console-stack-") as tmp:
            tmp_path = Path(tmp)
            conf_dir = tmp_path / "conf.d"
            conf_dir.mkdir()
            tls_dir = None
            if tls:
                tls_dir = tmp_path / "ssl"
                tls_dir.mkdir()
            configure(deployment, cpa, cpamp, tls_dir=tls_dir)
            for position, (match, path, target) in enumerate(overrides):
                RouteOverride.objects.create(
                    deployment=deployment,
                    match=match,
                    path=path,
                    target=target,
                    position=position,
                )
            wanted = (
                {
                    keyring.CPAMP_ADMIN: ADMIN_KEY,
                    keyring.CPA_MANAGEMENT: MANAGEMENT_KEY,
                    keyring.CPA_API: API_KEY,
                }
                if keys is None
                else keys
            )
            for role, secret in wanted.items():
                store_key(deployment, role, secret, custom_format=True)
            deployment = Deployment.objects.get(pk=deployment.pk)
            files = render_export([deployment])
            for name, text in files.items():
                (conf_dir / name).write_text(text)
            listen = [("127.0.0.1", deployment.http_port)]
            if deployment.tls:
                listen.append(("127.0.0.1", deployment.https_port))
            with running_nginx(conf_dir, wait_for=listen):
                if cpa_down:
                    cpa.stop()
                if cpamp_down:
                    cpamp.stop()
                yield Stack(
                    deployment=deployment,
                    cpa=cpa,
                    cpamp=cpamp,
                    base_url=deployment.verification_base_url,
                    conf_dir=conf_dir,
                    files=files,
                )
    finally:
        cpa.stop()
        cpamp.stop()
