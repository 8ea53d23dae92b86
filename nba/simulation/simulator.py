"""The simulator: a synthetic population driving a running service over gRPC.

Each simulated customer belongs to a persona (young urban professionals, families, ...) with a
profile generator and a ground-truth probability of accepting each offer. The simulator asks
``Decide`` (with ``explain``, to learn which offers were eligible), reports the impression at
once and the acceptance or rejection some decisions later (feedback is late in real life),
and halfway through changes the personas' preferences (drift). It measures, per 1,000
decisions, the reward the service earned against what an oracle (the best eligible offer for
each customer) and uniform random would have earned in expectation, and writes the ground
truth so that ``nba evaluate --truth`` can check its estimates against it.

A population file (``--population``) has the shape of ``DEFAULT_POPULATION`` below; customer
templates take literal values, ``{range: [lo, hi]}`` (a uniform number), ``{choice: [...]}``
(one of), ``{sample: [...], k: [lo, hi]}`` (a subset).
"""

from __future__ import annotations

import csv
import heapq
import importlib.util
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc
import yaml
from google.protobuf import struct_pb2

from nba.evaluation.truth import Phase, Truth
from nba.inputs import finite_number
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc
from nba.yaml_loader import load_yaml

__all__ = ["DEFAULT_POPULATION", "Population", "SimulationResult", "Simulator"]

log = logging.getLogger(__name__)

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
        },
    ],
}


@dataclass(frozen=True)
class Persona:
    name: str
    share: float
    customer: Mapping[str, Any]
    prefers: Mapping[str, float]
    drift: Mapping[str, float] = field(default_factory=dict)


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
    unknown = set(raw) - {"name", "share", "customer", "prefers", "drift"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))} (name, share, customer, prefers, drift)")
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
    return Persona(name, float(share), customer, dict(raw.get("prefers") or {}), dict(raw.get("drift") or {}))


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


@dataclass
class SimulationResult:
    #: one row per block of decisions: decisions, earned, expected, oracle, uniform
    curve: list[dict[str, float]]
    decisions: int
    drift_at: int
    truth: Truth
    seconds: float


