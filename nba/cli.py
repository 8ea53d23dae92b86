"""The ``nba`` command: serve, export the decision log, and check policy sets.

    nba serve [--port 50051] [--policies policies/] [--database-url URL] [...]
    nba export --out decisions.jsonl [--since 2026-11-01] [--until ...] [--database-url URL]
    nba policies validate [DIR]        every error and warning of the set in DIR
    nba policies test [DIR]            run the *_test.yaml examples
    nba policies preview DIR [--last N] [--database-url URL]
                                       what DIR would change against the live set
    nba policies schema                the JSON Schema of a policy file
    nba evaluate [--log FILE.jsonl | --database-url URL] [--policy SPEC ...] [--offers FILE] [--truth truth.json]
                                       estimate what other policies would have earned
    nba simulate [--address HOST:PORT] [--decisions N] [--population FILE] [--out DIR]
                                       drive a running service with a synthetic population

Every failure is one line on stderr that names what to fix, and one of these exit codes
(README, "Exit codes"):

    0   success
    1   what was checked failed: an invalid policy set, a failing example, a log line that
        breaks the contract, nothing to evaluate, calls that failed during a simulation
    2   usage or configuration: a flag, setting or config file; a file or folder named on the
        command line that is missing, unreadable or malformed; an output that cannot be
        written; a database URL that is malformed, names no nba database, or whose database,
        user or password the server refuses; a --host that is not this machine's; a schema
        that needs `nba db upgrade`
    3   something the command needs is unavailable: the database does not answer, a port is
        in use, no service answers at --address
    70  an unexpected error: a bug (the one line names it; NBA_DEBUG=1 prints the traceback)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, get_args

from nba.config import ConfigError, Settings, load_settings
from nba.errors import PolicySetError, SchemaError

__all__ = ["EXIT_BUG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_BUG = 70
EXIT_INTERRUPTED = 130

DATABASE_FLAG = "--database-url / NBA_DATABASE_URL"
SQLITE_HEADER = b"SQLite format 3\x00"
# beyond this the intervals do not narrow further, and a mistyped count would run for days
MAX_BOOTSTRAP = 100_000


class CliError(Exception):
    """A failure the user can act on: a one-line message naming what to fix, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage of `nba serve` is 150 lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")

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


class TextFormatter(logging.Formatter):
    """For a person at a terminal: time, level, logger, message, then every `extra=` field as
    key=value (the fields carry what the message does not say: which version went live, which
    worker, how many offers)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [(k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")]
        if not fields:
            return text
        head, _, tail = text.partition("\n")  # a traceback stays below the line
        shown = " ".join(f"{k}={_text_value(v)}" for k, v in fields)
        return f"{head} {shown}" + (f"\n{tail}" if tail else "")


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text and " " not in text and "=" not in text else json.dumps(text)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every migration context it sets up (a dozen lines per process):
    # nba.migrations says what matters ("created the database schema").
    logging.getLogger("alembic").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} (NBA_{name.upper()}; default: {default})"
        choices = get_args(kind) if getattr(kind, "__origin__", None) is not None and str(kind).startswith("typing.Literal") else None
        if kind is bool:  # a switch: --durable-decisions, --no-durable-decisions
            parser.add_argument(flag, dest=name, default=None, help=help_text, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text, choices=choices)


def _settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name, None) for name in Settings.model_fields}
    return load_settings(flags, config_file=args.config)


# Files, folders and databases named on the command line ---------------------------------


def _readable_file(path: str, flag: str) -> Path:
    """A file to read, or a CliError saying why it cannot be."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{flag} {path}: is a folder; name a file")
    if not p.is_file():
        raise CliError(f"{flag} {path}: no such file")
    if not os.access(p, os.R_OK):
        raise CliError(f"{flag} {path}: not readable (permission denied)")
    return p


