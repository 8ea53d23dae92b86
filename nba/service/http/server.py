"""The HTTP API's server: uvicorn on its own thread and event loop, beside the gRPC server in
the same process (``nba serve``), on a socket this module binds.

The socket is bound here rather than by uvicorn so that workers (``--workers N``) can share the
port with SO_REUSEPORT as they share the gRPC port, and so that port 0 (any free port) is known
before serving starts. uvicorn's own signal handling is off: the service's stop() stops it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

__all__ = ["HttpPortUnavailable", "HttpServer"]

log = logging.getLogger(__name__)


class HttpPortUnavailable(OSError):
    """The HTTP port cannot be bound (taken, or needing privileges); ``strerror`` says why."""


class _Embedded(uvicorn.Server):
    """uvicorn without its signal handlers: the process's owner handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Serves ``app`` on ``host:port`` (0: any free port; ``port`` says which after ``start``);
    over TLS with ``certificate`` and ``key`` (and client certificates signed by ``client_ca``
    required, when given). ``reuse_port``: share the port with the other workers."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        certificate: Path | None = None,
        key: Path | None = None,
        client_ca: Path | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._socket = _bind(host, port, reuse_port)
        self.port: int = self._socket.getsockname()[1]
        options: dict[str, Any] = {}
        if certificate is not None and key is not None:
            options = {"ssl_certfile": str(certificate), "ssl_keyfile": str(key)}
            if client_ca is not None:
                options.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(
            app,
            log_config=None,  # the service's logging, not uvicorn's
            access_log=False,  # nba_http_requests_total counts every request; a line each would cost more
            lifespan="off",
            loop="auto",
            http="auto",
            server_header=False,
            # a client that sends nothing for this long is dropped: it holds a connection slot
            timeout_keep_alive=30,
            **options,
        )
        self._server = _Embedded(config)
        # uvicorn says "Started server process" at INFO under the name uvicorn.error: noise beside
        # the service's own "serving" line, and alarming in a log search for "error"
        for name in ("uvicorn", "uvicorn.error"):
            if logging.getLogger(name).level < logging.WARNING:
                logging.getLogger(name).setLevel(logging.WARNING)
        self._thread: threading.Thread | None = None
        self.tls = bool(options)

    def start(self) -> None:
        """Serves in a thread of its own until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="nba-http", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except Exception:  # a failure here would otherwise end the thread silently
            log.exception("the HTTP server stopped on an error")

    def stop(self, grace: float = 5.0) -> None:
        """Stops taking connections, lets requests in flight finish (at most ``grace`` s)."""
        self._server.config.timeout_graceful_shutdown = max(math.ceil(grace), 1)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(grace + 2)
        with contextlib.suppress(OSError):
            self._socket.close()


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening socket on ``host`` (``[::]``, gRPC's spelling of every address, serves IPv4
    too, as gRPC's does)."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise HttpPortUnavailable(exc.errno, exc.strerror or "in use") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock
