"""``nba db upgrade|current|rollups``: the database's schema, and the overview's rollups counted
again from the decision log."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nba.cli.common import DATABASE_FLAG, CliError, _check_database_url, _database_errors, _settings, _shown, _sqlite_file


def _db(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine

    from nba.storage.engine import open_engine
    from nba.storage.migrations import current_revision, ensure_schema, head_revision, upgrade
    from nba.storage.store import Store

    settings = _settings(args)
    parsed = _check_database_url(settings.database_url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database)
        if args.action in ("current", "rollups") and not path.is_file():
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
            elif args.action == "rollups":
                print(f"{url}: counting the overview's rollups from the decision log (stop the service first)...", flush=True)
                started = time.monotonic()
                ensure_schema(engine)
                store = Store(open_engine(settings.database_url))
                counted = store.recount_rollups(progress=lambda n: print(f"  {n:,} decisions", flush=True))
                print(f"{url}: rollups of {counted:,} decisions counted in {time.monotonic() - started:.1f} s")
            else:
                current = current_revision(engine)
                print(f"{url}: revision {current or 'none'}; this nba needs {head_revision()}")
    finally:
        engine.dispose()
    return 0
