"""Rollups: the decision log's figures counted as they are written, by hour (and by day), channel,
offer and measure, so that the overview (AdminService.GetOverview, the console) reads a few thousand rows
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
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import Table, func, or_, select

from nba.records import DecisionRecord, FeedbackEvent, FeedbackResult, first_explored
from nba.storage.engine import Repository
from nba.storage.tables import DECISION_ROLLUPS, DECISION_ROLLUPS_DAILY

__all__ = ["HOUR", "Counts", "Rollups", "decision_measures", "feedback_measures", "write_rollups"]

HOUR = 3600
#: a rollup's key: (hour since the epoch, channel, offer id or "", measure)
Key = tuple[int, str, str, str]
#: rollup counts being gathered for one write
Counts = defaultdict[Key, float]


def decision_measures(records: Iterable[DecisionRecord], into: Counts | None = None) -> Counts:
    """The rollup counts of ``records`` (added to ``into`` when given)."""
    out: Counts = defaultdict(float) if into is None else into
    # Screened-out offers are most of a large set's candidates (97 of 100 in make bench's
    # catalogue), and decisions alike screen out alike: each (hour, channel, reason, offers)
    # is counted once a decision, and spread over its offers once a batch.
    filtered: Counter[tuple[int, str, str, tuple[str, ...]]] = Counter()
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
            filtered[(hour, channel, reason, tuple(members))] += 1
    for (hour, channel, reason, members), count in filtered.items():
        measure = f"filtered:{reason}"
        for offer_id in members:
            out[(hour, channel, offer_id, measure)] += count
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
    """Adds ``counts`` to the stored rollups, hourly and daily, within ``conn``'s transaction: an
    executemany of ``INSERT … ON CONFLICT DO UPDATE`` a grain (SQLite and PostgreSQL both speak it)."""
    # in key order: writers on one PostgreSQL (workers, replicas) then lock shared rows in the
    # same order, and cannot deadlock on them
    hourly = sorted(
        (hour, channel, offer, measure, float(value)) for (hour, channel, offer, measure), value in counts.items() if value
    )
    if not hourly:
        return
    days: dict[tuple[int, str, str, str], float] = defaultdict(float)
    for hour, channel, offer, measure, value in hourly:
        days[(hour // 24, channel, offer, measure)] += value
    daily = sorted((*key, value) for key, value in days.items())
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for table, column, rows in (("decision_rollups", "hour", hourly), ("decision_rollups_daily", "day", daily)):
        conn.exec_driver_sql(
            f"INSERT INTO {table} ({column}, channel, offer_id, measure, value) "
            f"VALUES ({', '.join([mark] * 5)}) "
            f"ON CONFLICT ({column}, channel, offer_id, measure) DO UPDATE SET value = {table}.value + excluded.value",
            rows,
        )


class Rollups(Repository):
    """The ``decision_rollups`` table."""

    def add_rollups(self, conn: Any, counts: Counts) -> None:
        """Adds ``counts`` to the stored rollups, within ``conn``'s transaction (one statement)."""
        write_rollups(conn, counts)

    def rollup_totals(self, first_hour: int, end_hour: int, channel: str = "") -> list[tuple[str, str, str, float]]:
        """Each (channel, offer_id, measure)'s sum over hours ``first_hour`` to ``end_hour``
        (excluded; hours since the epoch, UTC), of one channel or all. Whole days are read from
        the daily rollups, the hours at either end from the hourly ones: a 90-day period reads
        90 days' rows, not 2,160 hours'."""
        sums: dict[tuple[str, str, str], float] = defaultdict(float)
        with self.read() as conn:
            for table, column, low, high in _spans(first_hour, end_hour):
                query = select(table.c.channel, table.c.offer_id, table.c.measure, func.sum(table.c.value)).where(
                    column >= low, column < high
                )
                if channel:
                    query = query.where(table.c.channel == channel)
                for row in conn.execute(query.group_by(table.c.channel, table.c.offer_id, table.c.measure)):
                    sums[(row[0], row[1], row[2])] += float(row[3])
        return [(*key, value) for key, value in sums.items()]

    def rollup_series(
        self,
        first_hour: int,
        end_hour: int,
        origin_hour: int,
        step_hours: int,
        measures: Sequence[str],
        channel: str = "",
        offers: Collection[str] | None = None,
    ) -> list[tuple[int, str, float]]:
        """(bucket, measure, sum) over hours ``first_hour`` to ``end_hour`` (excluded), bucket
        ``n`` holding hours ``origin_hour + n * step_hours`` onwards (``step_hours`` 1, or 24
        with ``origin_hour`` a UTC midnight: then whole days are read from the daily rollups).
        ``offers``: only those offers' measures (and the decisions' own)."""
        sums: dict[tuple[int, str], float] = defaultdict(float)
        spans = (
            _spans(first_hour, end_hour)
            if step_hours == 24 and origin_hour % 24 == 0
            else [(DECISION_ROLLUPS, DECISION_ROLLUPS.c.hour, first_hour, end_hour)]
        )
        with self.read() as conn:
            for table, column, low, high in spans:
                hours = column * 24 if table is DECISION_ROLLUPS_DAILY else column
                bucket = (hours - origin_hour) // step_hours
                query = select(bucket, table.c.measure, func.sum(table.c.value)).where(
                    column >= low, column < high, table.c.measure.in_(list(measures))
                )
                if channel:
                    query = query.where(table.c.channel == channel)
                if offers is not None:
                    query = query.where(or_(table.c.offer_id == "", table.c.offer_id.in_(sorted(offers))))
                for row in conn.execute(query.group_by(bucket, table.c.measure)):
                    sums[(int(row[0]), row[1])] += float(row[2])
        return [(*key, value) for key, value in sums.items()]


def _spans(first_hour: int, end_hour: int) -> list[tuple[Table, Any, int, int]]:
    """The hourly and daily rollups' ranges that cover hours [first_hour, end_hour): the whole
    UTC days from the daily table, the hours before the first and after the last from the hourly."""
    first_day, end_day = -(-first_hour // 24), end_hour // 24
    if first_day >= end_day:
        return [(DECISION_ROLLUPS, DECISION_ROLLUPS.c.hour, first_hour, end_hour)]
    spans = [(DECISION_ROLLUPS_DAILY, DECISION_ROLLUPS_DAILY.c.day, first_day, end_day)]
    if first_hour < first_day * 24:
        spans.append((DECISION_ROLLUPS, DECISION_ROLLUPS.c.hour, first_hour, first_day * 24))
    if end_day * 24 < end_hour:
        spans.append((DECISION_ROLLUPS, DECISION_ROLLUPS.c.hour, end_day * 24, end_hour))
    return spans
