"""A Redis and a PostgreSQL of a test's own, to stop and start at will: the machine's shared
servers must stay up for the rest of the suite. Without the programs the tests skip, saying
why (or fail, with ``NBA_REQUIRE_SERVICES=1``)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import free_port, skip_or_fail


def _wait_port(port: int, up: bool, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not {'open' if up else 'close'} within {seconds} s")


class OwnRedis:
    """A redis-server on a free port, keeping nothing on disk (like the machine's)."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            skip_or_fail("needs redis-server to start a Redis of its own")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def __enter__(self) -> OwnRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


class OwnPostgres:
    """A PostgreSQL cluster in a temporary folder on a free port (initdb, pg_ctl). As root, the
    programs run as the ``postgres`` user, since PostgreSQL refuses to run as root."""

    def __init__(self) -> None:
        self._initdb, self._pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
        if not self._initdb or not self._pg_ctl:
            skip_or_fail("needs PostgreSQL's initdb and pg_ctl to start a PostgreSQL of its own")
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._dir = Path(tempfile.mkdtemp(prefix="nba-pg-"))
        self._data = self._dir / "data"
        if self._as:
            shutil.chown(self._dir, "postgres")
        self._run(self._initdb, "-D", str(self._data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, *command: str) -> None:
        subprocess.run([*self._as, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        options = f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(self._pg_ctl, "-D", str(self._data), "-o", options, "-l", str(self._dir / "log"), "-w", "start")
        _wait_port(self.port, up=True)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown that disconnects clients; ``immediate``: as a crash
        (the next start recovers from the write-ahead log)."""
        self._run(self._pg_ctl, "-D", str(self._data), "-m", mode, "-w", "stop")
        _wait_port(self.port, up=False)

    def __enter__(self) -> OwnPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop("immediate")
        except (subprocess.CalledProcessError, TimeoutError):
            pass  # already stopped
        shutil.rmtree(self._dir, ignore_errors=True)
