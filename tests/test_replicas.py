"""Replicas on one PostgreSQL database (`--bus database`): three `nba serve` processes on their
own ports, as on three machines. Decisions made on one replica, feedback sent to another: all
learn every event exactly once and rank alike, and contact caps hold across them."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc

from conftest import customer, postgres_schema, struct
from test_cli import Process


@pytest.fixture
def replicas(tmp_path: Path):
    with postgres_schema() as url:
        started = [Process(tmp_path, NBA_DATABASE_URL=url, NBA_BUS="database", NBA_SNAPSHOT_SECONDS="3600",
                           NBA_SEED=str(i)) for i in range(3)]  # started together: they race to create and publish
        try:
            for p in started:
                p.wait_serving()
            yield [pb_grpc.DecisionServiceStub(p.channel) for p in started]
        finally:
            for p in started:
                p.stop()


def version(stub: pb_grpc.DecisionServiceStub) -> int:
    reply = stub.Decide(pb.DecideRequest(customer_id="probe", channel="web", context=struct({"customer": customer()})))
    return int(reply.model_version.rsplit("/", 1)[1])


def predictions(stub: pb_grpc.DecisionServiceStub) -> dict[str, float]:
    reply = stub.Decide(pb.DecideRequest(customer_id="probe", channel="web", explain=True,
                                         context=struct({"customer": customer(age=41)})))
    return {o.offer_id: o.predicted for o in reply.explanation.offers if o.eligible}


def test_replicas_learn_every_event_once_and_rank_alike(replicas) -> None:
    a, b, c = replicas
    before = [version(s) for s in replicas]
    assert len(set(before)) == 1

    def one(i: int) -> bool:
        decision = a.Decide(pb.DecideRequest(customer_id=f"c-{i % 40}", channel="web", limit=2,
                                             context=struct({"customer": customer(age=20 + i % 45)})))
        other = (b, c)[i % 2]  # the feedback reaches a replica that did not decide
        outcome = pb.OUTCOME_ACCEPTED if i % 3 == 0 else pb.OUTCOME_IMPRESSED
        reply = other.Feedback(pb.FeedbackRequest(event_id=f"e-{i}", decision_id=decision.decision_id,
                                                  offer_id=decision.offers[0].offer_id, outcome=outcome))
        retried = (c, b)[i % 2].Feedback(pb.FeedbackRequest(event_id=f"e-{i}", decision_id=decision.decision_id,
                                                            offer_id=decision.offers[0].offer_id, outcome=outcome))
        assert retried.duplicate and not retried.applied  # a retry elsewhere is not applied again
        return reply.applied

    with ThreadPoolExecutor(4) as pool:
        acknowledged = sum(pool.map(one, range(120)))
    assert acknowledged == 120

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(version(s) != before[0] + acknowledged for s in replicas):
        time.sleep(0.05)
    assert [version(s) for s in replicas] == [before[0] + acknowledged] * 3
    scores = [predictions(s) for s in replicas]
    assert scores[0] and scores[0] == scores[1] == scores[2]  # the same events in the same order


def test_a_contact_cap_holds_across_replicas(replicas) -> None:
    """`three-a-week`: no commercial offer shown more than 3 times a week to one customer,
    whichever replica decides and whichever hears of the impression."""
    shown: Counter[str] = Counter()
    profile = struct({"customer": customer()})
    for i in range(24):
        decision = replicas[i % 3].Decide(pb.DecideRequest(customer_id="capped", channel="web", context=profile))
        offer = decision.offers[0]
        replicas[(i + 1) % 3].Feedback(pb.FeedbackRequest(event_id=f"cap-{i}", decision_id=decision.decision_id,
                                                          offer_id=offer.offer_id, outcome=pb.OUTCOME_IMPRESSED))
        if offer.group in ("retention", "cross-sell", "up-sell"):
            shown[offer.offer_id] += 1
        time.sleep(0.1)  # a customer's pace: replicas learn each other's contacts within ~30 ms
    assert shown and max(shown.values()) <= 3, shown
    assert sum(shown.values()) >= 6  # the cap was reached, not avoided
