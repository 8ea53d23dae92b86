"""`make bench-store` and `make bench-replicas` run, and report what they claim to measure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, need_postgres, need_redis


def test_the_store_benchmark_runs_on_both_engines(tmp_path: Path) -> None:
    need_postgres()
    out = tmp_path / "bench_store.json"
    done = subprocess.run(
        [sys.executable, "loadtests/bench_store.py", "--decisions", "2000", "--slices", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = {r["engine"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"sqlite", "postgresql"}
    for r in results.values():
        assert len(r["rates"]) == 2 and all(rate > 0 for rate in r["rates"])
        assert r["bytes_per_decision"] > 100
        assert 500 <= r["purged"] <= 1500  # the decisions older than five of their ten days
    assert "decisions/s by slice" in done.stdout


def test_the_replica_benchmark_times_both_buses(tmp_path: Path) -> None:
    need_postgres()
    need_redis()
    out = tmp_path / "bench_replicas.json"
    done = subprocess.run(
        [sys.executable, "loadtests/bench_replicas.py", "--rounds", "10", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    for bus in ("database", "redis"):
        assert 0 < results[bus]["p50"] <= results[bus]["p99"] <= results[bus]["max"] < 5000  # 5 s: never seen
    assert 0 < results["reservation"]["local_us"] < results["reservation"]["redis_us"]  # a round trip costs more
