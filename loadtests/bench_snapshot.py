"""How long a model snapshot holds up Decide: `python loadtests/bench_snapshot.py`.

The service's learner (default configuration) learns every offer of a generated catalogue
(100 offers in 5 groups, contexts of 30 fields, as `make bench`) while one thread draws
rankings through the learning loop, as Decide does. Under the loop's lock, alternately, the
learner is pickled (how snapshots were taken before they became data) and its state exported
(``Learner.export_state``, into the previous export's arrays, as ``LearningLoop`` does now):
the time each holds the lock is the time a Decide may wait. Then real snapshots are written
to a SQLite file (``LearningLoop.maybe_snapshot``: export under the lock, encode and write
outside it) and loaded back.
"""

from __future__ import annotations

import argparse
import pickle
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

from workload import context  # noqa: E402

from bandit import limit_blas_threads  # noqa: E402
from bandit.features import flatten  # noqa: E402
from bandit.state import LearnerState, dumps  # noqa: E402
from nba.config import Settings  # noqa: E402
from nba.learning.loop import LearningLoop, build_learner  # noqa: E402
from nba.records import LearningEvent  # noqa: E402
from nba.storage.engine import open_engine  # noqa: E402
from nba.storage.store import Store  # noqa: E402


def summary(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return f"median {statistics.median(ms):.1f} ms, p90 {ms[int(len(ms) * 0.9)]:.1f} ms, max {ms[-1]:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", type=int, default=100)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=30, help="snapshots of each kind")
    args = parser.parse_args()
    limit_blas_threads()
    rng = random.Random(3)
    offers = [f"offer-{i:04d}" for i in range(args.offers)]
    loop = LearningLoop(build_learner(Settings()), snapshot_seconds=0)
    loop.describe_arms({o: [f"group=g{i % 5}"] for i, o in enumerate(offers)})
    loop.apply(
        LearningEvent(i + 1, flatten(context(30, rng)), offers[i % len(offers)], float(rng.random() < 0.2), None)
        for i in range(args.events)
    )
    probe = [flatten(context(30, rng)) for _ in range(50)]
    weights = np.ones(len(offers))
    stop = threading.Event()
    draws: list[tuple[float, float]] = []  # (began, seconds)

    def decide() -> None:
        i = 0
        while not stop.is_set():
            began = time.perf_counter()
            loop.draw(offers, probe[i % len(probe)], 3, weights)
            draws.append((began, time.perf_counter() - began))
            i += 1

    thread = threading.Thread(target=decide)
    thread.start()
    time.sleep(0.5)
    held: dict[str, list[float]] = {"pickled": [], "exported": []}
    windows: dict[str, list[tuple[float, float]]] = {"pickled": [], "exported": []}
    last: LearnerState | None = None
    for n in range(2 * args.rounds):
        kind = "pickled" if n % 2 == 0 else "exported"
        with loop._lock:
            began = time.perf_counter()
            if kind == "pickled":
                data = pickle.dumps(loop._learner, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                state = loop._learner.export_state(reuse=last)
            ended = time.perf_counter()
        held[kind].append(ended - began)
        windows[kind].append((began, ended))
        if kind == "exported":
            data = dumps(state)  # outside the lock
            last = state
        del data
        time.sleep(0.2)
    stop.set()
    thread.join()

    with tempfile.TemporaryDirectory() as folder:
        store = Store(open_engine(f"sqlite:///{folder}/snapshots.db"))
        written = []
        for n in range(5):
            loop.apply([LearningEvent(args.events + n + 1, probe[n], offers[0], 1.0, None)])  # something new
            began = time.perf_counter()
            loop.maybe_snapshot(store, force=True)
            written.append(time.perf_counter() - began)
        size = len(store.latest_snapshot()[2])
        began = time.perf_counter()
        LearningLoop(build_learner(Settings())).restore(store, seed=1)
        restored = time.perf_counter() - began
        store.engine.dispose()

    print(f"learner: {args.offers} offers, {args.events} events; a snapshot is {size / 1e6:.1f} MB")
    for kind in ("pickled", "exported"):
        during = [s for b, s in draws if any(w0 - s <= b <= w1 for w0, w1 in windows[kind])]
        print(
            f"lock held, {kind} under it: {summary(held[kind])}; longest draw waiting on it "
            f"{max(during, default=0) * 1000:.1f} ms"
        )
    quiet = [s for b, s in draws if not any(w0 - 0.05 <= b <= w1 + 0.05 for w in windows.values() for w0, w1 in w)]
    print(f"draws away from snapshots: median {statistics.median(quiet) * 1000:.3f} ms")
    print(
        f"a snapshot in all (export, encode, write to SQLite): median {statistics.median(written) * 1000:.0f} ms; "
        f"restore (load it, nothing to replay): {restored * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
