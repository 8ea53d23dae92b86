"""``nba serve --workers N``: N worker processes on one port, and a supervisor over them.

Python runs one thread of Python at a time per process, so a process serves about one core.
As in gRPC's multiprocessing example, N processes each start their own gRPC server on the same
port with SO_REUSEPORT, and the kernel spreads connections over them. They share the database:
every worker learns every feedback event in commit order, whichever worker received it, by
reading the feedback table after its own commits and every 20 ms (``DecisionLog``), so all
rank alike. We chose the database over Redis Streams on one machine: it already holds every
event durably and in commit order, it needs no other service for the embedded default, and a
worker restarted after a crash catches up from the same place its snapshot left off. Replicas
on several machines (a later step) need a stream engine, since PostgreSQL's sequence order is
not its commit order.

The supervisor checks that the port is free, publishes the policy set once before the workers
start (so they do not race to publish the same folder), and serves the metrics of all workers
as one: prometheus-client's multiprocess mode, each worker writing its values to files in a
folder of this run (``PROMETHEUS_MULTIPROC_DIR``) and the supervisor's ``/metrics`` adding
them up (counters and histograms summed, dead workers' counts kept; each gauge by the mode
declared in ``nba.metrics``; a dead worker's live gauges dropped with ``mark_process_dead``).

It forwards SIGTERM, SIGINT and SIGHUP, and restarts a worker that dies, after a delay that
doubles with each exit in a row (1 s, 2 s, 4 s ... at most ``RESTART_MAX_SECONDS``) and starts
again from 1 s once a worker has run ``HEALTHY_SECONDS``; from ``CRASH_LOOP_EXITS`` exits in a
row the log says the worker is crash-looping. Once SIGTERM or SIGINT has arrived nothing is
restarted. It exits when all workers have stopped. Workers die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from nba.config import Settings

__all__ = [
    "CRASH_LOOP_EXITS",
    "HEALTHY_SECONDS",
    "RESTART_MAX_SECONDS",
    "RESTART_MIN_SECONDS",
    "PortInUse",
    "restart_delay",
    "supervise",
]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
#: delay before the first restart of a worker; it doubles with each exit in a row
RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
#: a worker that ran this long before it exited starts the count of exits in a row again
HEALTHY_SECONDS = 60.0
#: exits in a row after which a worker is reported as crash-looping
CRASH_LOOP_EXITS = 3
#: environment of the workers that names the folder of their metric files
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class PortInUse(OSError):
    """The gRPC or metrics port cannot be bound: taken by another process, or (gRPC) a host
    that is not an address of this machine."""

    def __init__(self, kind: str, host: str, port: int, reason: str) -> None:
        super().__init__(errno.EADDRINUSE, reason)
        self.kind, self.host, self.port = kind, host, port


def restart_delay(exits_in_a_row: int, minimum: float = RESTART_MIN_SECONDS, maximum: float = RESTART_MAX_SECONDS) -> float:
    """Seconds to wait before restarting a worker that exited ``exits_in_a_row`` times
    (1, 2, ...) without running ``HEALTHY_SECONDS`` in between: exponential, capped."""
    return min(maximum, minimum * 2 ** max(0, exits_in_a_row - 1))


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the supervisor's signal forwarding still stops them
        pass


def _check_port(host: str, port: int, what: str = "gRPC") -> None:
    """Refuses a gRPC port another process listens on, or a host that is not this machine's.
    The workers share the port with SO_REUSEPORT, which would also let them join a stranger's
    socket silently; this probe binds without it (port 0 checks the host alone)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise PortInUse(what, host, port, str(exc)) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise PortInUse(what, host, port, exc.strerror or "in use") from None


def _publish_once(settings: Settings) -> None:
    """Makes the folder's set live (or refuses to start on an invalid one) before any worker."""
    from nba.service.publishing import Publisher
    from nba.storage.engine import open_engine
    from nba.storage.store import Store

    engine = open_engine(settings.database_url)
    try:
        # Validated here, in the supervisor (the rules' cost limits hold all the same): no
        # worker serves yet, and a validation process (nba.policy.sandbox) would stay the
        # supervisor's child for good, among the workers it watches.
        Publisher(Store(engine), settings.policies, lambda _set: None, isolate=False).start()
    finally:
        engine.dispose()


