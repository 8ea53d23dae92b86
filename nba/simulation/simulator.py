"""The simulator: a synthetic population driving a running service over gRPC.

Each simulated customer belongs to a persona (young urban professionals, families, ...) with a
profile generator and a ground-truth probability of accepting each offer. The simulator asks
``Decide`` (with ``explain``, to learn which offers were eligible), reports the impression at
once and the acceptance or rejection some decisions later (feedback is late in real life),
and halfway through changes the personas' preferences (drift). Before each decision, the
customer's touch points report what the persona does (orders, complaints, contacts, ...) to
``ProfileService.TrackBatch``, so that a policy set with a ``profile:`` section decides on
profiles that fill up as the run goes (``events=False``: none). It measures, per 1,000
decisions, the reward the service earned against what an oracle (the best eligible offer for
each customer) and uniform random would have earned in expectation, and writes the ground
truth so that ``nba evaluate --truth`` can check its estimates against it.
The population it plays is ``nba.simulation.population``'s.
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from nba.evaluation.truth import Truth
from nba.simulation.population import EventTemplate, Population, generate
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

__all__ = ["SimulationResult", "Simulator", "curve_table", "write_outputs"]

log = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    #: one row per block of decisions: decisions, earned, expected, oracle, uniform
    curve: list[dict[str, float]]
    decisions: int
    drift_at: int
    truth: Truth
    seconds: float
    #: touch-point events tracked, and refused (with the first refusal's reason)
    events_tracked: int = 0
    events_refused: int = 0
    first_refusal: str = ""


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
        events: bool = True,
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
        self.events = events
        self._tracked = 0
        self._refused = 0
        self._first_refusal = ""

    def run(self) -> SimulationResult:
        started = time.monotonic()
        channel = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(channel).result(timeout=5)
        except grpc.FutureTimeoutError:
            raise ConnectionError(f"no service answers at {self.address} (start one with `make serve`)") from None
        stub = pb_grpc.DecisionServiceStub(channel)
        self._profiles = ppb_grpc.ProfileServiceStub(channel)
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
            self._curve(),
            self.n,
            self.drift_index,
            self.population.truth(self._drift_time),
            time.monotonic() - started,
            self._tracked,
            self._refused,
            self._first_refusal,
        )

    def _work(self, stub: pb_grpc.DecisionServiceStub, worker: int) -> None:
        rng = random.Random(f"{self.seed}-{worker}")
        # the events draw from their own generator: the decisions' draws stay those of a run without them
        event_rng = random.Random(f"{self.seed}-{worker}-events")
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
            customer_id = f"sim-{self.seed}-{i}"
            if self.events and persona.events:
                self._track(customer_id, persona.events, event_rng)
            try:
                response = stub.Decide(
                    pb.DecideRequest(customer_id=customer_id, channel=channel, context=context, explain=True),
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

    def _track(self, customer_id: str, templates: tuple[EventTemplate, ...], rng: random.Random) -> None:
        """The customer's touch-point events, in one TrackBatch. A refused event (a type the
        live policy set's profile does not declare) is counted, not an error of the run."""
        now = datetime.now(UTC)
        events = []
        for n, template in enumerate(templates):
            drawn = template.draw(rng)
            if drawn is None:
                continue
            source, days_ago, values = drawn
            occurred = timestamp_pb2.Timestamp()
            occurred.FromDatetime(now - timedelta(days=days_ago))
            properties = struct_pb2.Struct()
            properties.update(values)
            events.append(
                ppb.TrackRequest(
                    event_id=f"{customer_id}-event-{n}",
                    customer_id=customer_id,
                    type=template.type,
                    source=source,
                    occurred_at=occurred,
                    properties=properties,
                )
            )
        if not events:
            return
        try:
            reply = self._profiles.TrackBatch(ppb.TrackBatchRequest(events=events), timeout=10)
        except grpc.RpcError as exc:
            self._errors.append(f"TrackBatch: {exc.code().name}: {exc.details()}")
            return
        with self._lock:
            for result in reply.results:
                if result.HasField("tracked"):
                    self._tracked += 1
                else:
                    self._refused += 1
                    self._first_refusal = self._first_refusal or f"{result.error_code}: {result.error_message}"

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
