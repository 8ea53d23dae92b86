"""Local days: where a day begins and ends in a policy set's timezone, whatever its offset.

Daily budgets, even pacing and schedules follow the set's timezone (``settings.timezone``).
A local day runs from its first instant to the next day's first instant, so it lasts 24 hours,
or 23 and 25 on the days daylight saving starts and ends; it begins at local midnight, or
where a clock change skips midnight (Africa/Cairo's spring change at 00:00), at the change.
Offsets of any size are exact: half hours (Asia/Kolkata, +05:30), quarter hours
(Asia/Kathmandu, +05:45; Pacific/Chatham, +12:45 and +13:45), negative half hours
(America/St_Johns, -03:30 and -02:30).

``LocalDay`` gives its bounds in epoch seconds and its spans of constant UTC offset, which is
what pacing needs to count real time (not clock time) across a clock change. Days are cached
per zone and date.

    >>> from zoneinfo import ZoneInfo
    >>> day = local_day(ZoneInfo("Europe/London"), date(2026, 3, 29))   # clocks go forward
    >>> (day.end - day.start) / 3600
    23.0
    >>> day = day_of(ZoneInfo("Asia/Kolkata"), datetime(2026, 11, 24, 18, 29, tzinfo=UTC))
    >>> day.date, datetime.fromtimestamp(day.start, UTC).isoformat()
    (datetime.date(2026, 11, 24), '2026-11-23T18:30:00+00:00')
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["BUCKET_SECONDS", "LocalDay", "day_of", "local_day", "misaligned_day"]

#: contact counters are kept per quarter hour (UTC): every local day of every zone in use
#: today begins on a quarter hour, so a day is an exact run of buckets
BUCKET_SECONDS = 900
#: how finely a day is searched for clock changes (none comes within this of another)
_PROBE_SECONDS = 900


@dataclass(frozen=True, slots=True)
class LocalDay:
    """One day of one timezone."""

    zone: ZoneInfo
    date: date
    #: its first instant, and the next day's (epoch seconds)
    start: float
    end: float
    #: (from, to, UTC offset in seconds) covering [start, end), in order
    spans: tuple[tuple[float, float, float], ...]
    #: the day's 00:00 clock time as if it were UTC: clock time of day = at + offset - this
    clock_base: float = 0.0

    @property
    def seconds(self) -> float:
        """How long it lasts: 86,400 seconds, or 82,800 and 90,000 on clock-change days."""
        return self.end - self.start

    def fraction(self, at: float) -> float:
        """The share of the day passed at ``at`` (epoch seconds), in real time, in [0, 1]."""
        return min(1.0, max(0.0, (at - self.start) / (self.end - self.start)))

    @property
    def label(self) -> str:
        """``2026-11-24@Asia/Kolkata``: names the day unambiguously across zones."""
        return f"{self.date.isoformat()}@{self.zone.key}"


def _local_date(zone: ZoneInfo, at: float) -> date:
    return datetime.fromtimestamp(at, zone).date()


def _offset(zone: ZoneInfo, at: float) -> float:
    offset = datetime.fromtimestamp(at, zone).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def _first_instant(zone: ZoneInfo, day: date) -> float:
    """The first instant whose local date is ``day``."""
    midnight = datetime.combine(day, time())
    a = midnight.replace(tzinfo=zone, fold=0).timestamp()
    b = midnight.replace(tzinfo=zone, fold=1).timestamp()
    low, high = min(a, b), max(a, b)
    if _local_date(zone, low) == day:
        return low  # midnight exists (the first of two, when it repeats)
    # Midnight falls in a gap: the day begins at the clock change, somewhere in between.
    lo, hi = int(low), int(high)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _local_date(zone, mid) == day:
            hi = mid
        else:
            lo = mid
    return float(hi)


def _change(zone: ZoneInfo, lo: float, hi: float) -> float:
    """The first second in (lo, hi] whose offset differs from lo's."""
    before = _offset(zone, lo)
    a, b = int(lo), int(hi)
    while b - a > 1:
        mid = (a + b) // 2
        if _offset(zone, mid) == before:
            a = mid
        else:
            b = mid
    return float(b)


@functools.lru_cache(maxsize=4096)
def local_day(zone: ZoneInfo, day: date) -> LocalDay:
    """The local day ``day`` in ``zone``."""
    start = _first_instant(zone, day)
    end = _first_instant(zone, day + timedelta(days=1))
    spans: list[tuple[float, float, float]] = []
    at, offset = start, _offset(zone, start)
    previous = start
    probes = [start + i * _PROBE_SECONDS for i in range(1, int((end - start) // _PROBE_SECONDS) + 1)]
    for probe in [*(p for p in probes if p < end - 1), end - 1]:
        if _offset(zone, probe) != offset:
            change = _change(zone, previous, probe)
            spans.append((at, change, offset))
            at, offset = change, _offset(zone, change)
        previous = probe
    spans.append((at, end, offset))
    clock_base = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return LocalDay(zone, day, start, end, tuple(spans), clock_base)


def day_of(zone: ZoneInfo, at: datetime) -> LocalDay:
    """The local day in ``zone`` that ``at`` (timezone-aware) falls in."""
    return local_day(zone, at.astimezone(zone).date())


@functools.lru_cache(maxsize=256)
def misaligned_day(zone: ZoneInfo, first: date, days: int = 800) -> date | None:
    """The first of ``days`` local days from ``first`` that does not begin on a quarter hour
    (UTC), or None: budget days are counted in quarter-hour buckets, so a zone whose days
    begin elsewhere (none in use today; some historical local mean times) cannot be counted
    exactly."""
    for i in range(days):
        day = first + timedelta(days=i)
        if _first_instant(zone, day) % BUCKET_SECONDS:
            return day
    return None
