"""Feedback: what a customer did with one offer of one decision, and what the learner learns.

The outcome ladder a pair's reward follows is ``nba.records``' (``resolve``).

Rewards that arrive late, or never: each outcome has a reward window from the decision
(``RewardWindows``). An event arriving after its outcome's window is stored and reported
(``late``) but not learned. When the longest window closes, every offer of the decision that
had no feedback at all gets the default reward, exactly once, as a ``no_response`` event, so
that learning and evaluation are not biased towards the customers who answer.

What an event may say, checked before anything is stored:

    ids          event_id, decision_id, offer_id: as every id (``nba.inputs.check_id``)
    reward       finite and within the configured range (``reward_min``..``reward_max``,
                 -1e6..1e6 by default)
    occurred_at  not before its decision nor after now, by more than ``CLOCK_SKEW`` (5
                 minutes) either way: an event cannot precede what it reports on, and a
                 back-dated event would lift suppressions or escape caps. Within the skew it is
                 taken as the decision's time (or now): clocks differ, events do not precede.

An unknown decision id is ``NOT_FOUND`` at once (one lookup), unless the decision may still be
on its way to the log: with several workers or replicas, a decision made moments ago by
another process is written behind (``log_flush_seconds``). An id of ours (``nba.ids``) whose
time is within ``in_flight_seconds`` of now, either way, is looked up again after one
and two flush intervals, and if still missing is ``UNAVAILABLE`` ("retry"): never ``NOT_FOUND``,
which tells clients to drop the event. Older ids, ids from the future beyond that window
(forged: they would otherwise make a client retry for ever) and ids not of our shape are
``NOT_FOUND`` with no wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any, Protocol

from nba import metrics
from nba.clock import Clock, SystemClock
from nba.errors import InvalidArgument, NbaError, NotFound, Unavailable
from nba.ids import decision_time
from nba.inputs import CLOCK_SKEW, check_id
from nba.records import NO_RESPONSE, OUTCOMES, FeedbackEvent, FeedbackResult, offer_value

__all__ = ["DEFAULT_REWARD_RANGE", "IN_FLIGHT_MARGIN_SECONDS", "MAX_BATCH", "FeedbackIntake", "FeedbackItem"]

#: (event_id, decision_id, offer_id, outcome, reward or None, occurred_at or None)
FeedbackItem = tuple[str, str, str, str, float | None, datetime | None]
#: events one FeedbackBatch call may carry
MAX_BATCH = 1000

#: the rewards accepted unless configured otherwise (reward_min, reward_max): any response's
#: reward in currency units fits, and the learner's sums stay far from overflowing
DEFAULT_REWARD_RANGE = (-1e6, 1e6)

#: beyond the write-behind interval, how long an unknown decision id of ours may still be on its
#: way to the log: a slow commit under load, and replicas' clocks a little apart
IN_FLIGHT_MARGIN_SECONDS = 5.0
#: lookups of a young unknown decision after the first, waiting 1 then 2 flush intervals (150 ms
#: by default): what the old fixed wait held a handler thread for, with 3 queries instead of 15
IN_FLIGHT_LOOKUPS = 2


def reward_problem(reward: float, reward_range: tuple[float, float]) -> str | None:
    """Why ``reward`` may not be learned (non-finite, or outside ``reward_range``), or None."""
    low, high = reward_range
    if not math.isfinite(reward):
        return f"must be a finite number, got {reward}"
    if not low <= reward <= high:
        return f"must be within [{low:g}, {high:g}] (reward_min, reward_max), got {reward:g}"
    return None


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
        reward_range: tuple[float, float] = DEFAULT_REWARD_RANGE,
        in_flight_seconds: float = 0.0,
        poll_seconds: float = 0.05,
    ) -> None:
        """``in_flight_seconds``: how long after its id's time a decision another process
        made may still be unwritten (0 when this process alone writes the decisions it makes:
        then whatever it does not know is unknown). ``poll_seconds``: the first wait before
        looking again (the log's flush interval)."""
        self._log = log
        self._rewards = dict(rewards)
        self._timeout = timeout_seconds
        self._clock = clock or SystemClock()
        self._reward_range = reward_range
        self._in_flight = in_flight_seconds
        self._poll = poll_seconds

    def receive(
        self,
        event_id: str,
        decision_id: str,
        offer_id: str,
        outcome: str,
        reward: float | None = None,
        occurred_at: datetime | None = None,
    ) -> FeedbackResult:
        """Checks the event, waits until it is durable and learned; raises ``InvalidArgument``,
        ``NotFound``, ``AlreadyExists`` (the event_id used for another event) or ``Unavailable``."""
        event = self.prepare(event_id, decision_id, offer_id, outcome, reward, occurred_at)
        return self._wait(event, self._log.submit_feedback(event))

    def receive_many(self, items: list[FeedbackItem]) -> list[FeedbackResult | NbaError]:
        """Each item as ``receive`` would take it, its result or its error in the order sent;
        all are queued before any is waited for, so the log writes them in few transactions."""
        # one timeout for the whole batch, as for one event: a batch of decisions still on their
        # way (or made up to look so) waits once for them all, not once each
        deadline = time.monotonic() + self._timeout
        prepared: list[FeedbackEvent | NbaError] = []
        for item in items:
            try:
                prepared.append(self.prepare(*item, patient=time.monotonic() < deadline))
            except NbaError as exc:
                prepared.append(exc)
        futures = [None if isinstance(p, NbaError) else self._log.submit_feedback(p) for p in prepared]
        out: list[FeedbackResult | NbaError] = []
        for event, future in zip(prepared, futures, strict=True):
            if isinstance(event, NbaError) or future is None:
                out.append(event if isinstance(event, NbaError) else Unavailable("not queued; retry"))
                continue
            try:
                out.append(self._wait(event, future, max(deadline - time.monotonic(), 0.001)))
            except NbaError as exc:
                out.append(exc)
        return out

    def prepare(
        self,
        event_id: str,
        decision_id: str,
        offer_id: str,
        outcome: str,
        reward: float | None = None,
        occurred_at: datetime | None = None,
        patient: bool = True,
    ) -> FeedbackEvent:
        """The event checked against its decision, ready for the log. ``patient``: a decision
        that may still be on its way to the log is looked for again (else UNAVAILABLE at once)."""
        for name, value in (("event_id", event_id), ("decision_id", decision_id), ("offer_id", offer_id)):
            check_id(name, value)
        if event_id.startswith(NO_RESPONSE + ":"):
            # The service's own events when reward windows close are named so; a client event
            # of that name would take the place of the default reward of another decision.
            raise InvalidArgument(f"event_id: the prefix '{NO_RESPONSE}:' is reserved for the service's own events")
        if outcome not in OUTCOMES:
            raise InvalidArgument(
                f"outcome: {outcome or 'unspecified'} is not one of " + ", ".join(f"OUTCOME_{o.upper()}" for o in OUTCOMES)
            )
        if reward is not None:
            problem = reward_problem(reward, self._reward_range)
            if problem is not None:
                raise InvalidArgument(f"reward: {problem}; omit it to use the outcome's configured reward")
        now = self._clock.now()
        if occurred_at is not None and occurred_at > now + CLOCK_SKEW:
            raise InvalidArgument(
                f"occurred_at: {occurred_at.isoformat()} is in the future (now is {now.isoformat()}; "
                f"clocks may differ by {_minutes(CLOCK_SKEW)})"
            )
        decision = self._log.get(decision_id)
        if decision is None:
            decision = self._in_flight_decision(decision_id, patient)
        if decision is None:
            raise NotFound(f"decision_id: no decision '{decision_id}'")
        if decision.offer(offer_id) is None:
            returned = ", ".join(o["offer_id"] for o in decision.offers) or "no offers"
            raise NotFound(f"offer_id: decision '{decision_id}' did not return offer '{offer_id}' (it returned {returned})")
        decided_at = decision.created_at
        if occurred_at is not None and occurred_at < decided_at - CLOCK_SKEW:
            raise InvalidArgument(
                f"occurred_at: {occurred_at.isoformat()} is before its decision was made "
                f"({decided_at.isoformat()}); an event cannot precede its decision (clocks may differ by "
                f"{_minutes(CLOCK_SKEW)})"
            )
        # Within the skew, the event is taken as happening no earlier than its decision and no
        # later than now: contact history and caps count it when it can have happened.
        when = now if occurred_at is None else min(max(occurred_at, decided_at), max(now, decided_at))
        answered = decision.offer(offer_id)
        eligible = decision.candidates.get("eligible") or {}
        ids = eligible.get("ids") or []
        event = FeedbackEvent(
            event_id=event_id,
            decision_id=decision_id,
            offer_id=offer_id,
            outcome=outcome,
            reward=self._rewards[outcome] if reward is None else float(reward),
            occurred_at=when,
            received_at=now,
            features=decision.features,
            customer_id=decision.customer_id,
            channel=decision.channel,
            group=answered.get("group", ""),
            decided_at=decided_at,
            slot=int(answered.get("slot") or 0),
            propensity=float(answered.get("propensity") or 0.0),
            eligible=len(ids),
            # the rollups sum the value of acceptances only: other outcomes need not decode it
            value=offer_value(eligible, offer_id) if outcome == "accepted" else 0.0,
        )
        return event

    def _wait(self, event: FeedbackEvent, future: Future[FeedbackResult], timeout: float | None = None) -> FeedbackResult:
        try:
            result = future.result(timeout=self._timeout if timeout is None else timeout)
        except TimeoutError:
            raise Unavailable(f"feedback not confirmed durable within {self._timeout:g}s; retry with the same event_id") from None
        kind = "duplicate" if result.duplicate else "late" if result.late else "applied" if result.applied else "stored"
        metrics.FEEDBACK.labels(event.outcome, kind).inc()
        return result

    def _in_flight_decision(self, decision_id: str, patient: bool = True) -> Any:
        """A decision not found at first: looked up again while it may still be on its way
        to the log; None when it is unknown."""
        if self._in_flight <= 0:
            return None
        made = decision_time(decision_id)
        if made is None:
            return None  # not an id of ours
        age = time.time() - made  # ids carry the wall clock, not the service's (test) clock
        if not -self._in_flight <= age <= self._in_flight:
            return None  # old, or claims a future no process of ours has reached
        delay = self._poll
        for _ in range(IN_FLIGHT_LOOKUPS if patient else 0):
            time.sleep(delay)
            decision = self._log.get(decision_id)
            if decision is not None:
                return decision
            delay *= 2
        raise Unavailable(
            f"decision_id: decision '{decision_id}' (made {age:.3f}s before this call) is not in the decision log "
            "yet: another worker or replica may still be writing it; retry with the same event_id "
            f"(an unknown decision older than {self._in_flight:g}s is NOT_FOUND)"
        )


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:g} minutes"
