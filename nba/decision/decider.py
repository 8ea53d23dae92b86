"""The decision pipeline: from a request to ranked offers, and the record of how they were chosen.

features  <- the customer context, flattened once (logged, learned from, screened)
screening -> eligible offers, every other offer with the policy that filtered it
learner   -> expected reward of each eligible offer
arbitration -> score = expected reward x value x levers x context weights; exploration
             draws `limit` slots from an explicit distribution over the scores, each
             with its propensity
fallback  -> the channel's fallback when nothing else is eligible
history   -> the offers returned count as contacts at once (caps, budgets)
log       -> the whole record, written off the request path
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from bandit import EpsilonGreedy, draw_slots, flatten
from nba import metrics
from nba.clock import Clock, SystemClock
from nba.decision import arbitration
from nba.decision.contacts import ContactHistory, ContactSummary, OfferCounters
from nba.decision.reservations import Claim, Reservations, first_misfit, release_quietly, reserve_or_degrade
from nba.decision.screening import Screening, Verdict, claims, screen
from nba.errors import AlreadyExists, InvalidArgument, Unavailable
from nba.ids import new_decision_id
from nba.inputs import check_id
from nba.learning.loop import LearningLoop
from nba.policy.policy_set import PolicySet
from nba.records import ContactEvent, DecisionRecord, ProfileView, candidates_block, eligible_block

__all__ = ["DecideInput", "Decider", "new_decision_id"]

log = logging.getLogger(__name__)

#: when the learner's estimates are not all finite: every eligible offer equally likely
_UNIFORM = EpsilonGreedy(epsilon=1.0)


@dataclass(frozen=True)
class DecideInput:
    customer_id: str
    channel: str
    #: the customer context, nested; or already flattened as ``features``
    context: Mapping[str, Any] | None = None
    limit: int = 0
    request_id: str = ""
    explain: bool = False
    features: dict[str, Any] | None = None


@dataclass
class _Ranked:
    """One ranking of a decision: the offers answered and what is logged of the draw."""

    offers: list[dict[str, Any]] = field(default_factory=list)
    model_version: str = ""
    exploration: str = ""
    eligible_block: dict[str, Any] | None = None
    fallback_row: list[Any] | None = None
    explored: bool = False
    fallback: bool = False
    #: the screening verdict of each answered offer (not the fallback's)
    verdicts: list[Verdict] = field(default_factory=list)
    #: set by a refused reservation: the offer and the claim that found no unit left
    refused: tuple[Verdict, Claim] | None = None


class DecisionSink(Protocol):
    @property
    def available(self) -> bool: ...

    def record(self, decision: DecisionRecord, durable: bool = False) -> Future[Any] | None: ...

    def written(self, decision_id: str) -> Future[Any] | None: ...

    def by_request(self, request_id: str, newer_than: datetime, memory_only: bool = False) -> DecisionRecord | None: ...


#: after a profile could not be read, how long decisions are made without reading profiles
PROFILE_RETRY_SECONDS = 5.0

#: refused reservations after which a contended decision answers only offers no such policy holds
MAX_RESERVATION_PASSES = 3


class Decider:
    """Makes decisions against the live policy set; ``policy_set`` may be swapped at any time
    and a decision in flight finishes on the set it started with."""

    def __init__(
        self,
        policy_set: PolicySet,
        learning: LearningLoop,
        log: DecisionSink,
        contacts: ContactHistory,
        counters: OfferCounters,
        request_id_ttl_seconds: float = 86400.0,
        clock: Clock | None = None,
        durable_timeout_seconds: float | None = None,
        reservations: Reservations | None = None,
        profiles: Callable[[str, float], ProfileView | None] | None = None,
    ) -> None:
        self.policy_set = policy_set
        #: the stored profile of a customer at a time (epoch seconds), read by every decision
        #: whose policy set defines a profile
        self._profiles = profiles
        #: time.monotonic() before which profiles are not read (the last read found the database down)
        self._profiles_down_until = 0.0
        #: with a timeout, Decide answers only once the decision is committed (--durable-decisions)
        self._durable_timeout = durable_timeout_seconds
        #: where caps and budgets counting decisions are reserved (None: screening alone)
        self._reservations = reservations
        self._learning = learning
        self._log = log
        self._contacts = contacts
        self._counters = counters
        self._ttl = request_id_ttl_seconds
        self._clock = clock or SystemClock()
        self._requests_lock = threading.Lock()
        #: draws for decisions whose estimates were not finite (see _rank)
        self._rng = np.random.default_rng()

    def decide(self, request: DecideInput) -> tuple[DecisionRecord, bool]:
        """Returns the decision and whether it is a stored one replayed for its request_id.

        The pipeline, each stage entered once: the request checked (and replayed when its
        request_id was decided already) -> features -> the contact summary -> screening ->
        the learner's draw over the arbitrated scores, with exploration -> reservation of
        caps and budgets (a refused offer is taken out and the rest ranked again) -> the
        record -> the log -> contacts counted -> the answer."""
        policy_set = self.policy_set  # one set for the whole decision
        self._validate(request, policy_set)
        now = self._clock.now()
        if request.request_id:
            stored = self._stored(request, now)
            if stored is not None:
                self._await_stored(stored)
                return self._explained(stored, request, policy_set), True
        if self._durable_timeout is not None and not self._log.available:
            raise Unavailable("the database is unavailable: a decision cannot be made durable now; retry")

        features, profile, summary, screening = self._screen(request, policy_set, now)
        decision_id = new_decision_id()
        ranked, taken, held = self._rank_and_reserve(screening, policy_set, request, features, now, summary, decision_id)
        candidates = candidates_block(
            ((v.offer.id, v.reason, v.policy, v.detail) for v in (*screening.verdicts, *held) if not v.eligible),
            ranked.eligible_block,
            ranked.fallback_row,
        )
        record = _record(decision_id, request.request_id or None, request, now, policy_set, features, ranked, candidates, profile)
        self._count_outcome(record, ranked, request.channel)
        return self._log_and_answer(record, request, policy_set, taken, now)

    def _screen(
        self, request: DecideInput, policy_set: PolicySet, now: datetime
    ) -> tuple[dict[str, Any], ProfileView | None, ContactSummary | None, Screening]:
        """The features (the context with the stored profile's learnable fields), the profile
        read, the contact summary, and every offer's verdict."""
        features = request.features if request.features is not None else flatten(request.context or {})
        profile = self._profile(request.customer_id, policy_set, now)
        if profile is not None:
            features = with_profile(features, profile.learnable, profile.pinned)
        summary = self._summary(request, policy_set, now)
        screening = screen(
            policy_set,
            request.channel,
            features,
            request.customer_id,
            now,
            summary,
            self._counters,
            # `profile` sent as a value of its own replaces the stored profile whole, personal fields too
            private=profile.private if profile is not None and "profile" not in features else None,
        )
        return features, profile, summary, screening

    def rank_only(self, request: DecideInput) -> DecisionRecord:
        """What ``decide`` would answer now, made the same way (the stored profile, contact
        policies, budgets as they stand, the learner's draw with exploration) but neither
        logged nor counted: no contacts, no reservation of caps or budgets, no metrics. The
        record has no decision id. Raises ``InvalidArgument`` as ``decide`` does."""
        policy_set = self.policy_set
        self._validate(request, policy_set)
        now = self._clock.now()
        features, profile, _, screening = self._screen(request, policy_set, now)
        ranked = self._rank(screening.eligible, screening, request, features)
        return _record("", None, request, now, policy_set, features, ranked, {}, profile)

    def _profile(self, customer_id: str, policy_set: PolicySet, now: datetime) -> ProfileView | None:
        """The customer's stored profile, when the policy set defines one. A profile that
        cannot be read (the database is down) is a decision on the request's context alone:
        counted (nba_profile_read_failures_total) and logged, not an error for the caller."""
        if self._profiles is None or not policy_set.profile.names:
            return None
        if time.monotonic() < self._profiles_down_until:
            metrics.PROFILE_READ_FAILURES.inc()
            return None
        try:
            return self._profiles(customer_id, now.timestamp())
        except Unavailable as exc:
            # a database that is down can take seconds to say so: decisions do not wait for it
            # again until PROFILE_RETRY_SECONDS have passed
            self._profiles_down_until = time.monotonic() + PROFILE_RETRY_SECONDS
            metrics.PROFILE_READ_FAILURES.inc()
            log.warning(
                "deciding without stored profiles: they could not be read",
                extra={"error": str(exc), "retry_seconds": PROFILE_RETRY_SECONDS},
            )
            return None

    def _summary(self, request: DecideInput, policy_set: PolicySet, now: datetime) -> ContactSummary | None:
        """The customer's contact history, summarised once for every stage that reads it
        (screening, reservation); None when no policy of the set counts contacts."""
        if not policy_set.needs_contacts:
            return None
        events = self._contacts.events(request.customer_id, now.timestamp())
        return ContactSummary(events, now.timestamp(), request.channel, policy_set.cap_windows)

    def _rank_and_reserve(
        self,
        screening: Screening,
        policy_set: PolicySet,
        request: DecideInput,
        features: dict[str, Any],
        now: datetime,
        summary: ContactSummary | None,
        decision_id: str,
    ) -> tuple[_Ranked, list[Claim], list[Verdict]]:
        """Ranks the eligible offers and reserves what the answer takes of caps and budgets;
        an offer whose reservation is refused (a concurrent decision took the last unit) is
        taken out and the rest ranked again, at most ``MAX_RESERVATION_PASSES`` times. Returns
        the ranking, the claims taken, and the verdicts of the offers taken out."""
        eligible = screening.eligible
        held: list[Verdict] = []  # taken out: a cap or budget had no unit left to reserve
        for attempt in range(MAX_RESERVATION_PASSES + 1):
            ranked = self._rank(eligible, screening, request, features)
            taken = self._reserve(ranked, policy_set, request, now, summary, decision_id)
            if taken is not None:
                return ranked, taken, held
            assert ranked.refused is not None  # _reserve says why it refused
            verdict, claim = ranked.refused
            held.append(
                replace(
                    verdict,
                    eligible=False,
                    reason=claim.reason,
                    policy=claim.policy,
                    detail="no unit left: taken by a concurrent decision",
                )
            )
            eligible = [v for v in eligible if v is not verdict]
            if attempt + 1 == MAX_RESERVATION_PASSES:  # contended: answer only what no such policy holds
                kept = []
                for v in eligible:
                    checked = [c for c in self._claims(v.offer, policy_set, request, now, summary) if c.check]
                    if checked:
                        held.append(
                            replace(
                                v,
                                eligible=False,
                                reason=checked[0].reason,
                                policy=checked[0].policy,
                                detail="contended: taken out after repeated refusals",
                            )
                        )
                    else:
                        kept.append(v)
                eligible = kept
        raise AssertionError("unreachable: the last pass ranks only offers no reservation can refuse")

    @staticmethod
    def _count_outcome(record: DecisionRecord, ranked: _Ranked, channel: str) -> None:
        """The decision's metrics: offers filtered by reason, exploration, fallbacks, empty answers."""
        reasons: dict[str, int] = {}
        for reason, _, _, members in record.candidates["filtered"]:
            reasons[reason or ""] = reasons.get(reason or "", 0) + len(members)
        for reason, count in reasons.items():
            metrics.filtered(reason).inc(count)
        if ranked.explored:
            metrics.EXPLORED.inc()
        if ranked.fallback:
            metrics.FALLBACKS.labels(channel).inc()
        if not record.offers:
            metrics.EMPTY.labels(channel).inc()

    def _log_and_answer(
        self, record: DecisionRecord, request: DecideInput, policy_set: PolicySet, taken: list[Claim], now: datetime
    ) -> tuple[DecisionRecord, bool]:
        """Queues the record (and waits for its commit with durable decisions), counts its
        contacts, and answers; reserved units go back if the decision is not made."""
        decision_id = record.decision_id
        stored = None
        written = None
        try:
            if request.request_id:
                with self._requests_lock:
                    # Two calls with one request_id at once: the first to get here wins. Both
                    # are in this process, so memory alone settles it.
                    stored = self._stored(request, now, memory_only=True)
                    if stored is None:
                        written = self._log.record(record, durable=self._durable_timeout is not None)
            else:
                written = self._log.record(record, durable=self._durable_timeout is not None)
        except BaseException:  # not answered (a request_id reused for another customer): units go back
            release_quietly(self._reservations, taken, decision_id)
            raise
        if stored is not None:  # the other call's decision stands; this one's units go back
            release_quietly(self._reservations, taken, decision_id)
            self._await_stored(stored)
            return self._explained(stored, request, policy_set), True
        if written is not None:
            try:
                written.result(timeout=self._durable_timeout)
            except TimeoutError:
                # Not confirmed, but it may still be written: its units and contacts stand.
                self._count_contacts(record, now.timestamp(), policy_set.needs_contacts)
                raise self._not_confirmed() from None
            except Unavailable:  # refused: it will never be written
                release_quietly(self._reservations, taken, decision_id)
                raise
        self._count_contacts(record, now.timestamp(), policy_set.needs_contacts)
        metrics.DECISIONS.labels(request.channel).inc()
        return self._explained(record, request, policy_set), False

    def _rank(self, eligible: list[Verdict], screening: Screening, request: DecideInput, features: dict[str, Any]) -> _Ranked:
        """The learner's draw over the eligible offers (or the channel's fallback)."""
        ranked = _Ranked()
        if eligible:
            limit = max(1, request.limit)
            ids, factors = _factors(eligible, screening)
            multipliers = arbitration.multiplier_array(factors[:, 0], factors[:, 1], factors[:, 2])
            draw, ranked.model_version, ranked.exploration = self._learning.draw(ids, features, limit, multipliers)
            if not (np.isfinite(draw.predicted).all() and np.isfinite(draw.scores).all()):
                draw = self._uniform(draw, limit)
                ranked.exploration = "uniform: the learner's estimates were not all finite"
            numbers = np.column_stack((draw.predicted, factors, draw.scores, draw.probabilities))
            ranked.eligible_block = eligible_block(
                ids, numbers, [[i, "; ".join(v.weight_errors)] for i, v in enumerate(eligible) if v.weight_errors]
            )
            scores = draw.scores.tolist()
            explored = _explored(draw.scores, draw.slots)
            for slot, (i, propensity) in enumerate(draw.slots, start=1):
                answer = _answer(eligible[i].offer.offer, request.channel, slot, scores[i], propensity, False)
                answer["explored"] = explored[slot - 1]
                ranked.offers.append(answer)
                ranked.verdicts.append(eligible[i])
            ranked.explored = bool(explored and explored[0])
        else:
            ranked.model_version = self._learning.version
            fallback = screening.fallback
            if fallback is not None:
                ranked.fallback_row = [fallback.offer.id, fallback.eligible, fallback.reason, fallback.policy, fallback.detail]
                if fallback.eligible:
                    ranked.offers.append(_answer(fallback.offer.offer, request.channel, 1, 0.0, 1.0, True))
                    ranked.fallback = True
        return ranked

    def _uniform(self, draw: Any, limit: int) -> Any:
        """The guard where scores become probabilities: estimates that are not all finite (a
        model poisoned before rewards were bounded) rank nothing. Every eligible offer is then
        equally likely, drawn with exact propensities, and answered and logged with estimate
        and score 0 (never NaN); counted in nba_nonfinite_scores_total."""
        metrics.NONFINITE_SCORES.inc()
        log.warning("the learner's estimates are not all finite: ranking uniformly", extra={"offers": len(draw.arm_ids)})
        zeros = np.zeros(len(draw.arm_ids))
        first, slots = draw_slots(_UNIFORM, zeros, limit, self._rng)
        return replace(draw, predicted=zeros, scores=zeros.copy(), probabilities=first, slots=slots)

    def _claims(
        self,
        compiled: Any,
        policy_set: PolicySet,
        request: DecideInput,
        now: datetime,
        summary: ContactSummary | None,
        fallback: bool = False,
    ) -> list[Claim]:
        return claims(policy_set, compiled, request.channel, request.customer_id, now, summary, self._counters, fallback)

    def _reserve(
        self,
        ranked: _Ranked,
        policy_set: PolicySet,
        request: DecideInput,
        now: datetime,
        summary: ContactSummary | None,
        token: str,
    ) -> list[Claim] | None:
        """Reserves the answered offers' units of caps and budgets that count decisions, in
        rank order. First the answer is cut where this process's own count leaves no unit
        (several answered offers under one cap: each was screened alone). Returns the claims
        taken; None when the store refused one (``ranked.refused`` says which offer and why:
        it is taken out, and the rest ranked again)."""
        if not policy_set.reserves:
            return []
        verdicts = ranked.verdicts
        owners: list[int] = []
        found: list[Claim] = []
        for slot, offer in enumerate(ranked.offers):
            compiled = verdicts[slot].offer if slot < len(verdicts) else policy_set.offers[offer["offer_id"]]
            for claim in self._claims(compiled, policy_set, request, now, summary, fallback=offer["fallback"]):
                owners.append(slot)
                found.append(claim)
        if not found:
            return found
        at = now.timestamp()
        misfit = first_misfit(found, at)
        if misfit is not None:
            cut = owners[misfit]
            if cut == 0:  # nothing left to answer: take it out and rank again (the fallback, maybe)
                ranked.refused = (verdicts[0], found[misfit])
                return None
            del ranked.offers[cut:]
            found = [c for c, o in zip(found, owners, strict=True) if o < cut]
        refused, reserved = reserve_or_degrade(self._reservations, found, at, token)
        if refused is None:
            return found if reserved else []  # degraded: nothing was taken, nothing to give back
        ranked.refused = (verdicts[owners[refused]], found[refused])
        return None

    @staticmethod
    def _explained(record: DecisionRecord, request: DecideInput, policy_set: PolicySet) -> DecisionRecord:
        if not request.explain:
            return record
        return replace(record, explanation=explain(record, policy_set))

    def _await_stored(self, stored: DecisionRecord) -> None:
        """With durable decisions, a replayed decision still being committed is answered once it is."""
        if self._durable_timeout is None:
            return
        written = self._log.written(stored.decision_id)
        if written is not None:
            try:
                written.result(timeout=self._durable_timeout)
            except TimeoutError:
                raise self._not_confirmed() from None

    def _not_confirmed(self) -> Unavailable:
        return Unavailable(f"decision not confirmed durable within {self._durable_timeout:g}s; retry with the same request_id")

    def _count_contacts(self, record: DecisionRecord, at: float, track: bool) -> None:
        for o in record.offers:
            self._counters.add(o["offer_id"], "decided", at)
        if track and record.offers:
            self._contacts.record(
                [
                    ContactEvent(record.customer_id, at, "decided", o["offer_id"], o["group"], record.channel)
                    for o in record.offers
                ]
            )

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
    def _validate(request: DecideInput, policy_set: PolicySet) -> None:
        check_id("customer_id", request.customer_id)
        check_id("request_id", request.request_id, required=False)
        check_id("channel", request.channel, required=False)  # empty: named below, with the choices
        if request.channel not in policy_set.channels:
            shown = repr(request.channel) if request.channel else "empty"
            raise InvalidArgument(f"channel: {shown} is not one of the policy set's channels ({', '.join(policy_set.channels)})")
        if request.limit < 0:
            raise InvalidArgument(f"limit: must be 0 or more (0 means 1), got {request.limit}")


def _record(
    decision_id: str,
    request_id: str | None,
    request: DecideInput,
    now: datetime,
    policy_set: PolicySet,
    features: dict[str, Any],
    ranked: _Ranked,
    candidates: dict[str, Any],
    profile: ProfileView | None,
) -> DecisionRecord:
    """The record of a ranking: a decision's (with its id and candidates block) or, for
    ``rank_only``, one that is neither logged nor counted (no id, no candidates)."""
    return DecisionRecord(
        decision_id=decision_id,
        request_id=request_id,
        customer_id=request.customer_id,
        channel=request.channel,
        created_at=now,
        policy_version=policy_set.version,
        model_version=ranked.model_version,
        features=features,
        candidates=candidates,
        offers=ranked.offers,
        exploration=ranked.exploration,
        profile_version=profile.version if profile is not None else None,
    )


def with_profile(features: dict[str, Any], learnable: Mapping[str, Any], pinned: Collection[str] = frozenset()) -> dict[str, Any]:
    """``features`` with the stored profile's learnable fields as ``profile.NAME``, except
    those the request sent itself (``context.profile.NAME`` wins over the stored value), but
    for the ``pinned`` ones (consent: the customer's recorded choice wins over any channel's).
    An empty value (no matching event yet) is left out, as a field the context did not send.

    >>> with_profile({"profile.tier": "gold", "x": 1}, {"tier": "silver", "orders": 3, "avg": None, "scores": {"churn": 0.2}})
    {'profile.orders': 3, 'profile.scores.churn': 0.2, 'profile.tier': 'gold', 'x': 1}
    >>> with_profile({"profile.consent": True}, {"consent": False}, {"consent"})
    {'profile.consent': False}
    """
    sent = {key.split(".", 2)[1] for key in features if key.startswith("profile.")}
    held = {name for name in pinned if name in sent and learnable.get(name) is not None}
    if held:
        features = {k: v for k, v in features.items() if not (k.startswith("profile.") and k.split(".", 2)[1] in held)}
        sent -= held
    if "profile" in features:  # the context sent `profile` as a value of its own: it wins whole
        return features
    added: dict[str, Any] = {}
    for name, value in learnable.items():
        if value is None or name in sent:
            continue
        if isinstance(value, Mapping) and value:  # profile.scores: one feature a score, as a context's leaves
            added.update(flatten(value, f"profile.{name}"))
        else:
            added[f"profile.{name}"] = value
    if not added:
        return features
    return dict(sorted({**features, **added}.items()))


def explain(record: DecisionRecord, policy_set: PolicySet) -> list[dict[str, Any]]:
    """Every offer of the set, as the decision saw it: the candidates, and the offers not on
    the decision's channel."""
    seen = {c["offer_id"]: c for c in record.candidate_list()}
    entries = []
    for offer_id, compiled in policy_set.offers.items():
        entry = seen.get(offer_id)
        if entry is None:
            if compiled.offer.fallback and record.channel in compiled.offer.channels:
                entry = {
                    "offer_id": offer_id,
                    "eligible": False,
                    "reason": "fallback",
                    "fallback": True,
                    "detail": "the channel's fallback, used only when nothing else is eligible",
                }
            else:
                entry = {
                    "offer_id": offer_id,
                    "eligible": False,
                    "reason": "channel",
                    "detail": f"not on channel '{record.channel}'",
                }
        entries.append(entry)
    return entries


def _factors(eligible: list[Verdict], screening: Screening) -> tuple[list[str], np.ndarray]:
    """The eligible offers' ids and their (value, lever, weight) rows, (n, 3), read from the
    channel's catalogue by each verdict's position (every verdict screening returns has one,
    and a verdict taken out by a reservation keeps it)."""
    n = len(eligible)
    catalogue = screening.catalogue
    positions = np.fromiter((v.position for v in eligible), dtype=np.intp, count=n)
    weights = np.fromiter((v.weight for v in eligible), dtype=float, count=n)
    factors = np.column_stack((catalogue.values[positions], catalogue.levers[positions], weights))
    return catalogue.ids[positions].tolist(), factors


def _explored(scores: np.ndarray, slots: list[tuple[int, float]]) -> list[bool]:
    """For each slot, whether its offer was not the best-scored among those still left."""
    order = np.argsort(-scores, kind="stable")
    taken: set[int] = set()
    position = 0
    flags = []
    for index, _ in slots:
        while int(order[position]) in taken:
            position += 1
        flags.append(bool(scores[index] < scores[order[position]]))
        taken.add(index)
    return flags


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
        "explored": False,
    }
