"""The decision log: decisions, feedback, contacts, policy set versions and model snapshots, in SQL.

SQLModel over SQLite is the embedded default (``sqlite:///var/nba.db``); any SQLAlchemy URL
with the same schema works. Two layers:

* ``Store`` is the plain, synchronous SQL: tables, look-ups, export, snapshots.
* ``DecisionLog`` keeps SQL off the request path. Decisions are queued and written in batches
  by one writer thread; a feedback event waits for the transaction that makes it durable
  (group commit: concurrent events share one commit), then for the learner to apply it, and
  only then is acknowledged. Because the one writer drains its queue in order, a decision is
  always committed no later than any feedback that names it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url

from nba import metrics
from nba.days import BUCKET_SECONDS
from nba.errors import AlreadyExists, Unavailable
from nba.records import (
    NO_RESPONSE,
    OUTCOMES,
    ContactEvent,
    DecisionRecord,
    FeedbackEvent,
    FeedbackResult,
    LearningEvent,
    PairState,
    RewardWindows,
    resolve,
)
from nba.storage.bus import BusEntry, RedisBus, Span
from nba.storage.migrations import ensure_schema
from nba.storage.tables import (
    CONTACT_EVENTS,
    DECISIONS,
    FEEDBACK,
    OFFER_COUNTERS,
    POLICY_ACTIVATIONS,
    POLICY_SETS,
    SNAPSHOTS,
)

__all__ = ["Activation", "DecisionLog", "Store", "open_engine"]

#: decisions whose reward windows are closed per transaction
CLOSE_BATCH = 1000
#: values bound in one ``IN (...)`` look-up (SQLite allows 32,766 in a statement)
IN_CHUNK = 5000
#: with a bus that works, how often the database is still read for events never published
BUS_TAIL_SECONDS = 1.0
#: while the database is unavailable, how often the writer tries it again
RETRY_SECONDS = 1.0
#: the longest a connection attempt to PostgreSQL may take before the database counts as down
CONNECT_TIMEOUT_SECONDS = 5
#: PostgreSQL advisory lock that serialises write transactions (any constant)
WRITE_LOCK_KEY = 0x6E62615F77726974  # "nba_writ"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Activation:
    """The live activation after an attempt to change it (``Store.publish``, ``Store.activate``)."""

    #: the activation's id: monotonic, in commit order
    id: int
    #: the policy set version it made live
    version: int
    #: whether this attempt wrote it (False: the version was live already, or refused)
    activated: bool
    #: another version than the expected one was live: nothing was written, and ``version``
    #: is the one live (0 before the first activation)
    refused: bool = False


def is_outage(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached (down, restarting, network, a
    lock held too long) rather than a fault in what was asked of it. Outages are waited out
    and retried; faults are not."""
    if isinstance(exc, sa_exc.DBAPIError):
        # PostgreSQL's SQLSTATE says it for errors the driver classes do not: a read-only
        # server (a standby, or a primary during failover: 25006), a shutdown (57P01-57P03),
        # a lost connection (class 08).
        state = str(getattr(exc.orig, "sqlstate", "") or "")
        return (exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
                or state == "25006" or state.startswith(("57P", "08")))
    return isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError, OSError))


