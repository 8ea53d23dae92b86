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

import grpc
import pytest
from conftest import REDIS, postgres_schema, redis_stream, struct
from test_policies_e2e import policy_dir
from test_replicas import start_replicas

from nba.decision.reservations import Claim, LocalReservations, RedisReservations, Reservations, key
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc


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


def window(key: str, limit: int, now: float, seconds: float = 60, known: tuple[float, ...] = (), check: bool = True) -> Claim:
    return Claim(key, limit, "window", now + seconds, known, check)


def counter(key: str, limit: int, known: int = 0, expires: float | None = None, check: bool = True) -> Claim:
    return Claim(key, limit, "counter", expires, known, check)


def test_a_window_holds_its_limit_and_frees_units_as_they_expire(store: Reservations) -> None:
    now = time.time()  # Redis expires keys by its own clock
    assert store.reserve([window("w", 2, now)], now, "t1") is None
    assert store.reserve([window("w", 2, now + 10)], now + 10, "t2") is None
    assert store.reserve([window("w", 2, now + 20)], now + 20, "t3") == 0
    assert store.reserve([window("w", 2, now + 61)], now + 61, "t4") is None  # the first unit expired
    assert store.reserve([window("w", 2, now + 62)], now + 62, "t5") == 0


def test_a_new_key_starts_from_what_the_process_knows_and_then_from_itself(store: Reservations) -> None:
    now = time.time()
    known = (now + 5, now + 50)  # two decisions already counted, expiring then
    assert store.reserve([window("k", 3, now, known=known)], now, "t1") is None
    assert store.reserve([window("k", 3, now, known=known)], now, "t2") == 0
    assert store.reserve([window("k", 3, now + 6, known=())], now + 6, "t3") is None  # one known unit expired
    assert store.reserve([counter("c", 5, known=3)], now, "t4") is None
    assert store.reserve([counter("c", 5, known=0)], now, "t5") is None  # the store has seen it: 5 now
    assert store.reserve([counter("c", 5, known=0)], now, "t6") == 0


def test_claims_are_taken_all_or_nothing_in_order(store: Reservations) -> None:
    now = time.time()
    assert store.reserve([counter("full", 1)], now, "t1") is None
    assert store.reserve([counter("room", 1), counter("full", 1)], now, "t2") == 1
    assert store.reserve([counter("room", 1)], now, "t3") is None  # untouched by the refusal
    # two answered offers under one cap with one unit left: the second is refused
    assert store.reserve([window("pair", 1, now), window("pair", 1, now)], now, "t4") == 1
    assert store.reserve([window("two", 2, now), window("two", 2, now)], now, "t5") is None


def test_unchecked_claims_count_without_being_refused(store: Reservations) -> None:
    """A contact that counts towards a cap which does not hold its offer (a per-customer cap
    on alpha, and beta answered): it takes a unit, and is never refused for it."""
    now = time.time()
    assert store.reserve([window("cust", 1, now, check=False)], now, "beta") is None
    assert store.reserve([window("cust", 1, now, check=False)], now, "beta2") is None  # over, but unchecked
    assert store.reserve([window("cust", 1, now)], now, "alpha") == 0  # alpha is held back


def test_released_units_are_free_again(store: Reservations) -> None:
    now = time.time()
    taken = [window("rw", 1, now), counter("rc", 1)]
    assert store.reserve(taken, now, "t1") is None
    assert store.reserve([counter("rc", 1)], now, "t2") == 0
    store.release(taken, "t1")
    assert store.reserve(taken, now, "t3") is None


def test_keys_escape_their_parts() -> None:
    assert key("cap", "a:b", "c") != key("cap", "a", "b:c")
    assert key("x%3A", "y") != key("x:", "y")


def test_concurrent_claims_never_exceed_the_limit(store: Reservations) -> None:
    now = time.time()
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


