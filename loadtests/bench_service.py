"""The service against gRPC's own floor, in one run: `make bench`.

On this machine, it starts (in turn) a no-op gRPC server that answers Decide with a ready-made
response of the same size (loadtests/floor_server.py) and the real service with a generated
policy set, and drives each with the same asynchronous client. Server and client are pinned
to separate cores (the load generator shares this 2-core machine), and the server's CPU time
per call is read from its own CPU counters (/proc), the steadier figure. Reported:

* maximum throughput and server CPU per call, floor and service, and their ratios;
* p50/p95/p99 latency at a fixed offered load: half of the floor's maximum;
* Feedback throughput and CPU per call;
* how Decide's CPU per call grows with 10, 100 and 1,000 offers and 10, 30 and 100 fields;
* `--workers 2` against one worker; resident memory per worker.

Results as a table, saved as JSON (loadtests/results/bench_service.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

from workload import CHANNELS, context, write_policy_set  # noqa: E402

from nba.v1 import decision_service_pb2 as pb  # noqa: E402
from nba.v1 import decision_service_pb2_grpc as pb_grpc  # noqa: E402

SERVER_CPU = 0
CLIENT_CPU = 1


@dataclass
class Measurement:
    name: str
    calls: int
    seconds: float
    cpu_seconds: float
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_call_us(self) -> float:
        return self.cpu_seconds / self.calls * 1e6 if self.calls else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(throughput=round(self.throughput, 1), cpu_per_call_us=round(self.cpu_per_call_us, 1))
        if self.latencies_ms:
            out.update(p50_ms=round(self.percentile(50), 3), p95_ms=round(self.percentile(95), 3),
                       p99_ms=round(self.percentile(99), 3))
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields_ = text[text.rindex(")") + 2:].split()
        stats[int(entry)] = fields_
        children.setdefault(int(fields_[1]), []).append(int(entry))
    stack = [pid]
    while stack:
        p = stack.pop()
        if p in stats:
            f_ = stats[p]
            total += (int(f_[11]) + int(f_[12])) / tick
        stack.extend(children.get(p, []))
    return total


def rss_mb(pid: int) -> list[float]:
    """Resident memory of the process and each descendant, in MB."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields_ = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(entry) == pid or int(fields_.get("PPid", "0").strip() or 0) == pid:
            out.append(int(fields_.get("VmRSS", "0 kB").split()[0]) / 1024)
    return out


def wait_ready(port: int, timeout: float = 60.0) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    finally:
        channel.close()


