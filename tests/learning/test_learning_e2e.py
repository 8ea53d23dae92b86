"""The service learns: a simulated population whose best offer differs by segment, driven
through a real server for one to three thousand Decide + Feedback rounds, and the learning
survives a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import struct

from nba.v1 import decision_service_pb2 as pb

OFFERS = ["alpha", "bravo", "charlie", "delta", "echo"]
# Acceptance probability by segment and offer: each segment has a different best offer.
TRUTH = {
    "student": [0.30, 0.05, 0.05, 0.08, 0.05],
    "family": [0.05, 0.05, 0.30, 0.08, 0.05],
    "retired": [0.05, 0.08, 0.05, 0.05, 0.30],
}
SEGMENTS = list(TRUTH)


def catalogue(directory: Path) -> Path:
    lines = ["channels: [web]", "offers:"]
    lines += [f"  - {{id: {o}, name: Offer {o}, channels: [web], value: 10.0}}" for o in OFFERS]
    (directory / "sim.yaml").write_text("\n".join(lines) + "\n")
    return directory


def run(server, rounds: int, rng: np.random.Generator, start: int) -> float:
    """Plays ``rounds`` customers; returns the share who were shown their segment's best offer."""
    best = 0
    for i in range(start, start + rounds):
        segment = SEGMENTS[rng.integers(len(SEGMENTS))]
        context = struct({"customer": {"segment": segment, "age": float(rng.integers(18, 90)), "vip": bool(rng.random() < 0.2)}})
        decision = server.stub.Decide(pb.DecideRequest(customer_id=f"c-{i}", channel="web", context=context))
        offer = decision.offers[0].offer_id
        accepted = rng.random() < TRUTH[segment][OFFERS.index(offer)]
        outcome = pb.OUTCOME_ACCEPTED if accepted else pb.OUTCOME_IMPRESSED
        server.stub.Feedback(
            pb.FeedbackRequest(event_id=f"e-{i}", decision_id=decision.decision_id, offer_id=offer, outcome=outcome)
        )
        best += OFFERS.index(offer) == int(np.argmax(TRUTH[segment]))
    return best / rounds


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # snapshots on PostgreSQL: test_snapshots
def test_the_service_learns_each_segments_best_offer_and_keeps_it_across_a_restart(start, tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    policies = catalogue(tmp_path / "policies")
    rng = np.random.default_rng(2026)
    server = start(policies=policies, seed=7)
    # The learner finds the best offers within a few hundred rounds (about 90% of first slots
    # from round 250 on): 800 rounds to learn, then 400 measured, leave a wide margin.
    run(server, 800, rng, 0)
    late = run(server, 400, rng, 800)
    # Uniform random shows each segment's best offer 20% of the time.
    uniform = 1 / len(OFFERS)
    assert late > 0.65 > 3 * uniform, f"late share of best offers {late:.2f}"
    version = server.service.learning.version
    server.stop()

    restarted = start(policies=policies, seed=8)
    assert restarted.service.learning.version == version
    # Before any new feedback, the restored model already ranks each segment's best first.
    for segment, truth in TRUTH.items():
        features = {"customer.segment": segment, "customer.age": 50.0, "customer.vip": False}
        scores = restarted.service.learning.scores(OFFERS, features)
        assert int(np.argmax(scores)) == int(np.argmax(truth)), (segment, scores)
    # No relearning: the very first rounds after the restart already favour the best offers.
    after_restart = run(restarted, 300, rng, 1200)
    assert after_restart > 0.65, f"share after restart {after_restart:.2f}"


def play(
    server, truth: dict[str, list[float]], offers: list[str], rounds: int, rng: np.random.Generator, start: int, run: str = ""
) -> list[tuple[str, str]]:
    """Plays ``rounds`` customers against ``truth`` (acceptance by segment and offer); returns
    each one's segment and the offer answered first."""
    shown = []
    for i in range(start, start + rounds):
        segment = SEGMENTS[rng.integers(len(SEGMENTS))]
        context = struct({"customer": {"segment": segment, "age": float(rng.integers(18, 90))}})
        decision = server.stub.Decide(pb.DecideRequest(customer_id=f"c-{i}", channel="web", context=context))
        offer = decision.offers[0].offer_id
        accepted = rng.random() < truth[segment][offers.index(offer)]
        outcome = pb.OUTCOME_ACCEPTED if accepted else pb.OUTCOME_IMPRESSED
        server.stub.Feedback(
            pb.FeedbackRequest(event_id=f"e{run}-{i}", decision_id=decision.decision_id, offer_id=offer, outcome=outcome)
        )
        shown.append((segment, offer))
    return shown


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the learner is the same on every store
def test_with_its_defaults_the_service_follows_when_every_segments_best_offer_changes(start, tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    server = start(policies=catalogue(tmp_path / "policies"), seed=11)
    rng = np.random.default_rng(11)
    play(server, TRUTH, OFFERS, 1500, rng, 0)
    # Every segment's favourite now pays what another offer paid, and that one pays 0.30.
    swapped = {
        "student": [0.05, 0.05, 0.05, 0.30, 0.08],
        "family": [0.30, 0.05, 0.05, 0.08, 0.05],
        "retired": [0.05, 0.30, 0.05, 0.05, 0.08],
    }
    # Decisions 800-1,200 after the change are measured: with the defaults the new best offers
    # take over 90% of first slots there; without change detection under 40%, there as
    # thousands of decisions later.
    shown = play(server, swapped, OFFERS, 1200, rng, 1500)
    late = shown[800:]
    share = np.mean([OFFERS.index(offer) == int(np.argmax(swapped[segment])) for segment, offer in late])
    assert share >= 0.6, f"the new best offers took {share:.0%} of first slots in decisions 800-1,200 after the change"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_offers_published_into_a_running_service_are_tried(start, tmp_path: Path) -> None:
    """Three offers join a running catalogue, each the best for most customers: in every run
    (here one seed; tests/bandit/test_adaptation.py runs six on the library) they take at least 40%
    of first slots in their first 500 decisions."""
    from test_admin import publish

    old, new = OFFERS[:2], OFFERS[2:]
    truth = {
        "student": [0.10, 0.05, 0.40, 0.08, 0.08],
        "family": [0.05, 0.10, 0.08, 0.40, 0.08],
        "retired": [0.10, 0.05, 0.08, 0.08, 0.40],
    }

    def text(offers: list[str]) -> str:
        return "channels: [web]\noffers:\n" + "".join(
            f"  - {{id: {o}, name: Offer {o}, channels: [web], value: 10.0}}\n" for o in offers
        )

    for seed in (21,):
        directory = tmp_path / f"policies-{seed}"
        directory.mkdir()
        (directory / "sim.yaml").write_text(text(old))
        server = start(policies=directory, seed=seed, database_url=f"sqlite:///{tmp_path / f'nba-{seed}.db'}")
        rng = np.random.default_rng(seed)
        play(server, truth, OFFERS, 1000, rng, 0, run=str(seed))
        publish(server, text(OFFERS))
        shown = play(server, truth, OFFERS, 500, rng, 1000, run=str(seed))
        share = np.mean([offer in new for _, offer in shown])
        assert share >= 0.4, f"seed {seed}: the new offers took {share:.0%} of their first 500 decisions"
        server.stop()
