"""The database engine: opening it, the write transaction, and what counts as an outage.

Every repository (``policy_sets``, ``decisions``, ``feedback``, ``contacts``, ``snapshots``)
reads and writes through ``Repository.read`` and ``Repository.write``, which translate the
driver's errors at this boundary: a database that cannot be reached becomes
``DatabaseUnavailable`` (an ``nba.errors.Unavailable``: UNAVAILABLE, retry), so nothing above
storage needs to know SQLAlchemy's exception classes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url

from nba.errors import Unavailable
from nba.storage.migrations import ensure_schema

__all__ = ["DatabaseUnavailable", "Repository", "driver_error", "is_outage", "open_engine", "translated"]

#: values bound in one ``IN (...)`` look-up (SQLite allows 32,766 in a statement)
IN_CHUNK = 5000
#: the longest a connection attempt to PostgreSQL may take before the database counts as down
CONNECT_TIMEOUT_SECONDS = 5
#: PostgreSQL advisory lock that serialises write transactions (any constant)
WRITE_LOCK_KEY = 0x6E62615F77726974  # "nba_writ"


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached now (down, restarting, read-only, the network): retry.
    The driver's error is its ``__cause__``."""


def is_outage(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached (down, restarting, network, a
    lock held too long) rather than a fault in what was asked of it. Outages are waited out
    and retried; faults are not."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        # PostgreSQL's SQLSTATE says it for errors the driver classes do not: a read-only
        # server (a standby, or a primary during failover: 25006), a shutdown (57P01-57P03),
        # a lost connection (class 08).
        state = str(getattr(exc.orig, "sqlstate", "") or "")
        return (
            exc.connection_invalidated
            or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
            or state == "25006"
            or state.startswith(("57P", "08"))
        )
    return isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError, OSError))


def open_engine(url: str) -> Engine:
    """Creates the engine and checks the schema (``nba.storage.migrations``: an empty database is
    created at the newest revision, an older one refused until ``nba db upgrade``). SQLite
    runs in WAL mode with full fsync, so a committed feedback event survives a crash of the
    process or the machine."""
    parsed = make_url(url)
    # pre_ping: after a database restart, pooled connections are dead; each is tested when
    # taken from the pool and replaced, so the first call after recovery does not fail.
    # hide_parameters: a database error logged names the statement, never the values bound to it
    # (event properties and identifiers: personal data does not go to the logs)
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    engine = create_engine(url, json_serializer=json_text, json_deserializer=orjson.loads, **kwargs)
    if sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # A writer (Store.write) takes the database's write lock when its transaction
            # starts, not at its first write: with several worker processes on one file, a
            # check-then-insert (is this event_id new? what is this pair's reward?) must not
            # interleave. Other transactions keep the driver's own behaviour (it begins at
            # the first write, so reads never hold a snapshot a writer could invalidate).
            options = conn.get_execution_options()
            if options.get("nba_write", False):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif options.get("nba_snapshot", False):
                conn.exec_driver_sql("BEGIN")

    elif engine.dialect.name == "postgresql":

        @event.listens_for(engine, "begin")
        def _serialise_writers(conn: Any) -> None:
            # As BEGIN IMMEDIATE on SQLite: one writer at a time, so event ids (taken from a
            # sequence inside the transaction) follow commit order, and a process that reads
            # the events after the last id it saw (other workers and replicas) never skips one
            # committed late with a smaller id. Writers batch many events per transaction.
            if conn.get_execution_options().get("nba_write", False):
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")

    try:
        ensure_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def json_text(value: Any) -> str:
    """The text a JSON column stores. orjson (maintained, compiled wheels) rather than the
    standard library: profile states are rewritten on every tracked event, and orjson writes
    them about 15 times faster and reads them about 6 times faster (measured on a sample
    profile). What orjson refuses (an integer beyond 64 bits, a key that is not a string) is
    written by the standard library. Numbers that are not finite, which orjson would write as
    null, are refused where they come in (feedback, features, event properties)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value)


def utc(value: datetime) -> datetime:
    """``value`` with UTC as its zone when it has none (SQLite returns naive datetimes)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DateTime storage format (UTC, no offset), for driver-level writes."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def chunks(values: list[Any]) -> Iterator[list[Any]]:
    """``values`` in lists of at most ``IN_CHUNK``, for ``IN (...)`` look-ups."""
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def driver_error(exc: BaseException) -> BaseException:
    """The driver's own error behind a ``DatabaseUnavailable`` (what logs and messages should
    name: "OperationalError: connection refused"), or ``exc`` itself."""
    if isinstance(exc, DatabaseUnavailable) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


@contextmanager
def translated() -> Iterator[None]:
    """Raises an outage inside the block as ``DatabaseUnavailable`` (with the driver's error
    as its cause); any other error as it is."""
    try:
        yield
    except Exception as exc:
        if is_outage(exc) and not isinstance(exc, DatabaseUnavailable):
            raise DatabaseUnavailable(f"the database is unavailable ({type(exc).__name__}); retry") from exc
        raise


class Repository:
    """What every repository shares: the engine, and connections that translate outages."""

    engine: Engine
    #: names the process in rows other processes must learn of (contact events)
    origin: str

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A connection for reads; an outage raises ``DatabaseUnavailable``."""
        with translated(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        """A connection for several reads that must agree with each other (GetProfile's
        timeline, merged ids and decisions): one read transaction that sees one state of the
        database (REPEATABLE READ on PostgreSQL; on SQLite a transaction begun before the first
        read, whose snapshot in WAL mode holds until it ends). Pass it to the reads as ``conn``."""
        with translated(), self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            else:
                conn = conn.execution_options(nba_snapshot=True)
            with conn.begin():
                yield conn

    @contextmanager
    def reading(self, conn: Any | None) -> Iterator[Any]:
        """``conn`` when a caller holds one (``snapshot``), else a connection of its own."""
        if conn is not None:
            yield conn
            return
        with self.read() as own:
            yield own

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A write transaction: on SQLite it holds the write lock from its start (``BEGIN
        IMMEDIATE``), on PostgreSQL an advisory lock; an outage raises ``DatabaseUnavailable``."""
        with translated(), self.engine.connect() as conn:
            conn = conn.execution_options(nba_write=True)
            with conn.begin():
                yield conn
