"""Where a decision's CPU goes, in one process: `python loadtests/bench_breakdown.py`.

The figures behind the README's "Where a call's CPU goes" and "The learner's estimates stay
numpy" (issue 17), each printed with what it measures:

- the deciding thread and the decision log's writer, CPU per decision (``/proc`` per-thread
  counters), the decider called directly on `make bench`'s 100-offer policy set and 30-field
  contexts, on SQLite;
- the writer's parts: the rows' JSON, counting the rollups, inserting decisions, contacts and
  rollups, and the size of a row's JSON;
- the learner's estimates (``LinearBandit._predict``) and their parts;
- how often a product computed another way gives other last bits than numpy's
  ``theta[rows] @ x`` (numba's own BLAS call, a plain loop, one product over every arm then
  indexed), on random shapes;
- a stored profile's view with its next segment change planned, and without (as a profile
  stored before the segment clock came by is read).

``--calls`` sets the decisions measured (default 3,000).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import numba
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

from bench_profiles import event_of, started  # noqa: E402
from workload import context, write_policy_set  # noqa: E402

from bandit import flatten, limit_blas_threads  # noqa: E402
from nba.config import Settings  # noqa: E402
from nba.decision.decider import DecideInput  # noqa: E402
from nba.learning.loop import build_learner  # noqa: E402
from nba.policy.loading import load_policy_set  # noqa: E402
from nba.profiles.profile import Profile, TrackedEvent  # noqa: E402
from nba.records import ContactEvent  # noqa: E402
from nba.storage.engine import json_text  # noqa: E402
from nba.storage.rollups import decision_measures  # noqa: E402


def per_call(fn: Callable[[int], Any], calls: int) -> float:
    """Mean microseconds a call of ``fn(i)``, after a tenth as many warm-up calls."""
    for i in range(max(calls // 10, 1)):
        fn(i)
    began = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - began) / calls * 1e6


def thread_cpu(name: str) -> float:
    """CPU seconds so far of this process's thread named ``name``."""
    for thread in threading.enumerate():
        if thread.name == name and thread.native_id is not None:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    raise LookupError(f"no thread named {name}")