def open_engine(url: str) -> Engine:
    """Creates the engine and checks the schema (``nba.storage.migrations``: an empty database is
    created at the newest revision, an older one refused until ``nba db upgrade``). SQLite
    runs in WAL mode with full fsync, so a committed feedback event survives a crash of the
    process or the machine."""
    parsed = make_url(url)
    # pre_ping: after a database restart, pooled connections are dead; each is tested when
    # taken from the pool and replaced, so the first call after recovery does not fail.
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    engine = create_engine(url, **kwargs)
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
            if conn.get_execution_options().get("nba_write", False):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

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


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Store:
    """Synchronous access to the decision log's tables."""

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A write transaction: on SQLite it holds the write lock from its start."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(nba_write=True)
            with conn.begin():
                yield conn

    def __init__(self, engine: Engine, windows: RewardWindows | None = None, origin: str = "") -> None:
        self.engine = engine
        self.windows = windows
        #: names the process in rows other processes must learn of (contact events)
        self.origin = origin
        self._decisions = DECISIONS
        self._feedback = FEEDBACK

    # Policy set versions ------------------------------------------------------------

    def register_policy_set(self, files: dict[str, str], content_hash: str, actor: str = "", comment: str = "") -> int:
        """The version number of this content, recording it as the next version if new."""
        table = POLICY_SETS
        with self.write() as conn:
            version = conn.execute(select(table.c.version).where(table.c.content_hash == content_hash)).scalar()
            if version is None:
                version = conn.execute(
                    table.insert().values(
                        content_hash=content_hash, created_at=datetime.now(UTC), created_by=actor,
                        comment=comment, files=files,
                    )
                ).inserted_primary_key[0]
        return int(version)

    def publish(
        self,
        files: dict[str, str],
        content_hash: str,
        actor: str,
        source: str,
        comment: str = "",
        at: datetime | None = None,
        expected_version: int = 0,
    ) -> Activation:
        """Registers ``files`` as a version (content published before keeps its number) and
        makes it live, in one write transaction: see ``activate``. When the activation is
        refused nothing is registered."""
        table = POLICY_SETS
        with self.write() as conn:
            live = self._newest_activation(conn)
            if refused := self._refused(live, expected_version):
                return refused
            version = conn.execute(select(table.c.version).where(table.c.content_hash == content_hash)).scalar()
            if version is None:
                version = conn.execute(
                    table.insert().values(
                        content_hash=content_hash, created_at=datetime.now(UTC), created_by=actor,
                        comment=comment, files=files,
                    )
                ).inserted_primary_key[0]
            return self._activate(conn, live, int(version), actor, source, comment, at)

    def activate(
        self,
        version: int,
        actor: str,
        source: str,
        comment: str = "",
        at: datetime | None = None,
        expected_version: int = 0,
    ) -> Activation:
        """Makes ``version`` live unless it is live already, and, with ``expected_version``,
        only if that version is the live one.

        The check and the insert are one write transaction, which holds the database's write
        lock from its start (BEGIN IMMEDIATE on SQLite, the advisory lock on PostgreSQL): no
        other process activates anything in between, whatever it remembers as live, and
        activation ids follow commit order. Returns the live activation afterwards, with
        ``activated`` False when nothing was written."""
        with self.write() as conn:
            live = self._newest_activation(conn)
            if refused := self._refused(live, expected_version):
                return refused
            return self._activate(conn, live, version, actor, source, comment, at)

    @staticmethod
    def _refused(live: Any, expected_version: int) -> Activation | None:
        if expected_version and (live is None or live.version != expected_version):
            return Activation(live.id if live else 0, live.version if live else 0, activated=False, refused=True)
        return None

    @staticmethod
    def _newest_activation(conn: Any) -> Any:
        table = POLICY_ACTIVATIONS
        return conn.execute(select(table.c.id, table.c.version).order_by(table.c.id.desc()).limit(1)).first()

    @staticmethod
    def _activate(conn: Any, live: Any, version: int, actor: str, source: str, comment: str,
                  at: datetime | None) -> Activation:
        if live is not None and live.version == version:
            return Activation(live.id, version, activated=False)
        table = POLICY_ACTIVATIONS
        activation_id = conn.execute(
            table.insert().values(
                version=version, activated_at=at or datetime.now(UTC), actor=actor, source=source, comment=comment
            )
        ).inserted_primary_key[0]
        return Activation(int(activation_id), version, activated=True)

    def newest_activation_id(self) -> int:
        """The id of the newest activation (0 before the first): cheap enough to poll."""
        table = POLICY_ACTIVATIONS
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(table.c.id))).scalar() or 0)

    def live_activation(self) -> Any:
        """The newest activation joined with its version (None before the first)."""
        a, p = POLICY_ACTIVATIONS, POLICY_SETS
        with self.engine.connect() as conn:
            return conn.execute(
                select(a.c.id, a.c.version, a.c.source, a.c.actor, a.c.activated_at, p.c.content_hash, p.c.files)
                .join(p, p.c.version == a.c.version)
                .order_by(a.c.id.desc())
                .limit(1)
            ).first()

    def last_file_hash(self) -> str | None:
        """The content hash the policies folder last published, if it ever did."""
        a, p = POLICY_ACTIVATIONS, POLICY_SETS
        with self.engine.connect() as conn:
            return conn.execute(
                select(p.c.content_hash)
                .join(a, p.c.version == a.c.version)
                .where(a.c.source == "file")
                .order_by(a.c.id.desc())
                .limit(1)
            ).scalar()

    def policy_set_row(self, version: int) -> Any:
        table = POLICY_SETS
        with self.engine.connect() as conn:
            return conn.execute(select(table).where(table.c.version == version)).first()

    def policy_set_versions(self, before: int | None, limit: int) -> list[Any]:
        table = POLICY_SETS
        query = select(table.c.version, table.c.content_hash, table.c.created_at, table.c.created_by, table.c.comment)
        if before is not None:
            query = query.where(table.c.version < before)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(table.c.version.desc()).limit(limit)).all())

    def activations(self, limit: int) -> list[Any]:
        table = POLICY_ACTIVATIONS
        with self.engine.connect() as conn:
            return list(conn.execute(select(table).order_by(table.c.id.desc()).limit(limit)).all())

    def recent_lines(self, limit: int) -> list[dict[str, Any]]:
        """The most recent ``limit`` decisions in the export format (feedback joined), oldest
        first."""
        table = self._decisions
        with self.engine.connect() as conn:
            since = conn.execute(
                select(table.c.created_at).order_by(table.c.created_at.desc()).offset(max(limit - 1, 0)).limit(1)
            ).scalar()
        return list(self.export(since=_utc(since) if since is not None else None))[-limit:]

    # Contact history and counters ---------------------------------------------------

    def contact_events(self, customer_id: str, since: float, up_to: int | None = None) -> list[ContactEvent]:
        """A customer's contact events since ``since``; with ``up_to``, only those with ids up
        to it (a process that follows others' events: the later ones reach it by the bus or
        the tail, and must not be counted twice)."""
        table = CONTACT_EVENTS
        query = (select(table.c.at, table.c.kind, table.c.offer_id, table.c.group, table.c.channel)
                 .where(table.c.customer_id == customer_id, table.c.at >= since).order_by(table.c.at))
        if up_to is not None:
            query = query.where(table.c.id <= up_to)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [ContactEvent(customer_id, r.at, r.kind, r.offer_id, r.group, r.channel) for r in rows]

    def insert_contacts(self, conn: Any, events: list[ContactEvent]) -> None:
        if not events:
            return
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(
            'INSERT INTO contact_events (customer_id, at, kind, offer_id, "group", channel, origin) '
            f"VALUES ({', '.join([mark] * 7)})",
            [(e.customer_id, e.at, e.kind, e.offer_id, e.group, e.channel, self.origin) for e in events],
        )
        increments: dict[tuple[str, str, int], int] = {}
        for e in events:
            key = (e.offer_id, e.kind, int(e.at // BUCKET_SECONDS))
            increments[key] = increments.get(key, 0) + 1
        self._add_counts(conn, [{"offer_id": o, "kind": k, "quarter": q, "count": n} for (o, k, q), n in increments.items()])

    def _add_counts(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        table = OFFER_COUNTERS
        dialect = self.engine.dialect
        if dialect.name in ("sqlite", "postgresql"):
            # Both speak INSERT ... ON CONFLICT DO UPDATE; written out once, since building the
            # statement with SQLAlchemy on every write cost more than running it.
            mark = "?" if dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                f"INSERT INTO offer_counters (offer_id, kind, quarter, count) VALUES ({mark}, {mark}, {mark}, {mark}) "
                "ON CONFLICT (offer_id, kind, quarter) DO UPDATE SET count = offer_counters.count + excluded.count",
                [(r["offer_id"], r["kind"], r["quarter"], r["count"]) for r in rows],
            )
            return
        for row in rows:  # any other database: read, then write
            key = (table.c.offer_id == row["offer_id"]) & (table.c.kind == row["kind"]) & (table.c.quarter == row["quarter"])
            if conn.execute(table.update().where(key).values(count=table.c.count + row["count"])).rowcount == 0:
                conn.execute(table.insert().values(**row))

    def contact_events_after(self, after_id: int, limit: int = 5000,
                             up_to: int | None = None) -> tuple[list[ContactEvent], int]:
        """Contact events other processes wrote after ``after_id`` (up to ``up_to``), and the
        last id seen."""
        table = CONTACT_EVENTS
        query = select(table).where(table.c.id > after_id).order_by(table.c.id).limit(limit)
        if up_to is not None:
            query = query.where(table.c.id <= up_to)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        events = [ContactEvent(r.customer_id, r.at, r.kind, r.offer_id, r.group, r.channel)
                  for r in rows if r.origin != self.origin]
        return events, (rows[-1].id if rows else after_id)

    def positions(self, conn: Any) -> tuple[int, int]:
        """The newest feedback and contact-event ids seen by ``conn`` (within a write
        transaction, which holds the write lock, nobody else commits meanwhile)."""
        feedback = conn.execute(select(func.max(FEEDBACK.c.id))).scalar() or 0
        contacts = conn.execute(select(func.max(CONTACT_EVENTS.c.id))).scalar() or 0
        return int(feedback), int(contacts)

    def last_ids(self) -> tuple[int, int]:
        """The newest feedback and contact-event ids: where a new process starts reading."""
        with self.engine.connect() as conn:
            return self.positions(conn)

    def counter_rows(self) -> list[tuple[str, str, int, int]]:
        """Every (offer, kind, quarter, count) row; quarter 0 holds compacted totals."""
        table = OFFER_COUNTERS
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(table.c.offer_id, table.c.kind, table.c.quarter, table.c.count)).all()]

    def compact(self, contacts_before: float, counters_before: float) -> None:
        """Drops contact events older than any policy looks back, and folds the counters of
        quarter hours that began before ``counters_before`` (epoch seconds) into each offer's
        total (quarter 0)."""
        contacts, counters = CONTACT_EVENTS, OFFER_COUNTERS
        with self.write() as conn:
            # The newest row stays whatever its age: SQLite would give its id to the next
            # event, and processes that follow the log by id would skip that one.
            newest = select(func.max(contacts.c.id)).scalar_subquery()
            conn.execute(contacts.delete().where(contacts.c.at < contacts_before, contacts.c.id < newest))
            quarters_before = int(counters_before // BUCKET_SECONDS)
            old = (counters.c.quarter > 0) & (counters.c.quarter < quarters_before)
            totals = conn.execute(
                select(counters.c.offer_id, counters.c.kind, func.sum(counters.c.count))
                .where(old)
                .group_by(counters.c.offer_id, counters.c.kind)
            ).all()
            conn.execute(counters.delete().where(old))
            self._add_counts(conn, [{"offer_id": o, "kind": k, "quarter": 0, "count": int(n)} for o, k, n in totals])

    # Decisions ----------------------------------------------------------------------

    def insert_decisions(self, conn: Any, records: list[DecisionRecord]) -> None:
        """One executemany through the driver. SQLAlchemy's per-row parameter processing cost
        more than the write itself here (a third of the writer's time in a profile), so rows are
        made ready for the driver as the ORM would make them: JSON text, and for SQLite the
        datetime in SQLAlchemy's storage format, so that everything reads back the same."""
        dialect = self.engine.dialect
        sqlite = dialect.name == "sqlite"
        columns = ("decision_id", "request_id", "customer_id", "channel", "created_at", "policy_version",
                   "model_version", "features", "candidates", "offers", "closed")
        marks = ", ".join("?" if dialect.paramstyle == "qmark" else "%s" for _ in columns)
        # ON CONFLICT: decisions queued again after a failed commit may have been written by a
        # commit whose answer was lost; each is stored once.
        sql = f"INSERT INTO decisions ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT (decision_id) DO NOTHING"
        dumps = json.dumps
        rows = [
            (r.decision_id, r.request_id, r.customer_id, r.channel,
             _sqlite_time(r.created_at) if sqlite else r.created_at, r.policy_version, r.model_version,
             dumps(r.features), dumps(r.candidates), dumps(r.offers), 0 if sqlite else False)
            for r in records
        ]
        conn.exec_driver_sql(sql, rows)

    def find_decision(self, decision_id: str) -> DecisionRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(self._decisions).where(self._decisions.c.decision_id == decision_id)).first()
        return _record(row) if row else None

    def find_by_request(self, request_id: str, newer_than: datetime) -> DecisionRecord | None:
        table = self._decisions
        with self.engine.connect() as conn:
            row = conn.execute(
                select(table)
                .where(table.c.request_id == request_id, table.c.created_at >= newer_than)
                .order_by(table.c.created_at.desc())
                .limit(1)
            ).first()
        return _record(row) if row else None

    def count_decisions(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self._decisions)).scalar_one())

    # Feedback -----------------------------------------------------------------------

    def store_feedback(self, conn: Any, event: FeedbackEvent) -> FeedbackResult:
        """Deduplicates by event_id, resolves the pair's reward, inserts; within ``conn``'s
        transaction. ``AlreadyExists`` if the event id was used for another event."""
        result = self.store_feedback_batch(conn, [event])[0]
        if isinstance(result, AlreadyExists):
            raise result
        return result

    def store_feedback_batch(self, conn: Any, events: list[FeedbackEvent]) -> list[FeedbackResult | AlreadyExists]:
        """Stores events as if one at a time, in order (deduplicated by event id, each pair's
        reward resolved from the events before it, this batch's included), within ``conn``'s
        transaction; returns each event's result, or the ``AlreadyExists`` its reused event
        id earns (such an event writes nothing).

        Four statements for the batch, not three an event: the event ids already stored, the
        pairs' applied feedback, one executemany insert, the new rows' ids. The writer holds
        the write lock throughout, so this is what a group commit costs the other writers."""
        table = self._feedback
        seen: dict[str, tuple[str, str, str]] = {}
        for chunk in _chunks(list({e.event_id for e in events})):
            for r in conn.execute(select(table.c.event_id, table.c.decision_id, table.c.offer_id, table.c.outcome)
                                  .where(table.c.event_id.in_(chunk))):
                seen[r.event_id] = (r.decision_id, r.offer_id, r.outcome)
        pairs = {(e.decision_id, e.offer_id) for e in events}
        states: dict[tuple[str, str], PairState] = {}
        for chunk in _chunks(list({e.decision_id for e in events})):
            for r in conn.execute(
                select(table.c.decision_id, table.c.offer_id, table.c.stage, table.c.pair_reward)
                .where(table.c.decision_id.in_(chunk), table.c.applied)
                .order_by(table.c.id)
            ):
                if (r.decision_id, r.offer_id) in pairs:
                    states[(r.decision_id, r.offer_id)] = PairState(r.stage, r.pair_reward)  # the newest wins
        results: list[FeedbackResult | AlreadyExists] = []
        rows: list[dict[str, Any]] = []
        for fb in events:
            pair = (fb.decision_id, fb.offer_id)
            before = seen.get(fb.event_id)
            if before is not None:
                if before != (fb.decision_id, fb.offer_id, fb.outcome):
                    results.append(AlreadyExists(
                        f"event_id: '{fb.event_id}' was already used for decision '{before[0]}', "
                        f"offer '{before[1]}', outcome '{before[2]}'; use a new event_id"
                    ))
                else:
                    state = states.get(pair)
                    results.append(FeedbackResult(duplicate=True, applied=False, reward=state.reward if state else 0.0))
                continue
            previous = states.get(pair)
            late = self._late(conn, fb)
            if late:
                applied, state, previous_reward = False, previous or PairState(0, 0.0), None
            else:
                applied, state, previous_reward = resolve(previous, fb)
            stage = OUTCOMES[fb.outcome]
            if applied:  # what reading this row back as the pair's newest applied one would give
                states[pair] = PairState(stage, state.reward)
            seen[fb.event_id] = (fb.decision_id, fb.offer_id, fb.outcome)
            rows.append({
                "event_id": fb.event_id, "decision_id": fb.decision_id, "offer_id": fb.offer_id,
                "outcome": fb.outcome, "reward": fb.reward, "stage": stage, "applied": applied,
                "pair_reward": state.reward, "previous_reward": previous_reward, "late": late,
                "occurred_at": fb.occurred_at, "received_at": fb.received_at,
            })
            results.append(FeedbackResult(False, applied, state.reward, None, previous_reward, late))  # id below
        if rows:
            self._insert_feedback(conn, rows)
            ids: dict[str, int] = {}
            for chunk in _chunks([r["event_id"] for r in rows]):
                ids.update((r.event_id, int(r.id)) for r in conn.execute(
                    select(table.c.id, table.c.event_id).where(table.c.event_id.in_(chunk))))
            for n, (fb, result) in enumerate(zip(events, results, strict=True)):
                if isinstance(result, FeedbackResult) and not result.duplicate and result.feedback_id is None:
                    results[n] = replace(result, feedback_id=ids[fb.event_id])
        return results

    def _late(self, conn: Any, event: FeedbackEvent) -> bool:
        """Late is judged by when the event arrived, not when it is written: an event received
        in time but queued behind the closing of its decision's windows still counts (it
        revises the default reward)."""
        if self.windows is None or event.decided_at is None:
            return False
        return self.windows.late(event.outcome, event.decided_at, event.received_at)

    def close_windows(self, conn: Any, now: datetime, limit: int = 1000) -> tuple[list[LearningEvent], int]:
        """Closes the reward windows of decisions older than the longest window: each offer
        with no feedback gets the default reward as a ``no_response`` event, exactly once (its
        event id is unique). Returns what the learner must apply and how many decisions were
        closed; within ``conn``'s transaction.

        Six statements for up to ``limit`` decisions of up to five offers (a few more with
        more offers): the due decisions, their applied feedback, the no_response event ids
        already taken (another process closed them first), one executemany insert, the new
        rows' ids, one update.
        The caller holds the write lock throughout: this is what it costs every other
        writer."""
        if self.windows is None:
            return [], 0
        d, f = self._decisions, self._feedback
        deadline = now - timedelta(seconds=self.windows.longest)
        rows = conn.execute(
            select(d.c.decision_id, d.c.created_at, d.c.offers, d.c.features)
            .where(d.c.closed.is_(False), d.c.created_at < deadline)
            .order_by(d.c.created_at)
            .limit(limit)
        ).all()
        if not rows:
            return [], 0
        ids = [r.decision_id for r in rows]
        answered = {
            (r.decision_id, r.offer_id)
            for r in conn.execute(select(f.c.decision_id, f.c.offer_id).where(f.c.decision_id.in_(ids), f.c.applied))
        }
        reward = self.windows.default_reward
        due: dict[str, dict[str, Any]] = {}
        features: dict[str, tuple[str, dict[str, Any]]] = {}
        for row in rows:
            closed_at = _utc(row.created_at) + timedelta(seconds=self.windows.longest)
            for offer in row.offers:
                if (row.decision_id, offer["offer_id"]) in answered:
                    continue
                event_id = f"{NO_RESPONSE}:{row.decision_id}:{offer['offer_id']}"
                features[event_id] = (offer["offer_id"], row.features)
                due[event_id] = {
                    "event_id": event_id, "decision_id": row.decision_id, "offer_id": offer["offer_id"],
                    "outcome": NO_RESPONSE, "reward": reward, "stage": 0, "applied": True, "pair_reward": reward,
                    "previous_reward": None, "late": False, "occurred_at": closed_at, "received_at": now,
                }
        for chunk in _chunks(list(due)):
            for taken in conn.execute(select(f.c.event_id).where(f.c.event_id.in_(chunk))).scalars():
                del due[taken]  # another replica closed it first
        learn: list[LearningEvent] = []
        if due:
            self._insert_feedback(conn, list(due.values()))
            # The ids the rows got, by event id (the learner applies events in id order).
            for chunk in _chunks(list(due)):
                for r in conn.execute(select(f.c.id, f.c.event_id).where(f.c.event_id.in_(chunk))):
                    offer_id, row_features = features[r.event_id]
                    learn.append(LearningEvent(int(r.id), row_features, offer_id, reward, None))
            learn.sort(key=lambda e: e.feedback_id)
        conn.execute(d.update().where(d.c.decision_id.in_(ids)).values(closed=True))
        metrics.WINDOWS_CLOSED.inc(len(rows))
        metrics.NO_RESPONSE.inc(len(learn))
        return learn, len(rows)

    def _insert_feedback(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Inserts feedback rows (``FeedbackRow``'s columns but the id) with one executemany
        through the driver. One multi-row INSERT ... RETURNING of a thousand rows spent most of
        its time in psycopg parsing its 12,000 placeholders; the driver pipelines a short
        statement instead. Values are made ready as the ORM would (SQLite: its DateTime text
        format, booleans as 0/1), so they read back the same."""
        columns = ("event_id", "decision_id", "offer_id", "outcome", "reward", "stage", "applied", "pair_reward",
                   "previous_reward", "late", "occurred_at", "received_at")
        dialect = self.engine.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            conn.execute(self._feedback.insert(), rows)
            return
        sqlite = dialect.name == "sqlite"
        mark = "?" if dialect.paramstyle == "qmark" else "%s"

        def ready(value: Any) -> Any:
            if sqlite and isinstance(value, datetime):
                return _sqlite_time(value)
            if sqlite and isinstance(value, bool):
                return int(value)
            return value

        conn.exec_driver_sql(
            f"INSERT INTO feedback ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})",
            [tuple(ready(row[c]) for c in columns) for row in rows],
        )

    def count_open_decisions(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self._decisions).where(self._decisions.c.closed.is_(False))).scalar_one())

    def learning_events(self, after_id: int, chunk: int = 1000, up_to: int | None = None) -> Iterator[LearningEvent]:
        """The applied feedback after ``after_id`` (up to ``up_to``), in the order it was
        applied, with the decision's features."""
        f, d = self._feedback, self._decisions
        last = after_id
        while True:
            query = (
                select(f.c.id, f.c.offer_id, f.c.pair_reward, f.c.previous_reward, d.c.features)
                .join(d, d.c.decision_id == f.c.decision_id)
                .where(f.c.id > last, f.c.applied)
                .order_by(f.c.id)
                .limit(chunk)
            )
            if up_to is not None:
                query = query.where(f.c.id <= up_to)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            for row in rows:
                yield LearningEvent(row.id, row.features, row.offer_id, row.pair_reward, row.previous_reward)
            if len(rows) < chunk:
                return
            last = rows[-1].id

    # Model snapshots ----------------------------------------------------------------

    def purge(self, before: datetime, batch: int = 5000, budget_seconds: float = 0.5) -> tuple[int, int]:
        """Retention: deletes decisions made before ``before`` whose reward windows have closed,
        with their feedback, ``batch`` decisions a transaction for at most ``budget_seconds``
        (the writer is held no longer; the rest go next time). Returns the decisions and
        feedback events deleted. A decision stays while any of its feedback is newer than
        every kept model snapshot: a restart replays those events and needs their features."""
        d, f, snapshots = self._decisions, self._feedback, SNAPSHOTS
        started = time.monotonic()
        decisions = events = 0
        while time.monotonic() - started < budget_seconds:
            with self.write() as conn:
                absorbed = conn.execute(select(func.min(snapshots.c.last_feedback_id))).scalar() or 0
                # the newest event stays too: SQLite would give its id to the next one
                newest = conn.execute(select(func.max(f.c.id))).scalar() or 0
                absorbed = min(absorbed, newest - 1)
                ids = conn.execute(
                    select(d.c.decision_id).where(d.c.closed.is_(True), d.c.created_at < before).limit(batch)
                ).scalars().all()
                replayable = set(conn.execute(
                    select(f.c.decision_id).where(f.c.decision_id.in_(ids), f.c.id > absorbed)
                ).scalars()) if ids else set()
                gone = [i for i in ids if i not in replayable]
                if gone:
                    events += conn.execute(f.delete().where(f.c.decision_id.in_(gone))).rowcount
                    decisions += conn.execute(d.delete().where(d.c.decision_id.in_(gone))).rowcount
            if len(ids) < batch or not gone:
                break
        if decisions:
            metrics.DECISIONS_PURGED.inc(decisions)
        return decisions, events

    def save_snapshot(self, signature: str, model_version: str, last_feedback_id: int, state: bytes) -> None:
        table = SNAPSHOTS
        with self.write() as conn:
            conn.execute(
                table.insert().values(
                    created_at=datetime.now(UTC),
                    signature=signature,
                    model_version=model_version,
                    last_feedback_id=last_feedback_id,
                    state=state,
                )
            )
            # Keep the three newest: enough to survive one corrupt write.
            keep = select(table.c.id).order_by(table.c.id.desc()).limit(3).scalar_subquery()
            conn.execute(table.delete().where(table.c.id.not_in(keep)))

    def latest_snapshot(self) -> tuple[str, int, bytes] | None:
        table = SNAPSHOTS
        with self.engine.connect() as conn:
            row = conn.execute(
                select(table.c.signature, table.c.last_feedback_id, table.c.state).order_by(table.c.id.desc()).limit(1)
            ).first()
        return (row.signature, row.last_feedback_id, row.state) if row else None

    # Export -------------------------------------------------------------------------

    def export(
        self, since: datetime | None = None, until: datetime | None = None, chunk: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Every decision (oldest first) with its feedback joined: the JSON Lines format."""
        d, f = self._decisions, self._feedback
        after: tuple[datetime, str] | None = None
        while True:
            query = select(d).order_by(d.c.created_at, d.c.decision_id).limit(chunk)
            if since is not None:
                query = query.where(d.c.created_at >= since)
            if until is not None:
                query = query.where(d.c.created_at < until)
            if after is not None:
                query = query.where(
                    (d.c.created_at > after[0]) | ((d.c.created_at == after[0]) & (d.c.decision_id > after[1]))
                )
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                ids = [r.decision_id for r in rows]
                events: dict[str, list[Any]] = {i: [] for i in ids}
                if ids:
                    for fb in conn.execute(select(f).where(f.c.decision_id.in_(ids)).order_by(f.c.id)).all():
                        events[fb.decision_id].append(fb)
            for row in rows:
                line = _export_line(_record(row), events[row.decision_id])
                line["closed"] = bool(row.closed)
                yield line
            if len(rows) < chunk:
                return
            after = (rows[-1].created_at, rows[-1].decision_id)


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    """``values`` in lists of at most ``IN_CHUNK``, for ``IN (...)`` look-ups."""
    for start in range(0, len(values), IN_CHUNK):
        yield values[start:start + IN_CHUNK]


def _sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DateTime storage format (UTC, no offset), for driver-level writes."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _record(row: Any) -> DecisionRecord:
    return DecisionRecord(
        decision_id=row.decision_id,
        request_id=row.request_id,
        customer_id=row.customer_id,
        channel=row.channel,
        created_at=_utc(row.created_at),
        policy_version=row.policy_version,
        model_version=row.model_version,
        features=row.features,
        candidates=row.candidates,
        offers=row.offers,
    )


def _iso(value: datetime) -> str:
    return _utc(value).isoformat().replace("+00:00", "Z")


def _export_line(record: DecisionRecord, feedback: list[Any]) -> dict[str, Any]:
    rewards: dict[str, float] = {}
    for fb in feedback:
        if fb.applied:
            rewards[fb.offer_id] = fb.pair_reward
    return {
        "decision_id": record.decision_id,
        "request_id": record.request_id,
        "customer_id": record.customer_id,
        "channel": record.channel,
        "decided_at": _iso(record.created_at),
        "policy_version": record.policy_version,
        "model_version": record.model_version,
        "features": record.features,
        "candidates": record.candidate_list(),
        "offers": [
            {k: o[k] for k in ("offer_id", "slot", "propensity", "score", "fallback", "treatment")}
            for o in record.offers
        ],
        "feedback": [
            {
                "event_id": fb.event_id,
                "offer_id": fb.offer_id,
                "outcome": fb.outcome,
                "reward": fb.reward,
                "applied": fb.applied,
                "occurred_at": _iso(fb.occurred_at),
                "received_at": _iso(fb.received_at),
            }
            for fb in feedback
        ],
        "rewards": rewards,
    }


class DecisionLog:
    """Write-behind decision log with durable, group-committed feedback.

    ``on_learn`` receives the applied feedback of each transaction after it commits and before
    any of its callers is answered; ``after_write`` runs on the writer thread after each
    transaction (snapshots hook in there, so they see a consistent position in the log).

    With ``shared`` (workers or replicas on one database), every process learns from every
    feedback event in the order the events were committed. Write transactions are serialised
    (``Store.write``), so ids follow commit order, and each transaction notes the newest ids
    before and after it (a ``Span``): after its own commit a writer first applies the other
    processes' events committed before it, then its own. Every ``tail_seconds`` it reads what
    the others committed since; with a ``bus`` (Redis Streams), their entries arrive as they
    commit (``deliver``) and the database is read only to fill gaps, or every second as a
    safety net. Contact events of the others reach ``on_remote_contacts`` the same way. So
    every process applies every event exactly once, in the same order, and all rank alike.

    When the database cannot be reached (``is_outage``), the log degrades rather than fails:
    decisions stay queued in memory (up to ``queue_limit``) and are written when it returns;
    feedback is refused with ``Unavailable`` at once, since it cannot be made durable; the
    writer tries again every ``RETRY_SECONDS``, and ``on_state`` hears of each change.
    """

    def __init__(
        self,
        store: Store,
        on_learn: Callable[[list[LearningEvent]], None],
        after_write: Callable[[], None] | None = None,
        on_contacts: Callable[[list[ContactEvent]], None] | None = None,
        flush_seconds: float = 0.05,
        batch_size: int = 500,
        queue_limit: int = 100_000,
        cache_size: int = 20_000,
        shared: bool = False,
        applied_id: int = 0,
        contact_id: int = 0,
        on_remote_contacts: Callable[[list[ContactEvent]], None] | None = None,
        tail_seconds: float = 0.02,
        bus: RedisBus | None = None,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self._up = True
        self._retry_at = 0.0
        self._on_state = on_state or (lambda up: None)
        metrics.STORE_UP.set(1)
        self._on_learn = on_learn
        self._shared = shared or bus is not None
        self._bus = bus
        self._remote: deque[BusEntry] = deque()
        self._applied = applied_id
        self._contact_seen = contact_id
        self._on_remote_contacts = on_remote_contacts or (lambda events: None)
        self._tail_seconds = tail_seconds
        self._last_tail = 0.0
        self._after_write = after_write or (lambda: None)
        self._on_contacts = on_contacts or (lambda events: None)
        self._flush_seconds = flush_seconds
        self._batch_size = batch_size
        self._queue_limit = queue_limit
        self._cache_size = cache_size
        self._queue: deque[tuple[DecisionRecord | None, FeedbackEvent | None, Future[Any] | None]] = deque()
        self._queued_decisions = 0
        self._cond = threading.Condition()
        self._pending: dict[str, DecisionRecord] = {}
        #: durable decisions' commits, by decision id, until settled
        self._durable: dict[str, Future[Any]] = {}
        self._recent: OrderedDict[str, DecisionRecord] = OrderedDict()
        self._by_request: dict[str, str] = {}
        self._cache_lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="nba-decision-log", daemon=True)
        self._thread.start()

    @property
    def available(self) -> bool:
        """False while the database cannot be reached (Decide goes on; Feedback is refused)."""
        return self._up

    def _mark(self, up: bool, exc: BaseException | None = None) -> None:
        if not up:
            self._retry_at = time.monotonic() + RETRY_SECONDS
        if up == self._up:
            return
        self._up = up
        metrics.STORE_UP.set(1 if up else 0)
        if not up:
            self._refuse_waiting()
        if up:
            log.warning("the database is back: writing the decisions queued meanwhile",
                        extra={"queued": self._queued_decisions})
        else:
            log.error("the database is unavailable: Decide answers from memory, Feedback is refused until it returns",
                      extra={"error": repr(exc)})
        try:
            self._on_state(up)
        except Exception:
            log.exception("on_state hook failed")

    def _refuse_waiting(self) -> None:
        """The database just went down: everyone waiting for a commit is told now (feedback,
        durable decisions, flushes), rather than when it returns; write-behind decisions stay
        queued, to be written then."""
        with self._cond:
            kept: deque[tuple[DecisionRecord | None, FeedbackEvent | None, Future[Any] | None]] = deque()
            refused: list[DecisionRecord] = []
            for decision, event, future in self._queue:
                if future is None:
                    kept.append((decision, event, future))
                    continue
                if decision is not None:
                    refused.append(decision)
                if not future.done():
                    future.set_exception(Unavailable("the database is unavailable; retry"))
            self._queue = kept
            self._queued_decisions -= len(refused)
            metrics.LOG_QUEUE.set(self._queued_decisions)
        self._forget(refused)

    def written(self, decision_id: str) -> Future[Any] | None:
        """A durable decision's commit, while it is still pending; None once written; a failed
        future for one that will never be (refused, forgotten)."""
        with self._cache_lock:
            pending = self._durable.get(decision_id)
            known = pending is not None or decision_id in self._pending or decision_id in self._recent
        if pending is not None or known or self.store.find_decision(decision_id) is not None:
            return pending
        failed: Future[Any] = Future()
        failed.set_exception(Unavailable("the decision could not be written: it was not made; retry"))
        return failed

    @property
    def contact_position(self) -> int | None:
        """The newest contact event id this process has applied, when it follows others."""
        return self._contact_seen if self._shared else None

    def _outage(self, exc: BaseException) -> Unavailable:
        self._mark(False, exc)
        return Unavailable(f"the database is unavailable ({type(exc).__name__}); feedback cannot be kept now, retry")

    # Request path ---------------------------------------------------------------------

    def record(self, decision: DecisionRecord, durable: bool = False) -> Future[Any] | None:
        """Queues a decision for writing; never blocks. Counts a drop if the queue is full.
        ``durable``: returns a future that resolves once the decision is committed (the writer
        is woken at once and commits whatever is queued with it), or fails with
        ``Unavailable``; such a decision is never written later than its caller was told."""
        future: Future[Any] | None = Future() if durable else None
        with self._cond:
            if self._stopping or self._queued_decisions >= self._queue_limit or (durable and not self._up):
                metrics.LOG_DROPPED.inc()
                if future is not None:
                    why = "the database is unavailable" if not self._up else "the decision log is full or stopping"
                    future.set_exception(Unavailable(f"{why}: the decision cannot be made durable now; retry"))
                return future
            with self._cache_lock:
                self._pending[decision.decision_id] = decision
                if future is not None:
                    self._durable[decision.decision_id] = future
                if decision.request_id:
                    self._by_request[decision.request_id] = decision.decision_id
            self._queue.append((decision, None, future))
            self._queued_decisions += 1
            metrics.LOG_QUEUE.set(self._queued_decisions)
            if durable or self._queued_decisions >= self._batch_size:
                self._cond.notify()
        return future

    def get(self, decision_id: str) -> DecisionRecord | None:
        """The decision, from memory or the database; ``Unavailable`` when only the database
        could tell and it cannot be reached."""
        with self._cache_lock:
            found = self._pending.get(decision_id) or self._recent.get(decision_id)
        if found is not None:
            return found
        if not self._up:
            raise Unavailable("the database is unavailable; feedback cannot be kept now, retry")
        try:
            return self.store.find_decision(decision_id)
        except Exception as exc:
            if is_outage(exc):
                raise self._outage(exc) from exc
            raise

    def by_request(self, request_id: str, newer_than: datetime, memory_only: bool = False) -> DecisionRecord | None:
        """The newest decision for ``request_id`` made after ``newer_than``. ``memory_only``
        skips the database: enough to settle a race between two calls in this process."""
        with self._cache_lock:
            decision_id = self._by_request.get(request_id)
            found = None
            if decision_id is not None:
                found = self._pending.get(decision_id) or self._recent.get(decision_id)
        if found is not None:
            return found if found.created_at >= newer_than else None
        if memory_only or not self._up:  # degraded: only this process's memory can tell
            return None
        try:
            return self.store.find_by_request(request_id, newer_than)
        except Exception as exc:
            if is_outage(exc):
                self._mark(False, exc)
                return None
            raise

    def submit_feedback(self, event: FeedbackEvent) -> Future[FeedbackResult]:
        """Queues a feedback event; the future resolves once it is durable and learned."""
        future: Future[FeedbackResult] = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(Unavailable("the service is shutting down; retry on another replica"))
                return future
            if not self._up:
                future.set_exception(Unavailable("the database is unavailable; feedback cannot be kept now, retry"))
                return future
            self._queue.append((None, event, future))
            self._cond.notify()
        return future

    def deliver(self, entry: BusEntry) -> None:
        """Another replica's committed events, from the bus: applied on the writer thread."""
        with self._cond:
            self._remote.append(entry)
            self._cond.notify()

    def close_windows(self, now: datetime, budget_seconds: float = 1.0) -> int:
        """Closes due reward windows and teaches the learner the default rewards, a thousand
        decisions a transaction, for at most ``budget_seconds`` (the rest wait for the next
        call, so feedback is never held up long). Call it on the writer thread
        (``after_write``): it must not interleave with feedback writes."""
        started = time.monotonic()
        total = 0
        while True:
            with self.store.write() as conn:
                before = self.store.positions(conn) if self._shared else None
                learn, closed = self.store.close_windows(conn, now, CLOSE_BATCH)
                span = self._span(conn, before)
            self._learn(learn, span)
            self._publish(span, learn, [])
            total += len(learn)
            if closed < CLOSE_BATCH or time.monotonic() - started > budget_seconds:
                return total

    def flush(self, timeout: float | None = None) -> None:
        """Waits until everything queued before this call is written."""
        marker: Future[FeedbackResult] = Future()
        with self._cond:
            if self._stopping and not self._thread.is_alive():
                return
            self._queue.append((None, None, marker))
            self._cond.notify()
        marker.result(timeout)

    # Writer thread ----------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Writes everything queued, then stops the writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _tail_interval(self) -> float:
        return BUS_TAIL_SECONDS if self._bus is not None and self._bus.up else self._tail_seconds

    def _run(self) -> None:
        while True:
            wait = min(self._flush_seconds, self._tail_interval()) if self._shared else self._flush_seconds
            with self._cond:
                if not self._up and not self._stopping:  # wait out the outage, then try again
                    while not self._stopping and (delay := self._retry_at - time.monotonic()) > 0:
                        self._cond.wait(delay)
                elif not self._queue and not self._stopping and not self._remote:
                    self._cond.wait(wait)
                remote = [self._remote.popleft() for _ in range(len(self._remote))]
            for entry in remote:  # even while the database is down: those that leave no gap
                try:
                    self._apply_remote(entry)
                except Exception as exc:
                    self._failed("applying another replica's events", exc)
            if not self._up and not self._probe():
                if self._stopping:  # shutting down with the database gone: what is queued is lost
                    with self._cond:
                        self._abandon()
                    return
                continue
            with self._cond:
                if not self._queue:
                    if self._stopping:
                        return
                    batch = []
                else:
                    batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
                    self._queued_decisions -= sum(1 for d, _, _ in batch if d is not None)
                    metrics.LOG_QUEUE.set(self._queued_decisions)
            if batch:
                try:
                    self._write(batch)
                except Exception as exc:  # never leave a caller waiting on a dead writer
                    log.exception("decision log writer failed")
                    for _, _, future in batch:
                        if future is not None and not future.done():
                            future.set_exception(Unavailable(f"the decision log failed ({type(exc).__name__}); retry"))
            if not self._up:
                continue
            if self._shared and time.monotonic() - self._last_tail >= self._tail_interval():
                try:
                    self._tail()
                except Exception as exc:
                    self._failed("reading the other processes' events", exc)
            try:
                self._after_write()
            except Exception as exc:  # a failed snapshot must not stop the log
                self._failed("after-write hook (windows, snapshot, compaction)", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        if is_outage(exc):
            self._mark(False, exc)
        else:
            log.exception("%s failed", what)

    def _probe(self) -> bool:
        """While the database is down: whether it answers again (then the log resumes)."""
        try:
            with self.store.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
                # a standby (or a primary mid-failover) answers, but cannot take writes
                if conn.dialect.name == "postgresql" and conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
                    raise ConnectionError("the database is read-only (a standby?)")
        except Exception as exc:
            self._mark(False, exc)
            return False
        self._mark(True)
        return True

    def _abandon(self) -> None:
        """At shutdown with the database unreachable: counts and forgets the queued
        decisions, and refuses the queued feedback. Call with ``_cond`` held."""
        batch = list(self._queue)
        self._queue.clear()
        decisions = [d for d, _, _ in batch if d is not None]
        self._queued_decisions = 0
        metrics.LOG_QUEUE.set(0)
        metrics.LOG_DROPPED.inc(len(decisions))
        self._forget(decisions)
        log.error("shutting down with the database unavailable: queued decisions are lost",
                  extra={"decisions": len(decisions)})
        for _, _, future in batch:
            if future is not None and not future.done():
                future.set_exception(Unavailable("the database is unavailable; retry"))

    def _tail(self) -> None:
        """Learns what the other processes committed since this one last looked."""
        self._last_tail = time.monotonic()
        events = list(self.store.learning_events(self._applied))
        if events:
            self._on_learn(events)
            self._applied = events[-1].feedback_id
        contacts, seen = self.store.contact_events_after(self._contact_seen)
        if contacts:
            self._on_remote_contacts(contacts)
        self._contact_seen = seen  # after: a history loaded meanwhile stops before these

    def _span(self, conn: Any, before: tuple[int, int] | None) -> Span | None:
        if before is None:
            return None
        after = self.store.positions(conn)
        return Span(before[0], after[0], before[1], after[1])

    def _learn(self, own: list[LearningEvent], span: Span | None) -> None:
        """Applies this process's newly committed events, after any of the other processes'
        committed before them (read from the database), in commit order."""
        own.sort(key=lambda e: e.feedback_id)
        if span is None:  # alone on the database
            if own:
                self._on_learn(own)
                self._applied = max(self._applied, own[-1].feedback_id)
            return
        if self._applied < span.feedback_before:
            self._fill(span.feedback_before)
        if own:
            self._on_learn(own)
        self._applied = max(self._applied, span.feedback_after)
        if self._contact_seen < span.contacts_before:
            self._fill_contacts(span.contacts_before)
        self._contact_seen = max(self._contact_seen, span.contacts_after)

    def _fill(self, up_to: int) -> None:
        """The other processes' events up to ``up_to``, from the database (all committed)."""
        events = list(self.store.learning_events(self._applied, up_to=up_to))
        if events:
            self._on_learn(events)
            if self._bus is not None:
                metrics.BUS_GAP_FILLS.inc()
        self._applied = up_to

    def _fill_contacts(self, up_to: int) -> None:
        while self._contact_seen < up_to:
            contacts, seen = self.store.contact_events_after(self._contact_seen, up_to=up_to)
            if contacts:
                self._on_remote_contacts(contacts)
            if seen == self._contact_seen:
                break
            self._contact_seen = seen
        self._contact_seen = max(self._contact_seen, up_to)

    def _apply_remote(self, entry: BusEntry) -> None:
        """Another replica's transaction: applied once, after everything committed before it."""
        span = entry.span
        if span.feedback_after > self._applied:
            if span.feedback_before > self._applied:
                self._fill(span.feedback_before)
            events = [e for e in entry.events if e.feedback_id > self._applied]
            if events:
                self._on_learn(events)
            self._applied = span.feedback_after
        if span.contacts_after > self._contact_seen:
            if span.contacts_before > self._contact_seen:
                self._fill_contacts(span.contacts_before)
            if self._contact_seen > span.contacts_before:
                # part of this transaction was read from the database already (a tail read
                # stops at a row limit): the rest comes from there too, by id
                self._fill_contacts(span.contacts_after)
            else:
                if entry.contacts:
                    self._on_remote_contacts(entry.contacts)
                self._contact_seen = span.contacts_after

    def _publish(self, span: Span | None, events: list[LearningEvent], contacts: list[ContactEvent]) -> None:
        if self._bus is not None and span is not None and (events or contacts):
            self._bus.publish(BusEntry(self.store.origin, span, events, contacts))

    def _write(self, batch: list[tuple[DecisionRecord | None, FeedbackEvent | None, Future[Any] | None]]) -> None:
        decisions = [d for d, _, _ in batch if d is not None]
        durable = [(d, f) for d, _, f in batch if d is not None and f is not None]
        feedback = [(e, f) for _, e, f in batch if e is not None and f is not None]
        markers = [f for d, e, f in batch if d is None and e is None and f is not None]
        results: list[tuple[FeedbackEvent, Future[FeedbackResult], FeedbackResult | Exception]] = []
        started = time.perf_counter()
        span: Span | None = None
        try:
            with self.store.write() as conn:
                before = self.store.positions(conn) if self._shared else None
                contacts: list[ContactEvent] = []
                if decisions:
                    self.store.insert_decisions(conn, decisions)
                    contacts.extend(
                        ContactEvent(d.customer_id, d.created_at.timestamp(), "decided", o["offer_id"], o["group"], d.channel)
                        for d in decisions
                        for o in d.offers
                    )
                # A reused event id is found before anything is written: nothing to undo.
                stored = self.store.store_feedback_batch(conn, [event for event, _ in feedback]) if feedback else []
                results.extend((event, future, result) for (event, future), result in zip(feedback, stored, strict=True))
                outcomes = [
                    ContactEvent(e.customer_id, e.occurred_at.timestamp(), e.outcome, e.offer_id, e.group, e.channel)
                    for e, _, r in results
                    if isinstance(r, FeedbackResult) and not r.duplicate
                ]
                self.store.insert_contacts(conn, contacts + outcomes)
                span = self._span(conn, before)
        except Exception as exc:
            outage = is_outage(exc)
            if not outage and len(decisions) + len(feedback) > 1:
                # A fault in one item (a value the database refuses) must not cost the others:
                # each is written on its own, in order, and only the bad one fails.
                log.warning("a decision log write failed; writing its items one by one",
                            extra={"error": repr(exc), "decisions": len(decisions), "feedback": len(feedback)})
                items = [item for item in batch if item[0] is not None or item[1] is not None]
                for n, item in enumerate(items):
                    if not self._up:  # an outage meanwhile: the rest wait, or are told, as on any outage
                        rest = items[n:]
                        with self._cond:
                            kept = [d for d, _, f in rest if d is not None and f is None]
                            self._queue.extendleft((d, None, None) for d in reversed(kept))
                            self._queued_decisions += len(kept)
                            metrics.LOG_QUEUE.set(self._queued_decisions)
                        self._forget([d for d, _, f in rest if d is not None and f is not None])
                        for _, _, future in rest:
                            if future is not None and not future.done():
                                future.set_exception(Unavailable("the database is unavailable; retry"))
                        break
                    self._write([item])
                for marker in markers:  # a flush succeeds only if nothing it waited for was left
                    if self._up:
                        marker.set_result(FeedbackResult(False, False, 0.0))
                    else:
                        marker.set_exception(Unavailable("the database is unavailable; retry"))
                return
            if outage:
                self._mark(False, exc)
            if outage and not self._stopping:
                # Nothing was committed: the decisions go back to the front of the queue, in
                # order, to be written when the database returns (decisions are inserted
                # once by id, should a commit have succeeded with its answer lost).
                # Durable ones are refused instead: their callers are told now.
                kept = [d for d, _, f in batch if d is not None and f is None]
                self._forget([d for d, _ in durable])
                with self._cond:
                    self._queue.extendleft((d, None, None) for d in reversed(kept))
                    self._queued_decisions += len(kept)
                    metrics.LOG_QUEUE.set(self._queued_decisions)
            else:
                log.exception("decision log write failed", extra={"decisions": len(decisions), "feedback": len(feedback)})
                metrics.LOG_DROPPED.inc(len(decisions))
                self._forget(decisions)
            for _, future in durable:
                future.set_exception(Unavailable(
                    f"the decision could not be written ({type(exc).__name__}): it was not made; retry"))
            for _, future in feedback:
                future.set_exception(self._outage(exc) if outage else Unavailable(
                    f"the decision log could not be written ({type(exc).__name__}); retry"))
            for marker in markers:
                marker.set_exception(exc)
            return
        self._mark(True)
        metrics.LOG_FLUSH.observe(time.perf_counter() - started)
        metrics.LOG_WRITTEN.inc(len(decisions))
        self._settle(decisions)
        learn = [
            LearningEvent(r.feedback_id, e.features, e.offer_id, r.reward, r.previous_reward, e.received_at.timestamp())
            for e, _, r in results
            if isinstance(r, FeedbackResult) and r.applied and r.feedback_id is not None
        ]
        learned = True
        try:
            self._learn(learn, span)
        except Exception as exc:
            # Committed, not learned yet: the events are learned, in order, when the gap
            # before them can be read. Until then they are not acknowledged as applied.
            learned = False
            self._failed("learning from feedback", exc)
        if outcomes:
            try:
                self._on_contacts(outcomes)
            except Exception:
                log.exception("recording contact history failed", extra={"events": len(outcomes)})
        for _, future, result in results:
            if isinstance(result, Exception):
                future.set_exception(result)
            elif not learned and result.applied:
                future.set_exception(Unavailable(
                    "the event is stored but not yet learned (the database is unavailable); a retry is answered "
                    "duplicate"))
            else:
                future.set_result(result)
        for marker in markers:
            marker.set_result(FeedbackResult(False, False, 0.0))
        for _, future in durable:
            future.set_result(True)
        self._publish(span, learn, contacts + outcomes)

    def _forget(self, decisions: list[DecisionRecord]) -> None:
        """Decisions that could not be written are forgotten: feedback for them is NOT_FOUND
        rather than acknowledged for a decision the log does not have."""
        with self._cache_lock:
            for d in decisions:
                self._pending.pop(d.decision_id, None)
                self._durable.pop(d.decision_id, None)
                if d.request_id and self._by_request.get(d.request_id) == d.decision_id:
                    del self._by_request[d.request_id]

    def _settle(self, decisions: list[DecisionRecord]) -> None:
        """Moves written decisions from pending to the bounded cache of recent ones."""
        with self._cache_lock:
            for d in decisions:
                self._pending.pop(d.decision_id, None)
                self._durable.pop(d.decision_id, None)
                if self._cache_size:
                    self._recent[d.decision_id] = d
            while len(self._recent) > self._cache_size:
                _, old = self._recent.popitem(last=False)
                if old.request_id and self._by_request.get(old.request_id) == old.decision_id:
                    del self._by_request[old.request_id]
            if not self._cache_size:
                for d in decisions:
                    if d.request_id and self._by_request.get(d.request_id) == d.decision_id:
                        del self._by_request[d.request_id]


def dumps(line: dict[str, Any]) -> str:
    """One export line as JSON (RFC 8259). JSON has no NaN or infinity: a stored number that
    is not finite (written by a version that let one through) is exported as null."""
    try:
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_or_null(line), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value
