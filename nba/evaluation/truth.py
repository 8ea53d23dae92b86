"""Ground truth of a simulated population, so evaluation can be checked against it.

``nba simulate`` writes ``truth.json`` next to its output: for each phase (preferences drift
midway), the probability that a customer of each persona accepts each offer::

    {"field": "customer.persona", "reward": 1.0,
     "phases": [{"until": "2026-11-23T10:00:00Z", "default": 0.02,
                 "probabilities": {"young-urban": {"gold-card": 0.25, ...}, ...}},
                {"until": null, ...}]}

``nba evaluate --truth truth.json`` then reports each policy's true value beside its estimates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nba.inputs import finite_number

__all__ = ["Phase", "Truth"]


@dataclass(frozen=True)
class Phase:
    until: datetime | None
    probabilities: Mapping[str, Mapping[str, float]]
    default: float = 0.02

    def probability(self, persona: str, offer_id: str) -> float:
        return float(self.probabilities.get(persona, {}).get(offer_id, self.default))


@dataclass(frozen=True)
class Truth:
    field: str
    phases: list[Phase]
    reward: float = 1.0

    def phase(self, at: datetime) -> Phase:
        for phase in self.phases:
            if phase.until is None or at < phase.until:
                return phase
        return self.phases[-1]

    def expected(self, features: Mapping[str, Any], offer_id: str, at: datetime) -> float:
        """Expected reward of showing ``offer_id`` in this context at this time."""
        return self.reward * self.phase(at).probability(str(features.get(self.field, "")), offer_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "reward": self.reward,
            "phases": [
                {
                    "until": p.until.isoformat() if p.until else None,
                    "default": p.default,
                    "probabilities": {k: dict(v) for k, v in p.probabilities.items()},
                }
                for p in self.phases
            ],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Truth:
        """Reads ``truth.json``; ``ValueError`` names what is wrong (``OSError`` if unreadable)."""
        try:
            raw = json.loads(Path(path).read_bytes())
        except UnicodeDecodeError:
            raise ValueError("not a truth file: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
        return cls.parse(raw)

    @classmethod
    def parse(cls, raw: Any) -> Truth:
        """A truth from its JSON form, checked: ``field``, ``phases`` (each with ``probabilities``
        persona -> offer -> probability in [0, 1], ``until`` an ISO time or null, ``default``)."""
        if not isinstance(raw, Mapping):
            raise ValueError("expected an object with 'field' and 'phases' (as nba simulate writes)")
        if not isinstance(raw.get("field"), str) or not raw["field"]:
            raise ValueError("field: required, the context field naming each customer's persona")
        reward = raw.get("reward", 1.0)
        if not finite_number(reward):
            raise ValueError(f"reward: must be a finite number, got {reward!r}")
        phases_raw = raw.get("phases")
        if not isinstance(phases_raw, list) or not phases_raw:
            raise ValueError("phases: required, a list of phases")
        phases = []
        for i, p in enumerate(phases_raw):
            where = f"phases[{i}]"
            if not isinstance(p, Mapping):
                raise ValueError(f"{where}: must be an object")
            until = p.get("until")
            if until is not None:
                try:
                    until = datetime.fromisoformat(str(until).replace("Z", "+00:00"))
                except ValueError:
                    raise ValueError(f"{where}.until: {until!r} is not an ISO 8601 time") from None
                until = until if until.tzinfo else until.replace(tzinfo=UTC)
            default = p.get("default", 0.02)
            if not finite_number(default) or not 0 <= default <= 1:
                raise ValueError(f"{where}.default: must be a probability in [0, 1], got {default!r}")
            probabilities = p.get("probabilities")
            if not isinstance(probabilities, Mapping):
                raise ValueError(f"{where}.probabilities: required, persona -> offer -> probability")
            for persona, offers in probabilities.items():
                if not isinstance(offers, Mapping):
                    raise ValueError(f"{where}.probabilities.{persona}: must be an object of offer -> probability")
                for offer, q in offers.items():
                    if not finite_number(q) or not 0 <= q <= 1:
                        raise ValueError(f"{where}.probabilities.{persona}.{offer}: must be a probability in [0, 1], got {q!r}")
            phases.append(Phase(until, probabilities, float(default)))
        return cls(raw["field"], phases, float(reward))
