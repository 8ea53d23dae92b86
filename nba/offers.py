"""Offers: what the business may propose, as a marketer writes it in the catalogue.

The schema is strict (unknown keys are refused) so that a misspelt key (``eligibilty``) is an
error at load time rather than an offer that silently matches everyone.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["CatalogueFile", "Offer"]

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=128)]


class Offer(BaseModel):
    """One offer. Only ``id``, ``name`` and ``channels`` are required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    name: str = Field(min_length=1)
    description: str = ""
    #: retention, cross-sell, up-sell, service, ...: what later policies apply to
    group: str = ""
    channels: list[Identifier] = Field(min_length=1)
    #: business value of an acceptance; the ranking weighs the learner's estimate by it
    value: float = Field(default=1.0, ge=0)
    #: CEL over the request; an offer is a candidate only where it yields true
    eligibility: str = "true"
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    #: the channel's content key; channels without one use the offer id
    treatment: dict[str, str] = Field(default_factory=dict)
    #: returned on its channels when nothing else is eligible (one per channel)
    fallback: bool = False
    tags: list[str] = Field(default_factory=list)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

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

    def live_at(self, now: datetime) -> str | None:
        """Returns why the offer is outside its dates at ``now``, or None when it is live."""
        if self.valid_from is not None and now < self.valid_from:
            return "not_yet_valid"
        if self.valid_until is not None and now >= self.valid_until:
            return "expired"
        return None


class CatalogueFile(BaseModel):
    """One ``*.yaml`` file of the catalogue: any mix of channel declarations and offers."""

    model_config = ConfigDict(extra="forbid")

    channels: list[Identifier] = Field(default_factory=list)
    offers: list[Offer] = Field(default_factory=list)
