"""The Decide pipeline's stages in one process: `python loadtests/bench_stages.py`.

Microseconds a call (the mean over thousands of calls) of each stage the service benchmark's
requests go through, on the benchmark's generated policy sets and contexts
(loadtests/workload.py): screening 100 and 1,000 offers, the rules of one channel (CEL with
its activation, and the compiled shapes where the code has them), the learner's pull and its
slot draw, and a context `Struct` to flat features at 10 to 300 fields. Only functions that
predate the compiled stages are timed by name, so the same script run on an older checkout
gives the "before" column of the README's table.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

from workload import context, write_policy_set  # noqa: E402

from bandit import flatten  # noqa: E402
from bandit.exploration import draw_slots  # noqa: E402
from nba.config import Settings  # noqa: E402
from nba.decision.screening import screen  # noqa: E402
from nba.learning.loop import build_learner  # noqa: E402
from nba.policy.loading import load_policy_set  # noqa: E402
from nba.policy.rules import RuleBatch, activation  # noqa: E402
from nba.service.context import features_from_struct  # noqa: E402


def per_call(fn: Callable[[], Any], calls: int = 3000) -> float:
    """Mean microseconds a call of ``fn`` after one warm-up call."""
    fn()
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nba-bench-stages-"))
    rng = random.Random(3)
    contexts = [flatten(context(30, rng)) for _ in range(200)]
    now = datetime.now(UTC)
    rows: list[tuple[str, float]] = []
    for offers in (100, 1000):
        policy_set = load_policy_set(write_policy_set(work / f"p{offers}", offers, 30))
        turn = iter(range(10**9))
        rows.append(
            (
                f"screening, {offers} offers (web)",
                per_call(lambda ps=policy_set, t=turn: screen(ps, "web", contexts[next(t) % 200], "c-1", now)),
            )
        )
        if offers == 100:
            batch = policy_set.batches["web"]
            rules = getattr(batch, "rules", None) or batch.batch.rules
            variables = activation(contexts[5], "web", "c-1", now, paths=policy_set.context_paths, uses=policy_set.uses)
            rows.append(
                (
                    f"the channel's {len(rules)} rules: CEL's activation",
                    per_call(
                        lambda ps=policy_set: activation(contexts[5], "web", "c-1", now, paths=ps.context_paths, uses=ps.uses)
                    ),
                )
            )
            cel = RuleBatch(rules)
            rows.append((f"the channel's {len(rules)} rules: CEL", per_call(lambda c=cel, v=variables: c.evaluate(v))))
            predicates = getattr(batch, "predicates", None)
            if predicates is not None:
                rows.append(
                    (f"the channel's {len(rules)} rules: compiled shapes", per_call(lambda p=predicates: p.evaluate(contexts[5])))
                )
            ids = [v.offer.id for v in screen(policy_set, "web", contexts[3], "c-1", now).eligible]
    learner = build_learner(Settings())
    for k in range(300):
        learner.update(ids[k % len(ids)], contexts[k % 200], float(k % 3 == 0))
    weights = np.ones(len(ids))
    turn = iter(range(10**9))
    rows.append(
        (
            f"the learner's pull, {len(ids)} offers, 3 slots",
            per_call(lambda: learner.pull(ids, contexts[next(turn) % 200], 3, weights)),
        )
    )
    _, scores, scale = learner._weighted(ids, contexts[3], weights)
    t = learner._exploration_t(ids)
    draws = np.random.default_rng(1)
    rows.append(
        (
            f"the slot draw, {len(ids)} offers, 3 slots",
            per_call(lambda: draw_slots(learner.exploration, scores, 3, draws, scale, t)),
        )
    )
    for fields in (10, 30, 100, 300):
        message = struct_pb2.Struct()
        message.update(context(fields, rng))
        rows.append((f"context to features, {fields} fields", per_call(lambda m=message: features_from_struct(m))))
    print(f"{'stage':52} {'µs a call':>10}")
    for label, micros in rows:
        print(f"{label:52} {micros:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
