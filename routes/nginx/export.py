"""Export rendered configs: atomic files, tracked ownership, `nginx -t` before replacing.

The export directory is meant to be nginx's ``conf.d``: it may hold files the console did not
write. A manifest (``.console-export.json``) lists the files the console owns; only those are
ever replaced or removed. Every export is stored as ConfigExport rows and one audit event per
team.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from django.conf import settings
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone
from django.utils.translation import gettext as _

from routes import audit
from routes import validators as v
from routes.context import current_actor
from routes.files import TEMP_NAME, atomic_write, fsync_dir, replace_all
from routes.models import ConfigExport, Deployment
from routes.nginx import lint as linter
from routes.nginx.render import (
    COMMON_FILENAME,
    render_common,
    render_site,
    resolves_at_request_time,
    site_filename,
)
from routes.nginx.sandbox import (
    NginxCheck,
    check_directory,
    nginx_binary,
    readable_regular_file,
)

MANIFEST = ".console-export.json"
LOCK = ".console-export.lock"
COMPOSE_PREFIX = "docker-compose."
_SERVER_NAME_LINE = re.compile(r"^\s*server_name\s+(\S+);", re.MULTILINE)
_CERT_LINE = re.compile(r"^(\s*ssl_certificate(?:_key)?\s+)(\S+);$", re.MULTILINE)
_LISTEN_LINE = re.compile(
    r"^(\s*listen\s+)(?:(\[[0-9A-Fa-f:.]+\]|[0-9.]+):)?(\d+)((?:\s+\w+)*);$", re.MULTILINE
)
# nginx -t binds every listen socket and ignores only "address in use": unprivileged ports and
# loopback addresses keep the check independent of the console host's interfaces and user.
_CHECK_PORT_BASE = 20000


class ExportError(Exception):
    """The export was refused or nginx rejected it; nothing in the directory changed."""

    def __init__(self, message: str, check: NginxCheck | None = None):
        super().__init__(message)
        self.check = check


@dataclass
class ExportResult:
    """What an export did: files written, left unchanged and removed, the check, warnings."""

    output_dir: Path | None
    files: dict[str, str]
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    check: NginxCheck | None = None
    warnings: list[tuple[str, linter.LintWarning]] = field(default_factory=list)
    exports: list[ConfigExport] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compose_filename(deployment: Deployment) -> str:
    """Return the file name of the deployment's docker-compose file."""
    return f"{COMPOSE_PREFIX}{deployment.slug}.yml"


def prepared(deployments: Iterable[Deployment]) -> list[Deployment]:
    """Return the deployments as a list, loading teams and overrides in a constant query count."""
    if isinstance(deployments, QuerySet):
        deployments = deployments.select_related("team").prefetch_related("overrides")
    return list(deployments)


def render_sites(deployments: Iterable[Deployment]) -> dict[str, str]:
    """Return {site file name: text} of the deployments (InvalidDeployment on bad input)."""
    return {site_filename(d): render_site(d) for d in deployments}


def default_server_wanted(default_server: bool | None) -> bool:
    """Return whether the shared file gets the catch-all server (None: the setting decides)."""
    if default_server is None:
        return bool(settings.CONSOLE_NGINX_DEFAULT_SERVER)
    return default_server


def render_files(
    deployments: Iterable[Deployment], *, default_server: bool | None = None
) -> dict[str, str]:
    """Return {file name: text}: the shared file and one site file per deployment, sorted.

    ``default_server``: add the catch-all server to the shared file (None: the
    CONSOLE_NGINX_DEFAULT_SERVER setting decides).
    """
    deployments = prepared(deployments)
    files = render_sites(deployments)
    files[COMMON_FILENAME] = render_common(
        [d.server_name for d in deployments],
        sites=list(files.values()),
        default_server=default_server_wanted(default_server),
    )
    return dict(sorted(files.items()))


# --- docker-compose -----------------------------------------------------------------------


def _service(lines: list[str], address: str, *, image: str, volumes: list[str]) -> str:
    host, port = v.split_host_port(address)
    lines += [
        f"  {host}:",
        f"    image: {image}",
        f"    container_name: {host}",
        "    restart: unless-stopped",
        "    volumes:",
        *[f'      - "{volume}"' for volume in volumes],
        "    expose:",
        f'      - "{port}"',
    ]
    return host


