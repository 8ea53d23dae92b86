"""Learning benchmark: our learners against uniform random, river's bandit policies and Vowpal
Wabbit's contextual bandits, on multiclass data turned into bandit streams.

Each stream presents a context, one arm per class, and pays 1 when the arm is the true class
(the standard supervised-to-bandit conversion; Bietti, Agarwal & Langford, 2021, "A
Contextual Bandit Bake-off"). Every learner sees the same stream in the same order, with the
same seed and the same exploration budget (epsilon 0.05 for the epsilon-greedy ones; inverse
gap weighting with gamma 10 * t^0.5 for ours and for VW's --squarecb). Reported per stream and
learner: the progressive average reward (the mean reward over the whole run, learning as it
goes), the microseconds per decision (choose + learn), and a propensity check: from the
probabilities the learner logged, the IPS estimate of the uniform policy's value must come out
at 1/K within its 95% interval (empirical Bernstein, which accounts for heavy-tailed weights).
A learner that logs wrong propensities (or none: a deterministic choice logs 1) fails it.

    make bench-learning            # or: python loadtests/bench_learning.py [--rounds 3000]

Needs the `bench` extra (scikit-learn; vowpalwabbit is optional and skipped when missing).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bandit import EpsilonGreedy, LinearBandit, UniformRandom, limit_blas_threads

EPSILON = 0.05


@dataclass
class Stream:
    name: str
    X: np.ndarray
    y: np.ndarray
    classes: int


@dataclass
class Result:
    stream: str
    learner: str
    reward: float
    micros: float
    uniform_ips: float
    uniform_low: float
    uniform_high: float
    uniform_true: float
    propensities_ok: bool


def streams(rounds: int, seed: int) -> list[Stream]:
    from sklearn import datasets

    out = []
    for name, loader in (("iris", datasets.load_iris), ("wine", datasets.load_wine),
                         ("breast-cancer", datasets.load_breast_cancer), ("digits", datasets.load_digits)):
        data = loader()
        out.append(Stream(name, data.data.astype(float), data.target.astype(int), int(data.target.max()) + 1))
    X, y = datasets.make_classification(n_samples=4000, n_features=20, n_informative=10, n_redundant=2,
                                        n_classes=5, n_clusters_per_class=1, random_state=seed)
    out.append(Stream("synthetic-5", X, y, 5))
    X, y = datasets.make_classification(n_samples=4000, n_features=40, n_informative=20, n_classes=10,
                                        n_clusters_per_class=1, class_sep=1.5, random_state=seed + 1)
    out.append(Stream("synthetic-10", X, y, 10))
    X, y = datasets.make_classification(n_samples=6000, n_features=30, n_informative=20, n_classes=50,
                                        n_clusters_per_class=1, class_sep=2.0, random_state=seed + 2)
    out.append(Stream("synthetic-50", X, y, 50))  # many arms, as a catalogue has offers
    rng = np.random.default_rng(seed)
    sized = []
    for s in out:  # repeat (shuffled each pass) or cut to `rounds`
        order = np.concatenate([rng.permutation(len(s.y)) for _ in range(math.ceil(rounds / len(s.y)))])[:rounds]
        sized.append(Stream(s.name, s.X[order], s.y[order], s.classes))
    return sized


class Ours:
    def __init__(self, name: str, learner: Any) -> None:
        self.name, self.learner = name, learner

    def play(self, x: dict[str, float], arms: list[str], rng: random.Random) -> tuple[str, float, Callable[[float], None]]:
        draw = self.learner.pull(arms, x)
        arm = draw.chosen[0]
        return arm, draw.slots[0][1], lambda reward: self.learner.update(arm, x, reward)


class River:
    """river's policies: they return an arm and expose no probability (logged as 1)."""

    def __init__(self, name: str, policy: Any, contextual: bool) -> None:
        self.name, self.policy, self.contextual = name, policy, contextual

    def play(self, x: dict[str, float], arms: list[str], rng: random.Random) -> tuple[str, float, Callable[[float], None]]:
        arm = self.policy.pull(arms, x) if self.contextual else self.policy.pull(arms)

        def learn(reward: float) -> None:
            if self.contextual:
                self.policy.update(arm, x, reward)
            else:
                self.policy.update(arm, reward)

        return arm, 1.0, learn


class VowpalWabbit:
    def __init__(self, name: str, arguments: str, seed: int) -> None:
        import vowpalwabbit

        self.name = name
        self.vw = vowpalwabbit.Workspace(f"{arguments} --quiet --random_seed {seed}")

    def play(self, x: dict[str, float], arms: list[str], rng: random.Random) -> tuple[str, float, Callable[[float], None]]:
        shared = "shared |s " + " ".join(f"{k}:{v:.6g}" for k, v in x.items())
        lines = [f"|a arm={a}" for a in arms]
        pmf = self.vw.predict([shared, *lines])
        i = rng.choices(range(len(arms)), weights=pmf)[0]
        p = float(pmf[i]) / float(sum(pmf))

        def learn(reward: float) -> None:
            labeled = [shared, *(f"0:{-reward}:{p} {line}" if j == i else line for j, line in enumerate(lines))]
            self.vw.learn(labeled)

        return arms[i], p, learn


