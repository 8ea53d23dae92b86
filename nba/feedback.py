"""Feedback: what a customer did with one offer of one decision, and what the learner learns.

A (decision, offer) pair is one observation for the learner, however many events report on
it. Its reward is that of its furthest outcome:

    impressed (stage 1) < clicked (stage 2) < rejected (stage 3) < accepted (stage 4)

The first event of a pair teaches the learner the observation with that event's reward; a
further outcome (a click after the impression) revises the reward of the same observation; an
outcome that is not further (an impression after the acceptance, a second click) is stored
but changes nothing (``applied`` is false). An acceptance outranks a rejection (a customer who
said no and then yes did accept). So the learner ends in the same place whatever order the
events arrive in, and a pair is never counted twice.

Rewards that arrive late, or never: each outcome has a reward window from the decision
(``RewardWindows``). An event arriving after its outcome's window is stored and reported
(``late``) but not learned. When the longest window closes, every offer of the decision that
had no feedback at all gets the default reward, exactly once, as a ``no_response`` event, so
that learning and evaluation are not biased towards the customers who answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from nba import metrics
from nba.clock import Clock, SystemClock
from nba.errors import InvalidArgument, NotFound, Unavailable

__all__ = [
    "NO_RESPONSE",
    "OUTCOMES",
    "FeedbackEvent",
    "FeedbackIntake",
    "FeedbackResult",
    "PairState",
    "RewardWindows",
    "resolve",
]

#: the outcome recorded when a decision's reward window closes without feedback
NO_RESPONSE = "no_response"

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


class DecisionLookup(Protocol):
    def get(self, decision_id: str) -> Any: ...

    def submit_feedback(self, event: FeedbackEvent) -> Future[FeedbackResult]: ...


class FeedbackIntake:
    """Checks a feedback event against its decision and waits until it is durable and learned."""

    def __init__(
        self,
        log: DecisionLookup,
        rewards: Mapping[str, float],
        timeout_seconds: float = 10.0,
        clock: Clock | None = None,
        lookup_wait_seconds: float = 0.0,
    ) -> None:
        self._log = log
        self._rewards = dict(rewards)
        self._timeout = timeout_seconds
        self._clock = clock or SystemClock()
        self._lookup_wait = lookup_wait_seconds

    def receive(
        self,
        event_id: str,
        decision_id: str,
        offer_id: str,
        outcome: str,
        reward: float | None = None,
        occurred_at: datetime | None = None,
    ) -> FeedbackResult:
        for name, value in (("event_id", event_id), ("decision_id", decision_id), ("offer_id", offer_id)):
            if not value:
                raise InvalidArgument(f"{name}: required")
            if len(value) > 256:
                raise InvalidArgument(f"{name}: longer than 256 characters")
        if outcome not in OUTCOMES:
            raise InvalidArgument(
                f"outcome: {outcome or 'unspecified'} is not one of "
                + ", ".join(f"OUTCOME_{o.upper()}" for o in OUTCOMES)
            )
        if reward is not None and not math.isfinite(reward):
            raise InvalidArgument(f"reward: must be a finite number, got {reward}")
        now = self._clock.now()
        if occurred_at is not None and occurred_at > now + _CLOCK_SKEW:
            raise InvalidArgument(
                f"occurred_at: {occurred_at.isoformat()} is in the future (now is {now.isoformat()})"
            )
        decision = self._log.get(decision_id)
        deadline = time.monotonic() + self._lookup_wait
        while decision is None and time.monotonic() < deadline:
            time.sleep(0.01)  # made by another worker, not written yet
            decision = self._log.get(decision_id)
        if decision is None:
            raise NotFound(f"decision_id: no decision '{decision_id}'")
        if decision.offer(offer_id) is None:
            returned = ", ".join(o["offer_id"] for o in decision.offers) or "no offers"
            raise NotFound(f"offer_id: decision '{decision_id}' did not return offer '{offer_id}' (it returned {returned})")
        event = FeedbackEvent(
            event_id=event_id,
            decision_id=decision_id,
            offer_id=offer_id,
            outcome=outcome,
            reward=self._rewards[outcome] if reward is None else float(reward),
            occurred_at=occurred_at or now,
            received_at=now,
            features=decision.features,
            customer_id=decision.customer_id,
            channel=decision.channel,
            group=decision.offer(offer_id).get("group", ""),
            decided_at=decision.created_at,
        )
        future = self._log.submit_feedback(event)
        try:
            result = future.result(timeout=self._timeout)
        except TimeoutError:
            raise Unavailable(
                f"feedback not confirmed durable within {self._timeout:g}s; retry with the same event_id"
            ) from None
        kind = "duplicate" if result.duplicate else "late" if result.late else "applied" if result.applied else "stored"
        metrics.FEEDBACK.labels(outcome, kind).inc()
        return result


_CLOCK_SKEW = timedelta(minutes=5)
