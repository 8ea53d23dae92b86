"""`nba serve --workers 2`: two processes on one port learn every event, whichever received it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import customer, struct
from test_cli import Process
from test_in_flight import retrying

from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc


def channels_per_worker(
    port: int, workers: int = 2, seconds: float = 30.0
) -> dict[str, tuple[grpc.Channel, pb_grpc.DecisionServiceStub]]:
    """A connection to each worker: the kernel spreads new connections over the processes
    (a worker still starting is reached once it listens)."""
    found: dict[str, tuple[grpc.Channel, pb_grpc.DecisionServiceStub]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.DecisionServiceStub(channel)
        _, call = stub.Decide.with_call(
            pb.DecideRequest(customer_id="probe", channel="web", context=struct({"customer": customer()}))
        )
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
        reply = retrying(
            reporter.Feedback,
            pb.FeedbackRequest(
                event_id=f"e-{i}",
                decision_id=decision.decision_id,
                offer_id=decision.offers[0].offer_id,
                outcome=pb.OUTCOME_ACCEPTED if i % 3 == 0 else pb.OUTCOME_IMPRESSED,
            ),
        )
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
    retrying(
        b.Feedback,
        pb.FeedbackRequest(
            event_id="k-1", decision_id=decision.decision_id, offer_id=decision.offers[0].offer_id, outcome=pb.OUTCOME_ACCEPTED
        ),
    )
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


def scrape(port: int) -> dict[str, float]:
    """The samples of a /metrics page: 'name{labels}' -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.mark.slow
# The workers add their metrics up in files of their own, whatever the store: one engine
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_one_metrics_port_adds_up_every_worker(two_workers) -> None:
    process, workers = two_workers
    (_, a), (_, b) = workers["0"], workers["1"]
    before = scrape(process.metrics_port)
    context = struct({"customer": customer()})
    for stub, n in ((a, 10), (b, 7)):
        for i in range(n):
            stub.Decide(pb.DecideRequest(customer_id=f"m-{i}", channel="web", context=context))
    after = scrape(process.metrics_port)
    decided = 'nba_decisions_total{channel="web"}'
    calls = 'nba_rpc_duration_seconds_count{method="Decide"}'
    assert after[decided] - before.get(decided, 0.0) == 17  # 10 from one worker, 7 from the other
    assert after[calls] - before.get(calls, 0.0) == 17
    # A gauge is one series for the service (its mode chosen in nba.metrics), not one per worker.
    assert after["nba_policy_set_version"] == 1.0
    assert not [k for k in after if k.startswith("nba_") and "pid=" in k], [k for k in after if "pid=" in k]

    # A worker that dies takes its live gauges with it, but not its counts.
    pid = children(process.proc.pid)[0]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid in children(process.proc.pid):
        time.sleep(0.05)
    time.sleep(0.5)  # the supervisor notices within 0.2 s
    assert scrape(process.metrics_port)[decided] == after[decided]


def log_lines(path: Path) -> list[dict]:
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def wait_for(predicate, seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_no_worker_is_started_once_shutdown_began(tmp_path: Path) -> None:
    process = Process(tmp_path, NBA_WORKERS="2", NBA_SNAPSHOT_SECONDS="3600", NBA_LOG_LEVEL="info")
    process.wait_serving()
    wait_for(lambda: len(children(process.proc.pid)) == 2, what="two workers")
    pids = set(children(process.proc.pid))
    os.kill(min(pids), signal.SIGKILL)
    # The supervisor has seen the exit and scheduled the restart; shutdown begins before it.
    wait_for(
        lambda: any(line.get("msg", "").startswith("worker exited") for line in log_lines(process.stderr)),
        what="the supervisor to see the exit",
    )
    process.proc.send_signal(signal.SIGTERM)
    seen = set()
    while process.proc.poll() is None:
        seen.update(children(process.proc.pid))
        time.sleep(0.02)
    assert process.proc.wait(timeout=30) == 0
    assert seen <= pids, f"workers started after SIGTERM: {seen - pids}"
    assert sum(line.get("msg") == "worker started" for line in log_lines(process.stderr)) == 2


@pytest.mark.slow
def test_a_crash_looping_worker_is_restarted_later_each_time_and_reported(tmp_path: Path) -> None:
    process = Process(tmp_path, NBA_WORKERS="2", NBA_SNAPSHOT_SECONDS="3600", NBA_LOG_LEVEL="info")
    try:
        process.wait_serving()
        wait_for(lambda: len(children(process.proc.pid)) == 2, what="two workers")
        # Worker 0 dies as soon as it is up, three times in a row.
        started = [
            line["pid"] for line in log_lines(process.stderr) if line.get("msg") == "worker started" and line["worker"] == 0
        ]
        for round_ in range(3):
            pid = started[-1]
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()

            def restarted(known: tuple[int, ...] = tuple(started)) -> bool:
                return any(
                    line.get("msg") == "worker started" and line["worker"] == 0 and line["pid"] not in known
                    for line in log_lines(process.stderr)
                )

            wait_for(restarted, seconds=30, what=f"restart {round_ + 1}")
            waited = time.monotonic() - killed_at
            started = [
                line["pid"] for line in log_lines(process.stderr) if line.get("msg") == "worker started" and line["worker"] == 0
            ]
            assert waited >= 2**round_ - 0.05, (round_, waited)  # 1 s, 2 s, 4 s: the delay doubles
        exits = [line for line in log_lines(process.stderr) if line.get("worker") == 0 and "code" in line]
        assert [e["restart_in_seconds"] for e in exits] == [1.0, 2.0, 4.0]
        assert [e["exits_in_a_row"] for e in exits] == [1, 2, 3]
        assert exits[-1]["msg"].startswith("worker is crash-looping") and exits[-1]["level"] == "error"
        assert not any(e["msg"].startswith("worker is crash-looping") for e in exits[:-1])
    finally:
        assert process.stop() == 0


def test_restart_delay_doubles_to_a_cap_and_a_healthy_run_starts_it_again() -> None:
    import subprocess
    import sys

    from nba.service.supervisor import HEALTHY_SECONDS, RESTART_MAX_SECONDS, _exited, _Worker, restart_delay

    assert [restart_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert restart_delay(1000) == RESTART_MAX_SECONDS
    worker = _Worker(0, exits_in_a_row=5)
    for ran, expected in ((HEALTHY_SECONDS + 1, 1), (1.0, 2)):
        worker.proc = subprocess.Popen([sys.executable, "-c", "pass"])
        worker.proc.wait()
        now = time.monotonic()
        worker.started = now - ran
        _exited(worker, now, "/nonexistent-metrics-folder", lambda _pid, _path: None)
        assert worker.exits_in_a_row == expected and worker.proc is None
        assert worker.restart_at == pytest.approx(now + restart_delay(expected))


def test_every_gauge_says_how_it_adds_up_over_workers() -> None:
    from prometheus_client import Gauge

    import nba.metrics

    gauges = [m for m in vars(nba.metrics).values() if isinstance(m, Gauge)]
    assert len(gauges) >= 5
    for gauge in gauges:
        # The default, "all", would serve one series per worker pid: chosen deliberately instead.
        assert gauge._multiprocess_mode != "all", gauge._name
        assert gauge._multiprocess_mode.startswith("live"), (gauge._name, "a dead worker's value must not count")
