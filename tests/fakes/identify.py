"""Tiny loopback upstreams that answer every request with their own name.

The simulator agreement test puts real nginx in front of two of these ("cpa" and "cpamp") and asks
who answered each request: the body is the name, and X-Seen-Path echoes the request target the
upstream received.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fakes.cpa import LISTEN_BACKLOG


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "identify"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        # latin-1 keeps any byte of the received target representable in a header.
        self.send_header("X-Seen-Path", self.path.encode("latin-1", "replace").decode("latin-1"))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        """Stay quiet: tests read answers, not logs."""


class IdentifyServer(ThreadingHTTPServer):
    daemon_threads = True
    # Issue 16: the stdlib default backlog of 5 stalls parallel workers.
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, name: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name

    @property
    def address(self) -> str:
        """Return host:port for an nginx upstream."""
        host, port = self.server_address[:2]
        return f"{host}:{port}"


@contextmanager
def identify_servers(*names: str) -> Iterator[dict[str, IdentifyServer]]:
    """Run one IdentifyServer per name on 127.0.0.1 ephemeral ports until the block ends."""
    servers = {name: IdentifyServer(name) for name in names}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
