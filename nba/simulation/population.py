"""The simulated population: personas with a profile generator and a ground-truth probability
of accepting each offer, before and after their preferences drift.

A population file (``nba simulate --population``) has the shape of ``DEFAULT_POPULATION``
below; customer templates take literal values, ``{range: [lo, hi]}`` (a uniform number),
``{choice: [...]}`` (one of), ``{sample: [...], k: [lo, hi]}`` (a subset). The load test
(``loadtests/locustfile.py``) draws its customers from the same population.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import struct_pb2

from nba.evaluation.truth import Phase, Truth
from nba.inputs import finite_number
from nba.yaml_loader import load_yaml

__all__ = ["DEFAULT_POPULATION", "PERSONA_FIELD", "EventTemplate", "Persona", "Population", "generate"]

PERSONA_FIELD = "customer.persona"

DEFAULT_POPULATION: dict[str, Any] = {
    "base_rate": 0.02,
    "channels": {"web": 0.4, "app": 0.35, "email": 0.15, "call_center": 0.1},
    "personas": [
        {
            "name": "young-urban",
            "share": 0.3,
            "customer": {
                "age": {"range": [19, 32]},
                "demographics": {"region": {"choice": ["north", "east"]}, "household": "single", "income_band": "mid"},
                "activity": {
                    "open_orders": {"range": [0, 2]},
                    "complaints_90d": 0,
                    "returns_90d": 0,
                    "days_since_login": {"range": [0, 10]},
                    "cart_value": {"range": [0, 200]},
                },
                "history": {
                    "tenure_months": {"range": [3, 40]},
                    "products": ["current-account"],
                    "channels_used": {"sample": ["app", "web"], "k": [1, 2]},
                    "last_purchase_days": {"range": [1, 30]},
                },
                "value": {
                    "segment": {"choice": ["bronze", "silver"]},
                    "clv": {"range": [300, 2500]},
                    "monthly_spend": {"range": [200, 600]},
                },
                "flags": {"churn_risk": False, "churn_score": {"range": [0, 0.3]}, "fraud_risk": False, "vulnerable": False},
                "mood": {"choice": ["positive", "neutral"]},
                "consent": {"email": True, "marketing": True, "phone": False},
            },
            "prefers": {"mobile-bundle": 0.30, "travel-insurance": 0.12, "gold-card": 0.10},
            "drift": {"mobile-bundle": 0.04, "travel-insurance": 0.32},
            "events": [
                {
                    "type": "page_view",
                    "probability": 0.9,
                    "source": {"choice": ["web", "app"]},
                    "days_ago": {"range": [0, 3]},
                    "properties": {"page": {"choice": ["offers", "cards", "travel"]}},
                },
                {
                    "type": "order",
                    "probability": 0.4,
                    "source": {"choice": ["web", "app"]},
                    "days_ago": {"range": [0, 60]},
                    "properties": {"amount": {"range": [10, 120]}, "status": "delivered"},
                },
            ],
        },
        {
            "name": "young-family",
            "share": 0.25,
            "customer": {
                "age": {"range": [30, 44]},
                "demographics": {"region": {"choice": ["south", "west"]}, "household": "family", "income_band": "mid"},
                "activity": {
                    "open_orders": {"range": [0, 3]},
                    "complaints_90d": 0,
                    "returns_90d": {"range": [0, 1]},
                    "days_since_login": {"range": [0, 20]},
                    "cart_value": {"range": [0, 300]},
                },
                "history": {
                    "tenure_months": {"range": [12, 120]},
                    "products": ["current-account", "credit-card"],
                    "channels_used": ["web", "app"],
                    "last_purchase_days": {"range": [1, 20]},
                },
                "value": {"segment": "silver", "clv": {"range": [1500, 4000]}, "monthly_spend": {"range": [300, 900]}},
                "flags": {"churn_risk": False, "churn_score": {"range": [0, 0.3]}, "fraud_risk": False, "vulnerable": False},
                "mood": "neutral",
                "consent": {"email": True, "marketing": True, "phone": True},
            },
            "prefers": {"home-insurance": 0.28, "savings-account": 0.14, "premium-subscription": 0.06},
            "events": [
                {
                    "type": "order",
                    "probability": 0.6,
                    "source": {"choice": ["web", "store"]},
                    "days_ago": {"range": [0, 90]},
                    "properties": {"amount": {"range": [30, 300]}, "status": {"choice": ["open", "delivered"]}},
                },
                {
                    "type": "page_view",
                    "probability": 0.5,
                    "source": "web",
                    "days_ago": {"range": [0, 7]},
                    "properties": {"page": "insurance"},
                },
            ],
        },
        {
            "name": "affluent",
            "share": 0.2,
            "customer": {
                "age": {"range": [40, 64]},
                "demographics": {
                    "region": {"choice": ["north", "south", "east", "west"]},
                    "household": "couple",
                    "income_band": "high",
                },
                "activity": {
                    "open_orders": {"range": [0, 2]},
                    "complaints_90d": 0,
                    "returns_90d": 0,
                    "days_since_login": {"range": [0, 15]},
                    "cart_value": {"range": [0, 800]},
                },
                "history": {
                    "tenure_months": {"range": [48, 240]},
                    "products": ["current-account", "credit-card", "loan", "savings"],
                    "channels_used": ["web", "app", "call_center"],
                    "last_purchase_days": {"range": [1, 15]},
                },
                "value": {
                    "segment": {"choice": ["gold", "platinum"]},
                    "clv": {"range": [6000, 20000]},
                    "monthly_spend": {"range": [800, 3000]},
                },
                "flags": {"churn_risk": False, "churn_score": {"range": [0, 0.2]}, "fraud_risk": False, "vulnerable": False},
                "mood": "positive",
                "consent": {"email": True, "marketing": True, "phone": True},
            },
            "prefers": {"platinum-card": 0.30, "loyalty-bonus-points": 0.18, "premium-subscription": 0.10},
            "drift": {"platinum-card": 0.08, "premium-subscription": 0.30},
            "events": [
                {
                    "type": "order",
                    "probability": 0.5,
                    "source": {"choice": ["web", "store", "app"]},
                    "days_ago": {"range": [0, 180]},
                    "properties": {"amount": {"range": [200, 2000]}, "status": "delivered"},
                },
                {
                    "type": "contact",
                    "probability": 0.2,
                    "source": "call_center",
                    "days_ago": {"range": [0, 30]},
                    "properties": {"sentiment": "positive"},
                },
            ],
        },
        {
            "name": "at-risk",
            "share": 0.15,
            "customer": {
                "age": {"range": [25, 70]},
                "demographics": {
                    "region": {"choice": ["north", "south"]},
                    "household": {"choice": ["single", "couple"]},
                    "income_band": "low",
                },
                "activity": {
                    "open_orders": 0,
                    "complaints_90d": {"range": [1, 4]},
                    "returns_90d": {"range": [0, 2]},
                    "days_since_login": {"range": [5, 90]},
                    "cart_value": 0,
                },
                "history": {
                    "tenure_months": {"range": [18, 200]},
                    "products": ["current-account", "savings", "paperless"],
                    "channels_used": ["call_center", "email"],
                    "last_purchase_days": {"range": [30, 200]},
                },
                "value": {
                    "segment": {"choice": ["bronze", "silver"]},
                    "clv": {"range": [200, 3000]},
                    "monthly_spend": {"range": [50, 300]},
                },
                "flags": {"churn_risk": True, "churn_score": {"range": [0.6, 1.0]}, "fraud_risk": False, "vulnerable": False},
                "mood": "negative",
                "consent": {"email": True, "marketing": True, "phone": True},
            },
            "prefers": {"retention-discount-20": 0.35, "fee-waiver": 0.25, "complaint-callback": 0.15},
            "events": [
                {
                    "type": "complaint",
                    "probability": 0.8,
                    "source": {"choice": ["call_center", "email", "social"]},
                    "days_ago": {"range": [0, 25]},
                    "properties": {"topic": {"choice": ["billing", "delivery", "service"]}},
                },
                {
                    "type": "contact",
                    "probability": 0.6,
                    "source": "call_center",
                    "days_ago": {"range": [0, 20]},
                    "properties": {"sentiment": {"choice": ["negative", "angry"]}},
                },
                {
                    "type": "return",
                    "probability": 0.3,
                    "source": "store",
                    "days_ago": {"range": [0, 80]},
                    "properties": {"amount": {"range": [10, 150]}},
                },
            ],
        },
        {
            "name": "retiree",
            "share": 0.1,
            "customer": {
                "age": {"range": [65, 85]},
                "demographics": {
                    "region": {"choice": ["west", "south"]},
                    "household": {"choice": ["single", "couple"]},
                    "income_band": "mid",
                },
                "activity": {
                    "open_orders": 0,
                    "complaints_90d": 0,
                    "returns_90d": 0,
                    "days_since_login": {"range": [1, 40]},
                    "cart_value": 0,
                },
                "history": {
                    "tenure_months": {"range": [120, 400]},
                    "products": ["current-account", "savings"],
                    "channels_used": ["web", "email"],
                    "last_purchase_days": {"range": [5, 60]},
                },
                "value": {
                    "segment": {"choice": ["silver", "gold"]},
                    "clv": {"range": [2000, 8000]},
                    "monthly_spend": {"range": [150, 500]},
                },
                "flags": {
                    "churn_risk": False,
                    "churn_score": {"range": [0, 0.4]},
                    "fraud_risk": False,
                    "vulnerable": {"choice": [False, False, True]},
                },
                "mood": {"choice": ["positive", "neutral"]},
                "consent": {"email": True, "marketing": {"choice": [True, False]}, "phone": True},
            },
            "prefers": {"travel-insurance": 0.22, "app-onboarding": 0.12, "paperless-billing": 0.10},
            "events": [
                {
                    "type": "contact",
                    "probability": 0.5,
                    "source": "call_center",
                    "days_ago": {"range": [0, 30]},
                    "properties": {"sentiment": {"choice": ["positive", "neutral"]}},
                },
                {
                    "type": "order",
                    "probability": 0.3,
                    "source": "store",
                    "days_ago": {"range": [0, 120]},
                    "properties": {"amount": {"range": [20, 200]}, "status": "delivered"},
                },
            ],
        },
    ],
}


@dataclass(frozen=True)
class EventTemplate:
    """A touch-point event a persona's customers send before their decision, with
    ``probability``; ``source`` and ``properties`` are templates, ``days_ago`` a template of
    how long before the decision it happened (days)."""

    type: str
    probability: float
    source: Any = "web"
    days_ago: Any = 0
    properties: Mapping[str, Any] = field(default_factory=dict)

    def draw(self, rng: random.Random) -> tuple[str, float, dict[str, Any]] | None:
        """(source, days ago, properties), or None when this customer sent no such event."""
        if rng.random() >= self.probability:
            return None
        return str(generate(self.source, rng)), max(0.0, float(generate(self.days_ago, rng))), generate(self.properties, rng)


@dataclass(frozen=True)
class Persona:
    name: str
    share: float
    customer: Mapping[str, Any]
    prefers: Mapping[str, float]
    drift: Mapping[str, float] = field(default_factory=dict)
    #: touch-point events its customers send (``nba simulate`` tracks them before deciding)
    events: tuple[EventTemplate, ...] = ()


@dataclass(frozen=True)
class Population:
    personas: list[Persona]
    base_rate: float = 0.02
    channels: Mapping[str, float] = field(default_factory=lambda: {"web": 1.0})

    @classmethod
    def parse(cls, raw: Any) -> Population:
        """A population from its YAML form, checked whole: ``ValueError`` names the persona and
        field (a template that cannot generate a customer is found here, not mid-run)."""
        if not isinstance(raw, Mapping):
            raise ValueError("expected a mapping with 'personas' (see nba/simulation/simulator.py, DEFAULT_POPULATION)")
        unknown = set(raw) - {"personas", "base_rate", "channels"}
        if unknown:
            raise ValueError(f"unknown keys {', '.join(sorted(map(str, unknown)))} (personas, base_rate, channels)")
        base_rate = raw.get("base_rate", 0.02)
        if not _probability(base_rate):
            raise ValueError(f"base_rate: must be a probability in [0, 1], got {base_rate!r}")
        channels = raw.get("channels") or {"web": 1.0}
        if (
            not isinstance(channels, Mapping)
            or not all(isinstance(k, str) and finite_number(v) and v >= 0 for k, v in channels.items())
            or not sum(channels.values())
        ):
            raise ValueError(f"channels: must map channel names to weights of 0 or more (not all 0), got {channels!r}")
        items = raw.get("personas")
        if not isinstance(items, list) or not items:
            raise ValueError("personas: required, a list of personas")
        personas = [_persona(p, i) for i, p in enumerate(items)]
        names = [p.name for p in personas]
        if len(set(names)) != len(names):
            raise ValueError(f"personas: the name {next(n for n in names if names.count(n) > 1)!r} is used twice")
        if not sum(p.share for p in personas):
            raise ValueError("personas: every share is 0")
        return cls(personas, float(base_rate), dict(channels))

    @classmethod
    def load(cls, path: str | Path | None) -> Population:
        """The population in a YAML file (``None``: the default one); ``ValueError`` names what
        is wrong, ``OSError`` when it cannot be read."""
        if not path:
            return cls.parse(DEFAULT_POPULATION)
        try:
            raw = load_yaml(Path(path).read_text(encoding="utf-8"), str(path))
        except UnicodeDecodeError:
            raise ValueError("not a YAML file: not UTF-8 text") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ValueError(f"not YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        return cls.parse(raw)

    def probability(self, persona: str, offer_id: str, drifted: bool) -> float:
        p = next(x for x in self.personas if x.name == persona)
        if drifted and offer_id in p.drift:
            return float(p.drift[offer_id])
        return float(p.prefers.get(offer_id, self.base_rate))

    def truth(self, drift_time: datetime | None) -> Truth:
        before = {p.name: dict(p.prefers) for p in self.personas}
        after = {p.name: {**p.prefers, **p.drift} for p in self.personas}
        phases = [Phase(drift_time, before, self.base_rate)]
        if drift_time is not None:
            phases.append(Phase(None, after, self.base_rate))
        return Truth(PERSONA_FIELD, phases, 1.0)


def _probability(value: Any) -> bool:
    return finite_number(value) and 0 <= value <= 1


def _persona(raw: Any, index: int) -> Persona:
    if not isinstance(raw, Mapping):
        raise ValueError(f"personas[{index}]: must be a mapping with name, share and customer")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"personas[{index}].name: required, a string")
    where = f"persona {name!r}"
    unknown = set(raw) - {"name", "share", "customer", "prefers", "drift", "events"}
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))} (name, share, customer, prefers, drift, events)"
        )
    share = raw.get("share")
    if not finite_number(share) or share < 0:
        raise ValueError(f"{where}: share must be a number of 0 or more, got {share!r}")
    customer = raw.get("customer")
    if not isinstance(customer, Mapping):
        raise ValueError(f"{where}: customer must be a mapping (a template of the customer's profile)")
    for key in ("prefers", "drift"):
        table = raw.get(key) or {}
        if not isinstance(table, Mapping):
            raise ValueError(f"{where}: {key} must map offer ids to probabilities")
        for offer, q in table.items():
            if not _probability(q):
                raise ValueError(f"{where}: {key}.{offer} must be a probability in [0, 1], got {q!r}")
    try:  # every template must generate a profile a Struct can carry
        struct_pb2.Struct().update({"customer": generate(customer, random.Random(0))})
    except Exception as exc:
        raise ValueError(
            f"{where}: customer cannot generate a profile ({type(exc).__name__}: {exc}); templates are "
            "values, {range: [lo, hi]}, {choice: [...]}, {sample: [...], k: [lo, hi]}"
        ) from None
    events = tuple(_event(e, f"{where}: events[{i}]") for i, e in enumerate(raw.get("events") or []))
    return Persona(name, float(share), customer, dict(raw.get("prefers") or {}), dict(raw.get("drift") or {}), events)


def _event(raw: Any, where: str) -> EventTemplate:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping with type and probability")
    unknown = set(raw) - {"type", "probability", "source", "days_ago", "properties"}
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))} (type, probability, source, days_ago, properties)"
        )
    event_type = raw.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError(f"{where}.type: required, a string (order, complaint, contact, ...)")
    probability = raw.get("probability", 1.0)
    if not _probability(probability):
        raise ValueError(f"{where}.probability: must be a probability in [0, 1], got {probability!r}")
    properties = raw.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise ValueError(f"{where}.properties: must be a mapping (a template of the event's properties)")
    template = EventTemplate(event_type, float(probability), raw.get("source", "web"), raw.get("days_ago", 0), properties)
    try:  # a template that cannot generate an event is found here, not mid-run
        source, days, values = template.draw(random.Random(0)) or ("web", 0.0, {})
        struct_pb2.Struct().update(values)
        template.draw(random.Random(1))
    except Exception as exc:
        raise ValueError(f"{where}: cannot generate an event ({type(exc).__name__}: {exc})") from None
    if not math.isfinite(days):
        raise ValueError(f"{where}.days_ago: must be a finite number of days")
    return template


def generate(template: Any, rng: random.Random) -> Any:
    if isinstance(template, Mapping):
        if "range" in template and len(template) == 1:
            lo, hi = template["range"]
            value = rng.uniform(lo, hi)
            return float(round(value)) if isinstance(lo, int) and isinstance(hi, int) else round(value, 3)
        if "choice" in template and len(template) == 1:
            return rng.choice(template["choice"])
        if "sample" in template:
            lo, hi = template.get("k", [0, len(template["sample"])])
            return rng.sample(template["sample"], rng.randint(lo, hi))
        return {k: generate(v, rng) for k, v in template.items()}
    if isinstance(template, list):
        return [generate(v, rng) for v in template]
    return template
