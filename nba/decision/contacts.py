"""Contact history and offer counters: what contact policies and budgets count.

Every offer a decision returns is a ``decided`` event for its customer, and every feedback
outcome (``impressed``, ``clicked``, ``accepted``, ``rejected``) another. The decision log
keeps them durably (``contact_events``, ``offer_counters``); this module keeps what screening
needs in memory:

* ``ContactHistory``: each customer's recent events, loaded from the log the first time a
  decision needs them (so a restart loses nothing), then updated at once by decisions and
  feedback; bounded (least recently seen customers are dropped, loaded again if they return).
* ``ContactSummary``: one request's view of one customer, computed in one pass over their
  events, answering every cap, suppression and ``contacts.*`` question in O(1).
* ``OfferCounters``: events per offer and kind in quarter-hour buckets, for daily and total budgets.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable

from nba import metrics
from nba.days import BUCKET_SECONDS
from nba.errors import Unavailable
from nba.policy.rules import CONTACT_FIELDS, NEVER_DAYS
from nba.records import ContactEvent

__all__ = ["ContactHistory", "ContactSummary", "OfferCounters"]

RESPONSES = frozenset({"clicked", "accepted", "rejected"})


class ContactHistory:
    """Recent contact events per customer; thread-safe."""

    def __init__(
        self,
        loader: Callable[[str, float], Iterable[ContactEvent]] | None,
        horizon_seconds: float = 90 * 86400,
        max_customers: int = 200_000,
    ) -> None:
        self._loader = loader
        self.horizon_seconds = horizon_seconds
        self._max = max_customers
        self._events: OrderedDict[str, list[ContactEvent]] = OrderedDict()
        self._lock = threading.Lock()

    def drop(self, customer_ids: Iterable[str]) -> None:
        """Forgets what is held of these customers (they were forgotten: their contact events
        are deleted)."""
        with self._lock:
            for customer_id in customer_ids:
                self._events.pop(customer_id, None)

    def events(self, customer_id: str, now: float) -> list[ContactEvent]:
        """The customer's events within the horizon, oldest first."""
        since = now - self.horizon_seconds
        with self._lock:
            events = self._events.get(customer_id)
            if events is not None:
                self._events.move_to_end(customer_id)
                if events and events[0].at < since:
                    events[:] = [e for e in events if e.at >= since]
                return list(events)
        try:
            loaded = sorted(self._loader(customer_id, since), key=lambda e: e.at) if self._loader else []
        except Unavailable:
            # The database is down: decide without this customer's history rather than not at
            # all, and load it when the database is back (nothing is kept meanwhile).
            metrics.CONTACT_HISTORY_UNAVAILABLE.inc()
            return []
        with self._lock:
            # Another thread may have loaded and added to it meanwhile: keep theirs.
            events = self._events.setdefault(customer_id, loaded)
            self._trim()
            return list(events)

    def record(self, events: Iterable[ContactEvent]) -> None:
        """Adds events for the customers held in memory. Others need nothing: their history is
        loaded from the decision log when first needed, and will include these."""
        with self._lock:
            for event in events:
                stored = self._events.get(event.customer_id)
                if stored is None:
                    continue
                if stored and event.at < stored[-1].at:  # feedback can report an older event
                    stored.append(event)
                    stored.sort(key=lambda e: e.at)
                else:
                    stored.append(event)

    def __len__(self) -> int:
        return len(self._events)

    def _trim(self) -> None:
        while len(self._events) > self._max:
            self._events.popitem(last=False)


