"""Decisions: written in batches by the decision log, found by id or request id, exported
with their feedback as JSON Lines (the format ``nba export`` writes and ``nba evaluate`` reads)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from nba.records import NO_RESPONSE, DecisionRecord, FeedbackEvent, FeedbackResult, offer_value
from nba.storage.engine import Repository, chunks, json_text, sqlite_time, utc
from nba.storage.rollups import Counts, decision_measures, feedback_measures, write_rollups
from nba.storage.tables import DECISION_ROLLUPS, DECISION_ROLLUPS_DAILY, DECISIONS, FEEDBACK

__all__ = ["Decisions", "dumps"]


class Decisions(Repository):
    """The ``decisions`` table, and the export that joins its feedback."""

    def insert_decisions(self, conn: Any, records: list[DecisionRecord]) -> None:
        """One executemany through the driver. SQLAlchemy's per-row parameter processing cost
        more than the write itself here (a third of the writer's time in a profile), so rows are
        made ready for the driver as the ORM would make them: JSON text (orjson, through
        ``json_text``: the standard library's encoder took a third of the writer's time, holding
        the GIL the request threads need), and for SQLite the datetime in SQLAlchemy's storage
        format, so that everything reads back the same."""
        dialect = self.engine.dialect
        sqlite = dialect.name == "sqlite"
        columns = (
            "decision_id",
            "request_id",
            "customer_id",
            "channel",
            "created_at",
            "policy_version",
            "model_version",
            "features",
            "candidates",
            "offers",
            "closed",
            "profile_version",
        )
        marks = ", ".join("?" if dialect.paramstyle == "qmark" else "%s" for _ in columns)
        # ON CONFLICT: decisions queued again after a failed commit may have been written by a
        # commit whose answer was lost; each is stored once.
        sql = f"INSERT INTO decisions ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT (decision_id) DO NOTHING"
        dumps = json_text
        rows = [
            (
                r.decision_id,
                r.request_id,
                r.customer_id,
                r.channel,
                sqlite_time(r.created_at) if sqlite else r.created_at,
                r.policy_version,
                r.model_version,
                dumps(r.features),
                dumps(r.candidates),
                dumps(r.offers),
                0 if sqlite else False,
                r.profile_version,
            )
            for r in records
        ]
        conn.exec_driver_sql(sql, rows)

    def logged_decisions(self, conn: Any, decision_ids: list[str]) -> set[str]:
        """Which of ``decision_ids`` are in the log already (within ``conn``'s transaction)."""
        found: set[str] = set()
        for chunk in chunks(decision_ids):
            found.update(conn.execute(select(DECISIONS.c.decision_id).where(DECISIONS.c.decision_id.in_(chunk))).scalars())
        return found

    def recent_customers(self, limit: int) -> list[tuple[str, datetime]]:
        """The customers of the most recent decisions, each once, newest first, with when."""
        d = DECISIONS
        seen: dict[str, datetime] = {}
        with self.read() as conn:
            for row in conn.execute(select(d.c.customer_id, d.c.created_at).order_by(d.c.created_at.desc()).limit(limit * 10)):
                if row.customer_id not in seen:
                    seen[row.customer_id] = utc(row.created_at)
                if len(seen) >= limit:
                    break
        return list(seen.items())

    def find_decision(self, decision_id: str) -> DecisionRecord | None:
        with self.read() as conn:
            row = conn.execute(select(DECISIONS).where(DECISIONS.c.decision_id == decision_id)).first()
        return _record(row) if row else None

    def find_by_request(self, request_id: str, newer_than: datetime) -> DecisionRecord | None:
        table = DECISIONS
        with self.read() as conn:
            row = conn.execute(
                select(table)
                .where(table.c.request_id == request_id, table.c.created_at >= newer_than)
                .order_by(table.c.created_at.desc())
                .limit(1)
            ).first()
        return _record(row) if row else None

    def for_customers(self, customer_ids: list[str], limit: int, conn: Any = None) -> list[tuple[DecisionRecord, list[Any]]]:
        """The newest ``limit`` decisions made for any of ``customer_ids``, newest first, each
        with its feedback rows (``event_id``, ``offer_id``, ``outcome``, ``reward``,
        ``occurred_at``, ...) in the order they were received; ``conn``: a ``snapshot`` to
        read in."""
        d, f = DECISIONS, FEEDBACK
        with self.reading(conn) as reader:
            rows = reader.execute(
                select(d)
                .where(d.c.customer_id.in_(customer_ids))
                .order_by(d.c.created_at.desc(), d.c.decision_id.desc())
                .limit(limit)
            ).all()
            ids = [r.decision_id for r in rows]
            events: dict[str, list[Any]] = {i: [] for i in ids}
            if ids:
                for fb in reader.execute(select(f).where(f.c.decision_id.in_(ids)).order_by(f.c.id)).all():
                    events[fb.decision_id].append(fb)
        return [(_record(r), events[r.decision_id]) for r in rows]

    def count_decisions(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(DECISIONS)).scalar_one())

    def count_open_decisions(self) -> int:
        with self.read() as conn:
            return int(
                conn.execute(select(func.count()).select_from(DECISIONS).where(DECISIONS.c.closed.is_(False))).scalar_one()
            )

    def recent_lines(self, limit: int) -> list[dict[str, Any]]:
        """The most recent ``limit`` decisions in the export format (feedback joined), oldest
        first."""
        table = DECISIONS
        with self.read() as conn:
            since = conn.execute(
                select(table.c.created_at).order_by(table.c.created_at.desc()).offset(max(limit - 1, 0)).limit(1)
            ).scalar()
        return list(self.export(since=utc(since) if since is not None else None))[-limit:]

    def export(self, since: datetime | None = None, until: datetime | None = None, chunk: int = 500) -> Iterator[dict[str, Any]]:
        """Every decision (oldest first) with its feedback joined: the JSON Lines format."""
        for row, events in self.with_feedback(since, until, chunk):
            line = _export_line(_record(row), events)
            line["closed"] = bool(row.closed)
            yield line

    def with_feedback(
        self, since: datetime | None = None, until: datetime | None = None, chunk: int = 500
    ) -> Iterator[tuple[Any, list[Any]]]:
        """Every decision's row (oldest first) and its feedback rows, in learning order."""
        d, f = DECISIONS, FEEDBACK
        after: tuple[datetime, str] | None = None
        while True:
            query = select(d).order_by(d.c.created_at, d.c.decision_id).limit(chunk)
            if since is not None:
                query = query.where(d.c.created_at >= since)
            if until is not None:
                query = query.where(d.c.created_at < until)
            if after is not None:
                query = query.where((d.c.created_at > after[0]) | ((d.c.created_at == after[0]) & (d.c.decision_id > after[1])))
            with self.read() as conn:
                rows = conn.execute(query).all()
                ids = [r.decision_id for r in rows]
                events: dict[str, list[Any]] = {i: [] for i in ids}
                if ids:
                    for fb in conn.execute(select(f).where(f.c.decision_id.in_(ids)).order_by(f.c.id)).all():
                        events[fb.decision_id].append(fb)
            for row in rows:
                yield row, events[row.decision_id]
            if len(rows) < chunk:
                return
            after = (rows[-1].created_at, rows[-1].decision_id)

    def recount_rollups(self, chunk: int = 2000, progress: Callable[[int], None] | None = None) -> int:
        """Counts the overview's rollups (``nba.storage.rollups``) again from the whole log, in
        place of those kept: for a log written before revision 0014, or to check them. Run it
        while no service writes (as ``nba db upgrade``); returns the decisions counted. The
        learning lag is not in the log: recounted events carry none."""
        counts: Counts = defaultdict(float)
        done = 0
        for row, events in self.with_feedback(chunk=chunk):
            record = _record(row)
            decision_measures([record], counts)
            block = record.candidates.get("eligible") or {}
            stored = []
            for fb in events:
                answered = record.offer(fb.offer_id)
                if fb.outcome == NO_RESPONSE or answered is None:
                    continue  # the writer counts clients' events only
                event = FeedbackEvent(
                    fb.event_id,
                    fb.decision_id,
                    fb.offer_id,
                    fb.outcome,
                    fb.reward,
                    utc(fb.occurred_at),
                    utc(fb.received_at),
                    {},
                    channel=record.channel,
                    slot=int(answered.get("slot") or 0),
                    propensity=float(answered.get("propensity") or 0.0),
                    eligible=len(block.get("ids") or []),
                    value=offer_value(block, fb.offer_id),
                )
                result = FeedbackResult(False, bool(fb.applied), fb.pair_reward, fb.id, fb.previous_reward, bool(fb.late))
                stored.append((event, result))
            feedback_measures(stored, into=counts, lag=False)
            done += 1
            if progress is not None and done % 10_000 == 0:
                progress(done)
        with self.write() as conn:
            conn.execute(DECISION_ROLLUPS.delete())
            conn.execute(DECISION_ROLLUPS_DAILY.delete())
            rows = list(counts.items())
            for n in range(0, len(rows), 10_000):
                write_rollups(conn, defaultdict(float, rows[n : n + 10_000]))
        return done


def _record(row: Any) -> DecisionRecord:
    return DecisionRecord(
        decision_id=row.decision_id,
        request_id=row.request_id,
        customer_id=row.customer_id,
        channel=row.channel,
        created_at=utc(row.created_at),
        policy_version=row.policy_version,
        model_version=row.model_version,
        features=row.features,
        candidates=row.candidates,
        offers=row.offers,
        profile_version=row.profile_version,
    )


def _iso(value: datetime) -> str:
    return utc(value).isoformat().replace("+00:00", "Z")


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
        "profile_version": record.profile_version,
        "features": record.features,
        "candidates": record.candidate_list(),
        "offers": [
            {k: o[k] for k in ("offer_id", "slot", "propensity", "score", "fallback", "treatment")} for o in record.offers
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
