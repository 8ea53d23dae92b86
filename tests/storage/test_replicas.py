"""Replicas on one PostgreSQL database: three `nba serve` processes on their own ports, as on
three machines, following each other through the database (`--bus database`) or through a
Redis stream (`--bus redis://…`). Decisions made on one replica, feedback sent to another: all
learn every event exactly once and rank alike, and contact caps hold across them."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import REDIS, customer, postgres_schema, redis_stream, struct
from engines import OwnRedis
from test_cli import Process
from test_in_flight import retrying

from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc


def start_replicas(tmp_path: Path, url: str, n: int = 3, **env: str) -> list[Process]:
    env = {"NBA_SNAPSHOT_SECONDS": "3600", **env}
    started: list[Process] = []
    try:
        for i in range(n):  # started together: they race to create the schema and publish
            started.append(Process(tmp_path, NBA_DATABASE_URL=url, NBA_SEED=str(i), **env))
        for p in started:
            p.wait_serving()
    except BaseException:  # none left running for a later test to trip over
        for p in started:
            p.stop()
        raise
    return started


@pytest.fixture(scope="module", params=["database", "redis"])
def replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Three replicas on a bus, shared by this module's tests on that bus (three processes take
    seconds to start): the tests use customers of their own, and the first to run on them,
    test_replicas_learn_every_event_once_and_rank_alike, finds them fresh."""
    with ExitStack() as stack:
        url = stack.enter_context(postgres_schema())
        env = {"NBA_BUS": "database"}
        if request.param == "redis":
            env = {"NBA_BUS": REDIS, "NBA_BUS_STREAM": stack.enter_context(redis_stream())}
        started = start_replicas(tmp_path_factory.mktemp(f"replicas-{request.param}"), url, **env)
        try:
            yield started
        finally:
            for p in started:
                p.stop()


def stubs(processes: list[Process]) -> list[pb_grpc.DecisionServiceStub]:
    return [pb_grpc.DecisionServiceStub(p.channel) for p in processes]


def version(stub: pb_grpc.DecisionServiceStub) -> int:
    reply = stub.Decide(pb.DecideRequest(customer_id="probe", channel="web", context=struct({"customer": customer()})))
    return int(reply.model_version.rsplit("/", 1)[1])


def predictions(stub: pb_grpc.DecisionServiceStub) -> dict[str, float]:
    reply = stub.Decide(
        pb.DecideRequest(customer_id="probe", channel="web", explain=True, context=struct({"customer": customer(age=41)}))
    )
    return {o.offer_id: o.predicted for o in reply.explanation.offers if o.eligible}