class ContactSummary:
    """One customer's history as one request needs it."""

    def __init__(self, events: list[ContactEvent], now: float, channel: str, windows: Iterable[tuple[str, float]]) -> None:
        self.now = now
        self.channel = channel
        self._events = events
        # counts[(kind, window)][scope key] where scope key is ("offer", id), ("group", g),
        # ("channel", c) or ("customer", "")
        self._counts: dict[tuple[str, float], dict[tuple[str, str], int]] = {}
        for kind, window in set(windows):
            since = now - window
            counts: dict[tuple[str, str], int] = defaultdict(int)
            for e in events:
                if e.kind == kind and e.at >= since:
                    counts[("offer", e.offer_id)] += 1
                    counts[("group", e.group)] += 1
                    counts[("channel", e.channel)] += 1
                    counts[("customer", "")] += 1
            self._counts[(kind, window)] = counts
        self.offers: dict[str, dict[str, float]] = {}
        self.groups: dict[str, dict[str, float]] = {}
        self._last: dict[tuple[str, str, str], float] = {}
        # impressions in a row without a response, and when the last of them was
        self._ignored: dict[tuple[str, str], tuple[int, float]] = {}
        for e in events:
            for scope, key, table in (("offer", e.offer_id, self.offers), ("group", e.group, self.groups)):
                entry = table.get(key)
                if entry is None:
                    entry = table[key] = {}
                entry[e.kind] = entry.get(e.kind, 0.0) + 1.0
                self._last[(scope, key, e.kind)] = max(self._last.get((scope, key, e.kind), 0.0), e.at)
                if e.kind == "impressed":
                    count, _ = self._ignored.get((scope, key), (0, 0.0))
                    self._ignored[(scope, key)] = (count + 1, e.at)
                elif e.kind in RESPONSES:
                    self._ignored.pop((scope, key), None)
        for scope, table in (("offer", self.offers), ("group", self.groups)):
            for key, entry in table.items():
                for name in CONTACT_FIELDS:
                    if name.startswith("days_since_"):
                        last = self._last.get((scope, key, name[len("days_since_") :]))
                        entry[name] = NEVER_DAYS if last is None else max(0.0, (now - last) / 86400)
                    else:
                        entry.setdefault(name, 0.0)

    def count(self, kind: str, window: float, per: str, offer_id: str, group: str) -> int:
        key = {"offer": ("offer", offer_id), "group": ("group", group), "channel": ("channel", self.channel)}.get(
            per, ("customer", "")
        )
        return self._counts.get((kind, window), {}).get(key, 0)

    def times(self, kind: str, window: float, per: str, offer_id: str, group: str) -> tuple[float, ...]:
        """When each event ``count`` counts happened (for reservations to start from)."""
        since = self.now - window
        match = {
            "offer": lambda e: e.offer_id == offer_id,
            "group": lambda e: e.group == group,
            "channel": lambda e: e.channel == self.channel,
        }.get(per, lambda e: True)
        return tuple(e.at for e in self._events if e.kind == kind and e.at >= since and match(e))

    def suppressed_until(self, after: str, ignored: int, days: float, per: str, offer_id: str, group: str) -> float | None:
        """When the suppression ends, if it is in force now."""
        key = offer_id if per == "offer" else group
        if after == "rejected":
            last = self._last.get((per, key, "rejected"))
        else:
            count, last = self._ignored.get((per, key), (0, None))
            if count < ignored:
                last = None
        if last is None:
            return None
        until = last + days * 86400
        return until if self.now < until else None


class OfferCounters:
    """Events per (offer, kind) in quarter-hour buckets (UTC, ``nba.days.BUCKET_SECONDS``),
    plus lifetime totals; thread-safe.

    A local day of any timezone in use begins on a quarter hour (half-hour and quarter-hour
    offsets included), so the events of a budget day are an exact run of buckets, whatever
    timezone the live set has, and however it changes. The running sum from the day's first
    bucket is kept per (offer, kind), so a budget check is one lookup, not a sum."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
        self._totals: dict[tuple[str, str], int] = defaultdict(int)
        #: (offer, kind) -> (first bucket, events in it and every later bucket)
        self._since: dict[tuple[str, str], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def add(self, offer_id: str, kind: str, at: float, n: int = 1) -> None:
        bucket = int(at // BUCKET_SECONDS)
        key = (offer_id, kind)
        with self._lock:
            buckets = self._buckets[key]
            buckets[bucket] = buckets.get(bucket, 0) + n
            self._totals[key] += n
            cached = self._since.get(key)
            if cached is not None and bucket >= cached[0]:
                self._since[key] = (cached[0], cached[1] + n)

    def load(self, rows: Iterable[tuple[str, str, int, int]], recent_since: float) -> None:
        """Replaces the counters with stored ones: (offer, kind, bucket, count) rows. Buckets
        before ``recent_since`` (epoch seconds) count towards totals only."""
        first = int(recent_since // BUCKET_SECONDS)
        with self._lock:
            self._buckets.clear()
            self._totals.clear()
            self._since.clear()
            for offer_id, kind, bucket, count in rows:
                self._totals[(offer_id, kind)] += count
                if bucket >= first:
                    self._buckets[(offer_id, kind)][bucket] = count

    def since(self, offer_id: str, kind: str, start: float) -> int:
        """Events from the bucket holding ``start`` (epoch seconds) on: from a local day's
        first instant, that day's events (a day begins on a bucket's edge)."""
        first = math.floor(start / BUCKET_SECONDS)
        key = (offer_id, kind)
        with self._lock:
            cached = self._since.get(key)
            if cached is not None and cached[0] == first:
                return cached[1]
            count = sum(c for b, c in self._buckets.get(key, {}).items() if b >= first)
            self._since[key] = (first, count)
            return count

    def total(self, offer_id: str, kind: str) -> int:
        with self._lock:
            return self._totals.get((offer_id, kind), 0)

    def prune(self, before: float) -> None:
        """Drops buckets before ``before`` (epoch seconds); totals keep them."""
        cutoff = int(before // BUCKET_SECONDS)
        with self._lock:
            for buckets in self._buckets.values():
                for bucket in [b for b in buckets if b < cutoff]:
                    del buckets[bucket]
            self._since = {k: v for k, v in self._since.items() if v[0] >= cutoff}
