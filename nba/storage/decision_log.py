"""The decision log: SQL kept off the request path, and feedback acknowledged only once durable.

Decisions are queued and written in batches by one writer thread; a feedback event waits for
the transaction that makes it durable (group commit: concurrent events share one commit),
then for the learner to apply it, and only then is acknowledged. Because the one writer
drains its queue in order, a decision is always committed no later than any feedback that
names it. What the log commits reaches the rest of the service through one ``LogListener``;
replicas' events reach it through ``nba.storage.replication``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from nba import metrics
from nba.errors import Unavailable
from nba.records import PSEUDONYM_PREFIX, ContactEvent, DecisionRecord, FeedbackEvent, FeedbackResult, LearningEvent
from nba.storage.bus import BusEntry, RedisBus, Span
from nba.storage.engine import driver_error, is_outage
from nba.storage.recent import RecentDecisions
from nba.storage.replication import Replication
from nba.storage.rollups import Counts, decision_measures, feedback_measures
from nba.storage.store import Store

__all__ = ["DecisionLog", "LogListener", "LogOptions"]

#: decisions whose reward windows are closed per transaction
CLOSE_BATCH = 1000
#: while the database is unavailable, how often the writer tries it again
RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)


class LogListener(Protocol):
    """What the log tells the service, each on the writer thread, in commit order."""

    def learned(self, events: list[LearningEvent]) -> None:
        """Applied feedback to learn from (this process's and, when shared, the others'), in
        commit order, before any caller of this process is answered. Raising withholds the
        acknowledgement of this process's events (they are learned when the gap is read)."""

    def contacted(self, events: list[ContactEvent]) -> None:
        """Contact events committed: this process's outcomes (its decisions it counts itself,
        at once), and every contact event of the other processes."""

    def state_changed(self, up: bool) -> None:
        """The database became unreachable (False) or reachable again (True)."""

    def after_write(self) -> None:
        """Runs after each pass of the writer: maintenance that must not interleave with
        feedback writes (reward windows, snapshots, compaction, retention)."""


@dataclass(frozen=True)
class LogOptions:
    """The decision log's tuning (``nba serve``'s ``log_*`` settings)."""

    #: how long a decision may wait in memory before it is written, in seconds
    flush_seconds: float = 0.05
    #: decisions and events written per transaction, at most
    batch_size: int = 500
    #: decisions queued in memory at most (beyond: dropped and counted)
    queue_limit: int = 100_000
    #: recent decisions kept in memory for feedback look-ups
    cache_size: int = 20_000
    #: shared: how often the others' events are read from the database without a bus
    tail_seconds: float = 0.02


