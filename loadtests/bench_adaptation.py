"""What adaptation costs and buys, over many seeds: nba's learner with the service's defaults
against the same settings with adaptation off, on every stream of the learning benchmark.

One run of ``bench_learning.py`` plays each stream once with one seed, and one seed moves a
multiclass stream's reward by a point or two either way (which rows come first, which arm a
coin flip tries): too much to judge a 1-point criterion on. This plays every stream with
``--seeds`` seeds (each seed a new shuffle of each data set, new synthetic streams and new coin
flips), and reports per stream the mean over seeds with the lowest and highest run, and the
difference between the two configurations in points of reward (seed by seed, then averaged).

    make bench-adaptation          # or: python loadtests/bench_adaptation.py [--seeds 1-8] [--jobs 2]

Needs the `bench` extra (scikit-learn builds the data sets).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import DELAY, NBA_CONFIGS, NEWCOMER_WINDOW, RECOVERY, Ours, parse_config, run
from learning_streams import adversity_streams, classification_streams

from bandit import LinearBandit

#: the figures reported per stream: (key in a run's figures, label, format)
FIGURES = [
    ("recovery", f"new best offer's share of first slots {RECOVERY[0]:,}-{RECOVERY[1]:,} decisions after the change", "pct"),
    ("newcomer_share", f"newcomers' share of their first {NEWCOMER_WINDOW} decisions", "pct"),
    ("delay_cost", f"cost of feedback {DELAY} decisions late (stationary minus delayed)", "reward"),
]


def seeds_of(text: str) -> list[int]:
    """``"1-8"`` or ``"1,2,5"``: the seeds, in order."""
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-", 1))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds as 1-8 or 1,2,5, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds


def one_seed(configs: list[tuple[str, dict[str, Any]]], seed: int, rounds: int, cut: int | None) -> dict[str, dict[str, float]]:
    """Every configuration on every stream with one seed: {label: {figure: value}}. A
    stream's figure is the mean true reward of the arms chosen (no coin-flip noise)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    streams = classification_streams(seed, cut) + adversity_streams(rounds, seed)
    out: dict[str, dict[str, float]] = {label: {} for label, _ in configs}
    for stream in streams:
        for label, kwargs in configs:
            r = run(stream, Ours(label, LinearBandit(**kwargs, seed=seed)), seed)
            figures = out[label]
            figures[stream.name] = r.true_reward
            if "recovery_new_best_chosen" in r.detail:
                figures["recovery"] = r.detail["recovery_new_best_chosen"]
            if "newcomer_share" in r.detail:
                figures["newcomer_share"] = r.detail["newcomer_share"]
            if stream.name == "stationary":
                delayed = run(stream, Ours(label, LinearBandit(**kwargs, seed=seed)), seed, DELAY, "delayed")
                figures["delay_cost"] = r.true_reward - delayed.true_reward
    return out


def summary(results: dict[int, dict[str, dict[str, float]]], configs: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{figure: {config: {mean, min, max}}} over the seeds, and for every configuration after
    the first the first's mean difference from it, seed by seed (``difference``: what the
    first gains, or loses when negative)."""
    seeds = sorted(results)
    figures = list(results[seeds[0]][configs[0]])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for figure in figures:
        row: dict[str, dict[str, float]] = {}
        base = np.array([results[s][configs[0]][figure] for s in seeds])
        for config in configs:
            values = np.array([results[s][config][figure] for s in seeds])
            row[config] = {
                "mean": float(values.mean()),
                "min": float(values.min()),
                "max": float(values.max()),
                "difference": float((base - values).mean()),
            }
        out[figure] = row
    return out


def markdown(table: dict[str, dict[str, dict[str, float]]], configs: list[str], seeds: list[int]) -> str:
    """Rows: the streams' mean true reward, then the adversities' figures; a column per
    configuration (mean over seeds, lowest to highest run), and the first's difference from
    each later one."""
    labels = {key: label for key, label, _ in FIGURES}
    kinds = {key: kind for key, _, kind in FIGURES}

    def cell(value: dict[str, float], kind: str) -> str:
        if kind == "pct":
            return f"{value['mean']:.0%} ({value['min']:.0%}-{value['max']:.0%})"
        return f"{value['mean']:.3f} ({value['min']:.3f}-{value['max']:.3f})"

    head = ["", *[f"{c} (mean, lowest-highest)" for c in configs], *[f"{configs[0]} minus {c}" for c in configs[1:]]]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    streams = [f for f in table if f not in labels]
    for figure in [*streams, *[key for key, _, _ in FIGURES if key in table]]:
        kind = kinds.get(figure, "reward")
        name = labels.get(figure, f"{figure}: mean true reward")
        diffs = []
        for c in configs[1:]:
            d = table[figure][c]["difference"]
            diffs.append(f"{d * 100:+.0f} pts" if kind == "pct" else f"{d * 100:+.1f} pts")
        lines.append("| " + " | ".join([name, *[cell(table[figure][c], kind) for c in configs], *diffs]) + " |")
    return "\n".join(lines) + f"\n\n{len(seeds)} seeds ({seeds[0]}-{seeds[-1]}); points are hundredths of reward (or of a share)."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=seeds_of, default=seeds_of("1-8"), help="seeds, as 1-8 or 1,2,5 (default 1-8)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=20_000,
        help="decisions in each adversity stream (default 20000; at least 4000 for the recovery window)",
    )
    parser.add_argument("--quick", action="store_true", help="4000-decision adversity streams, data sets cut to 1000 rows")
    parser.add_argument("--jobs", type=int, default=2, help="seeds played at once, one process each (default 2)")
    parser.add_argument(
        "--nba",
        type=parse_config,
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="another configuration, compared with the defaults like the one without adaptation",
    )
    parser.add_argument("--out", default="loadtests/results/bench_adaptation.json")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    rounds, cut = (4000, 1000) if args.quick else (args.rounds, None)
    if rounds < RECOVERY[1] * 2:
        parser.error(f"--rounds must be at least {RECOVERY[1] * 2} for the recovery window, got {rounds}")
    configs = [*NBA_CONFIGS[:2], *args.nba]
    labels = [label for label, _ in configs]
    started = time.perf_counter()
    results: dict[int, dict[str, dict[str, float]]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {seed: pool.submit(one_seed, configs, seed, rounds, cut) for seed in args.seeds}
        for seed, future in futures.items():
            results[seed] = future.result()
            print(
                f"seed {seed}: "
                + "; ".join(
                    f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[seed][label].items()) for label in labels
                ),
                flush=True,
            )
    wall = time.perf_counter() - started
    table = summary(results, labels)
    text = markdown(table, labels, args.seeds)
    print()
    print(text)
    print(f"\nwall time {wall:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "seeds": args.seeds,
                "adversity_rounds": rounds,
                "dataset_cut": cut,
                "configs": dict(configs),
                "wall_seconds": wall,
                "machine": platform.platform(),
                "python": platform.python_version(),
                "per_seed": {str(s): r for s, r in results.items()},
                "summary": table,
                "markdown": text,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
