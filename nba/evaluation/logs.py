"""The logged-data contract: what evaluation needs from each decision, and where it comes from.

Per decision (as Open Bandit Pipeline draws it: action, position, reward, propensity,
context): the context features, the eligible offers with the first slot's probability of each
(the logging policy's whole distribution, not just the chosen offer's), each offer's
arbitration multiplier, the offers chosen by slot with their propensities, and the reward of
each chosen offer.

Sources (``nba.evaluation.sources``): the decision log (``from_store``) or JSON Lines
(``from_jsonl``): the format
``nba export`` writes, or a smaller one other systems can produce::

    {"decision_id": "d-1",                               # optional: needed by file: policies
     "features": {"customer.age": 34, ...},              # or "context": {nested}
     "candidates": [{"offer_id": "a", "probability": 0.7, "features": {"price": 9.5}},
                    {"offer_id": "b", "probability": 0.3}],      # "features": optional
     "offers": [{"offer_id": "a", "slot": 1, "propensity": 0.7}],   # or "chosen": "a", "propensity": 0.7
     "rewards": {"a": 1.0},                              # or "reward": 1.0 for the chosen offer
     "decided_at": "2026-11-23T10:00:00Z", "channel": "web"}       # optional

Every line, from either source, passes one validator (``LogLine``, pydantic models with
strict types) before anything is estimated; a line that breaks the contract raises
``LogError`` naming the line and the field. The rules, beyond each field's type:

* ``features`` (flattened) or ``context`` (nested), one of them; no NaN or infinite number in
  either, at most ``MAX_DEPTH`` levels deep;
* ``candidates``: offer ids unique and non-empty; every eligible one (``"eligible"`` absent or
  true) has a ``probability`` in [0, 1], and those probabilities sum to 1 (within 1e-6); a
  candidate's ``features`` (the offer's own features, obp's "action context"), when given, an
  object checked as the context is;
* the chosen offers: ``chosen`` with ``propensity``, or ``offers`` (``offer_id``, ``slot``
  1, 2, ... without gaps, ``propensity``), not both; each an eligible candidate, at most once;
  every propensity in (0, 1], and the first slot's equal to its candidate's ``probability``
  (the logging policy's first-slot probability is the propensity of the first slot; a
  mismatch would bias every estimate silently); the channel's fallback (``"fallback": true``)
  is the only choice, with propensity 1;
* rewards: ``reward`` (of the first slot) or ``rewards`` (offer id -> reward, offers shown
  only), finite and within ``REWARD_LIMIT``; a line without either is refused unless it says
  ``"closed": false`` (its outcome not known yet). An offer shown but absent from ``rewards``
  got no feedback: it counts as ``default_reward``, as the service's own log means it;
* unknown fields are refused (a misspelt field would otherwise be silently absent);
* ``decision_id``, when given, unique within a file (a ``file:`` policy is keyed by it).

Offer features may also come from a catalogue (``read_offers``, ``nba evaluate --offers``):
JSON Lines of ``{"offer_id": "a", "features": {"price": 9.5, "category": "card"}}``, one line an
offer, checked by the same rules (unknown fields refused, ids unique, numbers finite within
±2^53). A candidate's own ``features`` replace the catalogue's for that decision.

Decisions whose reward windows are still open (``"closed": false``) are left out unless asked
for. A decision that answered the channel's fallback (nothing else was eligible) is kept, as a
choice made with probability 1. A decision that answered nothing is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nba.decision import arbitration
from nba.errors import InvalidArgument
from nba.inputs import MAX_CONTEXT_NUMBER, finite_number

__all__ = ["MAX_DEPTH", "REWARD_LIMIT", "LogError", "LogLine", "LoggedDecision", "describe_error", "validate_line", "validated"]

#: largest reward magnitude a log may carry (estimators square weight x reward)
REWARD_LIMIT = 1e6
#: largest magnitude of a logged value, lever, weight, score or prediction
NUMBER_LIMIT = 1e12
#: deepest nesting of a context (the service itself allows 8 levels)
MAX_DEPTH = 32
#: how far the first slot's propensity may stray from its candidate's probability (relative)
PROPENSITY_TOLERANCE = 1e-6


class LogError(InvalidArgument, ValueError):
    """A log line that does not follow the contract; the message names the line and field."""


@dataclass
class LoggedDecision:
    decision_id: str
    decided_at: datetime
    channel: str
    customer_id: str
    features: dict[str, Any]
    #: offers the logging policy could choose from, and its first-slot probability of each
    eligible: list[str]
    probabilities: np.ndarray
    #: value x lever x weight of each eligible offer (1 when not logged)
    multipliers: np.ndarray
    #: (offer_id, propensity) per slot, first slot first
    slots: list[tuple[str, float]]
    #: reward of each chosen offer
    rewards: dict[str, float]
    policy_version: str = ""
    #: nothing was eligible and the channel's fallback was answered (with probability 1)
    fallback: bool = False
    #: its reward windows were still open when it was read (missing rewards are the default)
    open: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: each offer's own features (flattened), from its candidate or the offer catalogue
    offer_features: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def chosen(self) -> str:
        return self.slots[0][0]

    @property
    def propensity(self) -> float:
        return self.slots[0][1]

    @property
    def reward(self) -> float:
        return self.rewards.get(self.chosen, 0.0)

    def logged_probability(self, offer_id: str) -> float:
        try:
            return float(self.probabilities[self.eligible.index(offer_id)])
        except ValueError:
            return 0.0


# The contract as types -------------------------------------------------------------------

STRICT = ConfigDict(strict=True, extra="forbid")
OfferId = Annotated[str, Field(min_length=1)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Propensity = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Reward = Annotated[float, Field(ge=-REWARD_LIMIT, le=REWARD_LIMIT, allow_inf_nan=False)]
Number = Annotated[float, Field(ge=-NUMBER_LIMIT, le=NUMBER_LIMIT, allow_inf_nan=False)]
Slot = Annotated[int, Field(ge=1)]


class Candidate(BaseModel):
    """An offer the logging policy considered; with ``probability`` when it was eligible."""

    model_config = STRICT
    offer_id: OfferId
    eligible: bool = True
    probability: Probability | None = None
    predicted: Number | None = None
    value: Number | None = None
    lever: Number | None = None
    weight: Number | None = None
    score: Number | None = None
    reason: str | None = None
    policy: str | None = None
    detail: str | None = None
    slot: Slot | None = None
    propensity: Propensity | None = None
    explored: bool | None = None
    fallback: bool = False
    features: dict[str, Any] | None = None

    def multiplier(self) -> float:
        """The arbitration multiplier the service ranked this candidate by (``nba.decision.arbitration``;
        a factor not logged counts as 1)."""
        return arbitration.multiplier(
            1.0 if self.value is None else self.value,
            1.0 if self.lever is None else self.lever,
            1.0 if self.weight is None else self.weight,
        )


class Answered(BaseModel):
    """An offer answered in a slot (1 = first), with the probability of its draw."""

    model_config = STRICT
    offer_id: OfferId
    slot: Slot
    propensity: Propensity
    score: Number | None = None
    fallback: bool = False
    treatment: str | None = None
    name: str | None = None
    group: str | None = None
    explored: bool | None = None


class FeedbackEvent(BaseModel):
    """One feedback event as ``nba export`` writes it (informational: rewards come from ``rewards``)."""

    model_config = STRICT
    event_id: str
    offer_id: str
    outcome: str
    reward: Reward | None = None
    applied: bool | None = None
    occurred_at: str | None = None
    received_at: str | None = None


class LogLine(BaseModel):
    """One decision of a log, minimal or ``nba export`` format: see the module docstring."""

    model_config = STRICT
    decision_id: str | None = None
    request_id: str | None = None
    customer_id: str | None = None
    channel: str | None = None
    decided_at: str | None = None
    policy_version: str | None = None
    model_version: str | None = None
    #: the version of the stored customer profile the decision read (its fields are in features)
    profile_version: int | None = None
    features: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    candidates: list[Candidate] | None = None
    offers: list[Answered] | None = None
    chosen: OfferId | None = None
    propensity: Propensity | None = None
    reward: Reward | None = None
    rewards: dict[str, Reward | None] | None = None
    feedback: list[FeedbackEvent] | None = None
    closed: bool | None = None

    @model_validator(mode="after")
    def _contract(self) -> LogLine:
        self._features()
        self._time()
        slots = self._slots()
        if slots:
            self._choices(slots)
            self._rewards(slots)
        return self

    def _features(self) -> None:
        if (self.features is None) == (self.context is None):
            raise _Refused("features", "give the context as 'features' (flattened) or 'context' (nested), one of them")
        name = "features" if self.features is not None else "context"
        check_values(self.features if self.features is not None else self.context, name, 1)
        for i, c in enumerate(self.candidates or ()):
            if c.features is not None:
                check_values(c.features, f"candidates[{i}].features", 2)

    def _time(self) -> None:
        if self.decided_at is not None:
            try:
                datetime.fromisoformat(self.decided_at.replace("Z", "+00:00"))
            except ValueError:
                raise _Refused("decided_at", f"{self.decided_at!r} is not an ISO 8601 time (2026-11-23T10:00:00Z)") from None

    def _slots(self) -> list[Answered]:
        if self.chosen is not None or self.propensity is not None:
            if self.offers is not None:
                raise _Refused("chosen", "give 'chosen' and 'propensity', or 'offers', not both")
            if self.chosen is None:
                raise _Refused("chosen", "required with 'propensity': the offer the logging policy chose")
            if self.propensity is None:
                raise _Refused("propensity", f"required with 'chosen': the probability '{self.chosen}' was chosen with")
            return [Answered(offer_id=self.chosen, slot=1, propensity=self.propensity)]
        if self.offers is None:
            raise _Refused("offers", "required: the offers answered (offer_id, slot, propensity), or 'chosen' and 'propensity'")
        ordered = sorted(self.offers, key=lambda o: o.slot)
        for position, offer in enumerate(ordered, start=1):
            if offer.slot != position:
                raise _Refused("offers", f"slots must be 1, 2, ... without gaps or repeats, got {[o.slot for o in self.offers]}")
        ids = [o.offer_id for o in ordered]
        if len(set(ids)) != len(ids):
            raise _Refused("offers", f"offer '{_first_repeat(ids)}' is answered twice")
        if any(o.fallback for o in ordered):
            if len(ordered) != 1 or ordered[0].propensity != 1.0:
                raise _Refused("offers", "the channel's fallback is answered alone, with propensity 1")
        return ordered

    def _choices(self, slots: list[Answered]) -> None:
        if slots[0].fallback:
            return  # nothing else was eligible: the candidates do not enter the estimate
        if not self.candidates:
            raise _Refused("candidates", "required: the eligible offers, each with the logging policy's first-slot 'probability'")
        ids = [c.offer_id for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise _Refused("candidates", f"offer '{_first_repeat(ids)}' is listed twice")
        eligible: dict[str, Candidate] = {}
        for i, c in enumerate(self.candidates):
            if not c.eligible or c.fallback:
                continue
            if c.probability is None:
                raise _Refused(f"candidates[{i}].probability", f"required for eligible offer '{c.offer_id}'")
            eligible[c.offer_id] = c
        total = math.fsum(c.probability or 0.0 for c in eligible.values())
        if abs(total - 1.0) > 1e-6:
            raise _Refused("candidates", f"the eligible offers' probabilities sum to {total:.6f}, not 1")
        for k, answered in enumerate(slots):
            where = "chosen" if self.chosen is not None else f"offers[slot {answered.slot}]"
            candidate = eligible.get(answered.offer_id)
            if candidate is None:
                raise _Refused(where, f"offer '{answered.offer_id}' is not among the eligible candidates")
            if candidate.propensity is not None and not _close(candidate.propensity, answered.propensity):
                raise _Refused(
                    f"candidates[{ids.index(answered.offer_id)}].propensity",
                    f"{candidate.propensity} differs from the answered offer's propensity {answered.propensity}",
                )
            if k == 0:
                probability = candidate.probability or 0.0
                if probability <= 0.0:
                    raise _Refused(where, f"offer '{answered.offer_id}' was chosen, but its candidate probability is 0")
                if not _close(probability, answered.propensity):
                    name = "propensity" if self.chosen is not None else f"offers[slot {answered.slot}].propensity"
                    raise _Refused(
                        name,
                        f"{answered.propensity} differs from the first-slot probability "
                        f"{probability} of '{answered.offer_id}' in candidates: they are the same number",
                    )

    def _rewards(self, slots: list[Answered]) -> None:
        if self.reward is not None and self.rewards is not None:
            raise _Refused("reward", "give 'reward' (of the first slot) or 'rewards' (per offer), not both")
        shown = {o.offer_id for o in slots}
        for offer_id in self.rewards or {}:
            if offer_id not in shown:
                raise _Refused(f"rewards.{offer_id}", "a reward for an offer this decision did not answer")
        if self.reward is None and self.rewards is None and self.closed is not False:
            raise _Refused(
                "reward", 'required: the chosen offer\'s reward (mark the line "closed": false if its outcome is not known yet)'
            )

    def slot_list(self) -> list[tuple[str, float]]:
        if self.chosen is not None and self.propensity is not None:
            return [(self.chosen, self.propensity)]
        return [(o.offer_id, o.propensity) for o in sorted(self.offers or (), key=lambda o: o.slot)]


class _Refused(ValueError):
    """A rule across fields, broken: ``field`` names where."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")