class DecisionLog:
    """Write-behind decision log with durable, group-committed feedback.

    The listener's ``learned`` receives the applied feedback of each transaction after it
    commits and before any of its callers is answered; its ``after_write`` runs on the writer
    thread after each pass (snapshots hook in there, so they see a consistent position in the
    log). With ``shared`` (workers or replicas on one database) every process learns every
    process's events in commit order (``nba.storage.replication``).

    When the database cannot be reached (``is_outage``), the log degrades rather than fails:
    decisions stay queued in memory (up to ``queue_limit``) and are written when it returns;
    feedback is refused with ``Unavailable`` at once, since it cannot be made durable; the
    writer tries again every ``RETRY_SECONDS``, and the listener's ``state_changed`` hears of
    each change.
    """

    def __init__(
        self,
        store: Store,
        listener: LogListener,
        options: LogOptions | None = None,
        *,
        shared: bool = False,
        bus: RedisBus | None = None,
        applied_id: int = 0,
        contact_id: int = 0,
        forgotten: Callable[[Any, list[tuple[str, datetime]]], None] | None = None,
        forgotten_keys: Callable[[Any, set[str]], tuple[Callable[[str], str] | None, set[str]]] | None = None,
    ) -> None:
        """``shared``: other processes (workers, replicas) write to the same database, and this
        one learns their events too (always so with a ``bus``). ``applied_id`` and
        ``contact_id``: the newest feedback and contact-event ids already applied (the
        restored model's position, and where the contact history was loaded up to).
        ``forgotten(conn, [(customer_id, when)])``: called in each write transaction with the
        customers it wrote of and when each decision or outcome happened, to erase again what
        happened before its customer was forgotten (a decision queued here while another
        process forgot them). ``forgotten_keys(conn, customer_ids)``: of these customer ids (the
        pseudonyms among the feedback's), which name forgotten customers, and the keyed pseudonym
        their events' ids are stored under (None and an empty set when nobody was forgotten)."""
        self.store = store
        self._forgotten = forgotten
        self._forgotten_keys = forgotten_keys
        self._listener = listener
        self._options = options or LogOptions()
        self.replication = Replication(
            store, listener, shared or bus is not None, bus, applied_id, contact_id, self._options.tail_seconds
        )
        self._up = True
        self._retry_at = 0.0
        metrics.STORE_UP.set(1)
        self._remote: deque[BusEntry] = deque()
        self._queue: deque[tuple[DecisionRecord | None, FeedbackEvent | None, Future[Any] | None]] = deque()
        self._queued_decisions = 0
        #: decisions queued again after an outage: perhaps committed by a commit whose answer was lost
        self._requeued: set[str] = set()
        self._cond = threading.Condition()
        self._recent = RecentDecisions(self._options.cache_size)
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
            log.warning("the database is back: writing the decisions queued meanwhile", extra={"queued": self._queued_decisions})
        else:
            log.error(
                "the database is unavailable: Decide answers from memory, Feedback is refused until it returns",
                extra={"error": repr(driver_error(exc) if exc is not None else None)},
            )
        try:
            self._listener.state_changed(up)
        except Exception:
            log.exception("the listener failed on a change of the database's state")

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
        self._recent.forget(refused)

    def written(self, decision_id: str) -> Future[Any] | None:
        """A durable decision's commit, while it is still pending; None once written; a failed
        future for one that will never be (refused, forgotten)."""
        pending, known = self._recent.commit(decision_id)
        if pending is not None or known or self.store.find_decision(decision_id) is not None:
            return pending
        failed: Future[Any] = Future()
        failed.set_exception(Unavailable("the decision could not be written: it was not made; retry"))
        return failed

    @property
    def contact_position(self) -> int | None:
        """The newest contact event id this process has applied, when it follows others."""
        return self.replication.contact_position

    def _outage(self, exc: BaseException) -> Unavailable:
        self._mark(False, exc)
        return Unavailable(
            f"the database is unavailable ({type(driver_error(exc)).__name__}); feedback cannot be kept now, retry"
        )

    # Request path ---------------------------------------------------------------------

    def record(self, decision: DecisionRecord, durable: bool = False) -> Future[Any] | None:
        """Queues a decision for writing; never blocks. Counts a drop if the queue is full.
        ``durable``: returns a future that resolves once the decision is committed (the writer
        is woken at once and commits whatever is queued with it), or fails with
        ``Unavailable``; such a decision is never written later than its caller was told."""
        future: Future[Any] | None = Future() if durable else None
        with self._cond:
            if self._stopping or self._queued_decisions >= self._options.queue_limit or (durable and not self._up):
                metrics.LOG_DROPPED.inc()
                if future is not None:
                    why = "the database is unavailable" if not self._up else "the decision log is full or stopping"
                    future.set_exception(Unavailable(f"{why}: the decision cannot be made durable now; retry"))
                return future
            self._recent.add(decision, future)
            self._queue.append((decision, None, future))
            self._queued_decisions += 1
            metrics.LOG_QUEUE.set(self._queued_decisions)
            if durable or self._queued_decisions >= self._options.batch_size:
                self._cond.notify()
        return future

    def drop_customers(self, customer_ids: set[str]) -> None:
        """Forgets the decisions held in memory of these customers (see ``RecentDecisions``)."""
        self._recent.drop_customers(customer_ids)

    def get(self, decision_id: str) -> DecisionRecord | None:
        """The decision, from memory or the database; ``Unavailable`` when only the database
        could tell and it cannot be reached."""
        found = self._recent.get(decision_id)
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
        found = self._recent.by_request(request_id)
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
                before = self.replication.before(conn)
                learn, closed = self.store.close_windows(conn, now, CLOSE_BATCH)
                span = self.replication.span(conn, before)
            self.replication.learn(learn, span)
            self.replication.publish(span, learn, [])
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

    def _run(self) -> None:
        while True:
            wait = min(self._options.flush_seconds, self.replication.tail_interval())
            with self._cond:
                if not self._up and not self._stopping:  # wait out the outage, then try again
                    while not self._stopping and (delay := self._retry_at - time.monotonic()) > 0:
                        self._cond.wait(delay)
                elif not self._queue and not self._stopping and not self._remote:
                    self._cond.wait(wait)
                remote = [self._remote.popleft() for _ in range(len(self._remote))]
            for entry in remote:  # even while the database is down: those that leave no gap
                try:
                    self.replication.apply_remote(entry)
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
                    batch = [self._queue.popleft() for _ in range(min(self._options.batch_size, len(self._queue)))]
                    self._queued_decisions -= sum(1 for d, _, _ in batch if d is not None)
                    metrics.LOG_QUEUE.set(self._queued_decisions)
            if batch:
                try:
                    self._write(batch)
                except Exception as exc:  # never leave a caller waiting on a dead writer
                    log.exception("decision log writer failed")
                    for _, _, future in batch:
                        if future is not None and not future.done():
                            future.set_exception(
                                Unavailable(f"the decision log failed ({type(driver_error(exc)).__name__}); retry")
                            )
            if not self._up:
                continue
            if self.replication.tail_due():
                try:
                    self.replication.tail()
                except Exception as exc:
                    self._failed("reading the other processes' events", exc)
            try:
                self._listener.after_write()
            except Exception as exc:  # a failed snapshot must not stop the log
                self._failed("maintenance after a write (windows, snapshot, compaction)", exc)

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
        self._recent.forget(decisions)
        log.error("shutting down with the database unavailable: queued decisions are lost", extra={"decisions": len(decisions)})
        for _, _, future in batch:
            if future is not None and not future.done():
                future.set_exception(Unavailable("the database is unavailable; retry"))

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
                before = self.replication.before(conn)
                contacts: list[ContactEvent] = []
                counts: Counts = defaultdict(float)
                if decisions:
                    # A decision queued again after an outage may have been committed by a commit
                    # whose answer was lost: those (and only those: a look-up a batch costs) are
                    # looked for, and one already in the log is not counted twice.
                    again = [d.decision_id for d in decisions if d.decision_id in self._requeued]
                    logged = self.store.logged_decisions(conn, again) if again else set()
                    decision_measures((d for d in decisions if d.decision_id not in logged), counts)
                    self.store.insert_decisions(conn, decisions)
                    contacts.extend(
                        ContactEvent(d.customer_id, d.created_at.timestamp(), "decided", o["offer_id"], o["group"], d.channel)
                        for d in decisions
                        for o in d.offers
                    )
                # A reused event id is found before anything is written: nothing to undo.
                key: Callable[[str], str] | None = None
                forgotten: set[str] = set()
                pseudonymous = {e.customer_id for e, _ in feedback if e.customer_id.startswith(PSEUDONYM_PREFIX)}
                if pseudonymous and self._forgotten_keys is not None:
                    key, forgotten = self._forgotten_keys(conn, pseudonymous)
                events = [event for event, _ in feedback]
                stored = self.store.store_feedback_batch(conn, events, key, forgotten) if feedback else []
                results.extend((event, future, result) for (event, future), result in zip(feedback, stored, strict=True))
                outcomes = [
                    ContactEvent(e.customer_id, e.occurred_at.timestamp(), e.outcome, e.offer_id, e.group, e.channel)
                    for e, _, r in results
                    if isinstance(r, FeedbackResult) and not r.duplicate
                ]
                self.store.insert_contacts(conn, contacts + outcomes)
                feedback_measures(((e, r) for e, _, r in results if isinstance(r, FeedbackResult)), into=counts)
                self.store.add_rollups(conn, counts)
                if self._forgotten is not None and (decisions or outcomes):
                    self._forgotten(
                        conn,
                        [(d.customer_id, d.created_at) for d in decisions]
                        + [(e.customer_id, e.occurred_at) for e, _, r in results if isinstance(r, FeedbackResult)],
                    )
                span = self.replication.span(conn, before)
        except Exception as exc:
            outage = is_outage(exc)
            if not outage and len(decisions) + len(feedback) > 1:
                # A fault in one item (a value the database refuses) must not cost the others:
                # each is written on its own, in order, and only the bad one fails.
                log.warning(
                    "a decision log write failed; writing its items one by one",
                    extra={"error": repr(driver_error(exc)), "decisions": len(decisions), "feedback": len(feedback)},
                )
                items = [item for item in batch if item[0] is not None or item[1] is not None]
                for n, item in enumerate(items):
                    if not self._up:  # an outage meanwhile: the rest wait, or are told, as on any outage
                        rest = items[n:]
                        with self._cond:
                            kept = [d for d, _, f in rest if d is not None and f is None]
                            self._queue.extendleft((d, None, None) for d in reversed(kept))
                            self._queued_decisions += len(kept)
                            metrics.LOG_QUEUE.set(self._queued_decisions)
                        self._requeued.update(d.decision_id for d in kept)
                        self._recent.forget([d for d, _, f in rest if d is not None and f is not None])
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
                self._recent.forget([d for d, _ in durable])
                with self._cond:
                    self._queue.extendleft((d, None, None) for d in reversed(kept))
                    self._queued_decisions += len(kept)
                    metrics.LOG_QUEUE.set(self._queued_decisions)
                self._requeued.update(d.decision_id for d in kept)
            else:
                log.exception("decision log write failed", extra={"decisions": len(decisions), "feedback": len(feedback)})
                metrics.LOG_DROPPED.inc(len(decisions))
                self._recent.forget(decisions)
            for _, future in durable:
                future.set_exception(
                    Unavailable(f"the decision could not be written ({type(driver_error(exc)).__name__}): it was not made; retry")
                )
            for _, future in feedback:
                future.set_exception(
                    self._outage(exc)
                    if outage
                    else Unavailable(f"the decision log could not be written ({type(driver_error(exc)).__name__}); retry")
                )
            for marker in markers:
                marker.set_exception(exc)
            return
        self._mark(True)
        if self._requeued:
            self._requeued.difference_update(d.decision_id for d in decisions)
        metrics.LOG_FLUSH.observe(time.perf_counter() - started)
        metrics.LOG_WRITTEN.inc(len(decisions))
        self._recent.settle(decisions)
        learn = [
            LearningEvent(r.feedback_id, e.features, e.offer_id, r.reward, r.previous_reward, e.received_at.timestamp())
            for e, _, r in results
            if isinstance(r, FeedbackResult) and r.applied and r.feedback_id is not None
        ]
        learned = True
        try:
            self.replication.learn(learn, span)
        except Exception as exc:
            # Committed, not learned yet: the events are learned, in order, when the gap
            # before them can be read. Until then they are not acknowledged as applied.
            learned = False
            self._failed("learning from feedback", exc)
        if outcomes:
            try:
                self._listener.contacted(outcomes)
            except Exception:
                log.exception("recording contact history failed", extra={"events": len(outcomes)})
        for _, future, result in results:
            if isinstance(result, Exception):
                future.set_exception(result)
            elif not learned and result.applied:
                future.set_exception(
                    Unavailable(
                        "the event is stored but not yet learned (the database is unavailable); a retry is answered duplicate"
                    )
                )
            else:
                future.set_result(result)
        for marker in markers:
            marker.set_result(FeedbackResult(False, False, 0.0))
        for _, future in durable:
            future.set_result(True)
        self.replication.publish(span, learn, contacts + outcomes)
