"""``nba policies validate|test|preview|schema``: a policy set checked before it is published."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nba.cli.common import DATABASE_FLAG, EXIT_FAILED, CliError, _database_errors, _open_existing, _safe_url, _settings
from nba.errors import PolicySetError

_DIR_MEANING = {
    "validate": "the policy set's folder (default: policies)",
    "test": "the policy set's folder, with its *_test.yaml examples (default: policies)",
    "preview": "the draft's folder: copy the live set and edit it (cp -r policies drafts)",
}


def _policies(args: argparse.Namespace) -> int:
    from nba.evaluation.examples import check_examples, load_examples
    from nba.policy.loading import load_policy_set

    if args.action == "schema":
        from nba.policy.policy_set import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    directory = Path(args.dir)
    if not directory.is_dir():
        raise CliError(f"policies {args.action}: {args.dir} is not a folder; DIR is {_DIR_MEANING[args.action]}")
    if args.action == "preview" and not 1 <= args.last <= 100_000:
        raise CliError(f"--last: {args.last}: replay 1 to 100000 logged decisions")
    try:
        policy_set = load_policy_set(directory)
    except PolicySetError as exc:
        for problem in exc.problems:
            print(f"{problem.severity}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{directory}: {len(policy_set.offers)} offers, {len(policy_set.policies)} policies on "
        f"{len(policy_set.channels)} channels ({', '.join(policy_set.channels)}), content {policy_set.content_hash[:12]}"
    )
    for warning in policy_set.warnings:
        print(f"warning: {warning}")
    if args.action == "validate":
        return 0
    if args.action == "preview":
        return _preview(args, policy_set)
    try:
        examples = load_examples(directory)
    except PolicySetError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    failures = check_examples(policy_set, examples)
    for line in failures:
        print(f"FAIL {line}")
    failed = {line.split(": ")[1] for line in failures}
    print(f"{len(examples) - len(failed)}/{len(examples)} examples pass")
    return EXIT_FAILED if failures else 0


def _preview(args: argparse.Namespace, draft: Any) -> int:
    from nba.evaluation.preview import preview
    from nba.learning.loop import LearningLoop, build_learner
    from nba.policy.loading import parse_policy_set
    from nba.storage.store import Store

    settings = _settings(args)
    store = Store(_open_existing(settings.database_url))
    with _database_errors(settings.database_url):
        live_row = store.live_activation()
        if live_row is None:
            raise CliError(
                f"nothing is live in {_safe_url(settings.database_url)} yet: start the service on it "
                f"once (or publish), or check {DATABASE_FLAG}"
            )
        live = parse_policy_set(live_row.files)
        live.number = live_row.version
        learning = LearningLoop(build_learner(settings), reward_range=settings.reward_range)
        learning.restore(store, settings.seed)
        report = preview(live, draft, store.recent_lines(args.last), learning, lambda: build_learner(settings))
    print(f"replayed {report.decisions} decisions against live {report.live_version} and the draft")
    for name, estimate in (("live", report.live_value), ("draft", report.draft_value)):
        if estimate is not None:
            print(
                f"value of the {name:5} set: {estimate.value:.4f} [{estimate.low:.4f}, {estimate.high:.4f}] "
                f"(doubly robust, 95% interval, effective sample size {estimate.ess:.0f})"
            )
            for warning in estimate.warnings:
                print(f"  warning: {warning}")
    print(f"{'':24}{'live':>10}{'draft':>10}")
    for name in ("fallback_rate", "empty_rate", "rule_error_rate", "mean_eligible"):
        print(f"{name:24}{getattr(report.live, name):>10.3f}{getattr(report.draft, name):>10.3f}")
    print()
    print(f"{'offer':28}{'eligible live':>14}{'draft':>8}{'share live':>12}{'draft':>8}  change")
    for o in report.offers:
        print(
            f"{o.offer_id:28}{o.live_eligible_rate:>14.1%}{o.draft_eligible_rate:>8.1%}"
            f"{o.live_share:>12.1%}{o.draft_share:>8.1%}  {o.change}"
        )
    print(f"\nnote: {report.note}")
    return 0
