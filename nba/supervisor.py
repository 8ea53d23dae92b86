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

The supervisor publishes the policy set once before the workers start (so they do not race to
publish the same folder), forwards SIGTERM, SIGINT and SIGHUP, restarts a worker that dies,
and exits when all have stopped. Workers die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from nba.config import Settings

__all__ = ["supervise"]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_SECONDS = 1.0


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the supervisor's signal forwarding still stops them
        pass


def _publish_once(settings: Settings) -> None:
    """Makes the folder's set live (or refuses to start on an invalid one) before any worker."""
    from nba.publishing import Publisher
    from nba.store import Store, open_engine

    engine = open_engine(settings.database_url)
    try:
        Publisher(Store(engine), settings.policies, lambda _set: None).start()
    finally:
        engine.dispose()


def supervise(settings: Settings, argv: list[str]) -> int:
    _publish_once(settings)
    command = [sys.executable, "-m", "nba", *argv]
    workers: dict[int, subprocess.Popen[Any]] = {}
    stopping = threading.Event()

    def spawn(index: int) -> None:
        env = {**os.environ, "NBA_WORKER": str(index), "NBA_WORKERS": str(settings.workers)}
        workers[index] = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        log.info("worker started", extra={"worker": index, "pid": workers[index].pid})

    def forward(signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.set()
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for index in range(settings.workers):
        spawn(index)
    log.info("serving", extra={"workers": settings.workers, "port": settings.port})
    while not stopping.is_set():
        stopping.wait(0.5)
        for index, proc in list(workers.items()):
            code = proc.poll()
            if code is not None and not stopping.is_set():
                log.error("worker exited; starting it again", extra={"worker": index, "code": code})
                time.sleep(RESTART_BACKOFF_SECONDS)
                spawn(index)
    deadline = time.monotonic() + settings.grace_seconds + 30
    for proc in workers.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    log.info("stopped")
    return 0