def _serve_metrics(settings: Settings, folder: str) -> Any:
    """The workers' metrics, added up, on the configured port (None when metrics are off)."""
    if settings.metrics_port < 0:
        return None
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    try:
        server, _thread = start_http_server(settings.metrics_port, registry=registry)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise PortInUse("metrics", "", settings.metrics_port, exc.strerror or "in use") from None
        raise
    return server


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[Any] | None = None
    started: float = 0.0
    #: exits without HEALTHY_SECONDS of running in between
    exits_in_a_row: int = 0
    #: monotonic time of the next start, while the worker is down
    restart_at: float | None = None


def supervise(settings: Settings, argv: list[str]) -> int:
    """Runs ``settings.workers`` workers until SIGTERM or SIGINT; returns the exit code (0).
    Raises ``PortInUse`` when the gRPC or metrics port is taken."""
    _check_port(settings.host, settings.port)
    if settings.http_port > 0:
        _check_port(settings.host, settings.http_port, "HTTP")
    folder = tempfile.mkdtemp(prefix="nba-metrics-")
    try:
        metrics_server = _serve_metrics(settings, folder)
        try:
            _publish_once(settings)
            return _run(settings, argv, folder, metrics_server.server_port if metrics_server is not None else None)
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(settings: Settings, argv: list[str], folder: str, metrics_port: int | None) -> int:
    command = [sys.executable, "-m", "nba", *argv]
    workers = [_Worker(i) for i in range(settings.workers)]
    stopping = threading.Event()
    from prometheus_client.multiprocess import mark_process_dead

    def spawn(worker: _Worker) -> None:
        if stopping.is_set():  # checked at the last moment: no start once shutdown began
            return
        env = {**os.environ, "NBA_WORKER": str(worker.index), "NBA_WORKERS": str(settings.workers), MULTIPROC_ENV: folder}
        worker.proc = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker started", extra={"worker": worker.index, "pid": worker.proc.pid})

    told: set[int] = set()  # workers already sent SIGTERM

    def forward(signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.set()
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                if signum == signal.SIGHUP:
                    w.proc.send_signal(signal.SIGHUP)
                elif w.proc.pid not in told:
                    told.add(w.proc.pid)
                    w.proc.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for w in workers:
        spawn(w)
    metrics = f"; metrics of all of them on http://localhost:{metrics_port}/metrics" if metrics_port is not None else ""
    log.info(
        f"started {settings.workers} workers on port {settings.port}: each logs 'serving' when ready{metrics}",
        extra={"workers": settings.workers, "port": settings.port, "metrics_port": metrics_port},
    )
    while not stopping.wait(0.2):
        now = time.monotonic()
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                _exited(w, now, folder, mark_process_dead)
            if w.proc is None and w.restart_at is not None and now >= w.restart_at:
                spawn(w)
    # A worker started in the instant the signal arrived has not been told yet.
    for w in workers:
        if w.proc is not None and w.proc.poll() is None and w.proc.pid not in told:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.grace_seconds + 30
    for w in workers:
        if w.proc is None:
            continue
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
    log.info("stopped")
    return 0


def _exited(worker: _Worker, now: float, folder: str, mark_process_dead: Any) -> None:
    """Books a worker's exit and schedules its restart, with backoff."""
    assert worker.proc is not None
    code, pid = worker.proc.returncode, worker.proc.pid
    ran = now - worker.started
    mark_process_dead(pid, folder)  # its live gauges go; its counts stay in the sums
    worker.proc = None
    worker.exits_in_a_row = 1 if ran >= HEALTHY_SECONDS else worker.exits_in_a_row + 1
    delay = restart_delay(worker.exits_in_a_row)
    worker.restart_at = now + delay
    fields = {
        "worker": worker.index,
        "pid": pid,
        "code": code,
        "ran_seconds": round(ran, 1),
        "exits_in_a_row": worker.exits_in_a_row,
        "restart_in_seconds": delay,
    }
    if worker.exits_in_a_row >= CRASH_LOOP_EXITS:
        log.error("worker is crash-looping: it keeps exiting soon after it starts; see its own log lines above", extra=fields)
    else:
        log.error("worker exited; starting it again", extra=fields)