def _first_repeat(values: list[str]) -> str:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return ""


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=PROPENSITY_TOLERANCE, abs_tol=1e-12)


def check_values(value: Any, where: str, depth: int) -> None:
    """Every number in a context finite and within ±2^53 (what Decide accepts), and no deeper than
    MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise _Refused(where, f"nested more than {MAX_DEPTH} levels deep")
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (finite_number(value) and abs(value) <= MAX_CONTEXT_NUMBER)
    ):
        shown = f"{value:g}" if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
        raise _Refused(where, f"{shown} is not a finite number within ±2^53 (as Decide accepts)")
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_values(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_values(item, f"{where}[{i}]", depth + 1)


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "finite_number": "must be a finite number (not NaN or infinite)",
    "float_type": "must be a number",
    "int_type": "must be a whole number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
}


def describe_error(exc: ValidationError) -> str:
    """The first problem of a validation error as 'field: what is wrong'."""
    error = exc.errors(include_url=False)[0]
    parts: list[str] = []
    for part in error["loc"]:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
        else:
            parts.append(str(part))
    name = ".".join(parts)
    kind = error["type"]
    if kind == "value_error":  # a rule across fields: the message names its field
        return str(error["ctx"]["error"]) if "ctx" in error else error["msg"].removeprefix("Value error, ")
    message = _MESSAGES.get(kind, error["msg"])
    if kind not in ("missing", "extra_forbidden"):
        message += f", got {error['input']!r}"[:200]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        message = _range_message(name, error)
    return f"{name}: {message}"


def _range_message(name: str, error: Mapping[str, Any]) -> str:
    leaf = name.rsplit(".", 1)[-1].split("[")[0]
    got = error["input"]
    if leaf == "probability":
        return f"must be in [0, 1], got {got!r}"
    if leaf == "propensity":
        return f"must be in (0, 1], got {got!r}"
    if leaf in ("reward", "rewards") or name.startswith("rewards."):
        return f"must be within ±{REWARD_LIMIT:,.0f}, got {got!r}"
    if leaf == "slot":
        return f"must be 1 or more, got {got!r}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {got!r}"


def validate_line(line: Any, where: str) -> LogLine:
    """``line`` checked against the contract; raises ``LogError`` naming ``where`` and the field."""
    return validated(LogLine, line, where)


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], line: Any, where: str) -> M:
    """One JSON Lines line checked against a pydantic ``model``; ``LogError`` naming ``where``
    (file and line) and the field for anything else."""
    if not isinstance(line, Mapping):
        raise LogError(f"{where}: expected a JSON object, got {type(line).__name__}")
    try:
        return model.model_validate(dict(line))
    except ValidationError as exc:
        raise LogError(f"{where}: {describe_error(exc)}") from None
    except RecursionError:
        raise LogError(f"{where}: nested too deeply") from None
