"""The overview: what a business user asks first, over a period and by channel, group and offer,
read from the decision log's rollups (``nba.storage.rollups``), never by scanning the log.

Periods are whole UTC hours (the rollups' grain): ``start`` rounds down to its hour and ``end``
up to the next. Figures of a decision as a whole (decisions, empty, fallback and exploration
rates) count every decision of the channel; a group or offer filter narrows the offers' figures
(answered, outcomes, value, reward, filter reasons). Offers are grouped by the live set's
groups; an offer no longer in the set is grouped under "".

The learner's gain over uniform is the ratio of two inverse-propensity estimates over the same
first-slot feedback (Horvitz & Thompson 1952; as in nba evaluate): the reward the logged choices
earned, and what choosing uniformly among the eligible offers would have earned, weighted by
1 / (eligible × propensity), minus one. It is an estimate with the variance of IPS: read it over
thousands of events, not tens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nba.errors import InvalidArgument

__all__ = [
    "DAY_BUCKETS_AFTER_HOURS",
    "HOUR",
    "SERIES_MEASURES",
    "Figures",
    "Overview",
    "narrowed",
    "overview",
    "period",
    "series_grain",
]

HOUR = 3600
#: periods longer than this many hours are charted by day, shorter ones by hour
DAY_BUCKETS_AFTER_HOURS = 72
#: the longest period one overview reads (about 2 years of hours)
MAX_HOURS = 24 * 800

#: what the series charts: the rest of the figures are the period's
SERIES_MEASURES = ("decisions", "offered", "impressed", "accepted", "value")


@dataclass
class Figures:
    """The figures of one slice (a channel, a group, an offer, an hour, or everything)."""

    decisions: int = 0
    empty: int = 0
    fallbacks: int = 0
    explored: int = 0
    offered: int = 0
    first: int = 0
    impressions: int = 0
    clicks: int = 0
    acceptances: int = 0
    rejections: int = 0
    value: float = 0.0
    reward: float = 0.0
    feedback_events: int = 0
    lag_seconds: float = 0.0
    lag_events: int = 0
    delay_seconds: float = 0.0
    reward_first: float = 0.0
    uniform_first: float = 0.0

    def add(self, measure: str, value: float) -> None:
        name = _FIELDS.get(measure)
        if name is None:
            return
        current = getattr(self, name)
        setattr(self, name, current + (int(round(value)) if isinstance(current, int) else value))

    @property
    def acceptance_rate(self) -> float:
        """Acceptances per impression (0 with no impressions)."""
        return self.acceptances / self.impressions if self.impressions else 0.0

    @property
    def exploration_rate(self) -> float:
        return self.explored / self.decisions if self.decisions else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.decisions if self.decisions else 0.0

    @property
    def mean_learning_lag_seconds(self) -> float:
        return self.lag_seconds / self.lag_events if self.lag_events else 0.0

    @property
    def mean_feedback_delay_seconds(self) -> float:
        return self.delay_seconds / self.feedback_events if self.feedback_events else 0.0

    @property
    def gain_over_uniform(self) -> float | None:
        """The logged choices' reward over uniform choice's estimate, minus 1 (None: no reward yet)."""
        if self.uniform_first <= 0 or self.reward_first <= 0:
            return None
        return self.reward_first / self.uniform_first - 1.0


_FIELDS = {
    "decisions": "decisions",
    "empty": "empty",
    "fallback": "fallbacks",
    "explored": "explored",
    "offered": "offered",
    "first": "first",
    "impressed": "impressions",
    "clicked": "clicks",
    "accepted": "acceptances",
    "rejected": "rejections",
    "value": "value",
    "reward": "reward",
    "events": "feedback_events",
    "lag_seconds": "lag_seconds",
    "lag_events": "lag_events",
    "delay_seconds": "delay_seconds",
    "reward_first": "reward_first",
    "uniform_first": "uniform_first",
}


@dataclass
class Overview:
    start: datetime
    end: datetime
    #: "hour" or "day": the series' buckets
    bucket: str
    totals: Figures
    by_channel: dict[str, Figures]
    by_group: dict[str, Figures]
    by_offer: dict[str, Figures]
    #: bucket start -> figures (decisions, answered, impressions, acceptances, value), every
    #: bucket of the period, empty ones too
    series: dict[datetime, Figures]
    #: (reason, offer) -> offers screened out
    filter_reasons: dict[tuple[str, str], int] = field(default_factory=dict)


def period(start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """The period as whole UTC hours: ``start`` rounded down, ``end`` (default ``now``) up; no
    ``start``: the 24 hours that end there (this hour and the 23 before it)."""
    end = end or now
    last = -int(-end.timestamp() // HOUR)  # the end rounds up to the next whole hour
    if start is None:  # the 24 whole hours that end there: this hour and the 23 before
        first = last - 24
    else:
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidArgument("start_time: times need a UTC offset")
        if end <= start:
            raise InvalidArgument(f"end_time: {end.isoformat()} is not after start_time {start.isoformat()}", "end_time")
        first = int(start.timestamp() // HOUR)
    if last - first > MAX_HOURS:
        raise InvalidArgument(f"start_time: the period is {last - first:,} hours, more than {MAX_HOURS:,}", "start_time")
    try:
        return datetime.fromtimestamp(first * HOUR, UTC), datetime.fromtimestamp(last * HOUR, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidArgument("end_time: beyond the times the overview can count (years 1 to 9999)", "end_time") from None


def series_grain(start: datetime, end: datetime) -> tuple[int, int]:
    """The series' buckets for a period: (the first bucket's hour, hours a bucket); by hour, or
    past ``DAY_BUCKETS_AFTER_HOURS`` by UTC day (the first from the start's midnight)."""
    first = int(start.timestamp()) // HOUR
    if (end - start).total_seconds() / HOUR > DAY_BUCKETS_AFTER_HOURS:
        return first // 24 * 24, 24
    return first, 1


def overview(
    totals: Iterable[tuple[str, str, str, float]],
    series: Iterable[tuple[int, str, float]],
    start: datetime,
    end: datetime,
    groups: Mapping[str, str],
    group: str = "",
    offer_id: str = "",
) -> Overview:
    """The overview of the period [``start``, ``end``) (whole hours: ``period``) from its rollups:
    ``totals``, each (channel, offer, measure)'s sum over the period, and ``series``, each
    (bucket, measure)'s sum in the buckets of ``series_grain`` (already narrowed to the group or
    offer). An offer's group is ``groups``'s; ``group`` or ``offer_id`` narrow the offers' figures."""
    origin, step = series_grain(start, end)
    end_hour = int(end.timestamp()) // HOUR
    points = [datetime.fromtimestamp(hour * HOUR, UTC) for hour in range(origin, end_hour, step)]
    by_point = {point: Figures() for point in points}
    figures = Figures()
    by_channel: dict[str, Figures] = {}
    by_group: dict[str, Figures] = {}
    by_offer: dict[str, Figures] = {}
    reasons: dict[tuple[str, str], int] = {}
    for channel, offer, measure, value in totals:
        if offer:
            offer_group = groups.get(offer, "")
            if (group and offer_group != group) or (offer_id and offer != offer_id):
                continue
            if measure.startswith("filtered:"):
                key = (measure.removeprefix("filtered:"), offer)
                reasons[key] = reasons.get(key, 0) + int(round(value))
                continue
            by_offer.setdefault(offer, Figures()).add(measure, value)
            by_group.setdefault(offer_group, Figures()).add(measure, value)
        figures.add(measure, value)
        by_channel.setdefault(channel, Figures()).add(measure, value)
    for bucket, measure, value in series:
        if 0 <= bucket < len(points):
            by_point[points[bucket]].add(measure, value)
    return Overview(
        start,
        end,
        "day" if step == 24 else "hour",
        figures,
        dict(sorted(by_channel.items())),
        dict(sorted(by_group.items())),
        dict(sorted(by_offer.items(), key=lambda item: (-item[1].offered, item[0]))),
        by_point,
        dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
    )


def narrowed(groups: Mapping[str, str], group: str = "", offer_id: str = "") -> set[str] | None:
    """The offers a group or offer filter keeps (None: no filter), for the series' query."""
    if offer_id:
        return {offer_id} if not group or groups.get(offer_id, "") == group else set()
    if group:
        return {offer for offer, of in groups.items() if of == group}
    return None