def _cert_mounts(deployment: Deployment) -> list[str]:
    mounts: list[str] = []
    for path in (deployment.ssl_certificate, deployment.ssl_certificate_key):
        if path.startswith("/etc/nginx/ssl/"):
            mount = "./nginx/ssl:/etc/nginx/ssl:ro"
        elif path.startswith("/etc/letsencrypt/"):
            # live/ holds symlinks into archive/: mount the whole tree.
            mount = "/etc/letsencrypt:/etc/letsencrypt:ro"
        else:
            parent = str(Path(path).parent)
            mount = f"{parent}:{parent}:ro"
        if mount not in mounts:
            mounts.append(mount)
    return mounts


def render_compose(deployment: Deployment) -> str:
    """Return the seed's docker-compose.yml for the deployment (Docker or host topology)."""
    lines = [
        f"# CPA gateway console: docker-compose file of deployment {deployment.slug}, after the",
        "# seed's example. Put the exported *.conf files in ./nginx/conf.d.",
        "services:",
    ]
    depends: list[str] = []
    host_network = False
    for address, label in ((deployment.cpa_upstream, "CPA"), (deployment.cpamp_upstream, "CPAMP")):
        if resolves_at_request_time(address):
            continue
        host, _port = v.split_host_port(address)
        host_network = host_network or host.startswith("127.") or host == "::1"
        lines.append(f"  # {label} runs outside this file, at {address}.")
    if resolves_at_request_time(deployment.cpa_upstream):
        # The seed's image name is a placeholder; this is CPA's published image and its paths.
        depends.append(
            _service(
                lines,
                deployment.cpa_upstream,
                image="eceasy/cli-proxy-api:latest",
                volumes=[
                    "./cliproxyapi/config.yaml:/CLIProxyAPI/config.yaml",
                    "./cliproxyapi/auths:/root/.cli-proxy-api",
                    "./cliproxyapi/logs:/CLIProxyAPI/logs",
                ],
            )
        )
        lines.append("")
    if resolves_at_request_time(deployment.cpamp_upstream) and deployment.mode != "cpa_panel":
        depends.append(
            _service(
                lines,
                deployment.cpamp_upstream,
                image="seakee/cpa-manager-plus:latest",
                volumes=["./cpa-manager-plus-data:/data"],
            )
        )
        if len(depends) > 1:
            lines += ["    depends_on:", f"      - {depends[0]}"]
        lines.append("")
    lines += [
        "  nginx:",
        "    image: nginx:alpine",
        f"    container_name: cpa-nginx-{deployment.slug.lower()}",
        "    restart: unless-stopped",
    ]
    if host_network:
        lines += [
            "    # The upstreams listen on the host's loopback: share the host's network.",
            "    network_mode: host",
        ]
    else:
        lines += ["    ports:", f'      - "{deployment.http_port}:{deployment.http_port}"']
        if deployment.tls:
            lines.append(f'      - "{deployment.https_port}:{deployment.https_port}"')
    lines += ["    volumes:", '      - "./nginx/conf.d:/etc/nginx/conf.d:ro"']
    if deployment.tls:
        lines += [f'      - "{mount}"' for mount in _cert_mounts(deployment)]
    if depends:
        lines += ["    depends_on:", *[f"      - {name}" for name in depends]]
    if deployment.listen_address and not host_network:
        lines.append(
            f"    # listen_address {deployment.listen_address} is an address of the host; inside "
            "the container nginx must listen on every interface: clear it for this file."
        )
    return "\n".join(lines) + "\n"


# --- nginx -t -------------------------------------------------------------------------------


