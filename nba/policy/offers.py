"""Offers and groups: what the business may propose, as a marketer writes it.

The schema is strict (unknown keys are refused) so that a misspelt key (``eligibilty``) is an
error at load time rather than an offer that silently matches everyone.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, WithJsonSchema, field_validator, model_validator

if TYPE_CHECKING:
    from nba.days import LocalDay

__all__ = ["DAYS", "MAX_LEVER", "MAX_VALUE", "Group", "Offer", "Schedule"]

#: the largest business value of an offer (its currency's units)
MAX_VALUE = 1e9
#: the largest lever of an offer or a group: value x lever x group lever stays below 1e15,
#: so every score and explanation is a finite number
MAX_LEVER = 1000.0

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=128)]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Status = Literal["live", "draft", "paused", "expired"]
#: a timestamp, or a date meaning midnight UTC
Moment = Annotated[
    datetime | None,
    WithJsonSchema(
        {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}, {"type": "null"}]}
    ),
]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class Schedule(BaseModel):
    """When an offer may be shown, in the policy set's timezone.

    ``hours`` are ``HH:MM-HH:MM`` ranges, start included, end excluded; ``24:00`` ends a range
    at midnight (``00:00-24:00`` is the whole day). A range that ends before it starts runs
    past midnight into the next day: ``days: [fri], hours: ["22:00-02:00"]`` is Friday 22:00
    to Saturday 02:00. A range that starts and ends at the same time is refused (empty).
    Omitted parts impose nothing. Times are clock times: on the day clocks
    go forward, a range inside the skipped hour never comes, and on the day they go back, a
    range inside the repeated hour holds both times.
    """

    # The ranges are parsed once, when the set is compiled, into each weekday's active spans
    # (seconds after midnight, sorted, disjoint): checking a time and measuring the share of
    # a day passed, on every decision, are then a few comparisons.
    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(default=None, min_length=1)
    hours: list[str] | None = Field(default=None, min_length=1)
    #: per weekday (Monday first), the active spans of clock time, in seconds after midnight
    _week: tuple[tuple[tuple[float, float], ...], ...] = PrivateAttr(default=())

    @field_validator("hours")
    @classmethod
    def _ranges(cls, value: list[str] | None) -> list[str] | None:
        for text in value or ():
            _parse_range(text)
        return value

    def model_post_init(self, context: Any, /) -> None:
        week: list[list[tuple[float, float]]] = [[] for _ in DAYS]
        ranges = [_parse_range(text) for text in self.hours] if self.hours is not None else [(0.0, 86400.0)]
        for index, name in enumerate(DAYS):
            if self.days is not None and name not in self.days:
                continue
            for a, b in ranges:
                if a < b:
                    week[index].append((a, b))
                else:  # past midnight: the rest of this day, and the next day up to its end
                    week[index].append((a, 86400.0))
                    week[(index + 1) % 7].append((0.0, b))
        self._week = tuple(_merge(spans) for spans in week)

    def active_at(self, local: datetime) -> bool:
        """Whether the clock time ``local`` (in the set's timezone) is inside the schedule."""
        t = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        for a, b in self.__pydantic_private__["_week"][local.weekday()]:  # type: ignore[index]  # self._week costs ~4 µs
            if a <= t < b:
                return True
        return False

    def day_fraction(self, day: LocalDay, at: float) -> float:
        """The share of the day's scheduled time that has passed at ``at`` (epoch seconds),
        in real time, in [0, 1] (for pacing); 1 on a day with no scheduled time.

        Each span of constant UTC offset of the day maps real time onto clock time by a
        shift, so the scheduled time in it is the overlap of two sets of intervals: exact,
        also across a clock change."""
        spans = self.__pydantic_private__["_week"][day.date.weekday()]  # type: ignore[index]
        total = passed = 0.0
        base = day.clock_base
        for start, end, offset in day.spans:
            shift = offset - base  # clock time of day = real time + shift, within this span
            clock_start, clock_end, clock_now = start + shift, end + shift, at + shift
            for a, b in spans:
                low, high = max(a, clock_start), min(b, clock_end)
                if high > low:
                    total += high - low
                    if clock_now > low:
                        passed += min(high, clock_now) - low
        return passed / total if total else 1.0


def _merge(spans: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Sorted, disjoint spans covering the same time."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)


def _seconds(t: time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


_END_OF_DAY = re.compile(r"^24(?::00){1,2}$")


def _parse_range(text: str) -> tuple[float, float]:
    """A range ``HH:MM-HH:MM`` as seconds after midnight (start, end); 24:00 is the end of the
    day. An end before the start runs past midnight into the next day."""
    parts = [part.strip() for part in text.split("-")]
    try:
        if len(parts) != 2:
            raise ValueError
        begins = time.fromisoformat(parts[0])
        clock = None if _END_OF_DAY.match(parts[1]) else time.fromisoformat(parts[1])
    except ValueError:
        if parts and _END_OF_DAY.match(parts[0]):
            raise ValueError(f"{text!r}: 24:00 may only end a range (a day starts at 00:00)") from None
        raise ValueError(
            f"{text!r} is not a range like 09:00-17:30 (00:00-24:00 is the whole day; "
            "22:00-02:00 runs past midnight into the next day)"
        ) from None
    if begins.tzinfo is not None or (clock is not None and clock.tzinfo is not None):
        raise ValueError(f"{text!r}: hours are in the policy set's timezone (settings.timezone); drop the offset")
    start, end = _seconds(begins), 86400.0 if clock is None else _seconds(clock)
    if start == end:
        raise ValueError(f"{text!r} is empty (starts and ends at the same time); 00:00-24:00 is the whole day")
    return start, end


class Group(BaseModel):
    """A family of offers (retention, cross-sell, ...) that policies and levers apply to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    #: multiplies the score of every offer in the group
    lever: float = Field(default=1.0, ge=0, le=MAX_LEVER)

    @field_validator("lever")
    @classmethod
    def _finite_lever(cls, value: float) -> float:
        return _finite(value)


class Offer(BaseModel):
    """One offer. Only ``id``, ``name`` and ``channels`` are required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    name: str = Field(min_length=1)
    description: str = ""
    #: retention, cross-sell, up-sell, service, ...: what group policies and levers apply to
    group: str = ""
    channels: list[Identifier] = Field(min_length=1)
    #: business value of an acceptance; the ranking weighs the learner's estimate by it
    value: float = Field(default=1.0, ge=0, le=MAX_VALUE)
    #: multiplies the score: push (> 1) or hold back (< 1) an offer without retraining
    lever: float = Field(default=1.0, ge=0, le=MAX_LEVER)
    #: CEL over the request; an offer is a candidate only where it yields true
    eligibility: str = "true"
    #: only live offers are ever returned
    status: Status = "live"
    valid_from: Moment = None
    valid_until: Moment = None
    schedule: Schedule | None = None
    #: the channel's content key; channels without one use the offer id
    treatment: dict[str, str] = Field(default_factory=dict)
    #: returned on its channels when nothing else is eligible (one per channel)
    fallback: bool = False
    tags: list[str] = Field(default_factory=list)

    @field_validator("value", "lever")
    @classmethod
    def _finite_numbers(cls, value: float) -> float:
        return _finite(value)

    @field_validator("valid_from", "valid_until", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        # YAML reads `2026-01-01` as a date and a time without offset as naive: both mean UTC.
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("eligibility")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a CEL expression (omit it to make the offer eligible for everyone)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Offer:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels lists a channel twice: {self.channels}")
        if self.valid_from and self.valid_until and self.valid_from >= self.valid_until:
            raise ValueError(
                f"valid_from ({self.valid_from.isoformat()}) must be before valid_until ({self.valid_until.isoformat()})"
            )
        stray = sorted(set(self.treatment) - set(self.channels))
        if stray:
            raise ValueError(
                f"treatment names channels the offer is not on: {', '.join(stray)} "
                f"(the offer's channels: {', '.join(self.channels)})"
            )
        return self

    def treatment_for(self, channel: str) -> str:
        return self.treatment.get(channel, self.id)

    def outside(self, now: datetime, local: datetime) -> tuple[str, str] | None:
        """Why the offer cannot be shown at this time (reason, detail), or None."""
        if self.status != "live":
            return "status", self.status
        if self.valid_from is not None and now < self.valid_from:
            return "not_yet_valid", f"valid from {self.valid_from.isoformat()}"
        if self.valid_until is not None and now >= self.valid_until:
            return "expired", f"valid until {self.valid_until.isoformat()}"
        if self.schedule is not None and not self.schedule.active_at(local):
            return "schedule", f"outside its schedule at {local.strftime('%a %H:%M')}"
        return None

    def as_cel(self) -> dict[str, Any]:
        """The ``offer`` variable of rules."""
        return {
            "id": self.id,
            "name": self.name,
            "group": self.group,
            "value": float(self.value),
            "lever": float(self.lever),
            "tags": list(self.tags),
            "channels": list(self.channels),
        }
