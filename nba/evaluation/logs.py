"""The logged-data contract: what evaluation needs from each decision, and where it comes from.

Per decision (as Open Bandit Pipeline draws it: action, position, reward, propensity,
context): the context features, the eligible offers with the first slot's probability of each
(the logging policy's whole distribution, not just the chosen offer's), each offer's
arbitration multiplier, the offers chosen by slot with their propensities, and the reward of
each chosen offer.

Sources: the decision log (``from_store``) or JSON Lines (``from_jsonl``): the format
``nba export`` writes, or a smaller one other systems can produce::

    {"features": {"customer.age": 34, ...},              # or "context": {nested}
     "candidates": [{"offer_id": "a", "probability": 0.7}, {"offer_id": "b", "probability": 0.3}],
     "offers": [{"offer_id": "a", "slot": 1, "propensity": 0.7}],   # or "chosen": "a", "propensity": 0.7
     "rewards": {"a": 1.0},                              # or "reward": 1.0 for the chosen offer
     "decided_at": "2026-11-23T10:00:00Z", "channel": "web"}       # optional

A chosen offer with no reward counts as ``default_reward``. Decisions whose reward windows are
still open (``"closed": false`` in the export) are left out unless asked for, since their
pending outcomes would count as the default. A decision that answered the channel's fallback
(nothing else was eligible) is kept, as a choice made with probability 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bandit import flatten

__all__ = ["LogError", "LoggedDecision", "from_jsonl", "from_records", "from_store"]


class LogError(ValueError):
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
    extra: dict[str, Any] = field(default_factory=dict)

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


def from_records(lines: Iterable[Mapping[str, Any]], default_reward: float = 0.0, final: bool = True,
                 source: str = "log", include_open: bool = True) -> Iterator[LoggedDecision]:
    """Decisions from export-format (or minimal-format) mappings. Decisions that answered
    nothing are skipped; a line marked ``"closed": false`` (its reward windows still open) is
    skipped too, unless ``include_open``."""
    for number, line in enumerate(lines, start=1):
        where = f"{source} line {number}"
        if not include_open and isinstance(line, Mapping) and line.get("closed") is False:
            continue
        decision = _decision(line, where, default_reward, final)
        if decision is not None:
            yield decision


def from_jsonl(path: str | Path, default_reward: float = 0.0, include_open: bool = False) -> list[LoggedDecision]:
    def lines() -> Iterator[Mapping[str, Any]]:
        with open(path, encoding="utf-8") as f:
            for number, text in enumerate(f, start=1):
                if text.strip():
                    try:
                        yield json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise LogError(f"{path} line {number}: not JSON: {exc.msg}") from None

    return list(from_records(lines(), default_reward, final=True, source=str(path), include_open=include_open))


def from_store(store: Any, since: datetime | None = None, until: datetime | None = None,
               include_open: bool = False, default_reward: float = 0.0) -> list[LoggedDecision]:
    """Decisions from the decision log, oldest first. Decisions whose reward windows are still
    open are left out unless ``include_open`` (their missing rewards then count as default)."""
    out = []
    for line in store.export(since, until):
        if not line.get("closed", True) and not include_open:
            continue
        decision = _decision(line, f"decision {line.get('decision_id')}", default_reward, final=True)
        if decision is not None:
            out.append(decision)
    return out


def _decision(line: Mapping[str, Any], where: str, default_reward: float, final: bool) -> LoggedDecision | None:
    if not isinstance(line, Mapping):
        raise LogError(f"{where}: expected an object")
    features = line.get("features")
    if features is None and isinstance(line.get("context"), Mapping):
        features = flatten(line["context"])
    if not isinstance(features, Mapping):
        raise LogError(f"{where}: needs 'features' (flattened) or 'context' (nested)")
    slots = _slots(line, where)
    if not slots:
        return None
    fallback = any(o.get("fallback") for o in line.get("offers") or () if isinstance(o, Mapping))
    candidates = line.get("candidates")
    if fallback:
        # Nothing else was eligible: the fallback was the only choice, made for certain.
        candidates = [{"offer_id": slots[0][0], "probability": 1.0}]
    if not isinstance(candidates, list) or not candidates:
        raise LogError(f"{where}: needs 'candidates', the eligible offers with their first-slot 'probability'")
    eligible, probabilities, multipliers = [], [], []
    for c in candidates:
        if not isinstance(c, Mapping) or "offer_id" not in c:
            raise LogError(f"{where}: every candidate needs an 'offer_id'")
        if c.get("eligible", True) is False or c.get("fallback"):
            continue
        p = c.get("probability")
        if not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise LogError(f"{where}: candidate '{c['offer_id']}' needs a 'probability' in [0, 1]")
        eligible.append(str(c["offer_id"]))
        probabilities.append(float(p))
        multipliers.append(float(c.get("value", 1.0)) * float(c.get("lever", 1.0)) * float(c.get("weight", 1.0)))
    if not eligible:
        return None  # the fallback was answered: no choice was made
    total = sum(probabilities)
    if abs(total - 1) > 1e-6:
        raise LogError(f"{where}: the candidates' probabilities sum to {total:.6f}, not 1")
    chosen, propensity = slots[0]
    if chosen not in eligible:
        raise LogError(f"{where}: chosen offer '{chosen}' is not among the eligible candidates")
    rewards = line.get("rewards")
    if rewards is None and "reward" in line:
        rewards = {chosen: line["reward"]}
    rewards = {str(k): float(v) for k, v in (rewards or {}).items() if v is not None}
    if final:
        for offer_id, _ in slots:
            rewards.setdefault(offer_id, default_reward)
    elif chosen not in rewards:
        return None
    return LoggedDecision(
        decision_id=str(line.get("decision_id", where)),
        decided_at=_time(line.get("decided_at"), where),
        channel=str(line.get("channel", "")),
        customer_id=str(line.get("customer_id", "")),
        features=dict(features),
        eligible=eligible,
        probabilities=np.asarray(probabilities),
        multipliers=np.asarray(multipliers),
        slots=slots,
        rewards=rewards,
        policy_version=str(line.get("policy_version", "")),
        fallback=fallback,
    )


def _slots(line: Mapping[str, Any], where: str) -> list[tuple[str, float]]:
    if "chosen" in line:
        if "propensity" not in line:
            raise LogError(f"{where}: 'chosen' needs its 'propensity'")
        return [(str(line["chosen"]), _propensity(line["propensity"], where))]
    offers = line.get("offers")
    if not isinstance(offers, list):
        raise LogError(f"{where}: needs 'offers' (each with offer_id, slot, propensity) or 'chosen' and 'propensity'")
    ordered = sorted(offers, key=lambda o: o.get("slot", 0))
    return [(str(o["offer_id"]), _propensity(o.get("propensity"), where)) for o in ordered]


def _propensity(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise LogError(f"{where}: propensity must be in (0, 1], got {value!r}")
    return float(value)


def _time(value: Any, where: str) -> datetime:
    if value is None:
        return datetime.fromtimestamp(0, UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise LogError(f"{where}: decided_at {value!r} is not ISO 8601") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