@pytest.mark.parametrize("kind", ["window", "counter"])
def test_seeded_redis_keys_expire_even_when_refused(kind: str) -> None:
    import redis

    with redis_stream() as prefix:
        client = redis.Redis.from_url(REDIS)
        store = RedisReservations(client, prefix + ":")
        now = time.time()
        claim = window("full", 1, now, known=(now + 30,)) if kind == "window" else counter("full", 1, 1, now + 30)
        assert store.reserve([claim], now, "t1") == 0
        ttl = client.pttl(prefix + ":full")
        assert ttl == -2 or 0 < ttl <= 32_000  # absent (a refused counter is not written), or expiring
        for k in client.scan_iter(prefix + ":*"):
            client.delete(k)
        client.close()


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
        reply = stubs[i % len(stubs)].Decide(
            pb.DecideRequest(customer_id=customer_id or f"c-{i}", channel="web", context=context, limit=3)
        )
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
        processes = start_replicas(
            tmp_path, url, NBA_BUS=REDIS, NBA_BUS_STREAM=stream, NBA_POLICIES=str(policy_dir(tmp_path, CAPPED))
        )
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


MANY = "".join(f"  - {{id: extra-{i:02d}, name: Extra {i}, channels: [web], value: 10}}\n" for i in range(27))


def test_a_cap_shared_by_the_answer_is_cut_in_one_pass(start, tmp_path: Path) -> None:
    """30 offers under a per-customer cap of 2, limit 3, no concurrency: the answer is cut to
    2 at once (no refusals, no offer logged as taken by a concurrent decision)."""
    from nba import metrics

    folder = policy_dir(tmp_path, CAPPED)
    (folder / "more.yaml").write_text("offers:\n" + MANY)
    server = start(policies=folder)
    refused = metrics.RESERVATIONS.labels("refused")._value.get()
    reply = server.stub.Decide(
        pb.DecideRequest(
            customer_id="new",
            channel="web",
            limit=3,
            explain=True,
            context=struct({"customer": {"age": 30, "segment": "a", "risk": False}}),
        )
    )
    assert len(reply.offers) == 2 and not any(o.fallback for o in reply.offers)
    assert metrics.RESERVATIONS.labels("refused")._value.get() == refused
    assert not any("concurrent" in e.detail for e in reply.explanation.offers)


SCOPED = """
settings: {timezone: UTC}
channels: [web, email]
offers:
  - {id: alpha, name: Alpha, channels: [email], value: 10}
  - {id: beta, name: Beta, channels: [web], value: 10}
  - {id: help, name: Help, channels: [web, email], fallback: true, value: 0}
policies:
  - id: alpha-only-if-untouched
    type: contact_cap
    applies_to: {offers: [alpha]}
    max: 1
    window: 1d
    counts: decided
    per: customer
"""


@pytest.mark.parametrize("where", ["one process", "two replicas on redis"])
def test_contacts_a_cap_does_not_hold_still_count_towards_it(start, tmp_path: Path, where: str) -> None:
    """A per-customer cap on alpha counts everything the customer got: beta on the web takes
    its unit (unchecked), so alpha by email is held back, on whichever replica."""
    folder = tmp_path / "scoped"
    folder.mkdir()
    (folder / "set.yaml").write_text(SCOPED)
    context = struct({"customer": {"age": 30}})
    with ExitStack() as stack:
        if where == "one process":
            stubs = [start(policies=folder).stub] * 2
        else:
            url = stack.enter_context(postgres_schema())
            stream = stack.enter_context(redis_stream())
            processes = start_replicas(tmp_path, url, n=2, NBA_BUS=REDIS, NBA_BUS_STREAM=stream, NBA_POLICIES=str(folder))
            stack.callback(lambda: [p.stop() for p in processes])
            stubs = [pb_grpc.DecisionServiceStub(p.channel) for p in processes]
        web = stubs[0].Decide(pb.DecideRequest(customer_id="c", channel="web", context=context))
        assert [o.offer_id for o in web.offers] == ["beta"]
        email = stubs[1].Decide(pb.DecideRequest(customer_id="c", channel="email", context=context))
        assert [o.offer_id for o in email.offers] == ["help"]


