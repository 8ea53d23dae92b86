"""Nothing acknowledged is lost: graceful shutdown flushes, restarts restore the model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import customer, struct
from test_feedback import feedback

from nba.v1 import decision_service_pb2 as pb


def test_graceful_shutdown_writes_every_decision(start) -> None:
    # A long flush interval: nothing would be written before the stop without the flush.
    server = start(log_flush_seconds=30.0, log_batch_size=10_000)
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(
                lambda i: (
                    server.stub.Decide(
                        pb.DecideRequest(
                            customer_id=f"c-{i}", channel="web", context=struct({"customer": customer(age=18 + i % 60)})
                        )
                    ).decision_id
                ),
                range(600),
            )
        )
    assert server.service.store.count_decisions() == 0  # still queued
    server.stop()
    assert server.service.store.count_decisions() == 600
    assert all(server.service.store.find_decision(i) is not None for i in ids[::50])


def test_the_model_survives_a_restart_exactly(start) -> None:
    server = start(snapshot_seconds=3600)  # no snapshot until the stop
    contexts = [
        {"customer": customer(age=20 + i, value={"segment": s, "clv": 100.0 * i, "monthly_spend": 300})}
        for i, s in enumerate(["gold", "silver", "bronze"] * 10)
    ]
    for i, ctx in enumerate(contexts):
        decision = server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=struct(ctx), limit=2))
        feedback(server, decision, f"e-{i}", pb.OUTCOME_ACCEPTED if i % 3 == 0 else pb.OUTCOME_IMPRESSED)
    offers = [o.id for o in server.service.policy_set.by_channel["web"]]
    features = [server.service.log.get(decision.decision_id).features] + [
        {k: v for k, v in ctx["customer"].items()} for ctx in contexts[:3]
    ]
    before = [server.service.learning.scores(offers, f) for f in features]
    version = server.service.learning.version
    server.stop()

    again = start()
    assert again.service.learning.version == version == "linear-igw/30"
    for f, expected in zip(features, before, strict=True):
        np.testing.assert_allclose(again.service.learning.scores(offers, f), expected, rtol=1e-9, atol=1e-12)


def test_a_snapshot_of_another_configuration_is_rebuilt_from_the_log(start) -> None:
    server = start()
    for i in range(5):
        decision = server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": customer()})))
        feedback(server, decision, f"e-{i}")
    server.stop()
    again = start(learner_features=64, learner_alpha=2.0)
    assert again.service.learning.version == "linear-igw/5"
    assert again.service.learning._learner.n_features == 64


def test_durable_decisions_are_committed_before_decide_answers(start) -> None:
    # A flush interval no one would wait for: durable decisions wake the writer themselves.
    server = start(durable_decisions=True, log_flush_seconds=30.0, log_batch_size=10_000)

    def decide_and_look(i: int) -> bool:
        reply = server.stub.Decide(
            pb.DecideRequest(customer_id=f"c-{i}", channel="web", context=struct({"customer": customer(age=18 + i % 60)}))
        )
        return server.service.store.find_decision(reply.decision_id) is not None  # already in the log

    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(decide_and_look, range(200)))
    assert all(found)
    assert server.service.store.count_decisions() == 200


def test_a_durable_decision_that_cannot_be_written_is_refused(start) -> None:
    server = start(durable_decisions=True)
    request = pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": customer()}))
    server.stub.Decide(request)
    with server.service.engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX one_per_customer ON decisions (customer_id)")
    try:
        with pytest.raises(grpc.RpcError) as raised:
            server.stub.Decide(request)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not made; retry" in raised.value.details()
    finally:
        with server.service.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX one_per_customer")
    assert server.service.store.count_decisions() == 1
    reply = server.stub.Decide(request)  # and it works again
    assert server.service.store.find_decision(reply.decision_id) is not None
