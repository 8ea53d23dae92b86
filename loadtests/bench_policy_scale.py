"""How validation, publish and Decide scale with the size of a policy set:
`python loadtests/bench_policy_scale.py [--offers 1000,3000,10000]`.

For each size it generates a realistic policy set (policies/ shape: the sample context schema,
8 groups with levers, one file per group, offers with eligibility rules, tags, schedules and
validity dates, group engagement rules some of which name the offer or its contact history,
contact caps, suppressions, shared and per-offer budgets, weights; about one policy for every
ten offers) and measures, on this machine:

* ``nba policies validate DIR`` (the CLI, a fresh process: what a marketer waits for);
* ``parse_policy_set`` in process (what ValidatePolicySet and every publish run), and
  ValidatePolicySet over gRPC on a real server;
* PublishPolicySet over gRPC (a new version each time) and a folder publish (SIGHUP, timed until
  GetLivePolicySet reports the new version);
* Decide latency per channel (p50/p99, sequential calls, limit 3) on that server, after 20
  unmeasured calls per channel.

``--profile`` writes a cProfile of ``parse_policy_set`` at the largest size
(loadtests/results/policy_scale.prof) and prints its top entries.
Results as JSON in loadtests/results/bench_policy_scale.json.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

import bench_service  # noqa: E402
from bench_service import Server, free_port  # noqa: E402

_ready = bench_service.wait_ready
bench_service.wait_ready = lambda port, timeout=900.0: _ready(port, timeout)  # a large set starts slowly

from nba.policy.loading import parse_policy_set, read_files  # noqa: E402
from nba.policy.schema import ContextSchema, FieldSpec  # noqa: E402
from nba.v1 import admin_service_pb2 as apb  # noqa: E402
from nba.v1 import admin_service_pb2_grpc as apb_grpc  # noqa: E402
from nba.v1 import decision_service_pb2 as pb  # noqa: E402
from nba.v1 import decision_service_pb2_grpc as pb_grpc  # noqa: E402
from nba.yaml_loader import load_yaml  # noqa: E402

CHANNELS = ["web", "app", "email", "call_center", "sms"]
GROUPS = ["retention", "cross-sell", "up-sell", "service", "loyalty", "win-back", "onboarding", "insurance"]
PRODUCTS = ["current-account", "credit-card", "savings", "loan", "mobile-plan", "travel-insurance", "home-insurance", "paperless"]
TOKEN = "bench-editor-token-0123456789"
ELIGIBILITY = [
    "customer.age >= {n}",
    'customer.value.segment in ["gold", "platinum"]',
    "customer.flags.churn_risk && customer.history.tenure_months >= {n}",
    'customer.activity.complaints_90d >= 1 || customer.mood == "negative"',
    '!("{p}" in customer.history.products)',
    "customer.value.clv > {k}.0 && customer.consent.marketing",
    "customer.activity.days_since_login > {n} && customer.consent.email",
    'customer.demographics.region != "{r}"',
    "true",
]
GROUP_RULES = [
    ("eligibility", "customer.age >= 18"),
    ("eligibility", "!customer.flags.fraud_risk"),
    ("applicability", "!offer.tags.exists(t, t in customer.history.products)"),
    ("suitability", '!customer.flags.vulnerable && customer.demographics.income_band != "low"'),
    ("applicability", "contacts.days_since_accepted > 30.0"),
]


def generate(folder: Path, offers: int, seed: int = 1) -> Path:
    """Writes a policy set of ``offers`` offers (one fallback per channel among them) into ``folder``."""
    rng = random.Random(seed)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    schema = (ROOT / "policies" / "schema.yaml").read_text()
    (folder / "schema.yaml").write_text(schema)
    groups = "\n".join(f"  {g}: {{description: The {g} offers, lever: {1.0 + i / 10:.1f}}}" for i, g in enumerate(GROUPS))
    (folder / "channels.yaml").write_text(
        f"settings: {{timezone: Europe/London}}\nchannels: [{', '.join(CHANNELS)}]\ngroups:\n{groups}\n"
    )
    by_group: dict[str, list[str]] = {g: [] for g in GROUPS}
    ids_by_group: dict[str, list[str]] = {g: [] for g in GROUPS}
    for i in range(offers - len(CHANNELS)):
        group = GROUPS[i % len(GROUPS)]
        oid = f"{group}-{i:05d}"
        ids_by_group[group].append(oid)
        channels = rng.sample(CHANNELS, rng.randint(1, 3))
        rule = rng.choice(ELIGIBILITY).format(
            n=rng.randint(1, 60),
            p=rng.choice(PRODUCTS),
            k=rng.randint(1, 50) * 100,
            r=rng.choice(["north", "south", "east", "west"]),
        )
        lines = [
            f"  - id: {oid}",
            f"    name: Offer {i}",
            f"    group: {group}",
            f"    channels: [{', '.join(channels)}]",
            f"    value: {rng.randint(5, 300)}.0",
            f"    tags: [{rng.choice(PRODUCTS)}]",
            f"    eligibility: '{rule}'",
        ]
        if rng.random() < 0.3:
            lines.append(f"    lever: {rng.choice(['0.8', '1.2', '1.5'])}")
        if rng.random() < 0.2:
            lines.append("    schedule: {days: [mon, tue, wed, thu, fri], hours: ['08:00-20:00']}")
        if rng.random() < 0.1:
            lines.append("    valid_from: 2026-01-01\n    valid_until: 2030-01-01")
        if rng.random() < 0.3:
            lines.append("    treatment: {" + ", ".join(f"{c}: t-{oid}-{c}" for c in channels) + "}")
        by_group[group].append("\n".join(lines))
    for group, entries in by_group.items():
        (folder / f"{group}.yaml").write_text("offers:\n" + "\n".join(entries) + "\n")
    fallbacks = "\n".join(
        f"  - {{id: fallback-{c}, name: Fallback {c}, group: service, channels: [{c}], fallback: true, value: 0.0}}"
        for c in CHANNELS
    )
    policies: list[str] = []
    for group in GROUPS:
        for j, (kind, rule) in enumerate(GROUP_RULES):
            if "exists(" in rule and group != "cross-sell":
                continue  # as in policies/: a comprehension over the context per offer is costly (nba.policy.rule_cost)
            if rng.random() < 0.6:
                policies.append(
                    f"  - {{id: {group}-{kind}-{j}, type: {kind}, applies_to: {{groups: [{group}]}}, rule: '{rule}'}}"
                )
        policies.append(
            f"  - {{id: {group}-three-a-week, type: contact_cap, applies_to: {{groups: [{group}]}}, "
            "max: 3, window: 7d, counts: impressed, per: offer}"
        )
        policies.append(
            f"  - {{id: {group}-cool-off, type: suppression, applies_to: {{groups: [{group}]}}, "
            "after: rejected, days: 30, per: group}"
        )
        policies.append(
            f"  - {{id: {group}-weight, type: weight, applies_to: {{groups: [{group}]}}, "
            "weight: 'customer.flags.churn_risk ? 2.0 : 1.0'}"
        )
    policies.append("  - {id: ten-a-day-per-channel, type: contact_cap, max: 10, window: 1d, counts: impressed, per: channel}")
    policies.append("  - {id: stop-when-ignored, type: suppression, after: ignored, ignored: 3, days: 14}")
    # About one policy per ten offers: budgets over a few offers each, per-offer rules, caps.
    all_ids = [oid for ids in ids_by_group.values() for oid in ids]
    rng.shuffle(all_ids)
    for k in range(0, len(all_ids), 10):
        chosen = all_ids[k : k + rng.randint(1, 4)]
        kind = rng.random()
        targets = f"{{offers: [{', '.join(chosen)}]}}"
        if kind < 0.5:
            policies.append(
                f"  - {{id: budget-{k}, type: budget, applies_to: {targets}, max: {rng.randint(50, 500)}, "
                f"counts: accepted, period: day, pacing: {rng.choice(['none', 'even'])}, "
                f"per: {rng.choice(['offer', 'policy'])}}}"
            )
        elif kind < 0.8:
            policies.append(
                f"  - {{id: rule-{k}, type: suitability, applies_to: {targets}, "
                f"rule: 'customer.value.clv >= {rng.randint(0, 40) * 100}.0 || offer.value < 50.0'}}"
            )
        else:
            policies.append(
                f"  - {{id: cap-{k}, type: contact_cap, applies_to: {targets}, max: 2, window: 1d, counts: decided, per: offer}}"
            )
    (folder / "fallbacks.yaml").write_text("offers:\n" + fallbacks + "\n")
    (folder / "policies.yaml").write_text("policies:\n" + "\n".join(policies) + "\n")
    return folder


def contexts(n: int) -> list[dict[str, Any]]:
    """Contexts drawn from the sample schema (corners and random values)."""
    raw = load_yaml((ROOT / "policies" / "schema.yaml").read_text())["schema"]
    specs = {
        p: v if isinstance(v, FieldSpec) else (FieldSpec(type=v) if isinstance(v, str) else FieldSpec(**v))
        for p, v in raw.items()
    }
    return ContextSchema(specs).samples(n, seed=7)


def timed(fn: Any, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(size: int, work: Path, rounds: int, decides: int, profile: bool) -> dict[str, Any]:
    folder = generate(work / f"set-{size}", size)
    files = read_files(folder)
    size_bytes = sum(len(t.encode()) for t in files.values())
    result: dict[str, Any] = {"offers": size, "bytes": size_bytes}
    compiled = parse_policy_set(files)
    result["policies"] = len(compiled.policies)
    result["per_channel"] = {c: len(v) for c, v in compiled.by_channel.items()}
    result["warnings"] = len(compiled.warnings)

    cli = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "nba", "policies", "validate", str(folder)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        ),
        max(1, rounds // 2),
    )
    result["cli_validate_s"] = round(min(cli), 2)
    parse = timed(lambda: parse_policy_set(files), rounds)
    result["parse_s"] = round(min(parse), 2)
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        parse_policy_set(files)
        profiler.disable()
        out = ROOT / "loadtests" / "results" / f"policy_scale_{size}.prof"
        out.parent.mkdir(exist_ok=True)
        profiler.dump_stats(str(out))
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)

    port = free_port()
    env = {
        "NBA_PORT": str(port),
        "NBA_HOST": "127.0.0.1",
        "NBA_METRICS_PORT": "-1",
        "NBA_HTTP_PORT": "-1",
        "NBA_POLICIES": str(folder),
        "NBA_DATABASE_URL": f"sqlite:///{work / f'db-{size}.sqlite'}",
        "NBA_LOG_LEVEL": "warning",
        "NBA_POLICIES_WATCH_SECONDS": "0",
        "NBA_SEED": "1",
        "NBA_ADMIN_TOKENS": f"bench:editor:{TOKEN}",
    }
    began = time.perf_counter()
    server = Server([sys.executable, "-m", "nba", "serve"], port, set(os.sched_getaffinity(0)), env)
    result["start_s"] = round(time.perf_counter() - began, 2)
    try:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
        )
        admin = apb_grpc.AdminServiceStub(channel)
        decide = pb_grpc.DecisionServiceStub(channel)
        auth = [("authorization", f"Bearer {TOKEN}")]
        draft = apb.PolicySetDraft(files=files)
        validate = timed(
            lambda: admin.ValidatePolicySet(apb.ValidatePolicySetRequest(draft=draft), metadata=auth, timeout=300), rounds
        )
        result["validate_rpc_s"] = round(min(validate), 2)
        publishes = []
        for r in range(rounds):
            changed = dict(files)
            changed["policies.yaml"] = files["policies.yaml"] + f"# revision {r}\n"
            began = time.perf_counter()
            response = admin.PublishPolicySet(
                apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=changed), comment=f"r{r}"), metadata=auth, timeout=300
            )
            publishes.append(time.perf_counter() - began)
            assert not response.unchanged
        result["publish_rpc_s"] = round(min(publishes), 2)
        # A folder publish: change a file, SIGHUP, wait for the new version.
        live = admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=auth).version
        (folder / "policies.yaml").write_text(files["policies.yaml"] + "# folder revision\n")
        began = time.perf_counter()
        server.proc.send_signal(signal.SIGHUP)
        while admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=auth).version == live:
            if time.perf_counter() - began > 300:
                raise RuntimeError("the folder publish did not go live in 300 s")
            time.sleep(0.05)
        result["publish_folder_s"] = round(time.perf_counter() - began, 2)

        latencies: dict[str, list[float]] = {c: [] for c in CHANNELS}
        samples = contexts(50)
        warmup = 20 * len(CHANNELS)  # not measured: the first decisions after a publish share the
        for i in range(-warmup, decides):  # process with the new set's compilation and collection
            ch = CHANNELS[i % len(CHANNELS)]
            ctx = struct_pb2.Struct()
            ctx.update(samples[i % len(samples)])
            request = pb.DecideRequest(customer_id=f"c-{i % 500}", channel=ch, context=ctx, limit=3)
            began = time.perf_counter()
            decide.Decide(request, timeout=30)
            if i >= 0:
                latencies[ch].append(time.perf_counter() - began)
        result["decide_ms"] = {
            c: {"p50": round(statistics.median(v) * 1000, 1), "p99": round(percentile(v, 0.99) * 1000, 1)}
            for c, v in latencies.items()
        }
        channel.close()
    finally:
        server.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", default="1000,3000,10000", help="comma-separated sizes")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of validate and publish (best kept)")
    parser.add_argument("--decides", type=int, default=500, help="Decide calls, spread over the channels")
    parser.add_argument("--profile", action="store_true", help="cProfile parse_policy_set at the largest size")
    parser.add_argument("--out", default=str(ROOT / "loadtests" / "results" / "bench_policy_scale.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.offers.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            result = measure(size, Path(tmp), args.rounds, args.decides, args.profile and size == max(sizes))
            print(json.dumps(result), flush=True)
            results.append(result)
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
