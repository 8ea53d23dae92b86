"""Where logged decisions come from: the decision log (``from_store``), JSON Lines files
(``from_jsonl``, ``read_jsonl``), export-format mappings (``from_records``) and offer
catalogues (``read_offers``), each line checked against the contract of
``nba.evaluation.logs`` before it becomes a ``LoggedDecision``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, model_validator

from bandit import flatten
from nba.evaluation.logs import STRICT, LogError, LoggedDecision, OfferId, check_values, validate_line, validated

__all__ = ["OfferLine", "from_jsonl", "from_records", "from_store", "read_jsonl", "read_offers"]


def from_records(
    lines: Iterable[Any],
    default_reward: float = 0.0,
    final: bool = True,
    source: str = "log",
    include_open: bool = True,
    refused: list[LogError] | None = None,
    offers: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[LoggedDecision]:
    """Decisions from export-format (or minimal-format) mappings, each validated first
    (``LogError`` names the line and field). Decisions that answered nothing are skipped; a
    line marked ``"closed": false`` (its reward windows still open) is skipped too, unless
    ``include_open``. ``final``: the rewards are final, so a shown offer without one counts as
    ``default_reward``; otherwise a decision without its first slot's reward is skipped.
    ``refused``: a list to collect the lines that break the contract, which are then left out
    rather than raised (for the service's own log, which the caller cannot edit). ``offers``:
    offer id -> features (``read_offers``), for candidates that carry none."""
    for number, line in enumerate(lines, start=1):
        decision = _kept(line, f"{source} line {number}", default_reward, final, include_open, refused, offers)
        if decision is not None:
            yield decision


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of every non-blank line; ``LogError`` for a line that is not
    UTF-8 text or not JSON, and ``OSError`` when the file cannot be read."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise LogError(f"{path} line {number}: not UTF-8 text (a JSON Lines file has one JSON object a line)") from None
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                raise LogError(f"{path} line {number}: not JSON: {exc.msg} at column {exc.colno}") from None
            except RecursionError:
                raise LogError(f"{path} line {number}: nested too deeply") from None


def from_jsonl(
    path: str | Path,
    default_reward: float = 0.0,
    include_open: bool = False,
    offers: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[LoggedDecision]:
    """Every decision of a JSON Lines log, validated line by line (``LogError`` names the line
    and field; a ``decision_id`` given twice is refused too). ``offers``: offer id -> features
    (``read_offers``), for candidates that carry none."""
    out = []
    first_line: dict[str, int] = {}
    for number, line in read_jsonl(path):
        where = f"{path} line {number}"
        decision = _decision(line, where, default_reward, True, include_open, offers)
        if isinstance(line, Mapping) and isinstance(line.get("decision_id"), str):
            earlier = first_line.setdefault(line["decision_id"], number)
            if earlier != number:
                raise LogError(f"{where}: decision_id: '{line['decision_id']}' is already the id of line {earlier}")
        if decision is not None:
            out.append(decision)
    return out


class OfferLine(BaseModel):
    """One line of an offer catalogue: an offer's id and its features."""

    model_config = STRICT
    offer_id: OfferId
    features: dict[str, Any]

    @model_validator(mode="after")
    def _contract(self) -> OfferLine:
        check_values(self.features, "features", 1)
        return self


def read_offers(path: str | Path) -> dict[str, dict[str, Any]]:
    """An offer catalogue: JSON Lines of ``{"offer_id": "a", "features": {...}}`` (nested
    features are flattened with dots, as a context is). Returns offer id -> features. Raises
    ``LogError`` naming the line and field for a line that is not such an object, an unknown
    field, a number that is not finite within ±2^53, or an offer listed twice; ``OSError`` when
    the file cannot be read."""
    out: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for number, line in read_jsonl(path):
        where = f"{path} line {number}"
        checked = validated(OfferLine, line, where)
        earlier = first_line.setdefault(checked.offer_id, number)
        if earlier != number:
            raise LogError(f"{where}: offer_id: '{checked.offer_id}' is already listed on line {earlier}")
        out[checked.offer_id] = flatten(checked.features)
    return out


def from_store(
    store: Any,
    since: datetime | None = None,
    until: datetime | None = None,
    include_open: bool = False,
    default_reward: float = 0.0,
    refused: list[LogError] | None = None,
    offers: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[LoggedDecision]:
    """Decisions from the decision log, oldest first, through the same validator. Decisions
    whose reward windows are still open are left out unless ``include_open`` (their missing
    rewards then count as default). ``refused``: as for ``from_records`` (a decision an older
    version stored outside today's contract, a reward past today's range, is left out and
    collected there instead of stopping the run)."""
    out = []
    for line in store.export(since, until):
        decision = _kept(line, f"decision {line.get('decision_id')}", default_reward, True, include_open, refused, offers)
        if decision is not None:
            out.append(decision)
    return out


def _kept(
    line: Any,
    where: str,
    default_reward: float,
    final: bool,
    include_open: bool,
    refused: list[LogError] | None,
    offers: Mapping[str, Mapping[str, Any]] | None = None,
) -> LoggedDecision | None:
    """``_decision``, with a line that breaks the contract collected in ``refused`` (and left
    out) when a list is given, raised otherwise."""
    try:
        return _decision(line, where, default_reward, final, include_open, offers)
    except LogError as exc:
        if refused is None:
            raise
        refused.append(exc)
        return None


def _decision(
    line: Any,
    where: str,
    default_reward: float,
    final: bool,
    include_open: bool,
    offers: Mapping[str, Mapping[str, Any]] | None = None,
) -> LoggedDecision | None:
    checked = validate_line(line, where)
    if checked.closed is False and not include_open:
        return None
    slots = checked.slot_list()
    if not slots:
        return None  # the decision answered nothing
    features = checked.features if checked.features is not None else flatten(checked.context or {})
    fallback = bool(checked.offers and checked.offers[0].fallback)
    if fallback:
        # Nothing else was eligible: the fallback was the only choice, made for certain.
        eligible, probabilities, multipliers = [slots[0][0]], [1.0], [1.0]
    else:
        chosen = [c for c in checked.candidates or () if c.eligible and not c.fallback]
        eligible = [c.offer_id for c in chosen]
        probabilities = [float(c.probability or 0.0) for c in chosen]
        multipliers = [c.multiplier() for c in chosen]
    offer_features: dict[str, Mapping[str, Any]] = {}
    for c in checked.candidates or ():
        if c.features is not None:
            offer_features[c.offer_id] = flatten(c.features)
    if offers:
        for offer_id in dict.fromkeys([*eligible, *(o for o, _ in slots)]):
            if offer_id not in offer_features and offer_id in offers:
                offer_features[offer_id] = offers[offer_id]  # shared, not copied: one object an offer
    if checked.rewards is not None:
        rewards = {k: float(v) for k, v in checked.rewards.items() if v is not None}
    elif checked.reward is not None:
        rewards = {slots[0][0]: float(checked.reward)}
    else:
        rewards = {}
    if final:
        for offer_id, _ in slots:
            rewards.setdefault(offer_id, default_reward)
    elif slots[0][0] not in rewards:
        return None
    return LoggedDecision(
        decision_id=checked.decision_id or where,
        decided_at=_time(checked.decided_at),
        channel=checked.channel or "",
        customer_id=checked.customer_id or "",
        features=dict(features),
        eligible=eligible,
        probabilities=np.asarray(probabilities, dtype=float),
        multipliers=np.asarray(multipliers, dtype=float),
        slots=slots,
        rewards=rewards,
        policy_version=checked.policy_version or "",
        fallback=fallback,
        open=checked.closed is False,
        offer_features=offer_features,
    )


def _time(value: str | None) -> datetime:
    if value is None:
        return datetime.fromtimestamp(0, UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # checked by the validator
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