def metric(process: Process, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def traffic(replicas: list[pb_grpc.DecisionServiceStub], rounds: int, tag: str) -> int:
    """Decisions on the first replica, feedback on the others (and a retry on the third):
    returns how many events were acknowledged as applied."""
    a, b, c = replicas

    def one(i: int) -> bool:
        decision = a.Decide(
            pb.DecideRequest(
                customer_id=f"c-{i % 40}", channel="web", limit=2, context=struct({"customer": customer(age=20 + i % 45)})
            )
        )
        outcome = pb.OUTCOME_ACCEPTED if i % 3 == 0 else pb.OUTCOME_IMPRESSED
        request = pb.FeedbackRequest(
            event_id=f"{tag}-{i}", decision_id=decision.decision_id, offer_id=decision.offers[0].offer_id, outcome=outcome
        )
        # a replica that did not decide (which may not have the decision yet: UNAVAILABLE, retried)
        reply = retrying((b, c)[i % 2].Feedback, request)
        retried = retrying((c, b)[i % 2].Feedback, request)
        assert retried.duplicate and not retried.applied  # a retry elsewhere is not applied again
        return reply.applied

    with ThreadPoolExecutor(4) as pool:
        return sum(pool.map(one, range(rounds)))


def converge(replicas: list[pb_grpc.DecisionServiceStub], expected: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(version(s) != expected for s in replicas):
        time.sleep(0.05)
    assert [version(s) for s in replicas] == [expected] * len(replicas)
    scores = [predictions(s) for s in replicas]
    assert scores[0] and all(s == scores[0] for s in scores)  # the same events in the same order


def test_replicas_learn_every_event_once_and_rank_alike(replicas, request) -> None:
    clients = stubs(replicas)
    before = [version(s) for s in clients]
    assert len(set(before)) == 1
    acknowledged = traffic(clients, 120, "e")
    assert acknowledged == 120
    converge(clients, before[0] + acknowledged)
    if "redis" in request.node.callspec.id:  # the events travelled through the stream
        assert all(metric(p, "nba_bus_up") == 1 for p in replicas)
        assert all(metric(p, "nba_bus_received_total") > 0 for p in replicas)


def test_a_contact_cap_holds_across_replicas(replicas) -> None:
    """`three-a-week`: no commercial offer shown more than 3 times a week to one customer,
    whichever replica decides and whichever hears of the impression."""
    clients = stubs(replicas)
    shown: Counter[str] = Counter()
    profile = struct({"customer": customer()})
    for i in range(24):
        decision = clients[i % 3].Decide(pb.DecideRequest(customer_id="capped", channel="web", context=profile))
        offer = decision.offers[0]
        retrying(
            clients[(i + 1) % 3].Feedback,
            pb.FeedbackRequest(
                event_id=f"cap-{i}", decision_id=decision.decision_id, offer_id=offer.offer_id, outcome=pb.OUTCOME_IMPRESSED
            ),
        )
        if offer.group in ("retention", "cross-sell", "up-sell"):
            shown[offer.offer_id] += 1
        time.sleep(0.1)  # a customer's pace: replicas learn each other's contacts within ~30 ms
    assert shown and max(shown.values()) <= 3, shown
    assert sum(shown.values()) >= 6  # the cap was reached, not avoided


def test_replicas_keep_learning_alike_while_redis_is_down_and_after(tmp_path: Path) -> None:
    """A Redis of the test's own, stopped and started again under traffic: the replicas fall
    back to the database, say so in nba_bus_up, and return to the bus by themselves."""
    with OwnRedis() as redis, postgres_schema() as url:
        processes = start_replicas(tmp_path, url, NBA_BUS=redis.url)
        try:
            clients = stubs(processes)
            start = version(clients[0])
            done = traffic(clients, 30, "up")
            converge(clients, start + done)

            redis.stop()
            done += traffic(clients, 30, "down")
            converge(clients, start + done)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(metric(p, "nba_bus_up") != 0 for p in processes):
                time.sleep(0.1)
            assert [metric(p, "nba_bus_up") for p in processes] == [0, 0, 0]

            redis.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(metric(p, "nba_bus_up") != 1 for p in processes):
                done += traffic(clients, 3, f"back-{time.monotonic_ns()}")
                time.sleep(0.2)
            assert [metric(p, "nba_bus_up") for p in processes] == [1, 1, 1]
            done += traffic(clients, 30, "again")
            converge(clients, start + done)
        finally:
            for p in processes:
                p.stop()


@pytest.mark.parametrize("bus", ["database", "redis"])
def test_reward_windows_close_once_across_replicas(tmp_path: Path, bus: str) -> None:
    """Every replica looks for closed windows (every 0.1 s here, with 1 s windows); each
    unanswered offer still gets its default reward once, and every replica learns it once."""
    windows = {f"NBA_WINDOW_{o}_SECONDS": "1" for o in ("IMPRESSED", "CLICKED", "ACCEPTED", "REJECTED")}
    with ExitStack() as stack:
        url = stack.enter_context(postgres_schema())
        env = (
            {"NBA_BUS": "database"}
            if bus == "database"
            else {"NBA_BUS": REDIS, "NBA_BUS_STREAM": stack.enter_context(redis_stream())}
        )
        processes = start_replicas(tmp_path, url, NBA_WINDOW_CHECK_SECONDS="0.1", NBA_REWARD_DEFAULT="-0.1", **windows, **env)
        try:
            clients = stubs(processes)
            answered = 0
            offered = 0
            for i in range(30):
                decision = clients[i % 3].Decide(
                    pb.DecideRequest(customer_id=f"w-{i}", channel="web", limit=2, context=struct({"customer": customer()}))
                )
                offered += len(decision.offers)
                if i % 2:
                    retrying(
                        clients[(i + 1) % 3].Feedback,
                        pb.FeedbackRequest(
                            event_id=f"w-{i}",
                            decision_id=decision.decision_id,
                            offer_id=decision.offers[0].offer_id,
                            outcome=pb.OUTCOME_CLICKED,
                        ),
                    )
                    answered += 1
            unanswered = offered - answered
            time.sleep(2.5)
            import psycopg

            libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
            with psycopg.connect(libpq) as conn:
                rows = conn.execute(
                    "SELECT decision_id, offer_id, count(*) FROM feedback WHERE outcome = 'no_response' "
                    "GROUP BY decision_id, offer_id"
                ).fetchall()
                applied = conn.execute("SELECT count(*) FROM feedback WHERE applied").fetchone()[0]
            assert rows and all(n == 1 for _, _, n in rows)  # once per offer, whoever closed it
            assert len({d for d, _, _ in rows}) >= 15  # the 15 decisions without feedback, at least
            assert len(rows) == unanswered
            # each replica applied each event once (counted without a Decide, which would
            # open another window)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(metric(p, "nba_learning_updates_total") != applied for p in processes):
                time.sleep(0.1)
            assert [metric(p, "nba_learning_updates_total") for p in processes] == [applied] * 3
        finally:
            for p in processes:
                p.stop()