def self_signed_certificate(
    directory: Path, common_name: str, *, days: int = 1
) -> tuple[Path, Path]:
    """Write a self-signed certificate and key for common_name into directory; return paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if "." in common_name and " " not in common_name:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _stand_in_certificate(directory: Path) -> tuple[Path, Path]:
    return self_signed_certificate(directory, "console nginx -t stand-in")


class _ListenMap:
    """Map each listen address and port to a loopback address and an unprivileged port.

    Distinct addresses stay distinct and equal ones stay equal, so the servers that share an
    address:port (and what nginx checks about them: ssl, default server) are the same as in the
    exported files.
    """

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.addresses: dict[str, str] = {}

    def swap(self, match: re.Match) -> str:
        address, port = match.group(2), match.group(3)
        mapped_port = self.ports.setdefault(port, _CHECK_PORT_BASE + len(self.ports))
        if address:
            if address not in self.addresses:
                # 127.0.0.0/8 is all loopback: count through it so that thousands of distinct
                # listen addresses stay distinct (127.0.0.1, ..., 127.0.1.0, ...).
                n = len(self.addresses) + 1
                self.addresses[address] = f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            target = f"{self.addresses[address]}:{mapped_port}"
        else:
            target = str(mapped_port)
        return f"{match.group(1)}{target}{match.group(4)};"


class _StandIns:
    """Swap certificate paths nginx -t must not open for one throwaway self-signed pair."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.verdicts: dict[str, str | None] = {}
        self.replaced: dict[str, str] = {}
        self.pair: tuple[Path, Path] | None = None

    def swap(self, match: re.Match) -> str:
        path = match.group(2)
        if path not in self.verdicts:
            self.verdicts[path] = readable_regular_file(path)
        reason = self.verdicts[path]
        if reason is None:
            return match.group(0)
        self.replaced[path] = reason
        if self.pair is None:
            self.pair = _stand_in_certificate(self.directory)
        is_key = match.group(1).strip().startswith("ssl_certificate_key")
        return f"{match.group(1)}{self.pair[1] if is_key else self.pair[0]};"

    def note(self) -> str:
        """Return the sentence that lists the replaced paths and why, or ""."""
        if not self.replaced:
            return ""
        listed = ", ".join(f"{path} ({reason})" for path, reason in sorted(self.replaced.items()))
        return _(
            "Certificate paths that are not readable regular files on the console host were "
            "replaced by a stand-in for this check: %(paths)s."
        ) % {"paths": listed}


def _merged_output(outputs: list[str]) -> str:
    # Each part repeats nginx's warnings about shared settings: say each line once.
    lines: dict[str, None] = {}
    for output in outputs:
        lines.update(dict.fromkeys(line for line in output.splitlines() if line.strip()))
    return "\n".join(lines)


def check_files(files: dict[str, str]) -> NginxCheck:
    """Run real `nginx -t` on {file name: text} as one directory, in a throwaway sandbox.

    The console host is usually not the nginx host: a certificate path that is not a readable
    regular file here (missing, a FIFO, a device, a directory) is replaced by a throwaway
    self-signed stand-in for the check only, and never opened (the result says so). Listen
    addresses and ports are mapped to loopback and unprivileged ones, because nginx -t binds
    them. More than CONSOLE_NGINX_CHECK_PART site files are checked in parts, each with the
    shared file, because one nginx -t of thousands of sites needs minutes and gigabytes.
    """
    if nginx_binary() is None:
        return NginxCheck(False, _("nginx is not installed on the console host"), available=False)
    part_size = max(1, int(settings.CONSOLE_NGINX_CHECK_PART))
    with tempfile.TemporaryDirectory(prefix="console-export-check-") as tmp:
        root = Path(tmp)
        stand_ins = _StandIns(root / "stand-in")
        listen = _ListenMap()
        texts = {
            name: _LISTEN_LINE.sub(listen.swap, _CERT_LINE.sub(stand_ins.swap, text))
            for name, text in sorted(files.items())
            if name.endswith(".conf")
        }
        shared = [name for name in texts if name == COMMON_FILENAME]
        sites = [name for name in texts if name != COMMON_FILENAME]
        parts = [sites[i : i + part_size] for i in range(0, len(sites), part_size)] or [[]]
        outputs: list[str] = []
        result = NginxCheck(True, "")
        for index, names in enumerate(parts):
            conf_dir = root / f"conf.d-{index}"
            conf_dir.mkdir()
            for name in [*shared, *names]:
                (conf_dir / name).write_text(texts[name], encoding="utf-8")
            result = check_directory(conf_dir)
            outputs.append(
                result.output.replace(str(conf_dir), "<check>/conf.d").replace(str(root), "<check>")
            )
            if not result.ok:
                outputs = outputs[-1:]
                break
    if result.timed_out or not result.available:
        return result
    notes = [_merged_output(outputs)]
    if len(parts) > 1:
        notes.append(
            _(
                "Checked in %(parts)d parts of at most %(size)d site files, each with the shared "
                "file."
            )
            % {"parts": len(parts), "size": part_size}
        )
    notes.append(stand_ins.note())
    return NginxCheck(result.ok, "\n".join(note for note in notes if note), result.available)


