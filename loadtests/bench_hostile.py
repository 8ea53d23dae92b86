"""Hostile policy input against the service: `python loadtests/bench_hostile.py`.

Two measurements:

1. **Rules at the limits, in Decide's terms.** The costliest kinds of rule that
   ``nba.policy.rule_cost`` still accepts, evaluated with the real CEL library on the worst context
   a caller may send (lists sized so that the whole context holds MAX_CONTEXT_LEAVES leaves),
   through ``RuleBatch`` as Decide evaluates them: milliseconds per evaluation next to the
   estimate. Then a set of such rules summing to just under the per-call budget. These set
   RULE_BUDGET and CALL_BUDGET (nba/policy/rule_cost.py).
2. **Decide during hostile validations.** ``nba serve`` (its own process) with the sample
   policy set; Decide p50/p99 from one client, first idle, then while two viewers loop
   ValidatePolicySet over hostile drafts (the issue's three nested comprehensions over a
   300-element schema list, the 80,000-parenthesis rule, a 2,000-offer draft with a 1.5 s
   deadline). Also what the hostile calls answered and how long each took.

Results printed and saved as JSON (loadtests/results/bench_hostile.json).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TOKEN = "bench-editor-0123456789abcdef"


def worst_rules() -> list[tuple[str, dict[str, Any]]]:
    """The costliest kinds of rule, each with the context that makes it costliest: the first
    ones within RULE_BUDGET, the last ones just beyond (measured all the same)."""
    full = [float(i) for i in range(1000)]
    half_a, half_b = [float(i) for i in range(500)], [float(-i - 1) for i in range(500)]
    body = " && ".join(f"x != {i}.5" for i in range(70))
    return [
        ("context.a.all(x, !(x in context.b))", {"a": half_a, "b": half_b}),  # 500 x 500, never found
        ("context.cart.exists(p, p in context.wishlist)", {"cart": half_a, "wishlist": half_b}),
        ("context.a.all(x, size(context.b + [x]) > 0)", {"a": half_a, "b": half_b}),
        ("context.a.all(x, context.s.contains(string(x)) || true)", {"a": half_a, "s": "x" * 60_000}),
        (f"context.a.all(x, {body})", {"a": full}),  # a long body over 1,000 elements
        ("context.a.all(x, !(x in context.b) && !(x in context.c))", {"a": half_a, "b": half_b[:250], "c": half_b[250:]}),
        ("context.a.all(x, size(context.a + [x]) > 0)", {"a": full}),
        ("context.a.map(x, x * 2.0).size() > 0", {"a": full}),
        ("context.a.filter(x, x >= 0.0).size() > 0", {"a": full}),
        ("context.a.all(x, context.a.all(y, x + y >= 0.0))", {"a": full}),
    ]


def measure_rules() -> dict[str, Any]:
    from bandit.features import flatten
    from nba.policy.rule_cost import CALL_BUDGET, RULE_BUDGET, check_rule, estimate
    from nba.policy.rules import Rule, RuleBatch, activation

    rows = []
    for source, context in worst_rules():
        cost = estimate(source)
        try:
            check_rule(source)
            accepted = True
        except ValueError:
            accepted = False
        rule = Rule(source, _bound=True)  # measured even when refused
        batch = RuleBatch([rule])
        variables = activation(flatten(context), "web", "c-1")
        batch.evaluate(variables)
        times = []
        for _ in range(3 if accepted else 1):
            started = time.perf_counter()
            batch.evaluate(variables)
            times.append(time.perf_counter() - started)
        rows.append({"rule": source, "estimate": cost, "accepted": accepted, "ms": round(1000 * statistics.median(times), 2)})
        print(f"{cost:>14,} steps {rows[-1]['ms']:>10.2f} ms  {'accepted' if accepted else 'refused '}  {source[:90]}")
    # A decision's worth at the per-call budget: the costliest measured rule repeated (distinct
    # rules, so that RuleBatch evaluates each) until the sum would pass CALL_BUDGET.
    worst = max((r for r in rows if r["accepted"]), key=lambda r: r["ms"])
    source, context = next((s, c) for s, c in worst_rules() if s == worst["rule"])
    count = CALL_BUDGET // worst["estimate"]
    rules = [Rule(f"{source} || {i}.0 < 0.0") for i in range(count)]
    batch = RuleBatch(rules)
    variables = activation(flatten(context), "web", "c-1")
    batch.evaluate(variables)
    started = time.perf_counter()
    batch.evaluate(variables)
    call_ms = 1000 * (time.perf_counter() - started)
    print(f"{count} x the costliest ({count * worst['estimate']:,} steps of {CALL_BUDGET:,}): {call_ms:.1f} ms per decision")
    return {
        "rule_budget": RULE_BUDGET,
        "call_budget": CALL_BUDGET,
        "rules": rows,
        "call": {"rules": count, "estimate": count * worst["estimate"], "ms": round(call_ms, 1)},
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure_service(seconds: float) -> dict[str, Any]:
    from conftest import customer, struct
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from test_rule_limits import HOSTILE, PARENS, with_rule

    from nba.v1 import admin_service_pb2 as apb
    from nba.v1 import admin_service_pb2_grpc as apb_grpc
    from nba.v1 import decision_service_pb2 as pb
    from nba.v1 import decision_service_pb2_grpc as pb_grpc

    folder = tempfile.mkdtemp(prefix="nba-bench-hostile-")
    port = free_port()
    env = {
        **os.environ,
        "NBA_PORT": str(port),
        "NBA_HOST": "127.0.0.1",
        "NBA_METRICS_PORT": "-1",
        "NBA_HTTP_PORT": "-1",
        "NBA_DATABASE_URL": f"sqlite:///{folder}/nba.db",
        "NBA_POLICIES": str(ROOT / "policies"),
        "NBA_WORKERS": "1",
        "NBA_ADMIN_TOKENS": f"bench:editor:{TOKEN}",
        "NBA_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen([sys.executable, "-m", "nba", "serve"], cwd=ROOT, env=env, stderr=open(f"{folder}/serve.log", "w"))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("nba serve did not start: " + Path(f"{folder}/serve.log").read_text())
            time.sleep(0.2)
        stub = pb_grpc.DecisionServiceStub(channel)
        admin = apb_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        request = pb.DecideRequest(customer_id="c-1", channel="web", context=struct({"customer": customer()}))

        def decide_for(duration: float) -> list[float]:
            latencies = []
            until = time.monotonic() + duration
            while time.monotonic() < until:
                started = time.perf_counter()
                stub.Decide(request, timeout=60)
                latencies.append(time.perf_counter() - started)
            return latencies

        decide_for(2)  # warm up
        idle = decide_for(seconds)
        stop = threading.Event()
        hostile: list[tuple[str, str, float]] = []
        files = {name: (ROOT / "policies" / name).read_text() for name in os.listdir(ROOT / "policies") if name.endswith(".yaml")}
        from test_rule_limits import slow_draft

        drafts = [
            ("nested comprehensions", {"set.yaml": HOSTILE}),
            ("80,000 parentheses", {"set.yaml": with_rule(PARENS)}),
            ("2,000 offers", slow_draft(2000)),
            ("sample set", files),
        ]

        def loop(offset: int) -> None:
            i = offset
            while not stop.is_set():
                name, draft = drafts[i % len(drafts)]
                started = time.perf_counter()
                try:
                    response = admin.ValidatePolicySet(
                        apb.ValidatePolicySetRequest(draft=apb.PolicySetDraft(files=draft)),
                        metadata=[("authorization", f"Bearer {TOKEN}")],
                        timeout=1.5,
                    )
                    outcome = "valid" if response.valid else "invalid"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                hostile.append((name, outcome, time.perf_counter() - started))
                i += 1

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        time.sleep(1)
        busy = decide_for(seconds)
        stop.set()
        for t in threads:
            t.join()
        result = {}
        for name, latencies in (("idle", idle), ("hostile", busy)):
            result[name] = {
                "calls": len(latencies),
                "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
                "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
                "max_ms": round(1000 * max(latencies), 2),
            }
            print(f"Decide {name:8} {result[name]}")
        summary: dict[str, dict[str, Any]] = {}
        for name, outcome, took in hostile:
            entry = summary.setdefault(name, {"calls": 0, "outcomes": {}, "max_s": 0.0})
            entry["calls"] += 1
            entry["outcomes"][outcome] = entry["outcomes"].get(outcome, 0) + 1
            entry["max_s"] = round(max(entry["max_s"], took), 3)
        for name, entry in summary.items():
            print(f"Validate {name:24} {entry}")
        result["validations"] = summary
        started = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
            result["sigterm_s"] = round(time.perf_counter() - started, 2)
        except subprocess.TimeoutExpired:
            result["sigterm_s"] = None  # still running a minute later (killed below)
        print(f"SIGTERM to exit: {result['sigterm_s']} s")
        return result
    finally:
        if server.poll() is None:
            server.kill()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="Decide measured this long, idle and hostile")
    parser.add_argument("--service-only", action="store_true", help="skip the rule measurements")
    args = parser.parse_args()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "rules": None if args.service_only else measure_rules(),
        "service": measure_service(args.seconds),
    }
    out = ROOT / "loadtests" / "results" / "bench_hostile.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