def decisions(calls: int, work: Path) -> None:
    service = started(f"sqlite:///{work}/db.sqlite", write_policy_set(work / "p100", 100, 30))
    try:
        rng = random.Random(3)
        contexts = [context(30, rng) for _ in range(200)]
        decider = service.decider

        def run(n: int, prefix: str = "c") -> list[Any]:
            return [
                decider.decide(
                    DecideInput(customer_id=f"{prefix}-{i % 5000}", channel="web", context=contexts[i % 200], limit=3)
                )[0]
                for i in range(n)
            ]

        run(calls // 2)
        service.log.flush()
        writer_before, began = thread_cpu("nba-decision-log"), time.thread_time()
        records = run(calls)
        deciding = (time.thread_time() - began) / calls * 1e6
        service.log.flush()
        writer = (thread_cpu("nba-decision-log") - writer_before) / calls * 1e6
        print(f"the deciding thread: {deciding:.0f} µs a decision; the writer: {writer:.0f} µs a decision")

        records = records[:1000]
        store = service.store

        def each(label: str, fn: Callable[[], Any], repeat_: int = 5) -> None:
            began = time.thread_time()
            for _ in range(repeat_):
                fn()
            print(f"  {label}: {(time.thread_time() - began) / repeat_ / len(records) * 1e6:.1f} µs a decision")

        sizes = [sum(len(json_text(part)) for part in (r.features, r.candidates, r.offers)) for r in records]
        candidates = [len(json_text(r.candidates)) for r in records]
        print(
            f"the writer's parts (a row's JSON: {np.mean(sizes) / 1000:.1f} KB, candidates {np.mean(candidates) / 1000:.1f} KB):"
        )
        each("the rows' JSON", lambda: [json_text(part) for r in records for part in (r.features, r.candidates, r.offers)])
        each("counting the rollups", lambda: decision_measures(records))

        def insert_decisions() -> None:
            fresh = [dataclasses.replace(r, decision_id=uuid.uuid4().hex) for r in records]
            with store.write() as conn:
                store.insert_decisions(conn, fresh)

        events = [
            ContactEvent(r.customer_id, r.created_at.timestamp(), "decided", o["offer_id"], o["group"], r.channel)
            for r in records
            for o in r.offers
        ]

        def insert_contacts() -> None:
            with store.write() as conn:
                store.insert_contacts(conn, events)

        def add_rollups() -> None:
            with store.write() as conn:
                store.add_rollups(conn, decision_measures(records))

        each("inserting the decisions (SQLite)", insert_decisions)
        each("inserting the contacts (SQLite)", insert_contacts)
        each("adding the rollups (SQLite)", add_rollups)
    finally:
        service.stop(grace=1.0)


def estimates(calls: int) -> None:
    limit_blas_threads()  # as the service runs
    rng = random.Random(3)
    contexts = [flatten(context(30, rng)) for _ in range(200)]
    ids = [f"offer-{i}" for i in range(68)]
    learner = build_learner(Settings())
    for k in range(300):
        learner.update(ids[k % len(ids)], contexts[k % 200], float(k % 3 == 0))
    model = learner._model
    x = learner._featurizer.transform_one(contexts[0])
    rows = model.rows(ids)
    n = model.evidence(rows)
    slot_of = learner._arm_slot

    def mixing(i: int) -> np.ndarray:
        # _predict's elementwise steps, on products computed beforehand
        slots = np.fromiter(map(slot_of.get, ids, repeat(0)), dtype=np.intp, count=len(ids))
        trust = np.where(learner._solo[slots], 1.0, n / (n + learner.shared))
        own = trust * own_estimates + (1 - trust) * from_attributes
        newcomers = np.flatnonzero((n < 5 * learner.optimism) & (model.births(rows) >= 1000))
        trust = n / (n + learner.optimism)
        return learner.prior + (trust * own + (1 - trust) * best) + len(newcomers)

    own_estimates = model.predict_rows(rows, x)
    per_attribute = learner._attributes.predict(learner._attribute_names, x)
    from_attributes = learner._membership[np.zeros(len(ids), dtype=np.intp)] @ per_attribute
    best = float(np.max(model.known_estimates(x), initial=0.0))
    print(f"the learner's estimates, {len(ids)} offers (LinearBandit._predict):")
    print(f"  in all: {per_call(lambda i: learner._predict(ids, contexts[i % 200]), calls):.1f} µs")
    print(f"  the featurizer: {per_call(lambda i: learner._features(contexts[i % 200]), calls):.1f} µs")
    products = per_call(lambda i: (model.predict_rows(rows, x), model.known_estimates(x)), calls) + per_call(
        lambda i: learner._attributes.predict(learner._attribute_names, x), calls
    )
    print(f"  the matrix products (BLAS): {products:.1f} µs")
    print(f"  the row look-ups: {per_call(lambda i: (model.rows(ids), model.rows(ids)), calls):.1f} µs")
    print(f"  the elementwise mixing: {per_call(mixing, calls):.1f} µs")


@numba.njit(cache=False)
def _numba_blas(theta: np.ndarray, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.dot(theta[rows], x)


@numba.njit(cache=False)
def _loop(theta: np.ndarray, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows))
    for j in range(len(rows)):
        total = 0.0
        for i in range(x.shape[0]):
            total += theta[rows[j], i] * x[i]
        out[j] = total
    return out


def last_bits(shapes: int = 2000) -> None:
    rng = np.random.default_rng(0)
    differ = {"numba's BLAS call": 0, "a plain loop": 0, "one product over every arm, then indexed": 0}
    for _ in range(shapes):
        arms = int(rng.integers(2, 400))
        theta = rng.normal(size=(arms, 129)) * rng.choice([1e-3, 1, 1e3])
        x = rng.normal(size=129)
        x[rng.random(129) < 0.7] = 0
        rows = rng.choice(arms, size=int(rng.integers(1, arms + 1)))
        expected = theta[rows] @ x
        for name, got in (
            ("numba's BLAS call", _numba_blas(theta, rows, x)),
            ("a plain loop", _loop(theta, rows, x)),
            ("one product over every arm, then indexed", (theta @ x)[rows]),
        ):
            differ[name] += not np.array_equal(expected, got)
    print(f"products whose last bits differ from numpy's theta[rows] @ x, of {shapes} random shapes:")
    for name, count in differ.items():
        print(f"  {name}: {count}")


def profile_views(calls: int, work: Path) -> None:
    definition = load_policy_set(ROOT / "policies").profile
    now = datetime.now(UTC)
    rng = random.Random(5)
    planned, unplanned = [], []
    for c in range(200):
        customer = f"c-{c}"
        profile = Profile(definition, customer, now.timestamp() - 365 * 86400)
        for n in range(10):
            event_id, kind, source, at, properties = event_of(rng, customer, n, now)
            profile.apply(TrackedEvent(event_id, customer, kind, source, at.timestamp(), properties))
        profile.settle(now.timestamp())
        unplanned.append(Profile.load(definition, {k: v for k, v in profile.dump().items() if k != "segments_due"}))
        profile.plan(exact=False)
        planned.append(Profile.load(definition, profile.dump()))
    later = now.timestamp() + 60
    print("a stored profile's view (the sample profile, 10 events):")
    print(f"  its next segment change planned: {per_call(lambda i: planned[i % 200].view(later), calls):.1f} µs")
    print(f"  not planned (each read looks for it): {per_call(lambda i: unplanned[i % 200].view(later), calls):.1f} µs")


def main() -> int:
    parser = argparse.ArgumentParser(description="where a decision's CPU goes, in one process")
    parser.add_argument("--calls", type=int, default=3000, help="decisions (and calls) measured (default 3,000)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nba-bench-breakdown-"))
    decisions(args.calls, work)
    estimates(args.calls)
    last_bits(min(args.calls, 2000))
    profile_views(args.calls, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
