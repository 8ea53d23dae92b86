"""Policies: which offers a request may get, and for every other offer, why not.

Today: the offer's dates and its eligibility rule. The marketer policy layer (engagement,
contact, budget policies) adds further screens here, each reporting its own reason.

Reasons, as logged with each filtered candidate and counted in ``nba_offers_filtered_total``:

    not_yet_valid       before the offer's valid_from
    expired             at or after the offer's valid_until
    eligibility         the eligibility rule yielded false
    eligibility_error   the rule could not be evaluated for this context (a missing field, a
                        type mismatch): the offer is not eligible and the detail says why
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nba.catalogue import Catalogue, CompiledOffer
from nba.rules import activation

__all__ = ["REASONS", "Screening", "Verdict", "screen"]

REASONS = ("not_yet_valid", "expired", "eligibility", "eligibility_error")


@dataclass(frozen=True, slots=True)
class Verdict:
    offer: CompiledOffer
    eligible: bool
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Screening:
    #: a verdict for every non-fallback offer on the channel, in catalogue order
    verdicts: list[Verdict]
    #: the channel's fallback, with its own verdict, if it has one
    fallback: Verdict | None

    @property
    def eligible(self) -> list[CompiledOffer]:
        return [v.offer for v in self.verdicts if v.eligible]


def screen(
    catalogue: Catalogue,
    channel: str,
    context: Mapping[str, Any],
    customer_id: str,
    now: datetime,
) -> Screening:
    """Screens every offer on ``channel`` for this request (one CEL activation for all)."""
    variables = activation(context, channel, customer_id, now)
    verdicts = [_verdict(o, variables, now) for o in catalogue.by_channel.get(channel, ())]
    fallback = catalogue.fallback.get(channel)
    return Screening(verdicts, _verdict(fallback, variables, now) if fallback else None)


def _verdict(offer: CompiledOffer, variables: Any, now: datetime) -> Verdict:
    outside = offer.offer.live_at(now)
    if outside:
        return Verdict(offer, False, outside)
    ok, error = offer.eligibility.evaluate(variables)
    if error is not None:
        return Verdict(offer, False, "eligibility_error", error)
    return Verdict(offer, True) if ok else Verdict(offer, False, "eligibility")
