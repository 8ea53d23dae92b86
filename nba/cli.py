"""The ``nba`` command: serve, export the decision log, and check policy sets.

    nba serve [--port 50051] [--policies policies/] [--database-url URL] [...]
    nba export --out decisions.jsonl [--since 2026-11-01] [--until ...] [--database-url URL]
    nba policies validate [DIR]        every error and warning of the set in DIR
    nba policies test [DIR]            run the *_test.yaml examples
    nba policies preview DIR [--last N] [--database-url URL]
                                       what DIR would change against the live set
    nba policies schema                the JSON Schema of a policy file
    nba evaluate [--log FILE.jsonl | --database-url URL] [--policy SPEC ...] [--truth truth.json]
                                       estimate what other policies would have earned
    nba simulate [--address HOST:PORT] [--decisions N] [--population FILE] [--out DIR]
                                       drive a running service with a synthetic population

Exit codes: 0 success, 1 the policy set or an example failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from nba.config import ConfigError, Settings, load_settings
from nba.errors import PolicySetError, SchemaError

__all__ = ["main"]

# Attributes every LogRecord has; anything else was passed in `extra=` and is logged as a field.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation
        default = field.default_factory() if field.default_factory else field.default
        help_text = f"{field.description} (NBA_{name.upper()}; default: {default})"
        choices = get_args(kind) if getattr(kind, "__origin__", None) is not None and str(kind).startswith("typing.Literal") else None
        if kind is bool:  # a switch: --durable-decisions, --no-durable-decisions
            parser.add_argument(flag, dest=name, default=None, help=help_text, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text, choices=choices)


def _settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name, None) for name in Settings.model_fields}
    return load_settings(flags, config_file=args.config)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level, settings.log_format)
    if settings.workers > 1 and settings.worker < 0:
        from nba.supervisor import supervise

        return supervise(settings, sys.argv[1:] if args.argv is None else args.argv)
    from nba.server import Service  # imported late: `nba policies` needs no gRPC code

    service = Service(settings)
    service.start()
    done = threading.Event()

    def _shutdown(signum: int, _frame: Any) -> None:
        logging.getLogger("nba").info("shutting down", extra={"signal": signal.Signals(signum).name})
        done.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    signal.signal(signal.SIGHUP, lambda _s, _f: service.publisher.reload())
    done.wait()
    service.stop()
    return 0


def _export(args: argparse.Namespace) -> int:
    from nba.store import Store, dumps, open_engine

    settings = _settings(args)
    since = _date(args.since, "--since")
    until = _date(args.until, "--until")
    store = Store(open_engine(settings.database_url))
    count = 0
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    try:
        for line in store.export(since, until):
            out.write(dumps(line) + "\n")
            count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} decisions to {args.out}", file=sys.stderr)
    return 0


def _db(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine

    from nba.migrations import current_revision, head_revision, upgrade

    settings = _settings(args)
    engine = create_engine(settings.database_url)
    url = engine.url.render_as_string(hide_password=True)
    try:
        if args.action == "upgrade":
            before, after = upgrade(engine)
            done = "already at" if before == after else f"upgraded from {before or 'an empty database'} to"
            print(f"{url}: {done} revision {after}")
        else:
            current = current_revision(engine)
            print(f"{url}: revision {current or 'none'}; this nba needs {head_revision()}")
    finally:
        engine.dispose()
    return 0


def _date(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is not an ISO date or time (2026-11-01 or 2026-11-01T08:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _policies(args: argparse.Namespace) -> int:
    from nba.examples import check_examples, load_examples
    from nba.policy_set import load_policy_set

    if args.action == "schema":
        from nba.policy_set import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    directory = Path(args.dir)
    try:
        policy_set = load_policy_set(directory)
    except PolicySetError as exc:
        for problem in exc.problems:
            print(f"{problem.severity}: {problem}", file=sys.stderr)
        return 1
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
        return 1
    failures = check_examples(policy_set, examples)
    for line in failures:
        print(f"FAIL {line}")
    failed = {line.split(": ")[1] for line in failures}
    print(f"{len(examples) - len(failed)}/{len(examples)} examples pass")
    return 1 if failures else 0


def _preview(args: argparse.Namespace, draft: Any) -> int:
    from nba.learning import LearningLoop, build_learner
    from nba.policy_set import parse_policy_set
    from nba.preview import preview
    from nba.store import Store, open_engine

    settings = _settings(args)
    store = Store(open_engine(settings.database_url))
    live_row = store.live_activation()
    if live_row is None:
        print("nothing is live in this database yet: start the service once, or publish", file=sys.stderr)
        return 1
    live = parse_policy_set(live_row.files)
    live.number = live_row.version
    learning = LearningLoop(build_learner(settings), reward_range=settings.reward_range)
    learning.restore(store, settings.seed)
    report = preview(live, draft, store.recent_lines(args.last), learning, lambda: build_learner(settings))
    print(f"replayed {report.decisions} decisions against live {report.live_version} and the draft")
    for name, estimate in (("live", report.live_value), ("draft", report.draft_value)):
        if estimate is not None:
            print(f"value of the {name:5} set: {estimate.value:.4f} [{estimate.low:.4f}, {estimate.high:.4f}] "
                  f"(doubly robust, 95% interval, effective sample size {estimate.ess:.0f})")
            for warning in estimate.warnings:
                print(f"  warning: {warning}")
    print(f"{'':24}{'live':>10}{'draft':>10}")
    for name in ("fallback_rate", "empty_rate", "rule_error_rate", "mean_eligible"):
        print(f"{name:24}{getattr(report.live, name):>10.3f}{getattr(report.draft, name):>10.3f}")
    print()
    print(f"{'offer':28}{'eligible live':>14}{'draft':>8}{'share live':>12}{'draft':>8}  change")
    for o in report.offers:
        print(f"{o.offer_id:28}{o.live_eligible_rate:>14.1%}{o.draft_eligible_rate:>8.1%}"
              f"{o.live_share:>12.1%}{o.draft_share:>8.1%}  {o.change}")
    print(f"\nnote: {report.note}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from nba.evaluation import evaluate, from_jsonl, from_store, parse_target
    from nba.evaluation.logs import LogError
    from nba.evaluation.report import html_report, table
    from nba.evaluation.truth import Truth

    try:
        targets = [parse_target(spec) for spec in (args.policy or ["logged", "uniform", "popular", "learner"])]
    except (ValueError, PolicySetError) as exc:
        raise ConfigError(f"--policy {exc}") from None
    since, until = _date(args.since, "--since"), _date(args.until, "--until")
    try:
        if args.log:
            decisions = from_jsonl(args.log, args.default_reward, args.include_open)
            decisions = [d for d in decisions if (since is None or d.decided_at >= since) and (until is None or d.decided_at < until)]
            source = args.log
        else:
            from nba.store import Store, open_engine

            settings = _settings(args)
            decisions = from_store(Store(open_engine(settings.database_url)), since, until, args.include_open, args.default_reward)
            source = settings.database_url
    except (LogError, OSError) as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 1
    if not decisions:
        print("nba: no logged decisions to evaluate" + ("" if args.include_open else
              " (decisions whose reward windows are still open are left out; see --include-open)"), file=sys.stderr)
        return 1
    truth = Truth.load(args.truth) if args.truth else None
    curves: dict[str, Any] = {}
    estimates = evaluate(decisions, targets, n_bootstrap=args.bootstrap, seed=args.seed, truth=truth, curves=curves)
    print(f"{len(decisions)} decisions from {source}")
    print(table(estimates))
    html_path = Path(args.html) if args.html else (Path(args.log).with_suffix(".evaluation.html") if args.log else Path("evaluation.html"))
    html_path.write_text(html_report(estimates, decisions, curves, source), encoding="utf-8")
    print(f"\nreport: {html_path}")
    if args.json:
        Path(args.json).write_text(json.dumps([vars(e) for e in estimates], indent=2, default=str))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import random

    from nba.simulation import Population, Simulator, curve_table, write_outputs

    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    print(f"seed {args.seed}", file=sys.stderr)
    try:
        population = Population.load(args.population)
        simulator = Simulator(
            args.address, population, decisions=args.decisions, seed=args.seed, drift_at=args.drift_at,
            delay=args.delay, reject_rate=args.reject_rate, concurrency=args.concurrency, block=args.block,
            progress=None if args.quiet else sys.stderr,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    try:
        result = simulator.run()
    except (ConnectionError, RuntimeError) as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 1
    print(curve_table(result))
    paths = write_outputs(result, Path(args.out))
    rate = args.decisions / result.seconds if result.seconds else 0.0
    print(f"\n{args.decisions} decisions in {result.seconds:.1f} s ({rate:.0f}/s); wrote {', '.join(str(p) for p in paths)}")
    print(f"evaluate it: nba evaluate --include-open --truth {paths[2]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nba", description="Next-best-action decisioning service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve DecisionService over gRPC")
    _add_settings_flags(serve)
    serve.set_defaults(run=_serve)

    export = commands.add_parser("export", help="write the decision log as JSON Lines")
    export.add_argument("--out", required=True, help="file to write, or - for standard output")
    export.add_argument("--since", help="only decisions at or after this time (ISO 8601)")
    export.add_argument("--until", help="only decisions before this time (ISO 8601)")
    export.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    export.add_argument("--database-url", dest="database_url", help="decision log database (NBA_DATABASE_URL)")
    export.set_defaults(run=_export)

    evaluate = commands.add_parser("evaluate", help="estimate what other policies would have earned, from the log")
    evaluate.add_argument("--log", help="a JSON Lines log (nba export's format, or the minimal one); default: the database")
    evaluate.add_argument("--database-url", dest="database_url", help="the decision log (NBA_DATABASE_URL)")
    evaluate.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    evaluate.add_argument(
        "--policy", action="append",
        help="a policy to evaluate, repeatable: logged, uniform, popular, learner[:k=v,...], draft:DIR "
        "(name=... to label it; default: logged, uniform, popular, learner)",
    )
    evaluate.add_argument("--since", help="only decisions at or after this time (ISO 8601)")
    evaluate.add_argument("--until", help="only decisions before this time (ISO 8601)")
    evaluate.add_argument("--include-open", action="store_true", help="include decisions whose reward windows are still open")
    evaluate.add_argument("--default-reward", type=float, default=0.0, help="reward of a shown offer with no feedback (default 0)")
    evaluate.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the intervals (default 500)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the replayed learners")
    evaluate.add_argument("--truth", help="truth.json from nba simulate: report each policy's true value too")
    evaluate.add_argument("--html", help="where to write the HTML report (default: beside the log)")
    evaluate.add_argument("--json", help="also write the estimates as JSON here")
    evaluate.set_defaults(run=_evaluate)

    simulate = commands.add_parser("simulate", help="drive a running service with a synthetic population")
    simulate.add_argument("--address", default="localhost:50051", help="the service (default localhost:50051)")
    simulate.add_argument("--decisions", type=int, default=10_000, help="how many (default 10000)")
    simulate.add_argument("--population", help="a population YAML file (default: one for the sample policy set)")
    simulate.add_argument("--drift-at", type=float, default=0.5, help="share of the run after which preferences change (default 0.5; 1: never)")
    simulate.add_argument("--delay", type=float, default=20.0, help="mean delay of an acceptance or rejection, in decisions (default 20)")
    simulate.add_argument("--reject-rate", type=float, default=0.2, help="share of non-acceptances reported as rejections (default 0.2)")
    simulate.add_argument("--concurrency", type=int, default=4, help="parallel callers (default 4)")
    simulate.add_argument("--block", type=int, default=1000, help="decisions per point of the learning curve (default 1000)")
    simulate.add_argument("--seed", type=int, help="seed of the population and its responses (default: random, printed)")
    simulate.add_argument("--out", default="simulation", help="folder for curve.csv, learning_curve.png, truth.json")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.set_defaults(run=_simulate)

    policies = commands.add_parser("policies", help="check a policy set")
    policies.add_argument(
        "action", choices=["validate", "test", "preview", "schema"],
        help="validate the files, run their *_test.yaml examples, preview them against the live set, "
        "or print the JSON Schema of a policy file",
    )
    policies.add_argument("dir", nargs="?", default="policies", help="policy set folder (default: policies)")
    policies.add_argument("--last", type=int, default=1000, help="preview: logged decisions to replay (default 1000)")
    policies.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    policies.add_argument("--database-url", dest="database_url", help="preview: the decision log (NBA_DATABASE_URL)")
    policies.set_defaults(run=_policies)

    db = commands.add_parser("db", help="the database's schema: apply migrations, or show the revision")
    db.add_argument("action", choices=["upgrade", "current"],
                    help="upgrade: apply every pending migration (safe to run again); current: print the revision")
    db.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    db.add_argument("--database-url", dest="database_url", help="the database (NBA_DATABASE_URL)")
    db.set_defaults(run=_db)

    args = parser.parse_args(argv)
    args.argv = argv
    if args.command in ("evaluate", "simulate") or (args.command == "policies" and args.action == "preview"):
        from bandit import limit_blas_threads

        limit_blas_threads()
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 2
    except PolicySetError as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 1
    except SchemaError as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
