"""``nba simulate``: a synthetic population driving a running service."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from nba.cli.common import EXIT_FAILED, EXIT_UNAVAILABLE, CliError, _creatable_folder, _readable_file


def _simulate(args: argparse.Namespace) -> int:
    import random

    from nba.simulation.population import Population
    from nba.simulation.simulator import Simulator, curve_table, write_outputs

    for flag, value, ok, meaning in (
        ("--decisions", args.decisions, args.decisions >= 1, "at least 1"),
        ("--concurrency", args.concurrency, 1 <= args.concurrency <= 256, "1 to 256 callers"),
        ("--block", args.block, args.block >= 1, "at least 1 decision a point"),
        ("--delay", args.delay, math.isfinite(args.delay) and args.delay >= 0, "0 or more decisions"),
        ("--reject-rate", args.reject_rate, 0 <= args.reject_rate <= 1, "a share from 0 to 1"),
        ("--drift-at", args.drift_at, 0 <= args.drift_at <= 1, "a share from 0 to 1 (1: never)"),
    ):
        if not ok:
            raise CliError(f"{flag}: {value}: {meaning}")
    if args.population:
        try:
            population = Population.load(_readable_file(args.population, "--population"))
        except (OSError, ValueError) as exc:
            raise CliError(f"--population {args.population}: {exc}") from None
    else:
        population = Population.load(None)
    out = Path(args.out)
    _creatable_folder(out, "--out")
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    simulator = Simulator(
        args.address,
        population,
        decisions=args.decisions,
        seed=args.seed,
        drift_at=args.drift_at,
        delay=args.delay,
        reject_rate=args.reject_rate,
        concurrency=args.concurrency,
        block=args.block,
        progress=None if args.quiet else sys.stderr,
        events=args.events,
    )
    try:
        result = simulator.run()
    except ConnectionError as exc:
        raise CliError(f"--address {args.address}: {exc}", EXIT_UNAVAILABLE) from None
    except RuntimeError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    print(curve_table(result))
    try:
        paths = write_outputs(result, out)
    except OSError as exc:
        raise CliError(f"--out {args.out}: cannot write: {exc.strerror}") from None
    rate = args.decisions / result.seconds if result.seconds else 0.0
    print(
        f"\n{args.decisions} decisions in {result.seconds:.1f} s ({rate:.0f}/s), seed {args.seed}; "
        f"wrote {', '.join(str(p) for p in paths)}"
    )
    if result.events_tracked or result.events_refused:
        print(f"touch-point events: {result.events_tracked} tracked, {result.events_refused} refused", end="")
        print(f" (the first: {result.first_refusal})" if result.events_refused else "")
    print(f"evaluate it: nba evaluate --include-open --truth {paths[-1]}")
    return 0