def learners(seed: int, classes: int) -> list[Any]:
    import river.bandit as rb
    from river import proba

    out: list[Any] = [
        Ours("nba LinearBandit (IGW)", LinearBandit(seed=seed)),
        Ours("nba LinearBandit (IGW, shared=3)", LinearBandit(seed=seed, shared=3.0)),
        Ours(f"nba LinearBandit (epsilon {EPSILON})", LinearBandit(seed=seed, exploration=EpsilonGreedy(EPSILON))),
        Ours("uniform random", UniformRandom(seed=seed)),
        River("river LinUCBDisjoint", rb.LinUCBDisjoint(alpha=1.0, seed=seed), contextual=True),
        River(f"river EpsilonGreedy ({EPSILON})", rb.EpsilonGreedy(epsilon=EPSILON, seed=seed), contextual=False),
        River("river ThompsonSampling (Beta)", rb.ThompsonSampling(reward_obj=proba.Beta(), seed=seed), contextual=False),
    ]
    try:
        import vowpalwabbit  # noqa: F401
    except ImportError:
        print("vowpalwabbit is not installed: VW is left out (pip install vowpalwabbit)", file=sys.stderr)
        return out
    out += [
        VowpalWabbit("VW cb_explore_adf -q sa --squarecb", "--cb_explore_adf -q sa --squarecb", seed),
        VowpalWabbit(f"VW cb_explore_adf -q sa --epsilon {EPSILON}", f"--cb_explore_adf -q sa --epsilon {EPSILON}", seed),
    ]
    return out


def run(stream: Stream, learner: Any, seed: int) -> Result:
    rng = random.Random(seed)
    arms = [str(k) for k in range(stream.classes)]
    rewards, ips = [], []
    elapsed = 0.0
    names = [f"f{j}" for j in range(stream.X.shape[1])]
    for row, label in zip(stream.X, stream.y, strict=True):
        x = dict(zip(names, row.tolist(), strict=True))
        started = time.perf_counter()
        arm, p, learn = learner.play(x, arms, rng)
        reward = 1.0 if arm == str(label) else 0.0
        learn(reward)
        elapsed += time.perf_counter() - started
        rewards.append(reward)
        ips.append((1.0 / stream.classes) / p * reward)
    n = len(rewards)
    terms = np.asarray(ips)
    mean, variance = float(terms.mean()), float(terms.var(ddof=1))
    # An empirical Bernstein interval (Maurer & Pontil, 2009): importance weights are heavy
    # tailed, and a normal interval is far too narrow when the rare large weights were not
    # drawn; this one widens with the largest weight seen, and stays tight for learners whose
    # weights are small (a deterministic policy logging 1).
    log_term = math.log(2 / 0.05)
    bound = float(terms.max()) if n else 0.0
    half = math.sqrt(2 * variance * log_term / n) + 7 * bound * log_term / (3 * (n - 1))
    low, high = mean - half, mean + half
    true = 1.0 / stream.classes
    return Result(stream.name, learner.name, float(np.mean(rewards)), elapsed / n * 1e6, mean, low, high, true, low <= true <= high)


def markdown(results: list[Result], stream_names: list[str]) -> str:
    names = list(dict.fromkeys(r.learner for r in results))
    head = "| learner | " + " | ".join(stream_names) + " | µs / decision | propensities |"
    lines = [head, "|" + " --- |" * (len(stream_names) + 3)]
    for name in names:
        rows = {r.stream: r for r in results if r.learner == name}
        cells = []
        for s in stream_names:
            best = max(r.reward for r in results if r.stream == s)
            r = rows[s]
            cells.append(f"**{r.reward:.3f}**" if r.reward >= best - 1e-9 else f"{r.reward:.3f}")
        micros = np.mean([r.micros for r in rows.values()])
        ok = sum(r.propensities_ok for r in rows.values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {micros:,.0f} | {ok}/{len(rows)} pass |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000, help="decisions per stream (default 3000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="loadtests/results/bench_learning.json")
    args = parser.parse_args(argv)
    limit_blas_threads()
    all_streams = streams(args.rounds, args.seed)
    results: list[Result] = []
    for stream in all_streams:
        for learner in learners(args.seed, stream.classes):
            result = run(stream, learner, args.seed)
            results.append(result)
            print(f"{stream.name:14} {learner.name:38} reward {result.reward:.3f}  {result.micros:8.1f} µs  "
                  f"uniform by IPS {result.uniform_ips:.3f} [{result.uniform_low:.3f}, {result.uniform_high:.3f}] "
                  f"(true {result.uniform_true:.3f}) {'ok' if result.propensities_ok else 'WRONG PROPENSITIES'}", flush=True)
    table = markdown(results, [s.name for s in all_streams])
    print()
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "rounds": args.rounds, "seed": args.seed, "machine": platform.platform(), "python": platform.python_version(),
        "results": [asdict(r) for r in results], "markdown": table,
    }, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