class Simulator:
    def __init__(
        self,
        address: str,
        population: Population,
        decisions: int = 10_000,
        seed: int = 0,
        drift_at: float = 0.5,
        delay: float = 20.0,
        reject_rate: float = 0.2,
        concurrency: int = 4,
        block: int = 1000,
        progress: TextIO | None = sys.stderr,
    ) -> None:
        if decisions < 1:
            raise ValueError("decisions must be at least 1")
        self.address = address
        self.population = population
        self.n = decisions
        self.seed = seed
        self.drift_index = int(decisions * drift_at) if 0 < drift_at < 1 else decisions
        self.delay = delay
        self.reject_rate = reject_rate
        self.concurrency = max(1, concurrency)
        self.block = block
        self.progress = progress
        self._next = 0
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, pb.FeedbackRequest]] = []
        self._rows: list[tuple[int, float, float, float, float] | None] = [None] * decisions
        self._drift_time: datetime | None = None
        self._errors: list[str] = []
        self._sequence = 0

    def run(self) -> SimulationResult:
        started = time.monotonic()
        channel = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
        except grpc.FutureTimeoutError:
            raise ConnectionError(f"no service answers at {self.address} (start one with `make serve`)") from None
        stub = pb_grpc.DecisionServiceStub(channel)
        threads = [threading.Thread(target=self._work, args=(stub, w)) for w in range(self.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._flush(stub, until=None)
        channel.close()
        if self._errors:
            raise RuntimeError(f"{len(self._errors)} calls failed, the first: {self._errors[0]}")
        if self.progress:
            self.progress.write("\n")
        return SimulationResult(
            self._curve(), self.n, self.drift_index, self.population.truth(self._drift_time), time.monotonic() - started
        )

    def _work(self, stub: pb_grpc.DecisionServiceStub, worker: int) -> None:
        rng = random.Random(f"{self.seed}-{worker}")
        personas = self.population.personas
        weights = [p.share for p in personas]
        channels, channel_weights = zip(*self.population.channels.items(), strict=True)
        while True:
            with self._lock:
                i = self._next
                if i >= self.n:
                    return
                self._next += 1
                if i == self.drift_index and self._drift_time is None:
                    self._drift_time = datetime.now(UTC)
                drift_time = self._drift_time
            persona = rng.choices(personas, weights)[0]
            customer = generate(persona.customer, rng)
            customer["persona"] = persona.name
            context = struct_pb2.Struct()
            context.update({"customer": customer})
            channel = rng.choices(channels, channel_weights)[0]
            try:
                response = stub.Decide(
                    pb.DecideRequest(customer_id=f"sim-{self.seed}-{i}", channel=channel, context=context, explain=True),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                self._errors.append(f"Decide: {exc.code().name}: {exc.details()}")
                continue
            # Preferences change at a moment, not a call count: with several callers, a call
            # begun before the drift can be decided after it. The truth file uses the same time.
            drifted = drift_time is not None and response.decided_at.ToDatetime(UTC) >= drift_time
            eligible = [e.offer_id for e in response.explanation.offers if e.eligible] or [o.offer_id for o in response.offers]
            truths = {a: self.population.probability(persona.name, a, drifted) for a in eligible}
            if not response.offers:
                self._rows[i] = (i, 0.0, 0.0, 0.0, 0.0)
                continue
            shown = response.offers[0].offer_id
            p = self.population.probability(persona.name, shown, drifted)
            accepted = rng.random() < p
            self._rows[i] = (i, float(accepted), p, max(truths.values()), sum(truths.values()) / len(truths))
            self._send(
                stub,
                pb.FeedbackRequest(
                    event_id=f"sim-{self.seed}-{i}-seen",
                    decision_id=response.decision_id,
                    offer_id=shown,
                    outcome=pb.OUTCOME_IMPRESSED,
                ),
            )
            outcome = pb.OUTCOME_ACCEPTED if accepted else (pb.OUTCOME_REJECTED if rng.random() < self.reject_rate else None)
            if outcome is not None:
                due = i + max(1, int(rng.expovariate(1 / self.delay))) if self.delay > 0 else i
                with self._lock:
                    self._sequence += 1
                    heapq.heappush(
                        self._pending,
                        (
                            due,
                            self._sequence,
                            pb.FeedbackRequest(
                                event_id=f"sim-{self.seed}-{i}-outcome",
                                decision_id=response.decision_id,
                                offer_id=shown,
                                outcome=outcome,
                            ),
                        ),
                    )
            self._flush(stub, until=i)
            self._report(i)

    def _flush(self, stub: pb_grpc.DecisionServiceStub, until: int | None) -> None:
        while True:
            with self._lock:
                if not self._pending or (until is not None and self._pending[0][0] > until):
                    return
                _, _, request = heapq.heappop(self._pending)
            self._send(stub, request)

    def _send(self, stub: pb_grpc.DecisionServiceStub, request: pb.FeedbackRequest) -> None:
        try:
            stub.Feedback(request, timeout=10)
        except grpc.RpcError as exc:
            self._errors.append(f"Feedback: {exc.code().name}: {exc.details()}")

    def _report(self, i: int) -> None:
        if self.progress is None or (i + 1) % max(1, self.n // 100) and i + 1 != self.n:
            return
        done = i + 1
        filled = math.floor(30 * done / self.n)
        earned = [r[1] for r in self._rows[max(0, done - self.block) : done] if r is not None]
        rate = sum(earned) / len(earned) if earned else 0.0
        self.progress.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.n} reward {rate:.3f}")
        self.progress.flush()

    def _curve(self) -> list[dict[str, float]]:
        rows = [r for r in self._rows if r is not None]
        curve = []
        for start in range(0, self.n, self.block):
            block = [r for r in rows if start <= r[0] < start + self.block]
            if not block:
                continue
            curve.append(
                {
                    "decisions": float(start + len(block)),
                    "earned": sum(r[1] for r in block) / len(block),
                    "expected": sum(r[2] for r in block) / len(block),
                    "oracle": sum(r[3] for r in block) / len(block),
                    "uniform": sum(r[4] for r in block) / len(block),
                }
            )
        return curve


def write_outputs(result: SimulationResult, out: Path) -> list[Path]:
    """curve.csv, learning_curve.png and truth.json in ``out``; the picture only when
    matplotlib (the ``plots`` extra) is installed."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path, truth_path = out / "curve.csv", out / "learning_curve.png", out / "truth.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["decisions", "earned", "expected", "oracle", "uniform"])
        writer.writeheader()
        writer.writerows(result.curve)
    result.truth.save(truth_path)
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("no learning_curve.png: plots need matplotlib (pip install 'nba[plots]')")
        return [csv_path, truth_path]
    import matplotlib  # here: only the picture needs it (the plots extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    x = [row["decisions"] for row in result.curve]
    axis.plot(x, [r["oracle"] for r in result.curve], "--", color="black", label="oracle (best eligible offer)")
    axis.plot(x, [r["expected"] for r in result.curve], color="C0", linewidth=2, label="nba (expected)")
    axis.plot(x, [r["earned"] for r in result.curve], "o", color="C0", markersize=3, alpha=0.6, label="nba (earned)")
    axis.plot(x, [r["uniform"] for r in result.curve], ":", color="C3", label="uniform random")
    if result.drift_at < result.decisions:
        axis.axvline(result.drift_at, color="gray", alpha=0.5)
        axis.text(result.drift_at, axis.get_ylim()[1] * 0.95, " preferences drift", color="gray", fontsize="small")
    axis.set_xlabel("decisions")
    axis.set_ylabel("acceptance rate per block")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return [csv_path, png_path, truth_path]


def curve_table(result: SimulationResult) -> str:
    lines = [f"{'decisions':>10} {'earned':>8} {'expected':>9} {'oracle':>8} {'uniform':>8} {'of oracle':>10}"]
    for r in result.curve:
        share = r["expected"] / r["oracle"] if r["oracle"] else 0.0
        lines.append(
            f"{int(r['decisions']):>10} {r['earned']:8.3f} {r['expected']:9.3f} {r['oracle']:8.3f} {r['uniform']:8.3f} {share:10.0%}"
        )
    return "\n".join(lines)
