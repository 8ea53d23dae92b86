"""`make bench-store`, `make bench-replicas` and the other production benchmarks run, and report
what they claim to measure."""

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


def test_the_profiles_benchmark_measures_every_figure_at_two_scales(tmp_path: Path) -> None:
    need_postgres()
    need_redis()
    out = tmp_path / "bench_profiles.json"
    done = subprocess.run(
        [sys.executable, "loadtests/bench_profiles.py", "--customers", "300,600", "--samples", "60", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    small, large = json.loads(out.read_text())["results"]
    assert (small["customers"], large["customers"]) == (300, 600)
    # loaded, plus the batches tracked (2,000 a scale) and the replicas' events (200 a scale) before
    assert (small["events"], large["events"]) == (300 * 10 + 2000, 600 * 10 + 2 * 2000 + 200)
    for row in (small, large):
        assert row["trackbatch_events_per_s"] > 0 and row["bytes_per_event"] > 50 and row["bytes_per_cached_profile"] > 100
        assert 0 < row["getprofile_cached_p50_ms"] <= row["getprofile_cached_p99_ms"]
        assert 0 < row["replica_p50_ms"] <= row["replica_p99_ms"] < 5000
        assert row["decide_stored_cpu_ms"] > 0 and row["decide_inline_cpu_ms"] > 0
    assert "TrackBatch events/s" in done.stdout and "| 300 | 600 |" in done.stdout


def test_the_tracking_benchmark_measures_both_modes_on_both_engines(tmp_path: Path) -> None:
    need_postgres()
    out = tmp_path / "bench_tracking.json"
    done = subprocess.run(
        [
            sys.executable,
            "loadtests/bench_tracking.py",
            "--events",
            "400",
            "--customers",
            "40",
            "--batch",
            "100",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = {r["engine"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"sqlite", "postgresql"}
    for r in results.values():
        assert r["single_per_s"] > 0 and r["batch_per_s"] > 0
        assert 0 < r["profile_share"] < 1 and 0 < r["json_share"] < 1
    assert "| engine | one a call (events/s) | batches (events/s)" in done.stdout


def test_the_breakdown_prints_every_figure_the_readme_quotes() -> None:
    """`loadtests/bench_breakdown.py`: the deciding thread and the writer, the writer's parts,
    the estimates' parts, the last-bits counts and the two profile views, each a number."""
    done = subprocess.run(
        [sys.executable, "loadtests/bench_breakdown.py", "--calls", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for label in (
        "the deciding thread:",
        "the writer:",
        "inserting the decisions (SQLite):",
        "the featurizer:",
        "the matrix products (BLAS):",
        "the elementwise mixing:",
        "numba's BLAS call:",
        "a plain loop:",
        "its next segment change planned:",
        "not planned (each read looks for it):",
    ):
        line = next((line for line in done.stdout.splitlines() if label in line), None)
        assert line is not None, f"{label!r} missing from:\n{done.stdout}"
        assert float(line.split(label, 1)[1].split()[0]) >= 0, line
