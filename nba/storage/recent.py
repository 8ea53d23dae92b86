"""The decisions the log holds in memory: those queued and not yet written (pending), and a
bounded cache of those written recently. Feedback and request-id replays read them first, so
the common case (feedback minutes after the decision) costs no query, and a decision is
known here from the moment it is made, before it is written."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

from nba.records import DecisionRecord

__all__ = ["RecentDecisions"]


class RecentDecisions:
    """Pending decisions (with the commit future of durable ones) and up to ``size`` written
    ones, by decision id and by request id. Thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pending: dict[str, DecisionRecord] = {}
        #: durable decisions' commits, by decision id, until settled
        self._durable: dict[str, Future[Any]] = {}
        self._recent: OrderedDict[str, DecisionRecord] = OrderedDict()
        self._by_request: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, decision: DecisionRecord, durable: Future[Any] | None) -> None:
        """A decision queued for writing (with its commit future when durable)."""
        with self._lock:
            self._pending[decision.decision_id] = decision
            if durable is not None:
                self._durable[decision.decision_id] = durable
            if decision.request_id:
                self._by_request[decision.request_id] = decision.decision_id

    def get(self, decision_id: str) -> DecisionRecord | None:
        with self._lock:
            return self._pending.get(decision_id) or self._recent.get(decision_id)

    def by_request(self, request_id: str) -> DecisionRecord | None:
        with self._lock:
            decision_id = self._by_request.get(request_id)
            if decision_id is None:
                return None
            return self._pending.get(decision_id) or self._recent.get(decision_id)

    def commit(self, decision_id: str) -> tuple[Future[Any] | None, bool]:
        """A durable decision's commit future while it is pending, and whether the decision is
        known here at all (pending or recent)."""
        with self._lock:
            pending = self._durable.get(decision_id)
            known = pending is not None or decision_id in self._pending or decision_id in self._recent
        return pending, known

    def forget(self, decisions: list[DecisionRecord]) -> None:
        """Decisions that could not be written: feedback for them is NOT_FOUND rather than
        acknowledged for a decision the log does not have."""
        with self._lock:
            for d in decisions:
                self._pending.pop(d.decision_id, None)
                self._durable.pop(d.decision_id, None)
                self._drop_request(d)

    def drop_customers(self, customer_ids: set[str]) -> None:
        """Every decision held of these customers, pending or recent (the customers were
        forgotten: their decisions are pseudonymised in the log)."""
        with self._lock:
            for held in (self._pending, self._recent):
                for d in [d for d in held.values() if d.customer_id in customer_ids]:
                    held.pop(d.decision_id, None)
                    self._durable.pop(d.decision_id, None)
                    self._drop_request(d)

    def settle(self, decisions: list[DecisionRecord]) -> None:
        """Written decisions move from pending to the bounded cache of recent ones."""
        with self._lock:
            for d in decisions:
                self._pending.pop(d.decision_id, None)
                self._durable.pop(d.decision_id, None)
                if self._size:
                    self._recent[d.decision_id] = d
                else:
                    self._drop_request(d)
            while len(self._recent) > self._size:
                _, old = self._recent.popitem(last=False)
                self._drop_request(old)

    def _drop_request(self, decision: DecisionRecord) -> None:
        if decision.request_id and self._by_request.get(decision.request_id) == decision.decision_id:
            del self._by_request[decision.request_id]
