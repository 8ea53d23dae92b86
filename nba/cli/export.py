"""``nba export``: the decision log as JSON Lines."""

from __future__ import annotations

import argparse
import os
import sys

from nba.cli.common import EXIT_OK, CliError, _database_errors, _date, _open_existing, _settings, _writable_file


def _export(args: argparse.Namespace) -> int:
    from nba.storage.decisions import dumps
    from nba.storage.store import Store

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
