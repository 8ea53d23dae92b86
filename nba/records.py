"""The records the parts hand each other, and the rules of their shape that storage applies.

A decision (``DecisionRecord``) is made by ``nba.decision`` and logged by ``nba.storage``; a
feedback event (``FeedbackEvent``) is checked by ``nba.learning.feedback`` and made durable by
storage, which returns a ``FeedbackResult`` and the ``LearningEvent`` the learner applies;
contacts (``ContactEvent``) flow from decisions and feedback into the contact history. Keeping
them here, below every part, lets storage write and read them without importing the logic of
the parts that make them.

The decision's candidates are kept compactly (``eligible_block``, ``expand_candidates``): one
base64 block of float64 rows for the eligible offers, grouped rows for the filtered ones.

A (decision, offer) pair is one observation for the learner, however many events report on
it. Its reward is that of its furthest outcome:

    impressed (stage 1) < clicked (stage 2) < rejected (stage 3) < accepted (stage 4)

The first event of a pair teaches the learner the observation with that event's reward; a
further outcome (a click after the impression) revises the reward of the same observation; an
outcome that is not further (an impression after the acceptance, a second click) is stored
but changes nothing (``applied`` is false). An acceptance outranks a rejection (a customer who
said no and then yes did accept). So the learner ends in the same place whatever order the
events arrive in, and a pair is never counted twice.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from nba.errors import InvalidArgument

__all__ = [
    "NO_RESPONSE",
    "OUTCOMES",
    "PSEUDONYM_PREFIX",
    "ContactEvent",
    "DecisionRecord",
    "FeedbackEvent",
    "ProfileView",
    "FeedbackResult",
    "LearningEvent",
    "PairState",
    "RewardWindows",
    "candidates_block",
    "eligible_block",
    "expand_candidates",
    "first_explored",
    "offer_value",
    "resolve",
]

#: the outcome recorded when a decision's reward window closes without feedback
NO_RESPONSE = "no_response"
#: how the keyed pseudonym of a forgotten customer begins (``nba.governance.erasure.Pseudonyms``)
PSEUDONYM_PREFIX = "anon-"

#: outcome name -> stage; names match the proto enum without its OUTCOME_ prefix
OUTCOMES: dict[str, int] = {"impressed": 1, "clicked": 2, "rejected": 3, "accepted": 4}


@dataclass(frozen=True)
class FeedbackEvent:
    event_id: str
    decision_id: str
    offer_id: str
    outcome: str
    reward: float
    occurred_at: datetime
    received_at: datetime
    #: the decision's context features, carried for learning
    features: dict[str, Any]
    #: the decision's customer and channel, and the offer's group: for contact history
    customer_id: str = ""
    channel: str = ""
    group: str = ""
    #: when the decision was made: the reward windows run from it
    decided_at: datetime | None = None
    #: the offer as the decision answered it, for the overview's rollups (nba.storage.rollups):
    #: its slot (1: first), propensity, the decision's eligible offers, the offer's value
    slot: int = 0
    propensity: float = 0.0
    eligible: int = 0
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise InvalidArgument(f"outcome: must be one of {', '.join(OUTCOMES)}")
        if not math.isfinite(self.reward):
            raise InvalidArgument(f"reward: must be a finite number, got {self.reward}")


@dataclass(frozen=True)
class RewardWindows:
    """How long after a decision each outcome still counts, in seconds, and the reward of an
    offer that got no feedback at all by the time the longest window closed."""

    seconds: Mapping[str, float]
    default_reward: float = 0.0

    @property
    def longest(self) -> float:
        return max(self.seconds.values())

    def late(self, outcome: str, decided_at: datetime, received_at: datetime) -> bool:
        return (received_at - decided_at).total_seconds() > self.seconds[outcome]


@dataclass(frozen=True)
class PairState:
    """What the learner already holds for a (decision, offer): its stage and reward."""

    stage: int
    reward: float


@dataclass(frozen=True)
class FeedbackResult:
    duplicate: bool
    applied: bool
    #: the pair's reward after this event
    reward: float
    #: the stored row's id (learning order); None for duplicates
    feedback_id: int | None = None
    #: the pair's reward before this event, when the event revises an earlier one
    previous_reward: float | None = None
    #: the event arrived after its outcome's reward window: stored, not learned
    late: bool = False


def resolve(previous: PairState | None, event: FeedbackEvent) -> tuple[bool, PairState, float | None]:
    """Decides what ``event`` changes: (applied, the pair's new state, reward it replaces).

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> click = FeedbackEvent("e2", "d", "o", "clicked", 0.3, t, t, {})
    >>> resolve(PairState(1, 0.0), click)
    (True, PairState(stage=2, reward=0.3), 0.0)
    >>> resolve(PairState(3, 1.0), click)
    (False, PairState(stage=3, reward=1.0), None)
    """
    stage = OUTCOMES[event.outcome]
    if previous is None:
        return True, PairState(stage, event.reward), None
    if stage > previous.stage:
        return True, PairState(stage, event.reward), previous.reward
    return False, previous, None


@dataclass(frozen=True)
class LearningEvent:
    feedback_id: int
    features: Mapping[str, Any]
    offer_id: str
    reward: float
    #: set when the event revises a reward the learner already holds
    previous_reward: float | None
    received_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ContactEvent:
    customer_id: str
    #: seconds since the epoch
    at: float
    kind: str
    offer_id: str
    group: str
    channel: str


@dataclass(frozen=True)
class ProfileView:
    """A stored customer profile as one decision reads it (``nba.profiles`` makes it)."""

    #: the profile's customer (the survivor, when the decision named a merged id)
    customer_id: str
    #: events applied to the profile: what the decision log records as ``profile_version``
    version: int
    #: attribute and computed attribute values that may be logged and learned from, by name
    learnable: Mapping[str, Any]
    #: the personal (pii) ones: rules read them, nothing logs or learns from them
    private: Mapping[str, Any]
    #: consent attributes: their stored value wins over the request's ``context.profile.NAME``
    pinned: frozenset[str] = frozenset()


@dataclass
class DecisionRecord:
    """One decision, as logged and as answered."""

    decision_id: str
    request_id: str | None
    customer_id: str
    channel: str
    created_at: datetime
    policy_version: str
    model_version: str
    #: the context, flattened to dotted keys (lossless: the nested context can be rebuilt)
    features: dict[str, Any]
    #: every offer on the channel, compactly: "filtered" [reason, policy, detail, [offers]];
    #: "eligible" {"ids", "numbers": base64 of little-endian float64 rows (predicted, value,
    #: lever, weight, score, probability), "errors": [[index, detail]]}; "fallback"
    #: [offer, eligible, reason, policy, detail] or None. ``candidate_list`` gives the
    #: documented one-dict-per-offer form.
    candidates: dict[str, Any]
    #: the offers answered, best first: offer_id, name, score, propensity, treatment, slot,
    #: fallback, group
    offers: list[dict[str, Any]] = field(default_factory=list)
    #: how exploration turned scores into probabilities (not logged)
    exploration: str = ""
    #: every offer of the set as this decision saw it, when asked for (not logged)
    explanation: list[dict[str, Any]] | None = None
    #: the version of the stored profile the decision read (None: none was read)
    profile_version: int | None = None

    def offer(self, offer_id: str) -> dict[str, Any] | None:
        return next((o for o in self.offers if o["offer_id"] == offer_id), None)

    def candidate_list(self) -> list[dict[str, Any]]:
        """One dict per offer on the channel, as exported: filtered ones, eligible ones (with
        slot, propensity and explored when answered), then the fallback."""
        return expand_candidates(self.candidates, self.offers)


def _numbers(block: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(block.get("numbers") or ""), dtype="<f8").reshape(-1, 6)


def offer_value(block: Mapping[str, Any], offer_id: str) -> float:
    """An eligible offer's value as the decision weighed it (``eligible_block``'s value column),
    or 0.0 for an offer that was not eligible (a fallback)."""
    ids = block.get("ids") or []
    try:
        index = ids.index(offer_id)
    except ValueError:
        return 0.0
    return float(_numbers(block)[index, 1])


def first_explored(record: DecisionRecord) -> bool:
    """Whether the decision's first slot was drawn by exploration: not the best-scored eligible
    offer (as ``nba_explored_decisions_total`` counts it)."""
    if not record.offers or record.offers[0].get("fallback"):
        return False
    flag = record.offers[0].get("explored")
    if flag is not None:  # the decider's own verdict, logged with the offer
        return bool(flag)
    block = record.candidates.get("eligible") or {}
    ids = block.get("ids") or []
    if offers_index := [i for i, offer_id in enumerate(ids) if offer_id == record.offers[0]["offer_id"]]:
        scores = _numbers(block)[:, 4]
        return bool(scores[offers_index[0]] < scores.max())  # as the decider judges it: strictly below the best
    return False


def eligible_block(ids: Sequence[str], numbers: np.ndarray, errors: list[list[Any]]) -> dict[str, Any]:
    """The eligible offers of a decision as logged: ``numbers`` is an (n, 6) array of
    (predicted, value, lever, weight, score, probability) per offer, kept as base64 of
    little-endian float64 (exact, and a tenth of the size of JSON numbers); ``errors`` are
    [index, detail] pairs for offers whose weights failed."""
    return {"ids": list(ids), "numbers": base64.b64encode(numbers.astype("<f8").tobytes()).decode(), "errors": errors}


def candidates_block(
    filtered: Iterable[tuple[str, str | None, str | None, str | None]],
    eligible: dict[str, Any] | None,
    fallback: list[Any] | None,
) -> dict[str, Any]:
    """A decision's candidates as logged: ``filtered`` (offer id, reason, policy, detail) for
    every offer screened out, grouped into one row per (reason, policy, detail) with its
    offers; ``eligible`` from ``eligible_block``; ``fallback`` as [offer, eligible, reason,
    policy, detail] or None. Rows, not a dict per offer: a decision over a thousand offers
    would otherwise build (and log) a thousand dicts. ``expand_candidates`` reverses it."""
    groups: dict[tuple[str | None, str | None, str | None], list[str]] = {}
    for offer_id, reason, policy, detail in filtered:
        key = (reason, policy, detail)
        members = groups.get(key)
        if members is None:
            members = groups[key] = []
        members.append(offer_id)
    return {
        "filtered": [[reason, policy, detail, members] for (reason, policy, detail), members in groups.items()],
        "eligible": eligible,
        "fallback": fallback,
    }


def expand_candidates(candidates: Any, offers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(candidates, list):  # logged before candidates were kept as rows
        return candidates
    answered = {o["offer_id"]: o for o in offers}
    out: list[dict[str, Any]] = []
    for reason, policy, detail, members in candidates.get("filtered", ()):
        for offer_id in members:
            entry: dict[str, Any] = {"offer_id": offer_id, "eligible": False, "reason": reason}
            if policy:
                entry["policy"] = policy
            if detail:
                entry["detail"] = detail
            out.append(entry)
    block = candidates.get("eligible") or {"ids": [], "numbers": "", "errors": []}
    numbers = np.frombuffer(base64.b64decode(block["numbers"]), dtype="<f8").reshape(-1, 6)
    errors = dict(block.get("errors", ()))
    for i, offer_id in enumerate(block["ids"]):
        predicted, value, lever, weight, score, probability = numbers[i].tolist()
        entry = {
            "offer_id": offer_id,
            "eligible": True,
            "predicted": predicted,
            "value": value,
            "lever": lever,
            "weight": weight,
            "score": score,
            "probability": probability,
        }
        if i in errors:
            entry["detail"] = errors[i]
        chosen = answered.get(offer_id)
        if chosen is not None:
            entry.update(slot=chosen["slot"], propensity=chosen["propensity"], explored=chosen.get("explored", False))
        out.append(entry)
    fallback = candidates.get("fallback")
    if fallback:
        offer_id, eligible, reason, policy, detail = fallback
        entry = {"offer_id": offer_id, "eligible": eligible, "fallback": True}
        if eligible:
            entry.update(slot=1, propensity=1.0, probability=1.0)
        else:
            entry["reason"] = reason
            if policy:
                entry["policy"] = policy
            if detail:
                entry["detail"] = detail
        out.append(entry)
    return out
