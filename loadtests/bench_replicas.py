"""How fast replicas hear each other, on each bus: `make bench-replicas`.

Two `nba serve` replicas on one PostgreSQL database (the machine's, a schema of their own),
each pinned to its own core, first with `--bus database` and then with `--bus redis://…`
(the machine's Redis, a stream of its own). A Feedback acknowledged by one replica; then
the other is asked to Decide until its model version counts the event. Reported: the delay's
p50, p99 and maximum in milliseconds (the resolution is one Decide call, about 1-2 ms).
Then what a decision's reservation of two units (a per-customer cap and a daily budget)
costs: through Redis (one script call) and with the in-process lock, in microseconds.
Saved as JSON (loadtests/results/bench_replicas.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

import grpc  # noqa: E402
import psycopg  # noqa: E402
from bench_service import Server, free_port, propagation_between, requests  # noqa: E402
from workload import write_policy_set  # noqa: E402

from nba.v1 import decision_service_pb2_grpc as pb_grpc  # noqa: E402

POSTGRES = os.environ.get("NBA_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("NBA_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def replicas(folder: Path, url: str, bus: str, stream: str) -> list[Server]:
    started = []
    for cpu in (0, 1):
        port = free_port()
        env = {
            "NBA_PORT": str(port),
            "NBA_HOST": "127.0.0.1",
            "NBA_METRICS_PORT": "-1",
            "NBA_HTTP_PORT": "-1",
            "NBA_POLICIES": str(folder),
            "NBA_DATABASE_URL": url,
            "NBA_LOG_LEVEL": "warning",
            "NBA_POLICIES_WATCH_SECONDS": "0",
            "NBA_WORKERS": "1",
            "NBA_SEED": "1",
            "NBA_BUS": bus,
            "NBA_BUS_STREAM": stream,
        }
        started.append(Server([sys.executable, "-m", "nba", "serve"], port, {cpu}, env))
    return started


def reservation_cost(calls: int) -> dict[str, float]:
    """Microseconds per reservation of two claims, through Redis and in process."""
    import time

    import redis

    from nba.decision.reservations import Claim, LocalReservations, RedisReservations

    client = redis.Redis.from_url(REDIS)
    prefix = f"nba-bench:{uuid.uuid4().hex[:8]}:"
    found: dict[str, float] = {}
    try:
        for name, store in (("redis_us", RedisReservations(client, prefix)), ("local_us", LocalReservations())):
            now = time.time()
            began = time.perf_counter()
            for i in range(calls):
                store.reserve(
                    [
                        Claim(f"cap:c-{i}", 2, "window", now + 86400, (now + 100,)),
                        Claim("budget:alpha:today", 10**9, "counter", now + 86400, 0),
                    ],
                    now,
                    f"t{i}",
                )
            found[name] = round((time.perf_counter() - began) / calls * 1e6, 1)
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()
    return found


def percentiles(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {
        "p50": round(ordered[len(ordered) // 2], 2),
        "p99": round(ordered[max(0, int(0.99 * len(ordered)) - 1)], 2),
        "max": round(ordered[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="feedback events timed per bus")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "bench_replicas.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nba-bench-replicas-"))
    folder = write_policy_set(work / "p100-f30", 100, 30)
    request = requests(30, 1)[0]
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "rounds": args.rounds}
    libpq = POSTGRES.replace("postgresql+psycopg://", "postgresql://", 1)
    print(f"{'bus':<10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for bus in ("database", REDIS):
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
            try:
                started = replicas(folder, f"{POSTGRES}?options=-csearch_path%3D{schema}", bus, f"nba-bench:{schema}")
                try:
                    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in started]
                    a, b = (pb_grpc.DecisionServiceStub(c) for c in channels)
                    propagation_between(a, b, request, 5)  # warm-up
                    found = percentiles(propagation_between(a, b, request, args.rounds))
                    for c in channels:
                        c.close()
                finally:
                    for s in started:
                        s.stop()
            finally:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
                if bus != "database":
                    import redis

                    redis.Redis.from_url(REDIS).delete(f"nba-bench:{schema}")
        name = "database" if bus == "database" else "redis"
        results[name] = found
        print(f"{name:<10}{found['p50']:>10}{found['p99']:>10}{found['max']:>10}", flush=True)
    results["reservation"] = reservation_cost(max(100, args.rounds * 25))
    print(
        f"\nreserving two units: {results['reservation']['redis_us']} µs through Redis, "
        f"{results['reservation']['local_us']} µs in process"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
