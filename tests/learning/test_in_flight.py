"""Feedback for a decision another replica made moments ago and has not written yet (the log is
written behind) is UNAVAILABLE "retry", never NOT_FOUND (which tells clients to drop the
event); an unknown id that cannot be in flight is NOT_FOUND at once, after one lookup. Two
replicas on one database (``--bus database``), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from conftest import Running, customer, struct
from sqlalchemy import event

from nba.ids import new_decision_id
from nba.v1 import decision_service_pb2 as pb


def retrying(call: Any, request: Any, seconds: float = 15.0) -> Any:
    """A call made as the README tells clients to: UNAVAILABLE is retried, with backoff, with
    the same request (its idempotency key makes that safe); any other error is final."""
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            return call(request)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 1.0)


@contextmanager
def lookups(server: Running, decision_id: str) -> Iterator[list[str]]:
    """The statements ``server`` sends its database that name ``decision_id``."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if decision_id in repr(parameters):
            seen.append(statement)

    event.listen(server.service.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(server.service.engine, "before_cursor_execute", record)


def feedback(server: Running, decision_id: str, offer_id: str = "gold-card", event_id: str = "e-1") -> pb.FeedbackResponse:
    return server.stub.Feedback(
        pb.FeedbackRequest(event_id=event_id, decision_id=decision_id, offer_id=offer_id, outcome=pb.OUTCOME_IMPRESSED)
    )


def code_and_details(server: Running, decision_id: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        feedback(server, decision_id)
    return raised.value.code(), raised.value.details()


@pytest.fixture
def replicas(start) -> tuple[Running, Running]:
    return start(bus="database"), start(bus="database")


def test_a_decision_still_in_flight_is_unavailable_then_applied(replicas: tuple[Running, Running]) -> None:
    slow, other = replicas
    # The database's write lock (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock) held
    # from outside: the first replica answers its decision and cannot write it yet.
    with slow.service.store.write():
        decision = slow.stub.Decide(pb.DecideRequest(customer_id="c-1", channel="web", context=struct({"customer": customer()})))
        offer = decision.offers[0].offer_id
        with lookups(other, decision.decision_id) as seen:
            with pytest.raises(grpc.RpcError) as raised:
                feedback(other, decision.decision_id, offer)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details().startswith(f"decision_id: decision '{decision.decision_id}' (made ")
    assert "retry with the same event_id" in raised.value.details()
    assert len(seen) == 3  # looked up again twice, not busy-waiting
    slow.service.log.flush()  # the write lands
    reply = feedback(other, decision.decision_id, offer)
    assert reply.applied
    assert feedback(slow, decision.decision_id, offer).duplicate  # one event, wherever it was sent


@pytest.mark.parametrize(
    ("decision_id", "why"),
    [
        (new_decision_id(time.time() - 3600), "an hour old"),
        (new_decision_id(time.time() - 60), "a minute old"),
        (new_decision_id(time.time() + 3600), "forged an hour in the future"),
        (new_decision_id(time.time() + 10**7), "forged months in the future"),
        ("ffffffffffff" + "0" * 20, "the largest time an id can hold"),
        ("nope", "not an id of ours"),
        ("019AB2C4E1F05C0D3A9E4B1F27C8D6A0", "upper case: not an id of ours"),
    ],
    # Named by the case alone: ids made from the clock differ between test processes.
    ids=lambda value: value if " " in value else "id",
)
def test_an_unknown_id_that_cannot_be_in_flight_is_not_found_after_one_lookup(
    replicas: tuple[Running, Running], decision_id: str, why: str
) -> None:
    _, other = replicas
    with lookups(other, decision_id) as seen:
        code, details = code_and_details(other, decision_id)
    assert code == grpc.StatusCode.NOT_FOUND, why
    assert details == f"decision_id: no decision '{decision_id}'"
    assert len(seen) == 1, why


def test_alone_a_process_knows_what_it_has_not_written(server: Running) -> None:
    """A process alone on its log holds every decision it made until written: an id it does not
    know is unknown, however young."""
    decision_id = new_decision_id()
    with lookups(server, decision_id) as seen:
        code, _ = code_and_details(server, decision_id)
    assert code == grpc.StatusCode.NOT_FOUND
    assert len(seen) == 1


def test_with_durable_decisions_nothing_answered_is_in_flight(start) -> None:
    start(bus="database", durable_decisions=True)
    other = start(bus="database", durable_decisions=True)
    decision_id = new_decision_id()
    with lookups(other, decision_id) as seen:
        code, _ = code_and_details(other, decision_id)
    assert code == grpc.StatusCode.NOT_FOUND
    assert len(seen) == 1


def test_a_young_forged_id_is_retried_only_for_a_bounded_time(replicas: tuple[Running, Running]) -> None:
    """An id that looks a second old and never existed: UNAVAILABLE while it could still be in
    flight, NOT_FOUND once it cannot, so a client that retries stops."""
    _, other = replicas
    young = new_decision_id(time.time() - 1)
    code, details = code_and_details(other, young)
    assert code == grpc.StatusCode.UNAVAILABLE and "older than 5.05s is NOT_FOUND" in details
    stale = new_decision_id(time.time() - 5.2)
    assert code_and_details(other, stale)[0] == grpc.StatusCode.NOT_FOUND