def _writable_file(path: str | Path, flag: str, make_folder: bool = False) -> Path:
    """A file that can be written (checked before a long run, not after), or a CliError."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{flag} {path}: is a folder; name a file")
    folder = p.parent
    if make_folder:  # created when written, not before: a failed command leaves nothing behind
        _creatable_folder(folder, flag)
        return p
    if not folder.is_dir():
        raise CliError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise CliError(f"{flag} {path}: not writable (permission denied)")
    return p


def _write_text(path: Path, text: str, flag: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{flag} {path}: cannot write: {exc.strerror}") from None


def _shown(path: Path) -> str:
    """A path as given, and where it lands when relative (sqlite:/// takes a relative path;
    sqlite://// an absolute one)."""
    return str(path) if path.is_absolute() else f"{path} (relative: {path.resolve()})"


def _creatable_folder(path: Path, flag: str) -> None:
    """A folder that exists and is writable, or could be created: checked before a long run."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise CliError(f"{flag} {path}: cannot create the folder: {probe} is a file")
    if not os.access(probe, os.W_OK):
        raise CliError(f"{flag} {path}: not writable (permission denied)")


def _sqlite_file(path: Path) -> None:
    """Refuses a file that exists but is not a SQLite database (before anything touches it)."""
    if path.is_file():
        with path.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise CliError(f"{DATABASE_FLAG}: {path} is not a SQLite database")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the database URL"


def _check_database_url(url: str) -> Any:
    """The parsed URL, if it names a database nba can use; a CliError naming the fix if not."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "sqlite:///var/nba.db or postgresql+psycopg://USER@HOST:5432/DATABASE"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CliError(f"{DATABASE_FLAG}: {url!r} is not a database URL (for example {example})") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise CliError(f"{DATABASE_FLAG}: {parsed.drivername}:// is not a database nba supports: use {example}")
    try:
        parsed.get_dialect()
    except (NoSuchModuleError, ImportError) as exc:
        raise CliError(f"{DATABASE_FLAG}: no driver for {parsed.drivername}:// ({exc}): use {example}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise CliError(f"{DATABASE_FLAG}: an in-memory SQLite database keeps nothing: name a file, sqlite:///var/nba.db")
    return parsed


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """Database failures as one line: an unreachable server (exit 3), a bad file (exit 2)."""
    from sqlalchemy import exc as sa

    try:
        yield
    except sa.DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None and str(exc.orig).strip() else type(exc).__name__
        if _check_database_url(url).get_backend_name() == "sqlite":
            raise CliError(f"{DATABASE_FLAG}: {_safe_url(url)}: {detail}") from None
        if isinstance(exc, sa.OperationalError | sa.InterfaceError):
            refusal = _server_refusal(str(exc.orig or ""))
            if refusal is not None:  # the server answered: the URL names a database or role it has not
                raise CliError(f"{DATABASE_FLAG}: {_safe_url(url)}: the server refused the connection: {refusal}; "
                               "check the database name, user and password in the URL") from None
            raise CliError(f"the database {_safe_url(url)} does not answer ({detail}): check that it runs, "
                           f"and {DATABASE_FLAG}", EXIT_UNAVAILABLE) from None
        raise CliError(f"the database {_safe_url(url)} refused: {detail}", EXIT_UNAVAILABLE) from None


def _server_refusal(message: str) -> str | None:
    """What a PostgreSQL server said when it refused a connection (a database or role that does
    not exist, a wrong password), or None when no server answered. libpq reports both as the
    same OperationalError without a SQLSTATE; only the server's refusal carries 'FATAL:'."""
    _, found, said = message.partition("FATAL:")
    return " ".join(said.split()) if found else None


def _open_existing(url: str) -> Any:
    """An engine on a database that already holds nba's decision log. Read-only commands use
    this, so that a mistyped path is refused instead of becoming a new, empty database."""
    from sqlalchemy import create_engine, inspect

    parsed = _check_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database)
        if not path.is_file():
            raise CliError(f"{DATABASE_FLAG}: no database at {_shown(path)} (check the path; `nba serve` or "
                           "`nba db upgrade` creates one)")
        _sqlite_file(path)
    with _database_errors(url):
        connect_args = {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}
        probe = create_engine(url, connect_args=connect_args)
        try:
            with probe.connect() as conn:
                tables = set(inspect(conn).get_table_names())
        finally:
            probe.dispose()
        if "decisions" not in tables:
            raise CliError(f"{DATABASE_FLAG}: {_safe_url(url)} holds no nba decision log (no tables): check the URL")
        from nba.store import open_engine

        return open_engine(url)


# The commands -----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level, settings.log_format)
    _check_database_url(settings.database_url)
    if not settings.policies.is_dir():
        raise CliError(f"policies (--policies, NBA_POLICIES) {settings.policies}: no such folder; name the policy "
                       "set's folder (the sample: policies)")
    if settings.workers > 1 and settings.worker < 0:
        from nba.supervisor import PortInUse, supervise

        with _database_errors(settings.database_url):
            try:
                return supervise(settings, sys.argv[1:] if args.argv is None else args.argv)
            except PortInUse as exc:
                raise _port_in_use(settings, metrics=exc.kind == "metrics", reason=exc.strerror) from None
    from nba.server import Service  # imported late: `nba policies` needs no gRPC code

    with _database_errors(settings.database_url):
        try:
            service = Service(settings)
        except (RuntimeError, OSError) as exc:
            if "bind" in str(exc).lower():  # gRPC says "Failed to bind to address ..."
                raise _port_in_use(settings, metrics=False) from None
            raise
        try:
            service.start()
        except OSError as exc:
            service.stop(grace=0)
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                raise _port_in_use(settings, metrics=True, reason=exc.strerror) from None
            raise
    done = threading.Event()

    def _shutdown(signum: int, _frame: Any) -> None:
        # Ctrl-C reaches every process of the terminal's group, and the supervisor forwards
        # SIGTERM too: say it once
        if not done.is_set():
            extra: dict[str, Any] = {"signal": signal.Signals(signum).name}
            if settings.worker >= 0:
                extra["worker"] = settings.worker
            logging.getLogger("nba").info("shutting down", extra=extra)
        done.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    signal.signal(signal.SIGHUP, lambda _s, _f: service.publisher.reload())
    done.wait()
    service.stop()
    return 0


def _port_in_use(settings: Settings, metrics: bool, reason: str | None = None) -> CliError:
    """Why the gRPC or metrics port could not be bound, as one line naming the setting to change.
    gRPC says only "failed to bind", so the gRPC address is probed again with a plain socket to
    learn why: taken, not an address of this machine, a host name that does not resolve, or a
    port that needs privileges."""
    if metrics:
        return CliError(f"metrics port {settings.metrics_port}: {reason or 'in use'}: choose another with "
                        "--metrics-port / NBA_METRICS_PORT (-1: no metrics)", EXIT_UNAVAILABLE)
    cause = _bind_failure(settings.host, settings.port)
    if cause == "no such address":
        return CliError(f"--host / NBA_HOST: {settings.host} is not an address of this machine: give one of its "
                        "addresses, or [::] for all of them")
    if cause == "unresolved":
        return CliError(f"--host / NBA_HOST: {settings.host!r} is not an address, nor a host name that resolves")
    if cause == "privileged":
        return CliError(f"--port / NBA_PORT: port {settings.port} needs privileges this process has not "
                        "(ports below 1024): choose one above 1023")
    return CliError(f"port {settings.port} on {settings.host} is in use (another nba serve?): stop it, or choose "
                    "another with --port / NBA_PORT", EXIT_UNAVAILABLE)


def _bind_failure(host: str, port: int) -> str:
    """'in use', 'no such address', 'unresolved' or 'privileged': why binding ``host:port`` fails."""
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return "unresolved"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return "no such address"
            if exc.errno == errno.EACCES:
                return "privileged"
    return "in use"


def _export(args: argparse.Namespace) -> int:
    from nba.store import Store, dumps

    settings = _settings(args)
    since = _date(args.since, "--since")
    until = _date(args.until, "--until")
    target = None if args.out == "-" else _writable_file(args.out, "--out")
    store = Store(_open_existing(settings.database_url))
    count = 0
    # A file is written beside its name and renamed at the end: a failed export leaves no
    # half-written file behind, and an earlier export stays as it was.
    partial = None if target is None else target.with_name(f".{target.name}.partial")
    try:
        out = sys.stdout if partial is None else partial.open("w", encoding="utf-8")
        try:
            with _database_errors(settings.database_url):
                for line in store.export(since, until):
                    out.write(dumps(line) + "\n")
                    count += 1
        finally:
            if out is not sys.stdout:
                out.close()
        if partial is not None and target is not None:
            os.replace(partial, target)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # the reader stopped reading (`nba export --out - | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return EXIT_OK
        raise CliError(f"--out {args.out}: cannot write: {exc.strerror}") from None
    finally:
        if partial is not None and partial.exists():
            partial.unlink()
        store.engine.dispose()
    print(f"exported {count} decisions to {args.out}", file=sys.stderr)
    return 0


def _db(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine

    from nba.migrations import current_revision, head_revision, upgrade

    settings = _settings(args)
    parsed = _check_database_url(settings.database_url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database)
        if args.action == "current" and not path.is_file():
            raise CliError(f"{DATABASE_FLAG}: no database at {_shown(path)} (check the path; `nba db upgrade` creates one)")
        _sqlite_file(path)
        if args.action == "upgrade":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CliError(f"{DATABASE_FLAG}: cannot create the folder {path.parent}: {exc.strerror}") from None
    engine = create_engine(settings.database_url)
    url = engine.url.render_as_string(hide_password=True)
    try:
        with _database_errors(settings.database_url):
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


_DIR_MEANING = {
    "validate": "the policy set's folder (default: policies)",
    "test": "the policy set's folder, with its *_test.yaml examples (default: policies)",
    "preview": "the draft's folder: copy the live set and edit it (cp -r policies drafts)",
}


def _policies(args: argparse.Namespace) -> int:
    from nba.examples import check_examples, load_examples
    from nba.policy_set import load_policy_set

    if args.action == "schema":
        from nba.policy_set import json_schema

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
    from nba.learning import LearningLoop, build_learner
    from nba.policy_set import parse_policy_set
    from nba.preview import preview
    from nba.store import Store

    settings = _settings(args)
    store = Store(_open_existing(settings.database_url))
    with _database_errors(settings.database_url):
        live_row = store.live_activation()
        if live_row is None:
            raise CliError(f"nothing is live in {_safe_url(settings.database_url)} yet: start the service on it "
                           f"once (or publish), or check {DATABASE_FLAG}")
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
    from nba.evaluation.logs import REWARD_LIMIT, LogError, read_offers
    from nba.evaluation.report import html_report, table
    from nba.evaluation.reward_model import RewardModel
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
    html_path = _writable_file(args.html, "--html") if args.html else _writable_file(
        _default_report(args, database_url), "--html", make_folder=True)
    json_path = _writable_file(args.json, "--json") if args.json else None
    offers = read_offers(_readable_file(args.offers, "--offers")) if args.offers else None
    if args.log:
        decisions = from_jsonl(_readable_file(args.log, "--log"), args.default_reward, include_open=True, offers=offers)
        decisions = [d for d in decisions if (since is None or d.decided_at >= since) and (until is None or d.decided_at < until)]
        source = args.log
    else:
        assert database_url is not None
        from nba.store import Store

        store = Store(_open_existing(database_url))
        refused: list[LogError] = []
        with _database_errors(database_url):
            decisions = from_store(store, since, until, True, args.default_reward, refused, offers)
        store.engine.dispose()
        source = _safe_url(database_url)
        if refused:
            print(f"warning: {len(refused)} logged decisions break the logged-data contract and are left out "
                  f"(stored by an older version, or before a range was narrowed); the first: {refused[0]}", file=sys.stderr)
    still_open = sum(1 for d in decisions if d.open)
    if still_open and not args.include_open:
        closed = [d for d in decisions if not d.open]
        if closed:
            print(f"note: {still_open} decisions whose reward windows are still open are left out "
                  "(--include-open counts their missing outcomes as --default-reward)", file=sys.stderr)
            decisions = closed
        else:
            print(f"note: no decision's reward windows have closed yet: evaluating all {still_open}, with every outcome "
                  f"not reported yet counted as --default-reward ({args.default_reward:g}); the figures are final once "
                  "the windows close (--include-open makes this choice explicit)", file=sys.stderr)
    if not decisions:
        raise CliError(f"no logged decisions to evaluate in {source}" + (" between --since and --until" if since or until else ""),
                       EXIT_FAILED)
    curves: dict[str, Any] = {}
    if reward_range is not None:
        outside = [r for d in decisions for r in d.rewards.values() if not reward_range[0] <= r <= reward_range[1]]
        if outside:
            raise CliError(f"--reward-range {args.reward_range}: the log has a reward of {outside[0]:g}, outside it", EXIT_FAILED)
    model = RewardModel(decisions, reward_range=reward_range, offers=offers)
    estimates = evaluate(decisions, targets, n_bootstrap=args.bootstrap, seed=args.seed, truth=truth, curves=curves,
                         refits=args.refits, reward_model=model)
    print(f"{len(decisions)} decisions from {source}")
    print(table(estimates))
    brier, constant = model.brier()
    print(f"\nDM and DR's reward model: held-out Brier score {brier:.6g} (a constant's: {constant:.6g}; "
          f"rewards scaled to [0, 1] from [{model.low:g}, {model.high:g}])")
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


def _simulate(args: argparse.Namespace) -> int:
    import random

    from nba.simulation import Population, Simulator, curve_table, write_outputs

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
        args.address, population, decisions=args.decisions, seed=args.seed, drift_at=args.drift_at,
        delay=args.delay, reject_rate=args.reject_rate, concurrency=args.concurrency, block=args.block,
        progress=None if args.quiet else sys.stderr,
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
    print(f"\n{args.decisions} decisions in {result.seconds:.1f} s ({rate:.0f}/s), seed {args.seed}; "
          f"wrote {', '.join(str(p) for p in paths)}")
    print(f"evaluate it: nba evaluate --include-open --truth {paths[2]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="nba", description="Next-best-action decisioning service.",
                     epilog="exit codes: 0 success, 1 what was checked failed, 2 usage or configuration, "
                     "3 a database, port or service unavailable, 70 a bug")
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
        help="a policy to evaluate, repeatable: logged, uniform, popular, learner[:k=v,...], draft:DIR, "
        "file:PATH (per-decision probabilities, JSON Lines) (name=... to label it; default: logged, uniform, "
        "popular, learner)",
    )
    evaluate.add_argument("--offers", help="offer features for the reward model: JSON Lines of offer_id and features")
    evaluate.add_argument("--refits", type=int, default=20,
                          help="bootstrap refits of the reward model behind DM's interval (default 20; 0: held fixed)")
    evaluate.add_argument("--reward-range", dest="reward_range",
                          help="LOW,HIGH: the rewards' range, which the reward model predicts within "
                          "(default: the log's smallest and largest reward; --reward-range=-1,3 when LOW is negative)")
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
    except KeyboardInterrupt:
        print("nba: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line, and the traceback on request
        if os.environ.get("NBA_DEBUG") == "1":
            traceback.print_exc()
        text = " ".join(str(exc).split())[:300]
        print(f"nba: unexpected error ({type(exc).__name__}: {text}); this is a bug: NBA_DEBUG=1 shows where",
              file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
