"""Model snapshots in the database: data (NumPy arrays and JSON), never a pickle; consistent
with the feedback id they record while learning goes on; and anything else found in the table
(an older pickled snapshot, a forged one) is ignored, never unpickled, and the model rebuilt
from the feedback log."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
from conftest import Running, customer, struct
from test_feedback import feedback
from test_learner_state import _Touch

from bandit.state import FORMAT, loads
from nba.learning.loop import signature
from nba.storage.engine import open_engine
from nba.storage.store import Store
from nba.storage.tables import SnapshotRow
from nba.v1 import decision_service_pb2 as pb


def teach(server: Running, n: int, tag: str) -> list[dict]:
    """``n`` decisions with feedback; returns contexts to score the model on."""
    contexts = []
    for i in range(n):
        ctx = {
            "customer": customer(
                age=20 + i % 50, value={"segment": ["gold", "silver"][i % 2], "clv": 50.0 * i, "monthly_spend": 100 + i}
            )
        }
        decision = server.stub.Decide(pb.DecideRequest(customer_id=f"c-{i}", channel="web", context=struct(ctx), limit=2))
        feedback(server, decision, f"{tag}-{i}", pb.OUTCOME_ACCEPTED if i % 3 == 0 else pb.OUTCOME_IMPRESSED)
        contexts.append(server.service.log.get(decision.decision_id).features)
    return contexts[:5]


def scores(server: Running, contexts: list[dict]) -> list[np.ndarray]:
    offers = [o.id for o in server.service.policy_set.by_channel["web"]]
    return [server.service.learning.scores(offers, f) for f in contexts]


def test_a_snapshot_is_a_numpy_archive_named_by_its_format(start, database_url: str) -> None:
    server = start(snapshot_seconds=3600)
    teach(server, 6, "e")
    server.stop()
    engine = open_engine(database_url)
    stored = Store(engine).latest_snapshot()
    engine.dispose()
    assert stored is not None
    stored_signature, last_id, data = stored
    assert stored_signature.startswith(f"{FORMAT} LinearBandit(") and last_id == 6
    state = loads(data)
    assert state.kind == "LinearBandit" and state.meta["n_updates"] == 6


def test_a_pickled_snapshot_is_never_unpickled_and_the_model_is_replayed(start, database_url: str, tmp_path: Path) -> None:
    server = start(snapshot_seconds=3600)
    probes = teach(server, 24, "e")
    before, version = scores(server, probes), server.service.learning.version
    current = signature(server.service.learning._learner)
    server.stop()
    marker = tmp_path / "unpickled"
    forged = pickle.dumps(_Touch(marker), protocol=pickle.HIGHEST_PROTOCOL)
    # As versions before the format wrote it (no format in the signature), then forged to
    # claim the current format: neither is unpickled.
    for stored_signature in (current.split(" ", 1)[1], current):
        engine = open_engine(database_url)
        table = SnapshotRow.__table__
        with engine.begin() as conn:
            newest = conn.execute(table.select().order_by(table.c.id.desc()).limit(1)).first()
            conn.execute(table.update().where(table.c.id == newest.id).values(signature=stored_signature, state=forged))
        engine.dispose()
        again = start(snapshot_seconds=3600)
        assert not marker.exists()
        assert again.service.learning.version == version == "linear-igw/24"  # every event replayed
        for got, expected in zip(scores(again, probes), before, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        again.stop()


def test_a_snapshot_taken_while_learning_matches_the_events_it_says_it_holds(start, database_url: str) -> None:
    server = start(snapshot_seconds=3600)
    learning, store = server.service.learning, server.service.store
    taken: list[int] = []
    stop = threading.Event()

    def snapshot() -> None:
        while not stop.is_set():
            if learning.maybe_snapshot(store, force=True):
                taken.append(learning.last_feedback_id)

    thread = threading.Thread(target=snapshot)
    thread.start()
    try:
        probes = teach(server, 60, "e")
    finally:
        stop.set()
        thread.join()
    before = scores(server, probes)
    engine = open_engine(database_url)
    table = SnapshotRow.__table__
    with engine.connect() as conn:
        kept = conn.execute(table.select().order_by(table.c.id)).all()
    middle = next(row for row in kept if 0 < row.last_feedback_id < 60)  # taken mid-traffic
    server.stop()
    with engine.begin() as conn:  # the restart must start from that one and replay the rest
        conn.execute(table.delete().where(table.c.id > middle.id))
    engine.dispose()
    again = start(snapshot_seconds=3600)
    assert again.service.learning.version == "linear-igw/60"
    for got, expected in zip(scores(again, probes), before, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert len(taken) >= 3
