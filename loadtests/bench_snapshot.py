"""How long a model snapshot holds up Decide: `python loadtests/bench_snapshot.py`.

The service's learner (default configuration) learns every offer of a generated catalogue
(100 offers in 5 groups, contexts of 30 fields, as `make bench`), then is snapshotted to a
SQLite file while one thread draws rankings through the learning loop, as Decide does. Reported:
how long the snapshot kept the learner's lock (the time a Decide may wait), the longest draw
during the snapshots against the longest without, the snapshot's size, and how long writing
and loading it takes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

from workload import context  # noqa: E402

from bandit import limit_blas_threads  # noqa: E402
from bandit.features import flatten  # noqa: E402
from nba.config import Settings  # noqa: E402
from nba.learning import LearningEvent, LearningLoop, build_learner  # noqa: E402
from nba.store import Store, open_engine  # noqa: E402


class TimedLock:
    """The loop's lock, measuring how long one thread keeps it each time."""

    def __init__(self, thread: int) -> None:
        self._lock = threading.Lock()
        self._thread = thread
        self.held: list[float] = []
        self._since = 0.0

    def __enter__(self) -> TimedLock:
        self._lock.acquire()
        self._since = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if threading.get_ident() == self._thread:
            self.held.append(time.perf_counter() - self._since)
        self._lock.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", type=int, default=100)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--snapshots", type=int, default=10)
    args = parser.parse_args()
    limit_blas_threads()
    rng = random.Random(3)
    offers = [f"offer-{i:04d}" for i in range(args.offers)]
    loop = LearningLoop(build_learner(Settings()), snapshot_seconds=0)
    loop.describe_arms({o: [f"group=g{i % 5}"] for i, o in enumerate(offers)})
    loop.apply(LearningEvent(i + 1, flatten(context(30, rng)), offers[i % len(offers)], float(rng.random() < 0.2), None)
               for i in range(args.events))
    probe = [flatten(context(30, rng)) for _ in range(50)]
    weights = np.ones(len(offers))

    with tempfile.TemporaryDirectory() as folder:
        store = Store(open_engine(f"sqlite:///{folder}/snapshots.db"))
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
        time.sleep(1.0)
        windows: list[tuple[float, float]] = []
        held: list[float] = []
        written: list[float] = []
        timed = TimedLock(threading.get_ident())
        loop._lock = timed  # type: ignore[assignment]
        for n in range(args.snapshots):
            loop.apply([LearningEvent(args.events + n + 1, probe[n], offers[0], 1.0, None)])  # something new
            timed.held.clear()
            began = time.perf_counter()
            loop.maybe_snapshot(store, force=True)
            ended = time.perf_counter()
            windows.append((began, ended))
            written.append(ended - began)
            held.append(max(timed.held))
            time.sleep(0.5)
        stop.set()
        thread.join()
        size = len(store.latest_snapshot()[2])
        began = time.perf_counter()
        fresh = LearningLoop(build_learner(Settings()))
        fresh.restore(store, seed=1)
        restored = time.perf_counter() - began
        store.engine.dispose()

    during = [s for b, s in draws if any(w0 - s <= b <= w1 for w0, w1 in windows)]
    outside = [s for b, s in draws if not any(w0 - 0.05 <= b <= w1 + 0.05 for w0, w1 in windows)]
    ms = 1000
    print(f"learner: {args.offers} offers, {args.events} events; {args.snapshots} snapshots of {size / 1e6:.1f} MB")
    print(f"lock held by a snapshot: median {statistics.median(held) * ms:.2f} ms, max {max(held) * ms:.2f} ms")
    print(f"a snapshot in all (copy, encode, write): median {statistics.median(written) * ms:.1f} ms")
    print(f"draws: longest during snapshots {max(during, default=0) * ms:.2f} ms ({len(during)} draws), "
          f"longest outside {max(outside) * ms:.2f} ms, median outside {statistics.median(outside) * ms:.3f} ms")
    print(f"restore (load the snapshot, nothing to replay): {restored * ms:.1f} ms")


if __name__ == "__main__":
    main()
