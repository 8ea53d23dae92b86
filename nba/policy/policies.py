"""Policies: the marketer's rules over offers, as written in the policy set's files.

Each policy has an ``id`` (what a filtered offer reports), a ``type``, and ``applies_to``:
offers, groups and channels it covers (omitted: every offer on every channel)::

    policies:
      - id: not-already-owned              # engagement: a CEL rule that must hold
        type: applicability                #   eligibility | applicability | suitability
        applies_to: {groups: [cross-sell, up-sell]}
        rule: '!(offer.id in customer.history.products)'

      - id: three-impressions-a-week       # contact: at most `max` events in a window
        type: contact_cap
        applies_to: {groups: [cross-sell]}
        max: 3
        window: 7d
        counts: impressed                  #   decided | impressed | clicked | accepted | rejected
        per: offer                         #   offer | group | channel | customer

      - id: quiet-after-no                 # suppression after a rejection or ignored impressions
        type: suppression
        after: rejected                    #   rejected | ignored (with `ignored: N`)
        days: 30

      - id: gold-card-daily                # budget: at most `max` events a day or in total
        type: budget
        applies_to: {offers: [gold-card]}
        max: 100
        counts: accepted
        period: day                        #   day | total
        pacing: even                       #   none | even
        per: offer                         #   offer (each its own) | policy (one shared)

      - id: churners-first                 # arbitration: a context weight (CEL, a number)
        type: weight
        applies_to: {groups: [retention]}
        weight: 'customer.flags.churn_risk ? 2.0 : 1.0'

Rules may use the request variables (``context``, ``customer``, ``channel``, ``customer_id``,
``now``), the offer being screened (``offer.id``, ``offer.group``, ``offer.value``,
``offer.tags``, ...) and the customer's contact history with it (``contacts.impressed``,
``contacts.days_since_accepted``, ...; ``group_contacts`` for its group).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from nba.policy.offers import Identifier, Offer

__all__ = [
    "ENGAGEMENT",
    "EVENT_KINDS",
    "AppliesTo",
    "Budget",
    "ContactCap",
    "EngagementRule",
    "Policy",
    "Suppression",
    "Weight",
    "parse_window",
]

#: the engagement kinds, in the order they are screened
ENGAGEMENT = ("eligibility", "applicability", "suitability")
#: what contact history records, and what caps and budgets count
EVENT_KINDS = ("decided", "impressed", "clicked", "accepted", "rejected")
EventKind = Literal["decided", "impressed", "clicked", "accepted", "rejected"]

#: the longest window or suppression a policy may use
MAX_DAYS = 3650
#: the largest count a cap or budget may allow (``max``)
MAX_COUNT = 1_000_000_000
#: the most impressions in a row a suppression may wait for (``ignored``)
MAX_IGNORED = 1000
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
#: how the published JSON schema describes a window: seconds, or text like 7d
WINDOW_SCHEMA = WithJsonSchema(
    {
        "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(s|m|h|d|w)\s*$"}],
        "description": "a window: 30m, 24h, 7d, 2w, or seconds",
    }
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_window(value: Any) -> float:
    """Seconds in a window written ``90m``, ``24h``, ``7d`` or ``2w`` (or a number of seconds).

    >>> parse_window("7d"), parse_window("90m"), parse_window(30)
    (604800.0, 5400.0, 30.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int) and abs(value) > MAX_DAYS * 86400:
            raise ValueError(f"{value!r} is longer than {MAX_DAYS} days")  # float() of a huge int overflows
        seconds = float(value)
    else:
        match = _WINDOW.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a window like 30m, 24h, 7d or 2w")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    if seconds > MAX_DAYS * 86400:
        raise ValueError(f"{value!r} is longer than {MAX_DAYS} days")
    return seconds


class AppliesTo(BaseModel):
    """What a policy covers: listed offers, offers of listed groups, on listed channels.

    Empty ``offers`` and ``groups`` mean every offer; empty ``channels`` every channel.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    offers: list[Identifier] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    channels: list[Identifier] = Field(default_factory=list)

    def covers(self, offer: Offer) -> bool:
        if not self.offers and not self.groups:
            return True
        return offer.id in self.offers or offer.group in self.groups

    def on(self, channel: str) -> bool:
        return not self.channels or channel in self.channels


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    description: str = ""
    applies_to: Annotated[
        AppliesTo,
        WithJsonSchema(
            {
                "anyOf": [AppliesTo.model_json_schema(), {"const": "all"}],
                "description": "offers, groups and channels covered; omitted or 'all': everything",
            }
        ),
    ] = Field(default_factory=AppliesTo)
    #: a disabled policy is validated but not applied
    enabled: bool = True

    @field_validator("applies_to", mode="before")
    @classmethod
    def _all(cls, value: Any) -> Any:
        return {} if value in ("all", None) else value


class EngagementRule(_Policy):
    """Eligibility (may they ever get it), applicability (does it make sense now),
    suitability (is it right for them): a CEL rule that must yield true."""

    type: Literal["eligibility", "applicability", "suitability"]
    rule: str = Field(min_length=1)


class ContactCap(_Policy):
    """At most ``max`` events of kind ``counts`` to a customer within ``window``, counted for
    the offer, its group, the request's channel, or everything the customer got."""

    type: Literal["contact_cap"]
    max: int = Field(ge=0, le=MAX_COUNT)
    window: Annotated[float, WINDOW_SCHEMA]
    counts: EventKind = "impressed"
    per: Literal["offer", "group", "channel", "customer"] = "offer"

    @field_validator("window", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> float:
        return parse_window(value)


class Suppression(_Policy):
    """No offer (or none of its group) for ``days`` after a rejection, or after ``ignored``
    impressions in a row without a click, acceptance or rejection."""

    type: Literal["suppression"]
    after: Literal["rejected", "ignored"] = "rejected"
    ignored: int = Field(default=3, ge=1, le=MAX_IGNORED)
    days: float = Field(gt=0, le=MAX_DAYS)
    per: Literal["offer", "group"] = "offer"


class Budget(_Policy):
    """At most ``max`` events of kind ``counts`` per day (in the set's timezone) or in total.

    ``per: offer`` gives every covered offer its own budget; ``per: policy`` one budget shared
    by all. ``pacing: even`` spreads a daily budget over the day (over the offer's scheduled
    hours when it has a schedule): by a given time only that share of the day's budget, plus a
    small burst, may be spent.
    """

    type: Literal["budget"]
    max: int = Field(ge=0, le=MAX_COUNT)
    counts: EventKind = "accepted"
    period: Literal["day", "total"] = "day"
    pacing: Literal["none", "even"] = "none"
    per: Literal["offer", "policy"] = "offer"


class Weight(_Policy):
    """A context weight for arbitration: a CEL expression yielding a number that multiplies
    the score of the offers it covers (several weights multiply)."""

    type: Literal["weight"]
    weight: str = Field(min_length=1)


Policy = Annotated[
    EngagementRule | ContactCap | Suppression | Budget | Weight,
    Field(discriminator="type"),
]
