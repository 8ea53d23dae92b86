"""The segment clock: records the segment entries and exits that time alone brings, and matures
the predictions whose horizon passed (``nba.profiles.scores``: negative labels).

A customer whose segment reads a windowed computed attribute (``complaints_30d >= 2``) leaves it
when the second complaint is 30 days old, with no event to say so. Every profile holds the
moment its membership next changes that way (``profiles.due_at``, found by
``nba.profiles.segments.first_change``); the clock looks for profiles due, a batch a write
transaction (``Tracker.sweep_segments``), every ``interval`` seconds, and records each change at
its exact moment, however late the clock gets to it. Reads between passes already see the
change (``Profile.current_segments``); the clock makes it count in exports, sizes and metrics.

Every replica and worker runs one: a profile another one did is no longer due. It also
refreshes ``nba_segment_members`` from the database every ``SIZES_SECONDS``, and the attributes'
completeness every ``QUALITY_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from nba import metrics
from nba.errors import Unavailable
from nba.profiles.tracking import Tracker

__all__ = ["SegmentClock"]

log = logging.getLogger("nba.profiles")

#: profiles a transaction at most
BATCH = 200
#: how often segment sizes are counted for the metrics
SIZES_SECONDS = 15.0
#: how often the profiles' data quality (attribute completeness) is measured: a pass over them all
QUALITY_SECONDS = 600.0
#: a database that is down is tried again after this long
RETRY_SECONDS = 5.0
#: a pass that failed for another reason than an outage waits this long
FAULT_RETRY_SECONDS = 60.0


class SegmentClock:
    """Runs ``tracker.sweep_segments`` every ``interval`` seconds in a thread of its own (at
    once again while a batch comes back full) while ``moving()`` says the live definition has
    segments time can change; ``sizes()`` counts the members of each segment, ``names()`` the
    segments declared."""

    def __init__(
        self,
        tracker: Tracker,
        sizes: Callable[[], dict[str, int]],
        names: Callable[[], list[str]],
        moving: Callable[[], bool] = lambda: True,
        interval: float = 1.0,
        batch: int = BATCH,
        refresh: Callable[[], None] = lambda: None,
        quality: Callable[[], None] = lambda: None,
    ) -> None:
        self._refresh = refresh
        self._quality = quality
        self._measured = -QUALITY_SECONDS
        self._tracker = tracker
        self._sizes = sizes
        self._names = names
        self._moving = moving
        self._interval = interval
        self._batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counted = -SIZES_SECONDS
        self._labelled: set[str] = set()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nba-segment-clock", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def tick(self) -> int:
        """One pass: every profile due now, a batch at a time; how many were done."""
        done = 0
        while self._moving() and not self._stop.is_set():
            ids = self._tracker.sweep_segments(self._batch)
            done += len(ids)
            metrics.SEGMENT_CLOCK_CHANGES.inc(len(ids))
            if len(ids) < self._batch:
                break
        if self._moving():
            self._refresh()  # the scores' models other processes moved on
        if time.monotonic() - self._counted >= SIZES_SECONDS:
            self._counted = time.monotonic()
            self.count()
        if time.monotonic() - self._measured >= QUALITY_SECONDS:
            self._measured = time.monotonic()
            self._quality()
        return done

    def count(self) -> None:
        """``nba_segment_members`` from the database: every declared segment (0 when empty),
        and none that is no longer declared."""
        names = set(self._names())
        if not names and not self._labelled:
            return
        sizes = self._sizes()
        for name in self._labelled - names:  # (remove() does not reach other workers' files: 0 does)
            metrics.SEGMENT_MEMBERS.labels(name).set(0)
        for name in names:
            metrics.SEGMENT_MEMBERS.labels(name).set(sizes.get(name, 0))
        self._labelled = names

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._interval
            try:
                self.tick()
            except Unavailable as exc:
                log.warning("segment clock paused: the database is unavailable", extra={"error": str(exc)})
                wait = max(wait, RETRY_SECONDS)
            except Exception:
                log.exception("segment clock pass failed; trying again", extra={"retry_seconds": FAULT_RETRY_SECONDS})
                wait = FAULT_RETRY_SECONDS
            self._stop.wait(wait)
