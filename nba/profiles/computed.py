"""Computed attributes: aggregates of a customer's events, kept up to date on every event and
exact at any later read, without going back to the stored events.

A definition is one line of the policy set's ``profile:`` section (read by
``nba.policy.profile.parse``)::

    FUNCTION(EVENT[.PROPERTY]) [over WINDOW] [where CEL]

    spend_365d:       sum(order.amount) over 365d
    returns_90d:      count(return) over 90d
    last_mood:        last(contact.sentiment)
    channels_used:    distinct(*.source)
    big_orders_30d:   count(order) over 30d where event.properties.amount >= 100.0
    days_since_order: days_since(order)

``EVENT`` is an event type, or ``*`` for every type; ``PROPERTY`` a dotted path in the event's
properties, or ``source`` / ``type``. ``WINDOW`` is elapsed time (``30m``, ``24h``, ``7d``,
``2w``), the half-open interval ``(now - WINDOW, now]`` whatever the time zone; without it, all
time. ``where`` filters events with a CEL expression over ``event`` (``type``, ``source``,
``properties``).

Functions: ``count``, ``sum``, ``avg``, ``min``, ``max`` (numbers; an event without a number
there does not count), ``distinct`` (the distinct values, sorted), ``distinct_count``,
``first`` and ``last`` (by time; equal times by event id, so replays and replicas agree),
``days_since`` (days from the newest matching event to now, all time).

State (``State``): over all time, constant-size aggregates; over a window, the contributions
inside the window (time, event id, value) in order, so that a read at any later time drops
what has left the window, exactly, rather than only when a new event arrives. Late and
out-of-order events are placed by their time. Contributions older than the window's reach
(the newest time seen, minus the window) are dropped, so the state is bounded by the events
of one window.

Stored (``dump``), a window keeps only what its function reads: the times (``t``), the values
(``v``) unless it counts, the event ids (``e``) only for ``first`` and ``last``, whose ties
they break. A state read from storage is parsed when first used: tracking an event loads a
customer's whole profile but touches only the attributes the event's type feeds, and an
untouched state is written back as it was read.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

import cel

from nba.inputs import CLOCK_SKEW
from nba.policy.profile import NUMERIC, ComputedAttribute

__all__ = ["State", "contribution", "matches"]

SKEW_SECONDS = CLOCK_SKEW.total_seconds()


def matches(attribute: ComputedAttribute, event_type: str) -> bool:
    """Whether events of ``event_type`` are read by ``attribute``."""
    return attribute.event == "*" or attribute.event == event_type


def contribution(attribute: ComputedAttribute, event: Mapping[str, Any]) -> tuple[bool, Any]:
    """(counts, value) for an event of a matching type (a mapping with ``type``, ``source``,
    ``properties``): whether it passes the filter and has what the function reads, and the
    value it contributes."""
    if attribute.where is not None:
        passed, _ = attribute.where.evaluate(_event_activation(event))
        if not passed:
            return False, None
    if attribute.property is None:
        return True, None
    if attribute.property in ("source", "type"):
        value: Any = event.get(attribute.property)
    else:
        value = event.get("properties", {})
        for part in attribute.property.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return False, None  # an empty text (an event sent without its source) says nothing
    if attribute.function in NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False, None
        value = float(value)
    elif isinstance(value, Mapping | list):
        return False, None  # only scalars are kept
    return True, value


def _event_activation(event: Mapping[str, Any]) -> Any:
    return cel.Context(
        {
            "event": {
                "type": event.get("type", ""),
                "source": event.get("source", ""),
                "properties": dict(event.get("properties", {})),
            }
        }
    )


class State:
    """One computed attribute's state for one customer. ``add`` an event's contribution (time
    in epoch seconds, event id, value), read ``value(now)``; ``dump``/``load`` round-trip it
    through JSON."""

    __slots__ = ("_count", "_distinct", "_first", "_items", "_last", "_max", "_min", "_newest", "_raw", "_sum", "attribute")

    def __init__(self, attribute: ComputedAttribute) -> None:
        self.attribute = attribute
        #: sliding windows: (time, event id, value) in order, within reach
        self._items: list[tuple[float, str, Any]] = []
        #: all time: the aggregates
        self._count = 0
        self._sum = 0.0
        self._min: float | None = None
        self._max: float | None = None
        self._first: tuple[float, str, Any] | None = None
        self._last: tuple[float, str, Any] | None = None
        self._distinct: dict[str, int] = {}
        #: the newest event time seen: what a window can still reach starts a window before it
        self._newest = -math.inf
        #: as stored, until first used (``load``)
        self._raw: Mapping[str, Any] | None = None

    def add(self, at: float, event_id: str, value: Any) -> None:
        if self._raw is not None:
            self._parse()
        item = (at, event_id, value)
        self._newest = max(self._newest, at)
        window = self.attribute.window
        if window is not None:
            # a read comes at a time no earlier than the newest event less the clock skew
            # (events are refused further ahead), so that is how far back a window can reach
            reach = self._newest - window - SKEW_SECONDS
            if at <= reach:
                return  # older than any window from now on can hold
            bisect.insort(self._items, item, key=_order)
            drop = bisect.bisect_right(self._items, reach, key=lambda i: i[0])
            del self._items[:drop]
            return
        self._count += 1
        if self._first is None or _order(item) < _order(self._first):
            self._first = item
        if self._last is None or _order(item) > _order(self._last):
            self._last = item
        if self.attribute.function in NUMERIC:
            self._sum += value
            self._min = value if self._min is None else min(self._min, value)
            self._max = value if self._max is None else max(self._max, value)
        elif self.attribute.function in ("distinct", "distinct_count"):
            key = _key(value)
            self._distinct[key] = self._distinct.get(key, 0) + 1

    def value(self, now: float) -> Any:
        """The attribute at ``now`` (epoch seconds): None where there is nothing to say (the
        minimum of no orders, the last mood of a customer who never called), 0 for counts and
        sums of nothing."""
        if self._raw is not None:
            self._parse()
        window = self.attribute.window
        if window is None:  # every event accepted counts, those dated within the skew ahead too
            return _result(
                self.attribute.function,
                self._count,
                self._sum,
                self._min,
                self._max,
                self._first,
                self._last,
                sorted(self._distinct),
                now,
            )
        items = self._items
        start = bisect.bisect_right(items, now - window, key=_time)
        end = bisect.bisect_right(items, now, key=_time)
        function = self.attribute.function
        # what needs no pass over the window, without one: segments read a window at every
        # moment one of its events leaves it (nba.profiles.segments)
        if function == "count":
            return end - start
        if function == "first":
            return items[start][2] if end > start else None
        if function == "last":
            return items[end - 1][2] if end > start else None
        inside = items[start:end]
        values = [v for _, _, v in inside]
        numeric = function in NUMERIC
        return _result(
            self.attribute.function,
            len(inside),
            sum(values) if numeric else 0.0,
            min(values) if numeric and values else None,
            max(values) if numeric and values else None,
            inside[0] if inside else None,
            inside[-1] if inside else None,
            sorted({_key(v) for v in values}) if not numeric else [],
            now,
        )

    def changes(self, after: float, until: float) -> list[float]:
        """The times in ``(after, until]`` (epoch seconds) at which the value changes with no new
        event: a window's contribution leaving it (at its time plus the window: the window is
        ``(now - WINDOW, now]``) or, dated ahead within the clock skew, entering it. Empty over
        all time; ``days_since`` changes continuously, which this does not list."""
        if self._raw is not None:
            self._parse()
        window = self.attribute.window
        if window is None:
            return []
        items = self._items
        # items are in time order: the ones that can leave in (after, until] (a second either
        # side, then the exact test: subtracting the window rounds), then the ones entering
        near = items[
            bisect.bisect_right(items, after - window - 1, key=_time) : bisect.bisect_right(items, until - window + 1, key=_time)
        ]
        entering = items[bisect.bisect_right(items, after, key=_time) : bisect.bisect_right(items, until, key=_time)]
        return [t + window for t, _, _ in near if after < t + window <= until] + [t for t, _, _ in entering]

    def dump(self) -> Mapping[str, Any]:
        """The state as plain data for JSON (a state never used since ``load``: as it was read)."""
        if self._raw is not None:
            return self._raw
        newest = self._newest if math.isfinite(self._newest) else None
        if self.attribute.window is not None:
            out: dict[str, Any] = {"t": [i[0] for i in self._items], "newest": newest}
            function = self.attribute.function
            if function in ("first", "last"):
                out["e"] = [i[1] for i in self._items]
            if function != "count":
                out["v"] = [i[2] for i in self._items]
            return out
        return {
            "count": self._count,
            "sum": self._sum,
            "min": self._min,
            "max": self._max,
            "first": list(self._first) if self._first else None,
            "last": list(self._last) if self._last else None,
            "distinct": self._distinct,
            "newest": newest,
        }

    @classmethod
    def load(cls, attribute: ComputedAttribute, data: Mapping[str, Any]) -> State:
        """A state as ``dump`` gave it (parsed when first used)."""
        state = cls(attribute)
        state._raw = data
        return state

    def _parse(self) -> None:
        # Cached profiles are read by many threads: parsing sets every field from the same data
        # (two threads parsing at once write the same values) and clears _raw last, so a thread
        # that sees _raw cleared sees the fields set.
        data = self._raw
        if data is None:
            return
        newest = data.get("newest")
        self._newest = float(newest) if newest is not None else -math.inf
        if self.attribute.window is not None:
            if "items" in data:  # as stored before the compact form
                self._items = [(float(t), str(e), v) for t, e, v in data["items"]]
            else:
                times = data.get("t", [])
                ids = data.get("e") or [""] * len(times)
                values = data.get("v") or [None] * len(times)
                self._items = list(zip(times, ids, values, strict=True))
        else:
            self._count = int(data.get("count", 0))
            self._sum = float(data.get("sum", 0.0))
            self._min, self._max = data.get("min"), data.get("max")
            self._first = tuple(data["first"]) if data.get("first") else None
            self._last = tuple(data["last"]) if data.get("last") else None
            self._distinct = dict(data.get("distinct", {}))
        self._raw = None


def _time(item: tuple[float, str, Any]) -> float:
    return item[0]


def _order(item: tuple[float, str, Any]) -> tuple[float, str]:
    return item[0], item[1]


def _key(value: Any) -> str:
    """A distinct value as text: 3, 3.0 (a number through gRPC's Struct) and "3" are one value,
    whichever path the event came by."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else repr(value)


def _result(
    function: str,
    count: int,
    total: float,
    low: float | None,
    high: float | None,
    first: tuple[float, str, Any] | None,
    last: tuple[float, str, Any] | None,
    distinct: list[str],
    now: float,
) -> Any:
    if function == "count":
        return count
    if function == "sum":
        return total
    if function == "avg":
        return total / count if count else None
    if function == "min":
        return low
    if function == "max":
        return high
    if function == "distinct":
        return distinct
    if function == "distinct_count":
        return len(distinct)
    if function == "first":
        return first[2] if first else None
    if function == "last":
        return last[2] if last else None
    if function == "days_since":
        return max(0.0, (now - last[0]) / 86400.0) if last else None
    raise AssertionError(f"unknown function {function}")