class Server:
    """A server process pinned to one core (or given cores), stopped on exit."""

    def __init__(self, command: list[str], port: int, cpus: set[int], env: dict[str, str] | None = None) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        try:
            wait_ready(port)
        except grpc.FutureTimeoutError:
            self.stop()
            raise RuntimeError(f"{' '.join(command)} did not start: {self.proc.stderr.read().decode()[-2000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def requests(field_count: int, n: int, seed: int = 3, limit: int = 3) -> list[pb.DecideRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ctx = struct_pb2.Struct()
        ctx.update(context(field_count, rng))
        out.append(pb.DecideRequest(customer_id=f"c-{i}", channel=rng.choice(CHANNELS), context=ctx, limit=limit))
    return out


async def closed_loop(port: int, pid: int, calls: list[Any], method: str, concurrency: int, seconds: float,
                      warmup: float = 1.5, keep: list[Any] | None = None) -> Measurement:
    """As fast as ``concurrency`` callers go; counts only calls after the warm-up."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        rpc = getattr(stub, method)
        counter = {"calls": 0, "errors": 0}
        measuring = asyncio.Event()
        stop_at = time.monotonic() + warmup + seconds
        next_index = [0]

        async def caller() -> None:
            while time.monotonic() < stop_at:
                i = next_index[0]
                next_index[0] += 1
                try:
                    reply = await rpc(calls[i % len(calls)], timeout=10)
                    if measuring.is_set():
                        counter["calls"] += 1
                        if keep is not None and len(keep) < 200_000:
                            keep.append(reply)
                except grpc.aio.AioRpcError:
                    counter["errors"] += 1

        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring.set()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1, calls_done = cpu_seconds(pid), time.monotonic(), counter["calls"]
        await asyncio.gather(*tasks)
        return Measurement(method, calls_done, t1 - t0, cpu1 - cpu0, counter["errors"])


async def open_loop(port: int, pid: int, calls: list[Any], rate: float, seconds: float, warmup: float = 1.0) -> Measurement:
    """A fixed offered load: calls start on schedule whether or not earlier ones finished;
    latency counts from the scheduled start (no coordinated omission)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        latencies: list[float] = []
        errors = [0]
        total = int(rate * (warmup + seconds))
        start = time.monotonic()
        measure_from = start + warmup

        async def one(i: int, scheduled: float) -> None:
            try:
                await stub.Decide(calls[i % len(calls)], timeout=10)
                if scheduled >= measure_from:
                    latencies.append((time.monotonic() - scheduled) * 1000)
            except grpc.aio.AioRpcError:
                errors[0] += 1

        tasks = []
        cpu0 = None
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if cpu0 is None and scheduled >= measure_from:
                cpu0, t0 = cpu_seconds(pid), time.monotonic()
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        return Measurement(f"Decide at {rate:.0f}/s", len(latencies), t1 - (t0 or start), cpu1 - (cpu0 or 0.0), errors[0], latencies)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def service(folder: Path, database: Path, workers: int, cpus: set[int], extra: dict[str, str] | None = None) -> Server:
    port = free_port()
    env = {
        "NBA_PORT": str(port), "NBA_HOST": "127.0.0.1", "NBA_METRICS_PORT": "-1", "NBA_POLICIES": str(folder),
        "NBA_DATABASE_URL": f"sqlite:///{database}", "NBA_LOG_LEVEL": "warning", "NBA_POLICIES_WATCH_SECONDS": "0",
        "NBA_WORKERS": str(workers), "NBA_SEED": "1",
        **(extra or {}),
    }
    return Server([sys.executable, "-m", "nba", "serve"], port, cpus, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nba against gRPC's floor")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per phase (default 6)")
    parser.add_argument("--concurrency", type=int, default=32, help="callers in flight (default 32)")
    parser.add_argument("--quick", action="store_true", help="skip the scaling and worker phases")
    parser.add_argument("--out", default=str(ROOT / "loadtests" / "results" / "bench_service.json"))
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {CLIENT_CPU})
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    work = Path(tempfile.mkdtemp(prefix="nba-bench-"))
    base = requests(30, 2000)
    print(f"{'phase':44} {'calls/s':>9} {'CPU µs/call':>12} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")

    def show(label: str, m: Measurement) -> dict[str, Any]:
        line = f"{label:44} {m.throughput:9.0f} {m.cpu_per_call_us:12.0f}"
        if m.latencies_ms:
            line += f" {m.percentile(50):8.2f} {m.percentile(95):8.2f} {m.percentile(99):8.2f}"
        if m.errors:
            line += f"  ({m.errors} errors)"
        print(line, flush=True)
        return m.summary()

    # The floor.
    port = free_port()
    floor = Server([sys.executable, str(ROOT / "loadtests" / "floor_server.py"), str(port)], port, {SERVER_CPU})
    try:
        floor_max = run(closed_loop(port, floor.proc.pid, base, "Decide", args.concurrency, args.seconds))
        results["floor_max"] = show("floor: Decide, max", floor_max)
        rate = floor_max.throughput / 2
        floor_fixed = run(open_loop(port, floor.proc.pid, base, rate, args.seconds))
        results["floor_fixed"] = show(f"floor: Decide at {rate:.0f}/s (half its max)", floor_fixed)
    finally:
        floor.stop()

    # The service: 100 offers, 30 fields, limit 3.
    folder = write_policy_set(work / "p100-f30", 100, 30)
    server = service(folder, work / "main.db", 1, {SERVER_CPU})
    decisions: list[Any] = []
    try:
        svc_max = run(closed_loop(server.port, server.proc.pid, base, "Decide", args.concurrency, args.seconds, keep=decisions))
        results["service_max"] = show("nba: Decide (100 offers, 30 fields), max", svc_max)
        svc_fixed = run(open_loop(server.port, server.proc.pid, base, rate, args.seconds))
        results["service_fixed"] = show(f"nba: Decide at {rate:.0f}/s", svc_fixed)
        feedback = [pb.FeedbackRequest(event_id=f"bench-{i}", decision_id=d.decision_id, offer_id=d.offers[0].offer_id,
                                       outcome=pb.OUTCOME_IMPRESSED if i % 5 else pb.OUTCOME_ACCEPTED)
                    for i, d in enumerate(decisions) if d.offers]
        fb = run(closed_loop(server.port, server.proc.pid, feedback, "Feedback", args.concurrency, args.seconds, warmup=0.5))
        results["feedback_max"] = show("nba: Feedback, max", fb)
        results["memory_mb_100_offers"] = rss_mb(server.proc.pid)
    finally:
        server.stop()

    results["ratios"] = {
        "cpu_per_call": round(svc_max.cpu_per_call_us / floor_max.cpu_per_call_us, 2),
        "throughput": round(svc_max.throughput / floor_max.throughput, 2),
        "feedback_vs_decide_cpu": round(fb.cpu_per_call_us / svc_max.cpu_per_call_us, 2),
    }
    print(f"\nratios: service/floor CPU per call {results['ratios']['cpu_per_call']}×, "
          f"throughput {results['ratios']['throughput']:.0%} of the floor's; Feedback/Decide CPU "
          f"{results['ratios']['feedback_vs_decide_cpu']}×")

    if not args.quick:
        scaling: dict[str, Any] = {}
        for offers, fields_ in ((10, 30), (1000, 30), (100, 10), (100, 100)):
            folder = write_policy_set(work / f"p{offers}-f{fields_}", offers, fields_)
            server = service(folder, work / f"p{offers}-f{fields_}.db", 1, {SERVER_CPU})
            try:
                m = run(closed_loop(server.port, server.proc.pid, requests(fields_, 1000), "Decide",
                                    args.concurrency, args.seconds * 0.6))
                scaling[f"{offers} offers, {fields_} fields"] = show(f"nba: Decide ({offers} offers, {fields_} fields)", m)
                if offers == 1000:
                    results["memory_mb_1000_offers"] = rss_mb(server.proc.pid)
            finally:
                server.stop()
        scaling["100 offers, 30 fields"] = results["service_max"]
        results["scaling"] = scaling
        c100 = svc_max.cpu_per_call_us
        results["ratios"]["1000_vs_100_offers"] = round(scaling["1000 offers, 30 fields"]["cpu_per_call_us"] / c100, 2)
        print(f"ratios: 1,000 offers cost {results['ratios']['1000_vs_100_offers']}× the CPU per call of 100")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
