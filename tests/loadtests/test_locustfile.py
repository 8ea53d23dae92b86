"""The locust load test drives a real server: Decide and Feedback both reach it and succeed."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from conftest import ROOT, Running

from nba.v1 import decision_service_pb2 as pb


def locust(port: int, out: Path, seconds: int = 4, users: int = 4, exit_code: int = 0) -> dict[str, dict[str, str]]:
    env = {**os.environ, "NBA_LOAD_FEEDBACK": "1.0", "NBA_LOAD_CUSTOMERS": "50"}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "locust"),
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            f"{seconds}s",
            "--host",
            f"127.0.0.1:{port}",
            "--csv",
            str(out / "run"),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == exit_code, done.stderr  # locust exits 1 when any request failed
    with (out / "run_stats.csv").open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_channel_traffic_is_decided_and_learned_from(server: Running, tmp_path: Path) -> None:
    stats = locust(server.port, tmp_path)
    decided, fed_back = int(stats["Decide"]["Request Count"]), int(stats["Feedback"]["Request Count"])
    assert decided > 20
    assert stats["Decide"]["Failure Count"] == stats["Feedback"]["Failure Count"] == "0"
    # every decision with offers is reported twice: the impression, then acceptance or rejection
    assert decided <= fed_back // 2 + 4  # a few decisions in flight when the run stops
    version = server.stub.Decide(pb.DecideRequest(customer_id="after", channel="web", limit=1)).model_version
    assert int(version.rsplit("/", 1)[1]) >= fed_back // 2  # the learner counted the events


def test_failures_are_reported_with_their_status(tmp_path: Path) -> None:
    """A service that refuses the calls shows up as failures in locust, not as silence."""
    refusing = grpc.server(ThreadPoolExecutor(2))
    port = refusing.add_insecure_port("127.0.0.1:0")  # no services: every call is UNIMPLEMENTED
    refusing.start()
    try:
        # 4 s, not 2: on a loaded machine (the suite runs in three processes) a 2 s run once
        # ended before its one user had made a call
        stats = locust(port, tmp_path, seconds=4, users=1, exit_code=1)
    finally:
        refusing.stop(0)
    assert "Decide" in stats, stats
    assert int(stats["Decide"]["Failure Count"]) == int(stats["Decide"]["Request Count"]) > 0
    with (tmp_path / "run_failures.csv").open() as f:
        assert "UNIMPLEMENTED" in f.read()
