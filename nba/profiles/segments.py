"""Segments: which named conditions over a customer's profile hold, kept as the profile changes
(streaming segmentation), with the exact time each customer entered and left each one.

A segment is a CEL condition over ``profile`` in the policy set's ``profile:`` section::

    segments:
      frustrated: {when: profile.complaints_30d >= 2, description: Complained twice in 30 days, owner: care}
      lapsed:     {when: profile.days_since_order > 90}

Membership changes for two reasons, and both are dated exactly:

- an event changes the profile: the segments are evaluated at the event's time (an event
  dated before the last evaluation, a late one, at the last evaluation's time: what was
  stated is not rewritten);
- time passes: a windowed computed attribute changes when a contribution leaves its window
  (``State.changes`` lists the moments), and ``days_since`` grows continuously. Between two
  events, the membership is evaluated at every such moment, and a change of a condition over
  ``days_since`` is found by bisection to ``PRECISION`` seconds between probes at growing
  distances (``PROBES``): a condition that holds and fails again between two probes (a band
  narrower than a probe's step) may go unnoticed.

``first_change`` is the one search both use: the tracker dates the changes of an event's
customer with it, and ``nba.profiles.segment_clock`` wakes each profile at its next
time-driven change (``profiles.due_at``) to record it, so sizes and exports follow
the clock, not only events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cel

from nba.policy.profile import ProfileDefinition, Segment

__all__ = ["HORIZON", "LINEAR", "PRECISION", "PROBES", "SegmentChange", "first_change", "members", "time_dependent"]

DAY = 86400.0
#: how far ahead the next time-driven change is looked for; a profile with time-dependent
#: segments and none found is looked at again then
HORIZON = 730 * DAY
#: distances (days) at which conditions over days_since are probed for a change
PROBES = (1, 2, 4, 7, 14, 30, 60, 90, 180, 365, 730)
#: a continuous change is dated to this many seconds
PRECISION = 0.001
#: change moments looked at one by one before the search strides (``first_change``)
LINEAR = 16


@dataclass(frozen=True)
class SegmentChange:
    """A customer entering (``entered``) or leaving a segment at ``at`` (epoch seconds)."""

    segment: str
    at: float
    entered: bool


def members(segments: tuple[Segment, ...], values: Mapping[str, Any]) -> frozenset[str]:
    """The segments whose condition holds for the profile ``values`` (by name; personal data
    included). A condition that cannot be evaluated (a missing attribute) does not hold."""
    if not segments:
        return frozenset()
    context = cel.Context({"profile": dict(values)})
    return frozenset(s.name for s in segments if s.rule.evaluate(context)[0])


def time_dependent(definition: ProfileDefinition) -> tuple[tuple[Segment, ...], frozenset[str], bool]:
    """(the segments whose membership can change with no event, the windowed computed
    attributes they read, whether any reads a continuous one: ``days_since``)."""
    windowed = {c.name for c in definition.computed if c.window is not None}
    continuous = {c.name for c in definition.computed if c.function == "days_since"}
    moving = tuple(s for s in definition.segments if s.reads & (windowed | continuous))
    reads = frozenset().union(*(s.reads for s in moving)) if moving else frozenset()
    return moving, frozenset(reads & windowed), bool(reads & continuous)


def first_change(
    definition: ProfileDefinition,
    values: Callable[[float, frozenset[str]], Mapping[str, Any]],
    change_times: Callable[[str, float, float], list[float]],
    current: frozenset[str],
    after: float,
    until: float,
    exact: bool = True,
) -> tuple[float, frozenset[str]] | None:
    """The first moment in ``(after, until]`` at which the time-dependent segments' membership
    differs from ``current`` with no new event, and the members then (of those segments);
    None when it does not change; not ``exact``, the last moment looked at that agreed when a
    condition over days_since changes (a bound, found without bisecting). ``values(t, names)``:
    the profile's values of ``names`` at t;
    ``change_times(name, after, until)``: when a windowed attribute changes (``State.changes``).

    The first ``LINEAR`` moments are looked at one by one; past them, at doubling steps, and
    a change is then found by bisection between the last moment that agreed and the first
    that did not: a customer with thousands of events in a window costs a few dozen
    evaluations, not thousands. What this can miss is a condition that holds and fails again
    between two looked-at moments (``count == 5`` among thousands of events): conditions are
    expected to be thresholds."""
    moving, windowed, continuous = time_dependent(definition)
    if not moving or until <= after:
        return None
    names = frozenset(s.name for s in moving)
    reads = frozenset().union(*(s.reads for s in moving))
    held = current & names

    def differs(t: float) -> bool:
        return members(moving, values(t, reads)) != held

    found: set[float] = set()
    for name in windowed:
        found.update(change_times(name, after, until))
    if continuous:
        found.update(after + d * DAY for d in PROBES if after + d * DAY < until)
        found.add(until)
    points = sorted(found)
    last = len(points) - 1
    agreed, differing, i, step = -1, None, 0, 1
    while i <= last:
        if differs(points[i]):
            differing = i
            break
        agreed = i
        if i == last:
            break
        if i + 1 < LINEAR:
            i += 1
        else:  # doubling strides, the last moment always looked at
            step *= 2
            i = min(i + step, last)
    if differing is None:
        return None
    while differing - agreed > 1:
        middle = (agreed + differing) // 2
        if differs(points[middle]):
            differing = middle
        else:
            agreed = middle
    t = points[differing]
    if continuous and not exact:  # a moment no later than the change, and the members then (unchanged)
        return (points[agreed] if agreed >= 0 else after), held
    if continuous:  # the change lies somewhere in (previous, t]: bisect to the millisecond
        low, high = (points[agreed] if agreed >= 0 else after), t
        while high - low > PRECISION:
            middle_t = (low + high) / 2
            if differs(middle_t):
                high = middle_t
            else:
                low = middle_t
        t = min(math.ceil(high / PRECISION) * PRECISION, t)  # on the millisecond, within the interval
    return t, members(moving, values(t, reads))
