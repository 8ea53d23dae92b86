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
from datetime import datetime
from pathlib import Path
from typing import Any

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
                {"until": p.until.isoformat() if p.until else None, "default": p.default,
                 "probabilities": {k: dict(v) for k, v in p.probabilities.items()}}
                for p in self.phases
            ],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Truth:
        raw = json.loads(Path(path).read_text())
        phases = [
            Phase(datetime.fromisoformat(p["until"]) if p.get("until") else None, p["probabilities"], p.get("default", 0.02))
            for p in raw["phases"]
        ]
        return cls(raw["field"], phases, raw.get("reward", 1.0))