def test_units_of_a_decision_that_fails_to_be_made_durable_are_given_back(start, tmp_path: Path) -> None:
    server = start(
        durable_decisions=True,
        policies=policy_dir(
            tmp_path,
            """
        - id: two-alphas
          type: budget
          applies_to: {offers: [alpha]}
          max: 2
          counts: decided
          period: total
    """,
        ),
    )

    def alpha(customer_id: str) -> bool:
        reply = server.stub.Decide(
            pb.DecideRequest(
                customer_id=customer_id,
                channel="web",
                limit=3,
                context=struct({"customer": {"age": 30, "segment": "a", "risk": False}}),
            )
        )
        return "alpha" in {o.offer_id for o in reply.offers}

    assert alpha("c")  # one unit of two
    with server.service.engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX one_per_customer ON decisions (customer_id)")
    try:
        with pytest.raises(grpc.RpcError) as raised:
            alpha("c")  # reserves the second unit, then cannot be written
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        with server.service.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX one_per_customer")
    assert alpha("d")  # the unit came back
    assert not alpha("e")


ONE_ALPHA = """
- id: one-alpha
  type: budget
  applies_to: {offers: [alpha]}
  max: 1
  counts: decided
  period: total
"""


def _alpha(server, customer_id: str, request_id: str = "") -> bool:
    reply = server.stub.Decide(
        pb.DecideRequest(
            customer_id=customer_id,
            channel="web",
            limit=3,
            request_id=request_id,
            context=struct({"customer": {"age": 30, "segment": "a", "risk": False}}),
        )
    )
    return "alpha" in {o.offer_id for o in reply.offers}


def test_a_durable_decision_that_times_out_keeps_its_units(start, tmp_path: Path, monkeypatch) -> None:
    """Not confirmed in time is not refused: the decision may still be written (and replayed),
    so its unit stays taken."""
    # a timeout the ordinary commits meet even on a loaded machine (0.3 s did not, under two
    # test processes on PostgreSQL), and an insert slowed well past it
    server = start(durable_decisions=True, feedback_timeout_seconds=1.0, policies=policy_dir(tmp_path, ONE_ALPHA))
    store = server.service.store
    slow = store.insert_decisions

    def insert_slowly(conn, records):
        time.sleep(3.0)
        return slow(conn, records)

    monkeypatch.setattr(store, "insert_decisions", insert_slowly)
    with pytest.raises(grpc.RpcError) as raised:
        _alpha(server, "c", request_id="r1")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    deadline = time.monotonic() + 30  # liveness, not speed: the slow commit lands
    while store.count_decisions() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.count_decisions() == 1
    monkeypatch.setattr(store, "insert_decisions", slow)
    assert _alpha(server, "c", request_id="r1")  # the replay answers it, with alpha
    assert not _alpha(server, "d")  # the budget of one was not given back


class _Down:
    """A reservation store that cannot be reached, and that must never be asked to give back."""

    def __init__(self) -> None:
        self.released = 0

    def reserve(self, claims, now, token):
        raise ConnectionError("down")

    def release(self, claims, token):
        self.released += 1


def test_a_degraded_decision_gives_back_nothing_it_did_not_take(start, tmp_path: Path, monkeypatch) -> None:
    down = _Down()
    monkeypatch.setattr("nba.service.server.Service._reservations", lambda self: down)
    server = start(durable_decisions=True, policies=policy_dir(tmp_path, ONE_ALPHA))
    assert _alpha(server, "c")  # on screening alone
    with server.service.engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX one_per_customer ON decisions (customer_id)")
    try:
        with pytest.raises(grpc.RpcError):
            _alpha(server, "c")  # not written: nothing to give back, since nothing was taken
    finally:
        with server.service.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX one_per_customer")
    assert down.released == 0
