"""Learning benchmark: nba's learner against uniform random, Vowpal Wabbit's contextual bandits
and river's LinUCB, on streams that do not flatter anybody.

Every learner plays every stream once, from scratch, in the same order, on the same features
and the same coin flips (loadtests/learning_streams.py builds the streams):

- features: every stream's features are standardised once, up front, on the stream (z-score,
  clipped at ±5), and every learner gets those same numbers (nba's featurizer then rescales
  numbers already near unit scale; VW and river use them as they are);
- single pass: each multiclass data set is played once in a shuffled order, no repeats;
- adversities: "stationary" (segments of customers, one best arm each), "change" (the same
  customers, every segment's best arm swapped for another at the midpoint), "newcomers" (5
  arms, 5 more join at the midpoint, each the best for a tenth of the customers) and
  "delayed" (the stationary stream with every reward delivered 500 decisions late).

Reported per learner, in one table: progressive reward (the mean reward over the stream, learning
as it goes) per stream; recovery after the change (decisions 1,600-2,000 after it: the mean
true reward of the arms chosen as a share of the oracle's, and the share of decisions that
chose the new best arm); the newcomers' share of the first 500 decisions after they join; the
cost of the delay (stationary minus delayed, on the true means of the arms chosen);
microseconds per decision (choose + learn, one BLAS thread); and a propensity check: from the
probabilities the learner logged, the IPS estimate of the uniform policy's value must land on
its true value within its 95% interval (empirical Bernstein). A learner that logs wrong
propensities, or none (a deterministic choice logs 1), fails it.

    make bench-learning            # or: python loadtests/bench_learning.py [--quick]

Needs the `bench` extra (scikit-learn and river; vowpalwabbit is skipped when missing).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_streams import Stream, adversity_streams, classification_streams

from bandit import LinearBandit, UniformRandom

#: the late feedback of the "delayed" stream, in decisions
DELAY = 500
#: the recovery window, in decisions after the change
RECOVERY = (1600, 2000)
#: the newcomers' first decisions
NEWCOMER_WINDOW = 500
#: windows after the change over which the mean true reward is reported (the last runs to the end)
AFTER_WINDOWS = ((0, 500), (500, 1000), (1000, 2000), (2000, 5000), (5000, None))
EPSILON = 0.05

#: nba's configurations in the table: (label, LinearBandit keyword arguments). The defaults
#: come first, whatever they are when the bench runs; a keyword the installed LinearBandit does
#: not take drops its row (with a note) instead of failing the run. Add rows here, or pass
#: --nba 'label={"forget": 0.99}'.
NBA_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    # What `nba serve` runs by default (nba.config: learner_shared 3, learner_prior 0.05).
    ("nba, the service's defaults", {"shared": 3.0, "prior": 0.05}),
    # The same with the setting that restores the behaviour before adaptation was the default.
    (
        "nba, before adaptation",
        {"shared": 3.0, "prior": 0.05, "forget": 1.0, "optimism": 0.0, "explore_by_age": False, "detect_changes": False},
    ),
    ("nba LinearBandit() defaults", {}),
]

Play = tuple[str, float, Callable[[float], None]]


class Ours:
    def __init__(self, name: str, learner: Any) -> None:
        self.name, self.learner = name, learner

    def play(self, x: dict[str, float], arms: list[str], rng: random.Random) -> Play:
        draw = self.learner.pull(arms, x)
        arm = draw.chosen[0]
        return arm, float(draw.slots[0][1]), lambda reward: self.learner.update(arm, x, reward)

    def describe(self) -> Any:
        return {"class": type(self.learner).__name__, **self.learner.hyperparameters()}


class River:
    """river's LinUCB: it returns an arm and exposes no probability (logged as 1, which the
    propensity check rightly fails: such a log cannot be evaluated offline)."""

    def __init__(self, name: str, policy: Any) -> None:
        self.name, self.policy = name, policy

    def play(self, x: dict[str, float], arms: list[str], rng: random.Random) -> Play:
        arm = self.policy.pull(arms, x)
        return arm, 1.0, lambda reward: self.policy.update(arm, x, reward)

    def describe(self) -> Any:
        params = getattr(self.policy, "_get_params", dict)()  # river's own parameter listing
        return {"class": type(self.policy).__name__, **{k: repr(v) for k, v in params.items()}}


class VowpalWabbit:
    """VW's action-dependent-features contextual bandit: the context in a shared example
    (namespace s), one example per arm naming it (namespace a), ``-q sa`` crossing them, so VW
    learns a linear model of the context per arm, as the others do. VW's pmf is sampled with
    the bench's seeded generator and the drawn arm's probability is logged as VW gave it; VW
    learns the cost -reward (it minimises cost)."""

    def __init__(self, name: str, arguments: str, seed: int) -> None:
        import vowpalwabbit

        self.name = name
        self.vw = vowpalwabbit.Workspace(f"{arguments} --quiet --random_seed {seed}")

    def play(self, x: dict[str, float], arms: list[str], rng: random.Random) -> Play:
        shared = "shared |s " + " ".join(f"{k}:{v:.6g}" for k, v in x.items())
        lines = [f"|a arm={a}" for a in arms]
        pmf = self.vw.predict([shared, *lines])  # in the order of the arms (checked by a test)
        i = rng.choices(range(len(arms)), weights=pmf)[0]
        p = float(pmf[i])

        def learn(reward: float) -> None:
            labeled = [shared, *(f"0:{-reward}:{p} {line}" if j == i else line for j, line in enumerate(lines))]
            self.vw.learn(labeled)

        return arms[i], p, learn

    def describe(self) -> Any:
        """Every option VW resolved, defaults included (its cb_type, for one)."""
        return self.vw.get_arguments()


def vw_available() -> bool:
    try:
        import vowpalwabbit  # noqa: F401
    except ImportError:
        return False
    return True


def learners(seed: int, extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> list[tuple[str, Callable[[], Any]]]:
    """(name, factory) for every learner: a stream gets a fresh learner from each factory."""
    accepted = set(inspect.signature(LinearBandit).parameters)
    out: list[tuple[str, Callable[[], Any]]] = []
    for label, kwargs in [*NBA_CONFIGS, *extra]:
        unknown = set(kwargs) - accepted
        if unknown:
            print(f"{label}: LinearBandit takes no {sorted(unknown)}, left out", file=sys.stderr)
            continue
        out.append((label, lambda label=label, kwargs=kwargs: Ours(label, LinearBandit(**kwargs, seed=seed))))
    out.append(("uniform random", lambda: Ours("uniform random", UniformRandom(seed=seed))))
    if vw_available():
        for label, arguments in (
            ("VW --squarecb", "--cb_explore_adf -q sa --squarecb"),
            (f"VW --epsilon {EPSILON}", f"--cb_explore_adf -q sa --epsilon {EPSILON}"),
        ):
            out.append((label, lambda label=label, arguments=arguments: VowpalWabbit(label, arguments, seed)))
    else:
        print("vowpalwabbit is not installed: VW is left out (pip install -e '.[bench]')", file=sys.stderr)
    try:
        import river.bandit as rb
    except ImportError:
        print("river is not installed: river's LinUCB is left out (pip install -e '.[bench]')", file=sys.stderr)
    else:
        out.append(("river LinUCBDisjoint", lambda: River("river LinUCBDisjoint", rb.LinUCBDisjoint(alpha=1.0, seed=seed))))
    return out


@dataclass
class Result:
    stream: str
    learner: str
    rounds: int
    delay: int
    #: progressive reward: the mean of the rewards drawn
    reward: float
    #: the oracle's expected reward (the mean of the best true mean on offer)
    oracle: float
    #: the mean true mean of the arms chosen: the reward without the coin flips' noise
    true_reward: float
    micros: float
    uniform_ips: float
    uniform_low: float
    uniform_high: float
    uniform_true: float
    propensities_ok: bool
    #: stream-specific numbers (before/after the change, recovery, newcomer share)
    detail: dict[str, Any] = field(default_factory=dict)


def contexts(stream: Stream) -> list[dict[str, float]]:
    """The standardised rows as the dicts every learner takes (built once per stream, outside
    anybody's timing)."""
    names = [f"f{j}" for j in range(stream.X.shape[1])]
    return [dict(zip(names, row, strict=True)) for row in stream.X.tolist()]


def play(
    stream: Stream, learner: Any, seed: int, delay: int = 0, rows: list[dict[str, float]] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Plays the stream once: per decision the arm chosen, its logged probability and the reward
    drawn, and the seconds spent in the learner. Decision t's reward is learned after decision
    t + ``delay`` is made and before the next: with ``delay`` 0, before decision t + 1 (the
    rewards still queued at the end are never delivered)."""
    rng = random.Random(seed)
    rows = contexts(stream) if rows is None else rows
    names = [str(a) for a in range(stream.arms)]
    chosen = np.empty(stream.rounds, dtype=int)
    logged = np.empty(stream.rounds)
    rewards = np.empty(stream.rounds)
    pending: deque[tuple[Callable[[float], None], float]] = deque()
    elapsed = 0.0
    for t in range(stream.rounds):
        arms = [names[a] for a in stream.available(t)]
        started = time.perf_counter()
        arm, p, learn = learner.play(rows[t], arms, rng)
        elapsed += time.perf_counter() - started
        a = int(arm)
        reward = 1.0 if stream.coins[t] < stream.means[t, a] else 0.0
        chosen[t], logged[t], rewards[t] = a, p, reward
        pending.append((learn, reward))
        while len(pending) > delay:
            learn, reward = pending.popleft()
            started = time.perf_counter()
            learn(reward)
            elapsed += time.perf_counter() - started
    return chosen, logged, rewards, elapsed


def propensity_check(stream: Stream, logged: np.ndarray, rewards: np.ndarray) -> tuple[float, float, float, float]:
    """The IPS estimate of uniform random's value from the log, its 95% interval, and the true
    value (the mean of the true means on offer). An empirical Bernstein interval (Maurer &
    Pontil, 2009): importance weights are heavy tailed, and a normal interval is far too narrow
    when the rare large weights were not drawn; this one widens with the largest weight seen,
    and stays tight for learners whose weights are small (a deterministic policy logging 1)."""
    offered = (stream.joins[None, :] <= np.arange(stream.rounds)[:, None]).sum(axis=1)
    terms = (1.0 / offered) / logged * rewards
    n = len(terms)
    mean, variance = float(terms.mean()), float(terms.var(ddof=1))
    log_term = math.log(2 / 0.05)
    half = math.sqrt(2 * variance * log_term / n) + 7 * float(terms.max()) * log_term / (3 * (n - 1))
    return mean, mean - half, mean + half, float(stream.uniform_means().mean())


def details(stream: Stream, chosen: np.ndarray, rewards: np.ndarray) -> dict[str, Any]:
    """The numbers that matter for the stream's adversity. Window figures use the true means of
    the arms chosen (not the coin flips), so a 400-decision window is not dominated by noise."""
    if stream.event < 0:
        return {}
    t = np.arange(stream.rounds)
    earned = stream.means[t, chosen]
    oracle = stream.oracle_means()
    best = stream.oracle_arms()
    e = stream.event
    out: dict[str, Any] = {"event": e, "before": float(rewards[:e].mean()), "after": float(rewards[e:].mean())}
    if stream.name == "change":
        lo, hi = e + RECOVERY[0], min(e + RECOVERY[1], stream.rounds)
        if hi > lo:
            out["recovery_share_of_oracle"] = float(earned[lo:hi].mean() / oracle[lo:hi].mean())
            out["recovery_new_best_chosen"] = float((chosen[lo:hi] == best[lo:hi]).mean())
        windows = {}
        for start, end in AFTER_WINDOWS:
            lo, hi = e + start, stream.rounds if end is None else min(e + end, stream.rounds)
            if hi > lo:
                windows[f"{start}-{'end' if end is None else end}"] = float(earned[lo:hi].mean())
        out["after_windows_true_reward"] = windows
        out["oracle_after"] = float(oracle[e:].mean())
    if stream.name == "newcomers":
        hi = min(e + NEWCOMER_WINDOW, stream.rounds)
        newcomer = stream.joins[chosen[e:hi]] == e
        out["newcomer_share"] = float(newcomer.mean())
        out["newcomer_share_oracle"] = float((stream.joins[best[e:hi]] == e).mean())
    return out


def run(
    stream: Stream, learner: Any, seed: int, delay: int = 0, name: str | None = None, rows: list[dict[str, float]] | None = None
) -> Result:
    chosen, logged, rewards, elapsed = play(stream, learner, seed, delay, rows)
    ips, low, high, true = propensity_check(stream, logged, rewards)
    true_reward = float(stream.means[np.arange(stream.rounds), chosen].mean())
    return Result(
        name or stream.name,
        learner.name,
        stream.rounds,
        delay,
        float(rewards.mean()),
        float(stream.oracle_means().mean()),
        true_reward,
        elapsed / stream.rounds * 1e6,
        ips,
        low,
        high,
        true,
        low <= true <= high,
        details(stream, chosen, rewards),
    )


@dataclass
class Column:
    header: str
    value: Callable[[dict[str, Result]], float | None]
    #: "max" or "min": which end is bold; a number: the closest to it is bold; None: nothing bold
    best: str | float | None
    fmt: str = "{:.3f}"


def columns(classification: list[str]) -> list[Column]:
    def reward(name: str) -> Callable[[dict[str, Result]], float | None]:
        return lambda rows: rows[name].reward if name in rows else None

    def detail(stream: str, key: str) -> Callable[[dict[str, Result]], float | None]:
        return lambda rows: rows[stream].detail.get(key) if stream in rows else None

    def cost(rows: dict[str, Result]) -> float | None:
        # on true rewards: a difference of two runs' coin flips would be noise of about
        # ±0.005 over 20,000 decisions, as large as the costs being compared
        if "stationary" in rows and "delayed" in rows:
            return rows["stationary"].true_reward - rows["delayed"].true_reward
        return None

    out = [Column(name, reward(name), "max") for name in classification]
    out += [
        Column("stationary", reward("stationary"), "max"),
        Column("change: before", detail("change", "before"), "max"),
        Column("change: after", detail("change", "after"), "max"),
        Column("recovery: reward / oracle", detail("change", "recovery_share_of_oracle"), "max", "{:.0%}"),
        Column("recovery: new best chosen", detail("change", "recovery_new_best_chosen"), "max", "{:.0%}"),
        Column("newcomers", reward("newcomers"), "max"),
        Column("newcomer share (first 500)", detail("newcomers", "newcomer_share"), 0.5, "{:.0%}"),
        Column(f"delayed {DELAY}", reward("delayed"), "max"),
        Column("delay cost", cost, "min", "{:+.3f}"),
        # over all the decisions of the run, so a 150-row data set weighs as little as it is long
        Column(
            "µs / decision",
            lambda rows: sum(r.micros * r.rounds for r in rows.values()) / sum(r.rounds for r in rows.values()),
            "min",
            "{:,.0f}",
        ),
    ]
    return out


def markdown(results: list[Result], classification: list[str], baseline: str = "uniform random") -> str:
    """One row per learner. Bold: the best among the learners that learn (uniform random, the
    baseline, trivially has no delay cost and the fewest microseconds)."""
    names = list(dict.fromkeys(r.learner for r in results))
    by_learner = {n: {r.stream: r for r in results if r.learner == n} for n in names}
    cols = columns(classification)
    head = "| learner | " + " | ".join(c.header for c in cols) + " | propensities |"
    lines = [head, "| --- |" + " ---: |" * len(cols) + " --- |"]
    values = {n: [c.value(by_learner[n]) for c in cols] for n in names}
    for name in names:
        cells = []
        for j, col in enumerate(cols):
            v = values[name][j]
            if v is None:
                cells.append("")
                continue
            text = col.fmt.format(v)
            rivals = [values[n][j] for n in names if n != baseline and values[n][j] is not None]
            if col.best is not None and name != baseline and rivals:
                if col.best == "max":
                    target = max(rivals)
                elif col.best == "min":
                    target = min(rivals)
                else:
                    target = min(rivals, key=lambda r, b=col.best: abs(r - b))
                near = (
                    abs(v - target) < 1e-9
                    if col.best in ("max", "min")
                    else abs(abs(v - col.best) - abs(target - col.best)) < 1e-9
                )
                if near:
                    text = f"**{text}**"
            cells.append(text)
        rows = by_learner[name].values()
        ok = sum(r.propensities_ok for r in rows)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ok}/{len(rows)} pass |")
    return "\n".join(lines)


def windows_markdown(results: list[Result]) -> str:
    """The change stream after the change, window by window (mean true reward of the arms chosen)."""
    change = [r for r in results if r.stream == "change" and "after_windows_true_reward" in r.detail]
    if not change:
        return ""
    keys = list(change[0].detail["after_windows_true_reward"])
    lines = ["| learner | " + " | ".join(f"{k}" for k in keys) + " |", "| --- |" + " ---: |" * len(keys)]
    for r in change:
        w = r.detail["after_windows_true_reward"]
        lines.append(f"| {r.learner} | " + " | ".join(f"{w[k]:.3f}" for k in keys) + " |")
    lines.append("| oracle | " + " | ".join(f"{change[0].detail['oracle_after']:.3f}" for _ in keys) + " |")
    return "\n".join(lines)


def parse_config(text: str) -> tuple[str, dict[str, Any]]:
    label, _, kwargs = text.partition("=")
    value = json.loads(kwargs or "{}")
    if not label or not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected LABEL=JSON-OBJECT, got {text!r}")
    return label, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=20_000,
        help="decisions in each adversity stream (default 20000; at least 4000 for the recovery window)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 4000-decision adversity streams, data sets cut to 1000 rows"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--nba",
        type=parse_config,
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="another nba configuration: LinearBandit keyword arguments, e.g. 'forget 0.99={\"forget\": 0.99}'",
    )
    parser.add_argument("--out", default="loadtests/results/bench_learning.json")
    args = parser.parse_args(argv)
    rounds, cut = (4000, 1000) if args.quick else (args.rounds, None)
    from threadpoolctl import threadpool_limits

    # One BLAS thread for everybody: the learners' matrices are small, and a multi-threaded
    # BLAS spends more waking threads than computing (and VW does not use it at all).
    threadpool_limits(limits=1, user_api="blas")
    started = time.perf_counter()
    classification = classification_streams(args.seed, cut)
    adversity = adversity_streams(rounds, args.seed)
    stationary = next(s for s in adversity if s.name == "stationary")
    plan = [(s, 0, s.name) for s in classification] + [(s, 0, s.name) for s in adversity]
    plan.append((stationary, DELAY, "delayed"))
    factories = learners(args.seed, args.nba)
    results: list[Result] = []
    configurations = {name: factory().describe() for name, factory in factories}
    print("features: standardised for all (z-score on each stream, clipped at ±5); every data set played once")
    for stream, delay, name in plan:
        rows = contexts(stream)
        for _, factory in factories:
            learner = factory()
            r = run(stream, learner, args.seed, delay, name, rows)
            results.append(r)
            extra = " ".join(f"{k} {v:.3f}" for k, v in r.detail.items() if isinstance(v, float))
            print(
                f"{name:14} {r.learner:32} reward {r.reward:.3f} (true {r.true_reward:.3f}, oracle {r.oracle:.3f}) {r.micros:7.1f} µs  "
                f"uniform by IPS {r.uniform_ips:.3f} [{r.uniform_low:.3f}, {r.uniform_high:.3f}] (true {r.uniform_true:.3f}) "
                f"{'ok' if r.propensities_ok else 'WRONG PROPENSITIES'} {extra}",
                flush=True,
            )
    wall = time.perf_counter() - started
    names = [s.name for s in classification]
    table = markdown(results, names)
    after = windows_markdown(results)
    print()
    print("features: standardised for all; single pass, no replays")
    print(table)
    print()
    print("change stream, mean true reward in windows of decisions after the change:")
    print(after)
    print(f"\nwall time {wall:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "features": "standardised for all (z-score on the stream, clipped at ±5)",
                "passes": 1,
                "adversity_rounds": rounds,
                "dataset_cut": cut,
                "seed": args.seed,
                "delay": DELAY,
                "recovery_window": RECOVERY,
                "newcomer_window": NEWCOMER_WINDOW,
                "wall_seconds": wall,
                "nba_defaults": LinearBandit().hyperparameters(),
                "learners": configurations,
                "machine": platform.platform(),
                "python": platform.python_version(),
                "versions": versions(),
                "streams": {s.name: s.description for s in [*classification, *adversity]},
                "results": [asdict(r) for r in results],
                "markdown": table,
                "after_change_markdown": after,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("numpy", "scikit-learn", "river", "vowpalwabbit"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
