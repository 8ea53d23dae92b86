"""The backfill of a changed profile definition: every stored profile rebuilt, from its events,
under the definition now live, in the background, with its progress shown.

A published policy set whose ``profile:`` section changes an attribute, a computed attribute
or an activity changes the definition's fingerprint (``ProfileDefinition.fingerprint``). Each
profile records the fingerprint it was built under (``profiles.built_under``); ``Backfill``
walks the profiles built under another, in id order, a batch a transaction
(``Tracker.backfill``), until none is left. Meanwhile nothing reads a half-built profile: a
profile read or tracked before the backfill reaches it is rebuilt from its events on the spot
(``Profile.stale``), and only the backfill, or the customer's next event, stores it.

Progress: ``nba_profile_backfill_remaining`` and ``nba_profile_backfilled_total``, a log line
every ``LOG_SECONDS`` and at the end, and ``progress()`` (``nba profiles backfill`` prints it as
it goes). Every replica and worker runs its own: a batch another one did is found done (the
query skips it), so they share the work rather than repeat it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nba import metrics
from nba.errors import Unavailable
from nba.policy.profile import ProfileDefinition
from nba.profiles.tracking import Tracker

__all__ = ["Backfill", "Progress"]

log = logging.getLogger("nba.profiles")

#: profiles rebuilt a transaction: the write lock is held for one batch at a time, so tracking
#: waits at most that long (about 100 ms on PostgreSQL at 10 events a profile)
BATCH = 200
#: how often the progress is logged while a backfill runs
LOG_SECONDS = 10.0
#: a database that is down is tried again after this long
RETRY_SECONDS = 5.0
#: a batch that failed for another reason is tried again after this long
FAULT_RETRY_SECONDS = 60.0


@dataclass
class Progress:
    #: the definition being backfilled
    fingerprint: str = ""
    #: profiles built under another definition when it started, and rebuilt since
    total: int = 0
    done: int = 0
    running: bool = False
    #: seconds since it started
    seconds: float = 0.0


class Backfill:
    """Backfills ``tracker``'s live definition (``definition()``) in a thread of its own;
    ``count(fingerprint)`` says how many profiles are left under another."""

    def __init__(
        self,
        tracker: Tracker,
        definition: Callable[[], ProfileDefinition],
        count: Callable[[str], int],
        batch: int = BATCH,
    ) -> None:
        self._tracker = tracker
        self._definition = definition
        self._count = count
        self._batch = batch
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = Progress()
        self._started = 0.0

    def start(self) -> None:
        """Starts a backfill of the live definition unless one is running (one running for an
        older definition starts over by itself at its next batch)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="nba-profile-backfill", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def progress(self) -> Progress:
        with self._lock:
            p = self._progress
            return Progress(
                p.fingerprint, p.total, p.done, p.running, time.monotonic() - self._started if p.running else p.seconds
            )

    def run(self, report: Callable[[Progress], None] | None = None) -> Progress:
        """Backfills in this thread, to the end (``report`` is called after each batch)."""
        self._run(report)
        return self.progress()

    def _run(self, report: Callable[[Progress], None] | None = None) -> None:
        while not self._stop.is_set():
            fingerprint = self._definition().fingerprint
            try:
                finished = self._pass(fingerprint, report)
            except Unavailable as exc:
                log.warning("profile backfill paused: the database is unavailable", extra={"error": str(exc)})
                self._stop.wait(RETRY_SECONDS)
                continue
            except Exception:
                # a fault (not an outage): said loudly, and tried again later rather than given up
                log.exception("profile backfill failed; trying again", extra={"retry_seconds": FAULT_RETRY_SECONDS})
                self._stop.wait(FAULT_RETRY_SECONDS)
                continue
            # a set published during the last batch (start() found this thread alive): once more
            if finished and self._definition().fingerprint == fingerprint:
                return

    def _pass(self, fingerprint: str, report: Callable[[Progress], None] | None) -> bool:
        """One walk of the profiles under another definition than ``fingerprint``; False when
        the definition changed under it (the caller starts over)."""
        total = self._count(fingerprint)
        with self._lock:
            self._progress = Progress(fingerprint, total, 0, True)
            self._started = time.monotonic()
        metrics.PROFILE_BACKFILL_REMAINING.set(total)
        if total:
            log.info("profile backfill started", extra={"profiles": total, "definition": fingerprint})
        after: str | None = ""
        logged = time.monotonic()
        try:
            while after is not None and total and not self._stop.is_set():
                if self._definition().fingerprint != fingerprint:
                    return False
                ids, after = self._tracker.backfill(after, self._batch)
                metrics.PROFILE_BACKFILLED.inc(len(ids))
                with self._lock:
                    self._progress.done += len(ids)
                    done = self._progress.done
                metrics.PROFILE_BACKFILL_REMAINING.set(max(total - done, 0))
                if report is not None:
                    report(self.progress())
                if time.monotonic() - logged >= LOG_SECONDS:
                    logged = time.monotonic()
                    log.info("profile backfill", extra={"done": done, "profiles": total, "definition": fingerprint})
        finally:
            with self._lock:
                self._progress.running = False
                self._progress.seconds = time.monotonic() - self._started
        if self._stop.is_set():
            return True
        metrics.PROFILE_BACKFILL_REMAINING.set(0)
        if total:
            log.info(
                "profile backfill finished",
                extra={"profiles": self._progress.done, "seconds": round(self._progress.seconds, 1), "definition": fingerprint},
            )
        return True
