"""The ``nba`` command's parser, and the one place a failure becomes a line on stderr and an exit
code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from nba.cli.common import EXIT_BUG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError, _add_settings_flags, _Parser
from nba.cli.db import _db
from nba.cli.evaluate import _evaluate
from nba.cli.export import _export
from nba.cli.feedback import _feedback
from nba.cli.policies import _policies
from nba.cli.profiles import _profiles
from nba.cli.serve import _serve
from nba.cli.simulate import _simulate
from nba.config import ConfigError
from nba.errors import FailedPrecondition, InvalidArgument, NotFound, PolicySetError, SchemaError


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="nba",
        description="Next-best-action decisioning service.",
        epilog="exit codes: 0 success, 1 what was checked failed, 2 usage or configuration, "
        "3 a database, port or service unavailable, 70 a bug",
    )
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
        "--policy",
        action="append",
        help="a policy to evaluate, repeatable: logged, uniform, popular, learner[:k=v,...], draft:DIR, "
        "file:PATH (per-decision probabilities, JSON Lines) (name=... to label it; default: logged, uniform, "
        "popular, learner)",
    )
    evaluate.add_argument("--offers", help="offer features for the reward model: JSON Lines of offer_id and features")
    evaluate.add_argument(
        "--refits",
        type=int,
        default=20,
        help="bootstrap refits of the reward model behind DM's interval (default 20; 0: held fixed)",
    )
    evaluate.add_argument(
        "--reward-range",
        dest="reward_range",
        help="LOW,HIGH: the rewards' range, which the reward model predicts within "
        "(default: the log's smallest and largest reward; --reward-range=-1,3 when LOW is negative)",
    )
    evaluate.add_argument("--since", help="only decisions at or after this time (ISO 8601)")
    evaluate.add_argument("--until", help="only decisions before this time (ISO 8601)")
    evaluate.add_argument("--include-open", action="store_true", help="include decisions whose reward windows are still open")
    evaluate.add_argument(
        "--default-reward", type=float, default=0.0, help="reward of a shown offer with no feedback (default 0)"
    )
    evaluate.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the intervals (default 500)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the replayed learners")
    evaluate.add_argument("--truth", help="truth.json from nba simulate: report each policy's true value too")
    evaluate.add_argument("--html", help="where to write the HTML report (default: beside the log)")
    evaluate.add_argument("--json", help="also write the estimates as JSON here")
    evaluate.set_defaults(run=_evaluate)

    feedback = commands.add_parser("feedback", help="feedback: import a campaign tool's file of responses into a running service")
    feedback.add_argument("action", choices=["import"], help="import: send FILE's events by FeedbackBatch, a report line each")
    feedback.add_argument(
        "file", help="CSV (.csv, with a header) or JSON Lines: event_id, decision_id, offer_id, outcome[, reward, occurred_at]"
    )
    feedback.add_argument("--address", default="localhost:50051", help="the service (default localhost:50051)")
    feedback.add_argument("--report", help="where to write the report, a JSON line per line of FILE (default: FILE.report.jsonl)")
    feedback.add_argument("--batch", type=int, default=500, help="events a call (default 500, at most 1000)")
    feedback.add_argument("--quiet", action="store_true", help="no progress bar")
    feedback.set_defaults(run=_feedback)

    simulate = commands.add_parser("simulate", help="drive a running service with a synthetic population")
    simulate.add_argument("--address", default="localhost:50051", help="the service (default localhost:50051)")
    simulate.add_argument("--decisions", type=int, default=10_000, help="how many (default 10000)")
    simulate.add_argument("--population", help="a population YAML file (default: one for the sample policy set)")
    simulate.add_argument(
        "--drift-at", type=float, default=0.5, help="share of the run after which preferences change (default 0.5; 1: never)"
    )
    simulate.add_argument(
        "--delay", type=float, default=20.0, help="mean delay of an acceptance or rejection, in decisions (default 20)"
    )
    simulate.add_argument(
        "--reject-rate", type=float, default=0.2, help="share of non-acceptances reported as rejections (default 0.2)"
    )
    simulate.add_argument("--concurrency", type=int, default=4, help="parallel callers (default 4)")
    simulate.add_argument("--block", type=int, default=1000, help="decisions per point of the learning curve (default 1000)")
    simulate.add_argument("--seed", type=int, help="seed of the population and its responses (default: random, printed)")
    simulate.add_argument("--out", default="simulation", help="folder for curve.csv, learning_curve.png, truth.json")
    simulate.add_argument(
        "--no-events",
        dest="events",
        action="store_false",
        help="send no touch-point events to ProfileService before each decision (by default the personas' events are tracked)",
    )
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.set_defaults(run=_simulate)

    policies = commands.add_parser("policies", help="check a policy set")
    policies.add_argument(
        "action",
        choices=["validate", "test", "preview", "schema"],
        help="validate the files, run their *_test.yaml examples, preview them against the live set, "
        "or print the JSON Schema of a policy file",
    )
    policies.add_argument("dir", nargs="?", default="policies", help="policy set folder (default: policies)")
    policies.add_argument("--last", type=int, default=1000, help="preview: logged decisions to replay (default 1000)")
    policies.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    policies.add_argument("--database-url", dest="database_url", help="preview: the decision log (NBA_DATABASE_URL)")
    policies.set_defaults(run=_policies)

    profiles = commands.add_parser(
        "profiles",
        help="customer profiles: import touch-point history, backfill a changed definition, segment sizes and audiences",
    )
    profiles.add_argument(
        "action",
        choices=["import", "backfill", "segments", "segment", "dead-letters", "quality", "forget", "scores"],
        help="import: take a file of events into the profiles; backfill: rebuild every profile stored under "
        "another definition than the live set's, from its events, now (the service does it in the background); "
        "segments: each segment's size, owner and recent entries and exits; segment NAME: its size (--count), "
        "its members (--export FILE) or its size hour by hour (--history); dead-letters: the events the profile "
        "refused, kept (--replay: take them again under the live definition); quality: each attribute's "
        "completeness and the refused events by source; forget CUSTOMER_ID (or --identifier KIND=VALUE): erase a "
        "customer, as ForgetCustomer does; scores: each predictive score's quality so far (AUC, calibration, labels)",
    )
    profiles.add_argument(
        "file", nargs="?", help="import: JSON Lines (one event a line) or CSV (.csv) of events; segment: the segment's name"
    )
    audience = profiles.add_mutually_exclusive_group()
    audience.add_argument("--count", action="store_true", help="segment: print how many customers are in it (the default)")
    audience.add_argument("--export", metavar="FILE", help="segment: write its members to FILE (CSV: customer_id, entered_at)")
    audience.add_argument("--history", action="store_true", help="segment: its entries, exits and size, hour by hour (UTC)")
    profiles.add_argument(
        "--replay", action="store_true", help="dead-letters: apply them under the live definition (those it accepts)"
    )
    profiles.add_argument("--type", dest="event_type", help="dead-letters: only events of this type")
    profiles.add_argument("--identifier", help="forget: the customer by one identifier, KIND=VALUE (email=ada@example.com)")
    profiles.add_argument("--reason", default="", help="forget: why (a ticket number), kept in the audit")
    profiles.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    profiles.add_argument("--database-url", dest="database_url", help="the database (NBA_DATABASE_URL)")
    profiles.add_argument("--policies", help="the policy set whose profile section applies, when none is live yet (NBA_POLICIES)")
    profiles.add_argument(
        "--bus",
        help="import: the running replicas' Redis bus (redis://...; NBA_BUS): they drop the profiles the import changes",
    )
    profiles.add_argument("--bus-stream", dest="bus_stream", help="the bus's Redis stream key (NBA_BUS_STREAM)")
    profiles.set_defaults(run=_profiles)

    db = commands.add_parser(
        "db", help="the database's schema: apply migrations, or show the revision; count the overview's rollups again"
    )
    db.add_argument(
        "action",
        choices=["upgrade", "current", "rollups"],
        help="upgrade: apply every pending migration (safe to run again); current: print the revision; "
        "rollups: count the overview's figures again from the whole decision log (for decisions logged before "
        "revision 0014; stop the service first)",
    )
    db.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    db.add_argument("--database-url", dest="database_url", help="the database (NBA_DATABASE_URL)")
    db.set_defaults(run=_db)

    args = parser.parse_args(argv)
    args.argv = argv
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Runs a command; every failure becomes one line on stderr and its exit code."""
    from nba.evaluation.logs import LogError

    try:
        return int(args.run(args))
    except CliError as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return exc.code
    except (ConfigError, SchemaError) as exc:
        head, _, problems = str(exc).partition(":\n")
        if head == "invalid configuration" and problems:
            text = f"{head}: {'; '.join(p.strip() for p in problems.splitlines())}"
        else:
            text = " ".join(str(exc).split())
        print(f"nba: {text}", file=sys.stderr)
        return EXIT_USAGE
    except (PolicySetError, LogError) as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (InvalidArgument, FailedPrecondition, NotFound) as exc:  # a request the domain refused, naming the field
        print(f"nba: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidArgument) else EXIT_FAILED
    except KeyboardInterrupt:
        print("nba: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line, and the traceback on request
        if os.environ.get("NBA_DEBUG") == "1":
            traceback.print_exc()
        text = " ".join(str(exc).split())[:300]
        print(f"nba: unexpected error ({type(exc).__name__}: {text}); this is a bug: NBA_DEBUG=1 shows where", file=sys.stderr)
        return EXIT_BUG
