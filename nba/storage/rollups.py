"""Rollups: the decision log's figures counted as they are written, by hour, channel, offer and
measure, so that the overview (AdminService.GetOverview, the console) reads a few thousand rows
for a month instead of scanning millions of decisions.

The writer adds a batch's counts in the same transaction as its decisions and feedback
(``DecisionLog._write``): a rollup is never ahead of or behind the log it counts, replicas on one
database add to the same rows (``INSERT … ON CONFLICT DO UPDATE``), and a decision written again
after a commit whose answer was lost is counted once (only the batch's decisions not yet in the
log are counted, as only they are inserted). Rows are small and kept for good: the
log's retention does not delete them (they name no customer).

Measures (``offer_id`` is empty for a measure of the decision as a whole), counted in the UTC hour
the decision was made, or the feedback event occurred:

===================  ========  =====================================================================
measure              offer     what
===================  ========  =====================================================================
decisions            —         decisions made
empty                —         decisions that answered nothing
fallback             —         decisions whose first offer was the channel's fallback
explored             —         decisions whose first slot was drawn by exploration
offered              offer     the offer answered, in any slot
first                offer     the offer answered in the first slot
filtered:REASON      offer     the offer screened out for REASON (eligibility, contact_cap, budget…)
impressed, clicked,  offer     feedback events of that outcome (not duplicates; late ones too)
accepted, rejected
value                offer     the offer's value (as the decision weighed it), summed over acceptances
reward               offer     the learner's reward, as events revise it (the pair's change)
reward_first         offer     the same, for first-slot offers only
uniform_first        offer     the same, each weighed by 1 / (eligible × propensity): uniform
                               random choice's inverse-propensity estimate (Horvitz & Thompson 1952)
events               —         feedback events stored
delay_seconds        —         summed from each event's occurrence to its arrival
lag_seconds          —         summed from each event's arrival to its commit (then it is learned)
lag_events           —         the events lag_seconds sums over (``nba db rollups`` counts none)
===================  ========  =====================================================================
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from nba.records import DecisionRecord, FeedbackEvent, FeedbackResult, first_explored
from nba.storage.engine import Repository
from nba.storage.tables import DECISION_ROLLUPS

__all__ = ["HOUR", "Counts", "Rollups", "decision_measures", "feedback_measures", "write_rollups"]

HOUR = 3600
#: a rollup's key: (hour since the epoch, channel, offer id or "", measure)
Key = tuple[int, str, str, str]
#: rollup counts being gathered for one write
Counts = defaultdict[Key, float]


def decision_measures(records: Iterable[DecisionRecord], into: Counts | None = None) -> Counts:
    """The rollup counts of ``records`` (added to ``into`` when given)."""
    out: Counts = defaultdict(float) if into is None else into
    for record in records:
        hour = int(record.created_at.timestamp() // HOUR)
        channel = record.channel
        out[(hour, channel, "", "decisions")] += 1
        offers = record.offers
        if not offers:
            out[(hour, channel, "", "empty")] += 1
        else:
            first = offers[0]
            out[(hour, channel, first["offer_id"], "first")] += 1
            if first.get("fallback"):
                out[(hour, channel, "", "fallback")] += 1
            elif first_explored(record):
                out[(hour, channel, "", "explored")] += 1
            for offer in offers:
                out[(hour, channel, offer["offer_id"], "offered")] += 1
        for reason, _policy, _detail, members in record.candidates.get("filtered", ()):
            measure = f"filtered:{reason}"
            for offer_id in members:
                out[(hour, channel, offer_id, measure)] += 1
    return out


def feedback_measures(
    stored: Iterable[tuple[FeedbackEvent, FeedbackResult]], now: float | None = None, into: Counts | None = None, lag: bool = True
) -> Counts:
    """The rollup counts of feedback events as the log stored them (duplicates count nothing);
    ``now``: the commit's time, for the learning lag (``lag``: False when counting again later)."""
    out: Counts = defaultdict(float) if into is None else into
    now = time.time() if now is None else now
    for event, result in stored:
        if result.duplicate:
            continue
        occurred = event.occurred_at.timestamp()
        received = event.received_at.timestamp()
        hour = int(occurred // HOUR)
        channel, offer = event.channel, event.offer_id
        out[(hour, channel, offer, event.outcome)] += 1
        if event.outcome == "accepted":
            out[(hour, channel, offer, "value")] += event.value
        if result.applied:
            change = result.reward - (result.previous_reward or 0.0)
            out[(hour, channel, offer, "reward")] += change
            if event.slot == 1 and event.propensity > 0 and event.eligible > 0:
                out[(hour, channel, offer, "reward_first")] += change
                out[(hour, channel, offer, "uniform_first")] += change / (event.eligible * event.propensity)
        out[(hour, channel, "", "events")] += 1
        out[(hour, channel, "", "delay_seconds")] += max(0.0, received - occurred)
        if lag:
            out[(hour, channel, "", "lag_events")] += 1
            out[(hour, channel, "", "lag_seconds")] += max(0.0, now - received)
    return out


def write_rollups(conn: Any, counts: Counts) -> None:
    """Adds ``counts`` to the stored rollups, within ``conn``'s transaction: one executemany of
    ``INSERT … ON CONFLICT DO UPDATE`` (SQLite and PostgreSQL both speak it)."""
    rows = [(hour, channel, offer, measure, float(value)) for (hour, channel, offer, measure), value in counts.items() if value]
    if not rows:
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    conn.exec_driver_sql(
        "INSERT INTO decision_rollups (hour, channel, offer_id, measure, value) "
        f"VALUES ({', '.join([mark] * 5)}) "
        "ON CONFLICT (hour, channel, offer_id, measure) DO UPDATE SET value = decision_rollups.value + excluded.value",
        rows,
    )


class Rollups(Repository):
    """The ``decision_rollups`` table."""

    def add_rollups(self, conn: Any, counts: Counts) -> None:
        """Adds ``counts`` to the stored rollups, within ``conn``'s transaction (one statement)."""
        write_rollups(conn, counts)

    def rollups(self, first_hour: int, last_hour: int, channel: str = "") -> list[tuple[int, str, str, str, float]]:
        """The rollup rows of hours ``first_hour`` to ``last_hour`` (inclusive; hours since the
        epoch, UTC), of one channel or all: (hour, channel, offer_id, measure, value)."""
        table = DECISION_ROLLUPS
        query = select(table.c.hour, table.c.channel, table.c.offer_id, table.c.measure, table.c.value).where(
            table.c.hour >= first_hour, table.c.hour <= last_hour
        )
        if channel:
            query = query.where(table.c.channel == channel)
        with self.read() as conn:
            return [(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in conn.execute(query)]

    def rollup_hours(self) -> tuple[int, int] | None:
        """The first and last hour with a rollup, or None: nothing counted yet."""
        table = DECISION_ROLLUPS
        with self.read() as conn:
            first, last = conn.execute(select(func.min(table.c.hour), func.max(table.c.hour))).one()
        return None if first is None else (int(first), int(last))
