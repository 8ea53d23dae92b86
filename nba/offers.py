"""Offers and groups: what the business may propose, as a marketer writes it.

The schema is strict (unknown keys are refused) so that a misspelt key (``eligibilty``) is an
error at load time rather than an offer that silently matches everyone.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

__all__ = ["DAYS", "Group", "Offer", "Schedule"]

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=128)]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Status = Literal["live", "draft", "paused", "expired"]
#: a timestamp, or a date meaning midnight UTC
Moment = Annotated[
    datetime | None,
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}, {"type": "null"}]}),
]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class Schedule(BaseModel):
    """When an offer may be shown, in the policy set's timezone.

    ``hours`` are ``HH:MM-HH:MM`` ranges; a range that ends before it starts runs past
    midnight (``22:00-02:00``). Omitted parts impose nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(default=None, min_length=1)
    hours: list[str] | None = Field(default=None, min_length=1)

    @field_validator("hours")
    @classmethod
    def _ranges(cls, value: list[str] | None) -> list[str] | None:
        for text in value or ():
            _parse_range(text)
        return value

    def _ranges_parsed(self) -> list[tuple[time, time]]:
        return [_parse_range(text) for text in self.hours or ()]

    def active_at(self, local: datetime) -> bool:
        if self.days is not None and DAYS[local.weekday()] not in self.days:
            return False
        if self.hours is None:
            return True
        t = local.time()
        for start, end in self._ranges_parsed():
            if (start <= t < end) if start < end else (t >= start or t < end):
                return True
        return False

    def day_fraction(self, local: datetime) -> float:
        """The share of today's active time that has passed at ``local`` (for pacing)."""
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        total = elapsed = 0.0
        step = timedelta(minutes=5)
        t = midnight
        # Five-minute resolution: exact enough for pacing, and simple for any set of ranges.
        while t < midnight + timedelta(days=1):
            if self.active_at(t):
                total += 1
                if t < local:
                    elapsed += 1
            t += step
        return elapsed / total if total else 1.0


def _parse_range(text: str) -> tuple[time, time]:
    try:
        start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"{text!r} is not a range like 09:00-17:30") from None
    if start.tzinfo is not None or end.tzinfo is not None:
        raise ValueError(f"{text!r}: hours are in the policy set's timezone (settings.timezone); drop the offset")
    if start == end:
        raise ValueError(f"{text!r} is empty (starts and ends at the same time)")
    return start, end


class Group(BaseModel):
    """A family of offers (retention, cross-sell, ...) that policies and levers apply to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    #: multiplies the score of every offer in the group
    lever: float = Field(default=1.0, ge=0)

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
    value: float = Field(default=1.0, ge=0)
    #: multiplies the score: push (> 1) or hold back (< 1) an offer without retraining
    lever: float = Field(default=1.0, ge=0)
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
                f"valid_from ({self.valid_from.isoformat()}) must be before "
                f"valid_until ({self.valid_until.isoformat()})"
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