# --- writing --------------------------------------------------------------------------------


def read_regular_bytes(path: Path, limit: int | None = None) -> bytes | None:
    """Return the bytes of path when it is a regular file of at most limit bytes, else None.

    stat() first, so a FIFO, a device or a directory is never opened; the open itself does not
    block and fstat() confirms the file, in case the path was swapped in between.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (OSError, ValueError):
        return None
    with os.fdopen(fd, "rb") as fh:
        try:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = fh.read() if limit is None else fh.read(limit + 1)
        except OSError:
            return None
    return data if limit is None or len(data) <= limit else None


def read_regular_text(path: Path) -> str | None:
    """Return the text of path when it is a regular file (bad UTF-8 replaced), else None."""
    data = read_regular_bytes(path)
    return None if data is None else data.decode("utf-8", errors="replace")


def remove_leftovers(directory: Path, owned: Iterable[str]) -> list[str]:
    """Remove temporary files a killed export left in directory; return their names.

    Only names of the shape routes.files gives temp files, whose target is a file the console
    owns (or its manifest), are touched: anything else in the directory belongs to someone else.
    """
    targets = {*owned, MANIFEST}
    removed = []
    with os.scandir(directory) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        match = TEMP_NAME.match(name)
        if match is None or match.group("target") not in targets:
            continue
        try:
            os.unlink(directory / name)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
        removed.append(name)
    return removed


@contextlib.contextmanager
def export_lock(directory: Path, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the directory's export lock inside the block (exports and applies take turns).

    With a timeout, ExportError when another holder keeps it longer than that many seconds.
    """
    # Two exports into one directory at once would race on the manifest.
    path = directory / LOCK
    try:
        # O_NONBLOCK: a FIFO in the lock file's place must not hold the export forever.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise ExportError(
            _("%(path)s cannot be opened as the export lock: %(error)s")
            % {"path": path, "error": exc.strerror}
        ) from None
    with os.fdopen(fd, "a") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ExportError(
                _("%(path)s is not a regular file; remove it and export again.") % {"path": path}
            )
        _take(fh, path, timeout)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _take(fh: IO[str], path: Path, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(fh, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ExportError(
                    _(
                        "Another apply or export is writing to %(dir)s and did not finish within "
                        "%(seconds)d seconds; nothing was changed. Try again when it is done."
                    )
                    % {"dir": path.parent, "seconds": round(timeout)}
                ) from None
            time.sleep(0.1)


def read_manifest(directory: Path) -> dict[str, dict]:
    """Return {file name: entry} of the files the console owns in directory."""
    path = directory / MANIFEST
    if not path.exists():
        return {}
    try:
        text = read_regular_text(path)
        if text is None:
            raise TypeError
        data = json.loads(text)
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(
            _("%(path)s is not a valid export manifest; fix or delete it.") % {"path": path}
        ) from exc
    return {
        name: entry
        for name, entry in files.items()
        if isinstance(entry, dict) and "/" not in name and not name.startswith(".")
    }


def _write_manifest(directory: Path, files: dict[str, dict]) -> None:
    text = json.dumps({"version": 1, "files": dict(sorted(files.items()))}, indent=2) + "\n"
    atomic_write(directory / MANIFEST, text)


def cross_warnings(deployments: list[Deployment]) -> list[tuple[str, linter.LintWarning]]:
    """Return warnings that only appear when deployments share one nginx."""
    found: list[tuple[str, linter.LintWarning]] = []
    names: dict[tuple[str, int, str], str] = {}
    ports: dict[int, list[tuple[str, str, bool]]] = defaultdict(list)
    for d in deployments:
        listens = [(d.https_port, True), (d.http_port, False)] if d.tls else [(d.http_port, False)]
        for port, ssl in listens:
            key = (d.listen_address.strip("[]"), port, d.server_name)
            if key in names:
                found.append(
                    (
                        d.slug,
                        linter.LintWarning(
                            "conflicting_server_name",
                            _(
                                "%(a)s and %(b)s both serve %(name)s on port %(port)s; nginx "
                                "ignores one of them."
                            )
                            % {"a": names[key], "b": d.slug, "name": d.server_name, "port": port},
                            "server_name",
                        ),
                    )
                )
            names.setdefault(key, d.slug)
            ports[port].append((d.slug, d.listen_address.strip("[]"), ssl))
    for port, users in sorted(ports.items()):
        plain = {address: slug for slug, address, ssl in users if not ssl}
        if not plain:
            continue
        for slug, address, ssl in users:
            if not ssl:
                continue
            # "" is every address: it overlaps with any other on the same port.
            clash = (
                plain.get(address)
                or plain.get("")
                or (next(iter(plain.values())) if not address else None)
            )
            if clash:
                found.append(
                    (
                        slug,
                        linter.LintWarning(
                            "port_ssl_conflict",
                            _(
                                "Port %(port)s serves HTTPS for %(a)s and plain HTTP for %(b)s; "
                                "nginx applies ssl to every server on that port."
                            )
                            % {"port": port, "a": slug, "b": clash},
                            "https_port",
                        ),
                    )
                )
    return found


def export_warnings(deployments: list[Deployment]) -> list[tuple[str, linter.LintWarning]]:
    """Return every lint warning of the deployments, then those between them."""
    found = [(d.slug, w) for d in deployments for w in linter.lint(d)]
    return found + cross_warnings(deployments)


def last_export_hashes(deployments: Iterable[Deployment]) -> dict[int, str]:
    """Return {deployment id: content hash of its latest ConfigExport} in one query."""
    ids = [d.pk for d in deployments]
    if not ids:
        return {}
    latest = (
        ConfigExport.objects.filter(deployment=OuterRef("pk"))
        .order_by("-created_at", "-id")
        .values("content_hash")[:1]
    )
    found = (
        Deployment.objects.filter(pk__in=ids)
        .annotate(last_hash=Subquery(latest))
        .values_list("pk", "last_hash")
    )
    return {pk: last_hash for pk, last_hash in found if last_hash}


def record_exports(*, texts: list[tuple[Deployment, str]], source: str) -> list[ConfigExport]:
    """Store a ConfigExport for each site file that changed, and one audit event per team.

    A site file equal to its deployment's latest recorded export records nothing: an export
    that changes nothing adds no history, however often it runs.
    """
    last = last_export_hashes(d for d, _text in texts)
    hashed = [(d, text, sha256(text)) for d, text in texts]
    changed = [(d, text, digest) for d, text, digest in hashed if last.get(d.pk) != digest]
    if not changed:
        return []
    actor = current_actor()
    rows = ConfigExport.objects.bulk_create(
        [
            ConfigExport(
                deployment=d, content_hash=digest, text=text, source=source, created_by=actor
            )
            for d, text, digest in changed
        ]
    )
    by_team: dict[int, list[tuple[Deployment, str]]] = defaultdict(list)
    for d, _text, digest in changed:
        by_team[d.team_id].append((d, digest))
    for team_id, items in sorted(by_team.items()):
        changes: dict = {"source": source, "exports": {d.slug: h for d, h in items}}
        if len(items) == 1:
            changes["content_hash"] = items[0][1]
        audit.record(
            action="config.export",
            team=team_id,
            obj=items[0][0] if len(items) == 1 else None,
            object_repr="" if len(items) == 1 else _("%(n)d deployments") % {"n": len(items)},
            changes=changes,
        )
    return rows


def write_export(
    *,
    deployments: Iterable[Deployment],
    output_dir: Path,
    check: bool = False,
    compose: bool = False,
    source: str = "command",
    prune: bool = False,
    prune_team: str | None = None,
    lock: bool = True,
    record: bool = True,
    default_server: bool | None = None,
) -> ExportResult:
    """Write the deployments' configs into output_dir atomically and record the export.

    With ``check``, real `nginx -t` runs on the new files together with the owned files that stay,
    before anything is replaced; a failure raises ExportError and changes nothing. With
    ``prune``, owned files of deployments not in this export (of ``prune_team`` when given) are
    removed. Files the console does not own are never replaced or removed. ``lock=False``: the
    caller holds export_lock already (an apply); ``record=False``: the caller records the export.
    ``default_server`` adds the catch-all server to the shared file (None: the
    CONSOLE_NGINX_DEFAULT_SERVER setting decides); only for a directory that owns its ports.
    """
    deployments = prepared(deployments)
    sites = render_sites(deployments)
    result = ExportResult(output_dir=Path(output_dir), files={})
    result.warnings = export_warnings(deployments)
    entries = {
        site_filename(d): {"kind": "site", "deployment": d.slug, "team": d.team.slug}
        for d in deployments
    }
    files = dict(sites)
    if compose:
        for d in deployments:
            files[compose_filename(d)] = render_compose(d)
            entries[compose_filename(d)] = {
                "kind": "compose",
                "deployment": d.slug,
                "team": d.team.slug,
            }
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with export_lock(directory) if lock else contextlib.nullcontext():
        owned = read_manifest(directory)
        exported = {d.slug for d in deployments}
        # A file is stale when its deployment is no longer exported, not merely when this export
        # did not write it (a compose file stays when --compose is not given again).
        stale = sorted(
            name
            for name, entry in owned.items()
            if prune
            and entry.get("kind") in ("site", "compose")
            and entry.get("deployment") not in exported
            and (prune_team is None or entry.get("team") == prune_team)
        )
        staying = [
            name
            for name, entry in owned.items()
            if entry.get("kind") == "site" and name not in files and name not in stale
        ]
        server_names = [d.server_name for d in deployments]
        kept = {name: read_regular_text(directory / name) for name in staying}
        for text in kept.values():
            server_names += _SERVER_NAME_LINE.findall(text or "")
        # The shared file serves every site file in the directory: the rate-limit zones and
        # ports of the files this export keeps count as much as those it writes.
        files[COMMON_FILENAME] = render_common(
            server_names,
            sites=[*sites.values(), *(text for text in kept.values() if text)],
            default_server=default_server_wanted(default_server),
        )
        entries[COMMON_FILENAME] = {"kind": "common"}
        files = dict(sorted(files.items()))
        result.files = files
        for name in files:
            if (directory / name).exists() and name not in owned:
                raise ExportError(
                    _(
                        "%(path)s exists and was not written by the console; move it away or "
                        "choose another output directory."
                    )
                    % {"path": directory / name}
                )
        for name, entry in owned.items():
            current = directory / name
            if name in files and entry.get("sha256") and current.exists():
                if sha256(read_regular_text(current) or "") != entry["sha256"]:
                    result.warnings.append(
                        (
                            entry.get("deployment", ""),
                            linter.LintWarning(
                                "edited_by_hand",
                                _(
                                    "%(name)s was edited by hand since the last export; this "
                                    "export replaces the edit."
                                )
                                % {"name": name},
                                name,
                            ),
                        )
                    )
        if check:
            merged = {name: text for name, text in files.items() if name.endswith(".conf")}
            merged.update({name: text for name, text in kept.items() if text is not None})
            result.check = check_files(merged)
            if not result.check.ok:
                message = (
                    _("The export could not be checked; nothing was changed:\n%(output)s")
                    if result.check.timed_out
                    else _("nginx -t refused the export; nothing was changed:\n%(output)s")
                )
                raise ExportError(message % {"output": result.check.output}, result.check)
        for name, text in files.items():
            entries[name]["sha256"] = sha256(text)
        # The manifest first lists old and new files, so a crash mid-way never leaves a file
        # the console wrote but no longer recognises as its own.
        _write_manifest(directory, {**owned, **entries})
        changes: dict[Path, str] = {}
        for name, text in files.items():
            path = directory / name
            if read_regular_text(path) == text:
                result.unchanged.append(name)
            else:
                changes[path] = text
                result.written.append(name)
        replace_all(changes)
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
            result.removed.append(name)
        _write_manifest(
            directory, {n: e for n, e in {**owned, **entries}.items() if n not in stale}
        )
        # After the writes: a refused export changes nothing, leftovers included.
        result.leftovers = remove_leftovers(directory, {*owned, *entries})
        fsync_dir(directory)
    if record:
        result.exports = record_exports(
            texts=[(d, sites[site_filename(d)]) for d in deployments], source=source
        )
    return result


def build_archive(
    *, deployments: Iterable[Deployment], source: str = "archive"
) -> tuple[bytes, list[ConfigExport]]:
    """Return a tar.gz of the shared file and the site files, and record the export."""
    deployments = prepared(deployments)
    files = render_files(deployments)
    buffer = io.BytesIO()
    mtime = int(timezone.now().timestamp())
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"conf.d/{name}")
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    rows = record_exports(texts=[(d, files[site_filename(d)]) for d in deployments], source=source)
    return buffer.getvalue(), rows
