"""What every command shares: exit codes, the one-line errors, logging, settings flags, and the
checks of files, folders and database URLs named on the command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, get_args

from nba.config import ConfigError, Settings, load_settings

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
    # nba.storage.migrations says what matters ("created the database schema").
    logging.getLogger("alembic").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of settings (NBA_CONFIG)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = field.annotation
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} (NBA_{name.upper()}; default: {default})"
        choices = (
            get_args(kind) if getattr(kind, "__origin__", None) is not None and str(kind).startswith("typing.Literal") else None
        )
        # the touch-point events' retention answers to the shorter name too
        flags = [flag, "--event-retention-days"] if name == "profile_event_retention_days" else [flag]
        if kind is bool:  # a switch: --durable-decisions, --no-durable-decisions
            parser.add_argument(*flags, dest=name, default=None, help=help_text, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(*flags, dest=name, default=None, help=help_text, choices=choices)


def _settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name, None) for name in Settings.model_fields}
    return load_settings(flags, config_file=args.config)


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

    from nba.storage.engine import DatabaseUnavailable

    try:
        try:
            yield
        except DatabaseUnavailable as exc:  # the store's translation: the driver's error is its cause
            if isinstance(exc.__cause__, sa.DBAPIError):
                raise exc.__cause__ from None
            raise CliError(
                f"the database {_safe_url(url)} does not answer ({exc.__cause__ or exc}): check that it runs, and "
                f"{DATABASE_FLAG}",
                EXIT_UNAVAILABLE,
            ) from None
    except sa.DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None and str(exc.orig).strip() else type(exc).__name__
        if _check_database_url(url).get_backend_name() == "sqlite":
            raise CliError(f"{DATABASE_FLAG}: {_safe_url(url)}: {detail}") from None
        if isinstance(exc, sa.OperationalError | sa.InterfaceError):
            refusal = _server_refusal(str(exc.orig or ""))
            if refusal is not None:  # the server answered: the URL names a database or role it has not
                raise CliError(
                    f"{DATABASE_FLAG}: {_safe_url(url)}: the server refused the connection: {refusal}; "
                    "check the database name, user and password in the URL"
                ) from None
            raise CliError(
                f"the database {_safe_url(url)} does not answer ({detail}): check that it runs, and {DATABASE_FLAG}",
                EXIT_UNAVAILABLE,
            ) from None
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
            raise CliError(
                f"{DATABASE_FLAG}: no database at {_shown(path)} (check the path; `nba serve` or `nba db upgrade` creates one)"
            )
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
        from nba.storage.engine import open_engine

        return open_engine(url)


def _date(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is not an ISO date or time (2026-11-01 or 2026-11-01T08:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
