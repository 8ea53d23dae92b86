"""The decision pipeline: from a request to ranked offers, and the record of how they were chosen.

    features  <- the customer context, flattened once (logged, learned from, screened)
    policies  -> eligible offers, every other offer with its reason
    learner   -> expected reward of each eligible offer
    ranking   -> expected reward x business value; exploration draws `limit` slots from an
                 explicit distribution, each with its propensity
    fallback  -> the channel's fallback when nothing else is eligible
    log       -> the whole record, written off the request path
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from bandit import flatten
from nba import metrics
from nba.catalogue import Catalogue
from nba.errors import AlreadyExists, InvalidArgument
from nba.learning import LearningLoop
from nba.policies import screen

__all__ = ["DecideInput", "DecisionRecord", "Decider", "new_decision_id"]

MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class DecideInput:
    customer_id: str
    channel: str
    context: Mapping[str, Any]
    limit: int = 0
    request_id: str = ""


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
    #: every offer on the channel: eligible or not and why, estimate, score, probability
    candidates: list[dict[str, Any]]
    #: the offers answered, best first: offer_id, name, score, propensity, treatment, slot,
    #: fallback, group
    offers: list[dict[str, Any]] = field(default_factory=list)

    def offer(self, offer_id: str) -> dict[str, Any] | None:
        return next((o for o in self.offers if o["offer_id"] == offer_id), None)


class DecisionSink(Protocol):
    def record(self, decision: DecisionRecord) -> None: ...

    def by_request(self, request_id: str, newer_than: datetime, memory_only: bool = False) -> DecisionRecord | None: ...


def new_decision_id() -> str:
    """Time-ordered (milliseconds, then 80 random bits): sorts and indexes well."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


class Decider:
    """Makes decisions against the current catalogue; ``catalogue`` may be swapped at any time
    (a decision in flight finishes on the catalogue it started with)."""

    def __init__(
        self,
        catalogue: Catalogue,
        learning: LearningLoop,
        log: DecisionSink,
        request_id_ttl_seconds: float = 86400.0,
    ) -> None:
        self.catalogue = catalogue
        self._learning = learning
        self._log = log
        self._ttl = request_id_ttl_seconds
        self._requests_lock = threading.Lock()

    def decide(self, request: DecideInput, now: datetime | None = None) -> tuple[DecisionRecord, bool]:
        """Returns the decision and whether it is a stored one replayed for its request_id."""
        catalogue = self.catalogue
        self._validate(request, catalogue)
        now = now or datetime.now(UTC)
        if request.request_id:
            stored = self._stored(request, now)
            if stored is not None:
                return stored, True

        features = flatten(request.context)
        screening = screen(catalogue, request.channel, request.context, request.customer_id, now)
        eligible = screening.eligible
        candidates: list[dict[str, Any]] = []
        offers: list[dict[str, Any]] = []
        for verdict in screening.verdicts:
            if not verdict.eligible:
                entry: dict[str, Any] = {"offer_id": verdict.offer.id, "eligible": False, "reason": verdict.reason}
                if verdict.detail:
                    entry["detail"] = verdict.detail
                candidates.append(entry)
                metrics.FILTERED.labels(verdict.reason).inc()

        if eligible:
            limit = max(1, request.limit)
            values = np.fromiter((o.offer.value for o in eligible), dtype=float, count=len(eligible))
            ids = [o.id for o in eligible]
            draw, model_version = self._learning.draw(ids, features, limit, values)
            slot_of = {index: (slot, p) for slot, (index, p) in enumerate(draw.slots, start=1)}
            for i, compiled in enumerate(eligible):
                entry = {
                    "offer_id": compiled.id,
                    "eligible": True,
                    "predicted": float(draw.predicted[i]),
                    "score": float(draw.scores[i]),
                    "probability": float(draw.probabilities[i]),
                }
                if i in slot_of:
                    entry["slot"], entry["propensity"] = slot_of[i]
                candidates.append(entry)
            for slot, (i, propensity) in enumerate(draw.slots, start=1):
                offer = eligible[i].offer
                offers.append(self._answer(offer, request.channel, slot, float(draw.scores[i]), propensity, False))
            if draw.slots and draw.scores[draw.slots[0][0]] < draw.scores.max():
                metrics.EXPLORED.inc()
        else:
            model_version = self._learning.version
            fallback = screening.fallback
            if fallback is not None:
                entry = {"offer_id": fallback.offer.id, "eligible": fallback.eligible, "fallback": True}
                if fallback.eligible:
                    entry.update(slot=1, propensity=1.0, probability=1.0)
                    offers.append(self._answer(fallback.offer.offer, request.channel, 1, 0.0, 1.0, True))
                    metrics.FALLBACKS.labels(request.channel).inc()
                else:
                    entry["reason"] = fallback.reason
                    if fallback.detail:
                        entry["detail"] = fallback.detail
                candidates.append(entry)
            if not offers:
                metrics.EMPTY.labels(request.channel).inc()

        record = DecisionRecord(
            decision_id=new_decision_id(),
            request_id=request.request_id or None,
            customer_id=request.customer_id,
            channel=request.channel,
            created_at=now,
            policy_version=catalogue.version,
            model_version=model_version,
            features=features,
            candidates=candidates,
            offers=offers,
        )
        if request.request_id:
            with self._requests_lock:
                # Two calls with one request_id at once: the first to get here wins. Both
                # are in this process, so memory alone settles it.
                stored = self._stored(request, now, memory_only=True)
                if stored is not None:
                    return stored, True
                self._log.record(record)
        else:
            self._log.record(record)
        metrics.DECISIONS.labels(request.channel).inc()
        return record, False

    def _stored(self, request: DecideInput, now: datetime, memory_only: bool = False) -> DecisionRecord | None:
        newer_than = datetime.fromtimestamp(now.timestamp() - self._ttl, UTC)
        stored = self._log.by_request(request.request_id, newer_than, memory_only)
        if stored is None:
            return None
        if stored.customer_id != request.customer_id or stored.channel != request.channel:
            raise AlreadyExists(
                f"request_id: '{request.request_id}' was already used for customer "
                f"'{stored.customer_id}' on channel '{stored.channel}'; use a new request_id"
            )
        metrics.DECISIONS_REPLAYED.inc()
        return stored

    @staticmethod
    def _validate(request: DecideInput, catalogue: Catalogue) -> None:
        if not request.customer_id:
            raise InvalidArgument("customer_id: required")
        if len(request.customer_id) > MAX_ID_LENGTH:
            raise InvalidArgument(f"customer_id: longer than {MAX_ID_LENGTH} characters")
        if len(request.request_id) > MAX_ID_LENGTH:
            raise InvalidArgument(f"request_id: longer than {MAX_ID_LENGTH} characters")
        if request.channel not in catalogue.channels:
            shown = repr(request.channel) if request.channel else "empty"
            raise InvalidArgument(
                f"channel: {shown} is not one of the catalogue's channels ({', '.join(catalogue.channels)})"
            )
        if request.limit < 0:
            raise InvalidArgument(f"limit: must be 0 or more (0 means 1), got {request.limit}")

    @staticmethod
    def _answer(offer: Any, channel: str, slot: int, score: float, propensity: float, fallback: bool) -> dict[str, Any]:
        return {
            "offer_id": offer.id,
            "name": offer.name,
            "score": score,
            "propensity": propensity,
            "treatment": offer.treatment_for(channel),
            "slot": slot,
            "fallback": fallback,
            "group": offer.group,
        }
