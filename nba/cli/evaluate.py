"""``nba evaluate``: what other policies would have earned, from the decision log."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from nba.cli.common import (
    EXIT_FAILED,
    MAX_BOOTSTRAP,
    CliError,
    _check_database_url,
    _database_errors,
    _date,
    _open_existing,
    _readable_file,
    _safe_url,
    _settings,
    _writable_file,
    _write_text,
)
from nba.errors import PolicySetError


def _default_report(args: argparse.Namespace, database_url: str | None) -> Path:
    """Beside the log it reads, never in the working tree by surprise: LOG.evaluation.html for
    a file, beside a SQLite database (var/nba.evaluation.html), var/evaluation.html otherwise."""
    if args.log:
        return Path(args.log).with_suffix(".evaluation.html")
    if database_url is not None:
        parsed = _check_database_url(database_url)
        if parsed.get_backend_name() == "sqlite":
            return Path(parsed.database).with_suffix(".evaluation.html")
    return Path("var") / "evaluation.html"


def _evaluate(args: argparse.Namespace) -> int:
    from nba.evaluation import evaluate, from_jsonl, from_store, parse_target
    from nba.evaluation.logs import REWARD_LIMIT, LogError
    from nba.evaluation.report import html_report, table
    from nba.evaluation.reward_model import RewardModel
    from nba.evaluation.sources import read_offers
    from nba.evaluation.truth import Truth

    if not 1 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise CliError(f"--bootstrap: {args.bootstrap}: 1 to {MAX_BOOTSTRAP} resamples")
    if args.seed < 0:
        raise CliError(f"--seed: {args.seed}: 0 or more")
    if not math.isfinite(args.default_reward) or abs(args.default_reward) > REWARD_LIMIT:
        raise CliError(f"--default-reward: {args.default_reward}: a finite number within ±{REWARD_LIMIT:,.0f}")
    if args.refits != 0 and not 2 <= args.refits <= MAX_BOOTSTRAP:
        raise CliError(f"--refits: {args.refits}: 0 (the reward model held fixed) or 2 to {MAX_BOOTSTRAP}")
    reward_range = _reward_range(args.reward_range, REWARD_LIMIT) if args.reward_range else None
    specs = args.policy or ["logged", "uniform", "popular", "learner"]
    for spec in specs:  # a file: policy's file is checked as any file named on the command line
        unlabelled = spec.split("=", 1)[1] if "=" in spec.split(":", 1)[0] else spec
        kind, _, path = unlabelled.partition(":")
        if kind == "file" and path:
            try:
                _readable_file(path, "--policy")
            except CliError as exc:
                raise CliError(str(exc).replace(f"--policy {path}:", f"--policy {spec}:", 1)) from None
    try:
        targets = [parse_target(spec) for spec in specs]
    except LogError:
        raise  # a line of a file: policy that breaks its format: a data error, as a log line's
    except OSError as exc:
        raise CliError(f"--policy: {exc}") from None
    except PolicySetError as exc:
        raise CliError(f"--policy: the draft is not a valid policy set: {'; '.join(str(p) for p in exc.problems)}") from None
    except ValueError as exc:
        raise CliError(f"--policy {exc}") from None
    since, until = _date(args.since, "--since"), _date(args.until, "--until")
    truth = None
    if args.truth:
        try:
            truth = Truth.load(_readable_file(args.truth, "--truth"))
        except (OSError, ValueError) as exc:
            raise CliError(f"--truth {args.truth}: {exc}") from None
    database_url = None if args.log else _settings(args).database_url
    html_path = (
        _writable_file(args.html, "--html")
        if args.html
        else _writable_file(_default_report(args, database_url), "--html", make_folder=True)
    )
    json_path = _writable_file(args.json, "--json") if args.json else None
    offers = read_offers(_readable_file(args.offers, "--offers")) if args.offers else None
    if args.log:
        decisions = from_jsonl(_readable_file(args.log, "--log"), args.default_reward, include_open=True, offers=offers)
        decisions = [d for d in decisions if (since is None or d.decided_at >= since) and (until is None or d.decided_at < until)]
        source = args.log
    else:
        assert database_url is not None
        from nba.storage.store import Store

        store = Store(_open_existing(database_url))
        refused: list[LogError] = []
        with _database_errors(database_url):
            decisions = from_store(store, since, until, True, args.default_reward, refused, offers)
        store.engine.dispose()
        source = _safe_url(database_url)
        if refused:
            print(
                f"warning: {len(refused)} logged decisions break the logged-data contract and are left out "
                f"(stored by an older version, or before a range was narrowed); the first: {refused[0]}",
                file=sys.stderr,
            )
    still_open = sum(1 for d in decisions if d.open)
    if still_open and not args.include_open:
        closed = [d for d in decisions if not d.open]
        if closed:
            print(
                f"note: {still_open} decisions whose reward windows are still open are left out "
                "(--include-open counts their missing outcomes as --default-reward)",
                file=sys.stderr,
            )
            decisions = closed
        else:
            print(
                f"note: no decision's reward windows have closed yet: evaluating all {still_open}, with every outcome "
                f"not reported yet counted as --default-reward ({args.default_reward:g}); the figures are final once "
                "the windows close (--include-open makes this choice explicit)",
                file=sys.stderr,
            )
    if not decisions:
        raise CliError(
            f"no logged decisions to evaluate in {source}" + (" between --since and --until" if since or until else ""),
            EXIT_FAILED,
        )
    curves: dict[str, Any] = {}
    if reward_range is not None:
        outside = [r for d in decisions for r in d.rewards.values() if not reward_range[0] <= r <= reward_range[1]]
        if outside:
            raise CliError(f"--reward-range {args.reward_range}: the log has a reward of {outside[0]:g}, outside it", EXIT_FAILED)
    model = RewardModel(decisions, reward_range=reward_range, offers=offers)
    estimates = evaluate(
        decisions,
        targets,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        truth=truth,
        curves=curves,
        refits=args.refits,
        reward_model=model,
    )
    print(f"{len(decisions)} decisions from {source}")
    print(table(estimates))
    brier, constant = model.brier()
    print(
        f"\nDM and DR's reward model: held-out Brier score {brier:.6g} (a constant's: {constant:.6g}; "
        f"rewards scaled to [0, 1] from [{model.low:g}, {model.high:g}])"
    )
    _write_text(html_path, html_report(estimates, decisions, curves, source), "--html")
    print(f"\nreport: {html_path}")
    if json_path is not None:
        _write_text(json_path, json.dumps([vars(e) for e in estimates], indent=2, default=str), "--json")
    return 0


def _reward_range(text: str, limit: float) -> tuple[float, float]:
    """``LOW,HIGH`` of --reward-range, or a CliError."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise CliError(f"--reward-range {text}: give LOW,HIGH, for example 0,1") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not -limit <= low < high <= limit:
        raise CliError(f"--reward-range {text}: LOW below HIGH, both finite within ±{limit:,.0f}")
    return low, high
