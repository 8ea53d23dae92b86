"""Replication: every process on one database learns every process's events, in commit order.

With ``shared`` (workers or replicas on one database), every process learns from every
feedback event in the order the events were committed. Write transactions are serialised
(``Store.write``), so ids follow commit order, and each transaction notes the newest ids
before and after it (a ``Span``): after its own commit a writer first applies the other
processes' events committed before it, then its own. Every ``tail_seconds`` it reads what
the others committed since; with a ``bus`` (Redis Streams), their entries arrive as they
commit (``DecisionLog.deliver``) and the database is read only to fill gaps, or every second as a
safety net. Contact events of the others reach the listener's ``contacted`` the same way. So
every process applies every event exactly once, in the same order, and all rank alike.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from nba import metrics
from nba.records import ContactEvent, LearningEvent
from nba.storage.bus import BusEntry, RedisBus, Span
from nba.storage.store import Store

__all__ = ["EventSink", "Replication"]

#: with a bus that works, how often the database is still read for events never published
BUS_TAIL_SECONDS = 1.0


class EventSink(Protocol):
    """Where committed events go (``nba.storage.decision_log.LogListener`` is one)."""

    def learned(self, events: list[LearningEvent]) -> None: ...

    def contacted(self, events: list[ContactEvent]) -> None: ...


class Replication:
    """This process's position in the shared log (the newest feedback and contact-event ids
    it applied), and how it moves: after its own commits (``learn``), from the bus
    (``apply_remote``) and from the database (``tail``). Alone on the database (not
    ``shared``), it only applies this process's own events. Used on the writer thread only."""

    def __init__(
        self,
        store: Store,
        sink: EventSink,
        shared: bool,
        bus: RedisBus | None,
        applied_id: int,
        contact_id: int,
        tail_seconds: float,
    ) -> None:
        self.store = store
        self.shared = shared
        self._sink = sink
        self._bus = bus
        self._applied = applied_id
        self._contact_seen = contact_id
        self._tail_seconds = tail_seconds
        self._last_tail = 0.0

    @property
    def contact_position(self) -> int | None:
        """The newest contact event id applied, when following others."""
        return self._contact_seen if self.shared else None

    def tail_interval(self) -> float:
        """How long the writer may wait before the next read of the others' events."""
        if not self.shared:
            return float("inf")
        return BUS_TAIL_SECONDS if self._bus is not None and self._bus.up else self._tail_seconds

    def tail_due(self) -> bool:
        return self.shared and time.monotonic() - self._last_tail >= self.tail_interval()

    def before(self, conn: Any) -> tuple[int, int] | None:
        """The newest ids when a write transaction starts (it holds the write lock), if shared."""
        return self.store.positions(conn) if self.shared else None

    def tail(self) -> None:
        """Learns what the other processes committed since this one last looked."""
        self._last_tail = time.monotonic()
        events = list(self.store.learning_events(self._applied))
        if events:
            self._sink.learned(events)
            self._applied = events[-1].feedback_id
        contacts, seen = self.store.contact_events_after(self._contact_seen)
        if contacts:
            self._sink.contacted(contacts)
        self._contact_seen = seen  # after: a history loaded meanwhile stops before these

    def span(self, conn: Any, before: tuple[int, int] | None) -> Span | None:
        if before is None:
            return None
        after = self.store.positions(conn)
        return Span(before[0], after[0], before[1], after[1])

    def learn(self, own: list[LearningEvent], span: Span | None) -> None:
        """Applies this process's newly committed events, after any of the other processes'
        committed before them (read from the database), in commit order."""
        own.sort(key=lambda e: e.feedback_id)
        if span is None:  # alone on the database
            if own:
                self._sink.learned(own)
                self._applied = max(self._applied, own[-1].feedback_id)
            return
        if self._applied < span.feedback_before:
            self._fill(span.feedback_before)
        if own:
            self._sink.learned(own)
        self._applied = max(self._applied, span.feedback_after)
        if self._contact_seen < span.contacts_before:
            self._fill_contacts(span.contacts_before)
        self._contact_seen = max(self._contact_seen, span.contacts_after)

    def _fill(self, up_to: int) -> None:
        """The other processes' events up to ``up_to``, from the database (all committed)."""
        events = list(self.store.learning_events(self._applied, up_to=up_to))
        if events:
            self._sink.learned(events)
            if self._bus is not None:
                metrics.BUS_GAP_FILLS.inc()
        self._applied = up_to

    def _fill_contacts(self, up_to: int) -> None:
        while self._contact_seen < up_to:
            contacts, seen = self.store.contact_events_after(self._contact_seen, up_to=up_to)
            if contacts:
                self._sink.contacted(contacts)
            if seen == self._contact_seen:
                break
            self._contact_seen = seen
        self._contact_seen = max(self._contact_seen, up_to)

    def apply_remote(self, entry: BusEntry) -> None:
        """Another replica's transaction: applied once, after everything committed before it."""
        span = entry.span
        if span.feedback_after > self._applied:
            if span.feedback_before > self._applied:
                self._fill(span.feedback_before)
            events = [e for e in entry.events if e.feedback_id > self._applied]
            if events:
                self._sink.learned(events)
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
                    self._sink.contacted(entry.contacts)
                self._contact_seen = span.contacts_after

    def publish(self, span: Span | None, events: list[LearningEvent], contacts: list[ContactEvent]) -> None:
        if self._bus is not None and span is not None and (events or contacts):
            self._bus.publish(BusEntry(self.store.origin, span, events, contacts))
