"""Exact caps and budgets that count decisions: the reservation stores' contract (in-process
and real Redis alike), then concurrent Decide calls against one process and against three
replicas on a Redis bus."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from nba.reservations import Claim, LocalReservations, RedisReservations, Reservations
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc

from conftest import REDIS, postgres_schema, redis_stream, struct
from test_policies_e2e import policy_dir
from test_replicas import start_replicas


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Reservations]:
    if request.param == "local":
        yield LocalReservations()
        return
    import redis

    with redis_stream() as prefix:
        client = redis.Redis.from_url(REDIS)
        yield RedisReservations(client, prefix + ":")
        for key in client.scan_iter(prefix + ":*"):
            client.delete(key)
        client.close()


def window(key: str, limit: int, now: float, seconds: float = 60, known: tuple[float, ...] = ()) -> Claim:
    return Claim(key, limit, "window", now + seconds, known)


def counter(key: str, limit: int, known: int = 0, expires: float | None = None) -> Claim:
    return Claim(key, limit, "counter", expires, known)


def test_a_window_holds_its_limit_and_frees_units_as_they_expire(store: Reservations) -> None:
    now = time.time()  # Redis expires keys by its own clock
    assert store.reserve([window("w", 2, now)], now, "t1") is None
    assert store.reserve([window("w", 2, now + 10)], now + 10, "t2") is None
    assert store.reserve([window("w", 2, now + 20)], now + 20, "t3") == "w"
    assert store.reserve([window("w", 2, now + 61)], now + 61, "t4") is None  # the first unit expired
    assert store.reserve([window("w", 2, now + 62)], now + 62, "t5") == "w"


def test_a_new_key_starts_from_what_the_process_knows_and_then_from_itself(store: Reservations) -> None:
    now = time.time()  # Redis expires keys by its own clock
    known = (now + 5, now + 50)  # two decisions already counted, expiring then
    assert store.reserve([window("k", 3, now, known=known)], now, "t1") is None
    assert store.reserve([window("k", 3, now, known=known)], now, "t2") == "k"
    assert store.reserve([window("k", 3, now + 6, known=())], now + 6, "t3") is None  # one known unit expired
    assert store.reserve([counter("c", 5, known=3)], now, "t4") is None
    assert store.reserve([counter("c", 5, known=0)], now, "t5") is None  # the store has seen it: 5 now
    assert store.reserve([counter("c", 5, known=0)], now, "t6") == "c"


def test_claims_are_taken_all_or_nothing_and_together_per_key(store: Reservations) -> None:
    now = time.time()  # Redis expires keys by its own clock
    assert store.reserve([counter("full", 1)], now, "t1") is None
    assert store.reserve([counter("room", 1), counter("full", 1)], now, "t2") == "full"
    assert store.reserve([counter("room", 1)], now, "t3") is None  # untouched by the refusal
    assert store.reserve([window("pair", 1, now), window("pair", 1, now)], now, "t4") == "pair"  # two units, one left
    assert store.reserve([window("pair", 2, now), window("pair", 2, now)], now, "t5") is None


def test_concurrent_claims_never_exceed_the_limit(store: Reservations) -> None:
    now = time.time()  # Redis expires keys by its own clock
    taken: list[bool] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        ok = store.reserve([counter("budget", 25), window("cap", 25, now)], now, f"t{i}") is None
        with lock:
            taken.append(ok)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(taken) == 25


CAPPED = """
- id: two-decisions-a-day
  type: contact_cap
  max: 2
  window: 1d
  counts: decided
  per: customer
- id: ten-alphas
  type: budget
  applies_to: {offers: [alpha]}
  max: 10
  counts: decided
  period: total
"""


def race(stubs: list[pb_grpc.DecisionServiceStub], calls: int, customer_id: str | None = None) -> Counter[str]:
    """``calls`` Decide calls at once, spread over the stubs: offers answered, by id."""
    answered: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(calls)

    def one(i: int) -> None:
        context = struct({"customer": {"age": 30, "segment": "a", "risk": False}})
        barrier.wait()
        reply = stubs[i % len(stubs)].Decide(pb.DecideRequest(customer_id=customer_id or f"c-{i}", channel="web",
                                                              context=context, limit=3))
        with lock:
            answered.update(o.offer_id for o in reply.offers)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answered


def test_one_process_holds_caps_and_budgets_counting_decisions_under_concurrency(start, tmp_path: Path) -> None:
    server = start(policies=policy_dir(tmp_path, CAPPED), threads=32)
    # One customer, 24 calls at once, 3 offers each: the cap allows 2 decided contacts a day.
    same = race([server.stub] * 24, 24, customer_id="one")
    assert sum(n for offer, n in same.items() if offer != "help") == 2, same
    # Many customers at once: alpha's budget of 10 decisions in total, exactly.
    many = race([server.stub] * 30, 30)
    assert many["alpha"] == 10 - same["alpha"], many


def test_replicas_on_redis_hold_caps_and_budgets_counting_decisions_together(tmp_path: Path) -> None:
    with ExitStack() as stack:
        url = stack.enter_context(postgres_schema())
        stream = stack.enter_context(redis_stream())
        processes = start_replicas(tmp_path, url, NBA_BUS=REDIS, NBA_BUS_STREAM=stream,
                                   NBA_POLICIES=str(policy_dir(tmp_path, CAPPED)))
        try:
            stubs = [pb_grpc.DecisionServiceStub(p.channel) for p in processes]
            same = race(stubs, 24, customer_id="one")
            assert sum(n for offer, n in same.items() if offer != "help") == 2, same
            many = race(stubs, 30)
            assert many["alpha"] == 10 - same["alpha"], many
        finally:
            for p in processes:
                p.stop()
            import redis

            client = redis.Redis.from_url(REDIS)
            for key in client.scan_iter(stream + ":hold:*"):
                client.delete(key)
            client.close()
