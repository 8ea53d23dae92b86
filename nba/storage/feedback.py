"""Feedback: events deduplicated and resolved against their pair's reward (the outcome
ladder of ``nba.records``) in the writer's transaction, reward windows closed with the default
reward, the applied events replayed in order, and retention."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from nba import metrics
from nba.errors import AlreadyExists
from nba.records import NO_RESPONSE, OUTCOMES, FeedbackEvent, FeedbackResult, LearningEvent, PairState, RewardWindows, resolve
from nba.storage.engine import Repository, chunks, sqlite_time, utc
from nba.storage.tables import DECISIONS, FEEDBACK, SNAPSHOTS

__all__ = ["Feedback"]


class Feedback(Repository):
    """The ``feedback`` table (and the decisions' ``closed`` flag, which its windows set)."""

    #: the reward windows; None: windows never close (tools that only read)
    windows: RewardWindows | None

    def store_feedback(self, conn: Any, event: FeedbackEvent) -> FeedbackResult:
        """Deduplicates by event_id, resolves the pair's reward, inserts; within ``conn``'s
        transaction. ``AlreadyExists`` if the event id was used for another event."""
        result = self.store_feedback_batch(conn, [event])[0]
        if isinstance(result, AlreadyExists):
            raise result
        return result

    def store_feedback_batch(
        self,
        conn: Any,
        events: list[FeedbackEvent],
        key: Callable[[str], str] | None = None,
        forgotten: Collection[str] = (),
    ) -> list[FeedbackResult | AlreadyExists]:
        """Stores events as if one at a time, in order (deduplicated by event id, each pair's
        reward resolved from the events before it, this batch's included), within ``conn``'s
        transaction; returns each event's result, or the ``AlreadyExists`` its reused event
        id earns (such an event writes nothing).

        An event about a forgotten customer (its ``customer_id`` one of the pseudonyms in
        ``forgotten``) is stored under ``key(event_id)``, the keyed pseudonym their erasure gave
        their events' ids (a caller's key may name them): one sent again after the erasure is
        still a duplicate, and a new one names nobody.

        Four statements for the batch, not three an event: the event ids already stored, the
        pairs' applied feedback, one executemany insert, the new rows' ids. The writer holds
        the write lock throughout, so this is what a group commit costs the other writers."""
        table = FEEDBACK
        if key is not None and forgotten:
            events = [replace(e, event_id=key(e.event_id)) if e.customer_id in forgotten else e for e in events]
        seen: dict[str, tuple[str, str, str]] = {}
        for chunk in chunks(list({e.event_id for e in events})):
            for r in conn.execute(
                select(table.c.event_id, table.c.decision_id, table.c.offer_id, table.c.outcome).where(
                    table.c.event_id.in_(chunk)
                )
            ):
                seen[r.event_id] = (r.decision_id, r.offer_id, r.outcome)
        pairs = {(e.decision_id, e.offer_id) for e in events}
        states: dict[tuple[str, str], PairState] = {}
        for chunk in chunks(list({e.decision_id for e in events})):
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
                    results.append(
                        AlreadyExists(
                            f"event_id: '{fb.event_id}' was already used for decision '{before[0]}', "
                            f"offer '{before[1]}', outcome '{before[2]}'; use a new event_id"
                        )
                    )
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
            rows.append(
                {
                    "event_id": fb.event_id,
                    "decision_id": fb.decision_id,
                    "offer_id": fb.offer_id,
                    "outcome": fb.outcome,
                    "reward": fb.reward,
                    "stage": stage,
                    "applied": applied,
                    "pair_reward": state.reward,
                    "previous_reward": previous_reward,
                    "late": late,
                    "occurred_at": fb.occurred_at,
                    "received_at": fb.received_at,
                }
            )
            results.append(FeedbackResult(False, applied, state.reward, None, previous_reward, late))  # id below
        if rows:
            self._insert_feedback(conn, rows)
            ids: dict[str, int] = {}
            for chunk in chunks([r["event_id"] for r in rows]):
                ids.update(
                    (r.event_id, int(r.id))
                    for r in conn.execute(select(table.c.id, table.c.event_id).where(table.c.event_id.in_(chunk)))
                )
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
        d, f = DECISIONS, FEEDBACK
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
            closed_at = utc(row.created_at) + timedelta(seconds=self.windows.longest)
            for offer in row.offers:
                if (row.decision_id, offer["offer_id"]) in answered:
                    continue
                event_id = f"{NO_RESPONSE}:{row.decision_id}:{offer['offer_id']}"
                features[event_id] = (offer["offer_id"], row.features)
                due[event_id] = {
                    "event_id": event_id,
                    "decision_id": row.decision_id,
                    "offer_id": offer["offer_id"],
                    "outcome": NO_RESPONSE,
                    "reward": reward,
                    "stage": 0,
                    "applied": True,
                    "pair_reward": reward,
                    "previous_reward": None,
                    "late": False,
                    "occurred_at": closed_at,
                    "received_at": now,
                }
        for chunk in chunks(list(due)):
            for taken in conn.execute(select(f.c.event_id).where(f.c.event_id.in_(chunk))).scalars():
                del due[taken]  # another replica closed it first
        learn: list[LearningEvent] = []
        if due:
            self._insert_feedback(conn, list(due.values()))
            # The ids the rows got, by event id (the learner applies events in id order).
            for chunk in chunks(list(due)):
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
        columns = (
            "event_id",
            "decision_id",
            "offer_id",
            "outcome",
            "reward",
            "stage",
            "applied",
            "pair_reward",
            "previous_reward",
            "late",
            "occurred_at",
            "received_at",
        )
        dialect = self.engine.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            conn.execute(FEEDBACK.insert(), rows)
            return
        sqlite = dialect.name == "sqlite"
        mark = "?" if dialect.paramstyle == "qmark" else "%s"

        def ready(value: Any) -> Any:
            if sqlite and isinstance(value, datetime):
                return sqlite_time(value)
            if sqlite and isinstance(value, bool):
                return int(value)
            return value

        conn.exec_driver_sql(
            f"INSERT INTO feedback ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})",
            [tuple(ready(row[c]) for c in columns) for row in rows],
        )

    def learning_events(self, after_id: int, chunk: int = 1000, up_to: int | None = None) -> Iterator[LearningEvent]:
        """The applied feedback after ``after_id`` (up to ``up_to``), in the order it was
        applied, with the decision's features."""
        f, d = FEEDBACK, DECISIONS
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
            with self.read() as conn:
                rows = conn.execute(query).all()
            for row in rows:
                yield LearningEvent(row.id, row.features, row.offer_id, row.pair_reward, row.previous_reward)
            if len(rows) < chunk:
                return
            last = rows[-1].id

    def purge(self, before: datetime, batch: int = 5000, budget_seconds: float = 0.5) -> tuple[int, int]:
        """Retention: deletes decisions made before ``before`` whose reward windows have closed,
        with their feedback, ``batch`` decisions a transaction for at most ``budget_seconds``
        (the writer is held no longer; the rest go next time). Returns the decisions and
        feedback events deleted. A decision stays while any of its feedback is newer than
        every kept model snapshot: a restart replays those events and needs their features."""
        d, f, snapshots = DECISIONS, FEEDBACK, SNAPSHOTS
        started = time.monotonic()
        decisions = events = 0
        while time.monotonic() - started < budget_seconds:
            with self.write() as conn:
                absorbed = conn.execute(select(func.min(snapshots.c.last_feedback_id))).scalar() or 0
                # the newest event stays too: SQLite would give its id to the next one
                newest = conn.execute(select(func.max(f.c.id))).scalar() or 0
                absorbed = min(absorbed, newest - 1)
                ids = (
                    conn.execute(select(d.c.decision_id).where(d.c.closed.is_(True), d.c.created_at < before).limit(batch))
                    .scalars()
                    .all()
                )
                replayable = (
                    set(conn.execute(select(f.c.decision_id).where(f.c.decision_id.in_(ids), f.c.id > absorbed)).scalars())
                    if ids
                    else set()
                )
                gone = [i for i in ids if i not in replayable]
                if gone:
                    events += conn.execute(f.delete().where(f.c.decision_id.in_(gone))).rowcount
                    decisions += conn.execute(d.delete().where(d.c.decision_id.in_(gone))).rowcount
            if len(ids) < batch or not gone:
                break
        if decisions:
            metrics.DECISIONS_PURGED.inc(decisions)
        return decisions, events
