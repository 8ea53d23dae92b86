"""Maintenance the decision log's writer runs between writes, each on its own clock: closing
due reward windows, snapshotting the model, compacting contact history and counters, and
deleting decisions and touch-point events past their retention. It runs on the writer thread because none of it may
interleave with feedback writes (a snapshot must see one consistent position in the log)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from nba.clock import Clock
from nba.decision.contacts import ContactHistory, OfferCounters
from nba.learning.loop import LearningLoop
from nba.storage.decision_log import DecisionLog
from nba.storage.store import Store

__all__ = ["COUNTER_SECONDS", "Maintenance"]

#: quarter-hourly offer counters kept in memory and uncompacted (daily budgets need the
#: current local day, which began at most 26 hours ago in any zone)
COUNTER_SECONDS = 48 * 3600
#: how often contact events and counters are compacted
COMPACTION_SECONDS = 3600.0
#: how often decisions past decision_retention_days are deleted
RETENTION_SECONDS = 60.0


class Maintenance:
    """``run()`` after each pass of the decision log's writer; each task runs when its interval
    has passed. ``window_check_seconds``: how often due reward windows are looked for;
    ``retention_days``: decisions older are deleted (0 keeps them all); ``event_retention_days``:
    touch-point events received longer ago are deleted (0 keeps them all)."""

    def __init__(
        self,
        store: Store,
        learning: LearningLoop,
        contacts: ContactHistory,
        counters: OfferCounters,
        clock: Clock,
        window_check_seconds: float,
        retention_days: float,
        event_retention_days: float = 0.0,
    ) -> None:
        self.store = store
        self.learning = learning
        self.contacts = contacts
        self.counters = counters
        self.clock = clock
        self.window_check_seconds = window_check_seconds
        self.retention_days = retention_days
        self.event_retention_days = event_retention_days
        #: set once the decision log exists (it runs this on its writer thread)
        self.log: DecisionLog | None = None
        self._last_window_check = 0.0
        self._last_compaction = 0.0
        self._last_purge = 0.0
        self._last_event_purge = 0.0

    def run(self) -> None:
        if self.log is not None and time.monotonic() - self._last_window_check >= self.window_check_seconds:
            self._last_window_check = time.monotonic()
            self.log.close_windows(self.clock.now())
        self.learning.maybe_snapshot(self.store)
        now = self.clock.now().timestamp()
        if time.monotonic() - self._last_compaction >= COMPACTION_SECONDS:
            self._last_compaction = time.monotonic()
            self.store.compact(now - self.contacts.horizon_seconds, now - COUNTER_SECONDS)
            self.counters.prune(now - COUNTER_SECONDS)
        if self.retention_days and time.monotonic() - self._last_purge >= RETENTION_SECONDS:
            # Every minute, half a second at most: at the deletion rate measured on PostgreSQL
            # (README, Benchmarks) that keeps up with far more decisions a day than one replica makes.
            self._last_purge = time.monotonic()
            self.store.purge(datetime.fromtimestamp(now - self.retention_days * 86400, UTC))
        if self.event_retention_days and time.monotonic() - self._last_event_purge >= RETENTION_SECONDS:
            self._last_event_purge = time.monotonic()
            self.store.purge_events(datetime.fromtimestamp(now - self.event_retention_days * 86400, UTC))
