"""The profile cache: hot customers' profiles held in this process, so that a decision reads its
customer's stored profile without a round trip to the database.

An entry is a loaded ``Profile`` (or the fact that the customer has none), by the id it was
asked for (a merged id holds its survivor's profile). Computed attributes are exact at any read
(``Profile.view(now)`` drops what left a window), so an entry goes stale only when an event is
tracked for its customer:

- by this process: the tracker hands over the profile it saved (``saved``), after the commit;
- by another process (a worker or a replica): its tracker publishes the customer ids on the bus,
  and this process drops them (``invalidate``) when the entry arrives, within the bus delay;
- with no Redis bus, or while it is down, an entry of a shared deployment is trusted for
  ``fresh_seconds`` only; when the bus comes back, every entry is dropped (``clear``), since
  invalidations published meanwhile were missed.

A read that began before an invalidation of its ids may have read the profile before the other
process's commit, so it is not kept: every fill notes the invalidation count when it starts,
invalidations made while fills are in flight are stamped per id, and a fill whose ids were
stamped after it started is answered but not cached.

We keep our own least-recently-used map (an ``OrderedDict``) rather than a cache library: the
keep-or-not decision above must be taken under the same lock as the insertion, and the index
from a survivor to the ids cached for it must move with every eviction.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nba import metrics
from nba.policy.profile import ProfileDefinition
from nba.profiles.profile import Profile
from nba.records import ProfileView

__all__ = ["Loader", "ProfileCache"]

#: reads a customer's profile (by any id it has had) and, when asked, its identifiers
Loader = Callable[[str, bool], tuple[Profile | None, dict[str, list[str]] | None]]


@dataclass
class _Entry:
    profile: Profile | None
    definition: ProfileDefinition
    #: time.monotonic() when it was read
    filled: float
    #: loaded only when GetProfile asks
    identities: dict[str, list[str]] | None = None

    @property
    def survivor(self) -> str | None:
        return self.profile.customer_id if self.profile is not None else None


@dataclass(frozen=True)
class _Empty:
    definition: ProfileDefinition
    view: ProfileView


#: a profile's scores from its non-personal values (``ScoreModels.predict_all``)
Scorer = Callable[[Mapping[str, Any]], dict[str, float]]


def _view(profile: Profile, customer_id: str, now: float, scorer: Scorer | None = None) -> ProfileView:
    values = profile.view(now)
    pii = profile.definition.pii
    learnable = {k: v for k, v in values.items() if k not in pii}
    private = {k: v for k, v in values.items() if k in pii and v is not None} if pii else {}
    if scorer is not None and profile.definition.scores:
        learnable["scores"] = scorer({k: v for k, v in learnable.items() if k != "segments"})
    return ProfileView(customer_id, profile.version, learnable, private, profile.definition.consent)


class ProfileCache:
    """Up to ``size`` profiles, least recently used out first. ``load`` reads one from the
    database; ``definition`` is the live policy set's profile definition (an entry loaded under
    another is read again); ``fresh_seconds`` says how long an entry is trusted without
    invalidations (infinite alone on the database, or with the Redis bus up)."""

    def __init__(
        self,
        load: Loader,
        definition: Callable[[], ProfileDefinition],
        size: int = 20_000,
        fresh_seconds: Callable[[], float] = lambda: math.inf,
        scorer: Scorer | None = None,
    ) -> None:
        self._load = load
        self._scorer = scorer
        self._definition = definition
        self._size = size
        self._fresh = fresh_seconds
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: survivor -> the ids whose entries hold its profile
        self._by_survivor: dict[str, set[str]] = {}
        #: invalidations so far; fills in flight by the count they started at
        self._stamp = 0
        self._in_flight: dict[int, int] = {}
        #: id -> the stamp of its latest invalidation, kept only while fills are in flight
        self._dropped: dict[str, int] = {}
        self._empty: _Empty | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, customer_id: str, identities: bool = False) -> tuple[Profile | None, dict[str, list[str]] | None]:
        """The customer's profile (None: it has none) and, with ``identities``, its identifiers.
        Raises what ``load`` raises (``nba.errors.Unavailable`` when the database is down)."""
        definition = self._definition()
        with self._lock:
            entry = self._entries.get(customer_id)
            if (
                entry is not None
                and entry.definition is definition
                and (not identities or entry.identities is not None or entry.profile is None)
                and time.monotonic() - entry.filled <= self._fresh()
            ):
                self._entries.move_to_end(customer_id)
                metrics.PROFILE_CACHE.labels("hit").inc()
                return entry.profile, entry.identities
            started = self._begin()
        metrics.PROFILE_CACHE.labels("miss").inc()
        filled = time.monotonic()
        try:
            profile, found = self._load(customer_id, identities)
        except BaseException:
            with self._lock:
                self._end(started)
            raise
        with self._lock:
            ids = [customer_id] if profile is None else [customer_id, profile.customer_id]
            if self._end(started, ids):
                self._put(customer_id, _Entry(profile, definition, filled, found))
        return profile, found

    def view(self, customer_id: str, now: float) -> ProfileView:
        """What a decision reads: the profile's values at ``now`` (epoch seconds), personal
        ones apart. A customer no event has named reads as an empty profile (version 0): a
        count of their complaints is 0, not missing."""
        profile, _ = self.get(customer_id)
        if profile is None:
            return self._empty_view(customer_id)
        return _view(profile, profile.customer_id, now, self._scorer)

    def _empty_view(self, customer_id: str) -> ProfileView:
        # an empty profile's values do not depend on time or customer: made once per definition
        definition = self._definition()
        empty = self._empty
        if empty is None or empty.definition is not definition:
            self._empty = empty = _Empty(definition, _view(Profile(definition, "", 0.0), "", 0.0))
        learnable = empty.view.learnable
        if self._scorer is not None and definition.scores:  # the models move on: scored at each read
            learnable = {**learnable, "scores": self._scorer({k: v for k, v in learnable.items() if k != "segments"})}
        return ProfileView(customer_id, 0, learnable, empty.view.private, definition.consent)

    def begin(self) -> int:
        """Before a write that will hand its profiles to ``saved``: the stamp to hand back."""
        with self._lock:
            return self._begin()

    def saved(self, started: int, profiles: Iterable[tuple[Profile, Iterable[str]]]) -> None:
        """After this process committed: each saved profile with the ids it absorbed. The
        absorbed ids and everything cached for the profile are dropped, and the profile kept
        unless another process changed it since ``started``."""
        with self._lock:
            changed = [(p, [p.customer_id, *absorbed]) for p, absorbed in profiles]
            ids = [i for _, each in changed for i in each]
            keep = self._end(started, ids)
            # as an invalidation: a read (or another tracker's save) of these ids that began
            # before this commit holds an older profile and must not be kept over this one
            self._stamp_dropped(ids)
            for profile, each in changed:
                self._drop(each)
                if keep:
                    self._put(profile.customer_id, _Entry(profile, profile.definition, time.monotonic()))

    def invalidate(self, ids: Iterable[str]) -> None:
        """Another process changed these customers' profiles (survivors and absorbed ids)."""
        with self._lock:
            ids = list(ids)
            self._stamp_dropped(ids)
            self._drop(ids)

    def clear(self) -> None:
        """Every entry dropped (invalidations may have been missed)."""
        with self._lock:
            self._stamp += 1
            self._entries.clear()
            self._by_survivor.clear()
            if self._in_flight:
                self._dropped["*"] = self._stamp

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"profiles": len(self._entries), "size": self._size}

    # under the lock

    def _stamp_dropped(self, ids: list[str]) -> None:
        self._stamp += 1
        if self._in_flight:
            for customer_id in ids:
                self._dropped[customer_id] = self._stamp

    def _begin(self) -> int:
        self._in_flight[self._stamp] = self._in_flight.get(self._stamp, 0) + 1
        return self._stamp

    def _end(self, started: int, ids: Iterable[str] = ()) -> bool:
        """Ends a fill; whether what it read may be kept (no id of it invalidated since)."""
        dropped = self._dropped
        keep = all(dropped.get(i, -1) <= started for i in ids) and dropped.get("*", -1) <= started
        left = self._in_flight[started] - 1
        if left:
            self._in_flight[started] = left
        else:
            del self._in_flight[started]
        if not self._in_flight:
            dropped.clear()  # a fill from now on starts after every invalidation so far
        return keep

    def _put(self, key: str, entry: _Entry) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        self._entries[key] = entry
        self._by_survivor.setdefault(entry.survivor or key, set()).add(key)
        while len(self._entries) > self._size:
            evicted, gone = self._entries.popitem(last=False)
            self._unindex(evicted, gone)

    def _unindex(self, key: str, entry: _Entry) -> None:
        survivor = entry.survivor or key
        keys = self._by_survivor.get(survivor)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_survivor[survivor]

    def _drop(self, ids: Iterable[str]) -> None:
        for customer_id in ids:
            for key in [customer_id, *self._by_survivor.pop(customer_id, ())]:
                entry = self._entries.pop(key, None)
                if entry is not None and entry.survivor not in (None, customer_id):
                    self._unindex(key, entry)
