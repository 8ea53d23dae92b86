"""Pacing cost: what evenly paced daily budgets cost a decision, with and without schedules.

Screens one channel of a generated set whose offers each hold a daily budget under even
pacing (counting decisions), half of them with a schedule, and reports the microseconds per
screening call and per paced offer. Single-threaded, one core; the figures are the median of
five runs.

    .venv/bin/python loadtests/bench_pacing.py [--offers 20] [--calls 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

from nba.decision.contacts import OfferCounters
from nba.decision.screening import screen
from nba.policy.loading import parse_policy_set


def policy_set(offers: int, timezone: str) -> object:
    lines = [f"settings: {{timezone: {timezone}}}", "channels: [web]", "offers:"]
    for i in range(offers):
        schedule = ', schedule: {days: [mon, tue, wed, thu, fri], hours: ["08:00-12:30", "14:00-20:00"]}' if i % 2 else ""
        lines.append(f"  - {{id: o{i}, name: O{i}, channels: [web]{schedule}}}")
    lines.append("policies:")
    for i in range(offers):
        lines.append(f"  - {{id: b{i}, type: budget, applies_to: {{offers: [o{i}]}}, max: 1000, counts: decided, pacing: even}}")
    return parse_policy_set({"set.yaml": "\n".join(lines) + "\n"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--timezone", default="Europe/London")
    args = parser.parse_args()
    paced = policy_set(args.offers, args.timezone)
    counters = OfferCounters()
    now = datetime(2026, 11, 24, 15, 7, 30, tzinfo=UTC)  # a Tuesday afternoon: inside the schedules
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(args.calls):
            result = screen(paced, "web", {}, "c-1", now, None, counters)
        runs.append((time.perf_counter() - started) / args.calls * 1e6)
    assert all(v.eligible for v in result.verdicts)
    per_call = statistics.median(runs)
    print(
        f"{args.offers} offers with evenly paced daily budgets ({args.offers // 2} scheduled), {args.timezone}: "
        f"{per_call:.1f} us per screening call, {per_call / args.offers:.1f} us per offer"
    )


if __name__ == "__main__":
    main()
