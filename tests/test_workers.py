"""`nba serve --workers 2`: two processes on one port learn every event, whichever received it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from conftest import customer, struct
from test_cli import Process
from test_in_flight import retrying

from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc


def channels_per_worker(port: int, workers: int = 2, seconds: float = 30.0) -> dict[str, tuple[grpc.Channel, pb_grpc.DecisionServiceStub]]:
    """A connection to each worker: the kernel spreads new connections over the processes
    (a worker still starting is reached once it listens)."""
    found: dict[str, tuple[grpc.Channel, pb_grpc.DecisionServiceStub]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.DecisionServiceStub(channel)
        _, call = stub.Decide.with_call(pb.DecideRequest(customer_id="probe", channel="web", context=struct({"customer": customer()})))
        worker = dict(call.trailing_metadata())["nba-worker"]
        if worker in found:
            channel.close()
        else:
            found[worker] = (channel, stub)
        if len(found) == workers:
            return found
    raise AssertionError(f"reached only workers {sorted(found)}")


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in found.split()]


def model_version(stub: pb_grpc.DecisionServiceStub) -> int:
    reply = stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": customer()})))
    return int(reply.model_version.rsplit("/", 1)[1])


@pytest.fixture
def two_workers(tmp_path: Path, database_url: str):
    process = Process(tmp_path, NBA_WORKERS="2", NBA_SNAPSHOT_SECONDS="3600", NBA_DATABASE_URL=database_url)
    process.wait_serving()
    # wait for both workers to serve
    workers = channels_per_worker(process.port)
    yield process, workers
    for channel, _ in workers.values():
        channel.close()
    process.stop()


@pytest.mark.slow
def test_every_worker_learns_every_event_and_they_rank_alike(two_workers) -> None:
    process, workers = two_workers
    (_, a), (_, b) = workers["0"], workers["1"]
    context = struct({"customer": customer()})
    for i in range(20):
        decider, reporter = (a, b) if i % 2 else (b, a)
        decision = decider.Decide(pb.DecideRequest(customer_id=f"c-{i}", channel="web", context=context, limit=2))
        # feedback through the other worker than the one that decided
        reply = retrying(reporter.Feedback, pb.FeedbackRequest(
            event_id=f"e-{i}", decision_id=decision.decision_id, offer_id=decision.offers[0].offer_id,
            outcome=pb.OUTCOME_ACCEPTED if i % 3 == 0 else pb.OUTCOME_IMPRESSED))
        assert reply.applied
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not model_version(a) == model_version(b) == 20:
        time.sleep(0.02)
    assert model_version(a) == model_version(b) == 20

    def scores(stub: pb_grpc.DecisionServiceStub) -> dict[str, float]:
        reply = stub.Decide(pb.DecideRequest(customer_id="x", channel="web", context=context, explain=True))
        return {e.offer_id: e.predicted for e in reply.explanation.offers if e.eligible}

    assert scores(a) == pytest.approx(scores(b), abs=1e-12)


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_catches_up(two_workers) -> None:
    process, workers = two_workers
    (_, a), (_, b) = workers["0"], workers["1"]
    decision = a.Decide(pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": customer()})))
    retrying(b.Feedback, pb.FeedbackRequest(event_id="k-1", decision_id=decision.decision_id,
                                            offer_id=decision.offers[0].offer_id, outcome=pb.OUTCOME_ACCEPTED))
    pids = children(process.proc.pid)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = children(process.proc.pid)
        if len(now) == 2 and pids[0] not in now:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the worker was not restarted")
    # Both workers (the new one too) hold the event.
    fresh = channels_per_worker(process.port)
    for channel, stub in fresh.values():
        deadline = time.monotonic() + 10
        while model_version(stub) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert model_version(stub) == 1
        channel.close()
