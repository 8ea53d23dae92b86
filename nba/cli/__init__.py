"""The ``nba`` command: serve, export the decision log, and check policy sets. One module per
command (serve, export, db, policies, profiles, evaluate, simulate), ``common`` (exit codes, one-line
errors, checks of what the command line names) and ``main`` (the parser). May import
everything; nothing imports it.

    nba serve [--port 50051] [--policies policies/] [--database-url URL] [...]
    nba export --out decisions.jsonl [--since 2026-11-01] [--until ...] [--database-url URL]
    nba policies validate [DIR]        every error and warning of the set in DIR
    nba policies test [DIR]            run the *_test.yaml examples
    nba policies preview DIR [--last N] [--database-url URL]
                                       what DIR would change against the live set
    nba policies schema                the JSON Schema of a policy file
    nba evaluate [--log FILE.jsonl | --database-url URL] [--policy SPEC ...] [--offers FILE] [--truth truth.json]
                                       estimate what other policies would have earned
    nba profiles import FILE           touch-point history (JSON Lines or CSV) into the profiles
    nba feedback import FILE [--address HOST:PORT] [--report FILE]
                                       a file of responses sent to a running service, a report line each
    nba simulate [--address HOST:PORT] [--decisions N] [--population FILE] [--out DIR]
                                       drive a running service with a synthetic population

Every failure is one line on stderr that names what to fix, and one of these exit codes
(README, "Exit codes"):

    0   success
    1   what was checked failed: an invalid policy set, a failing example, lines an import
        refused, a log line that breaks the contract, nothing to evaluate, calls that failed
        during a simulation
    2   usage or configuration: a flag, setting or config file; a file or folder named on the
        command line that is missing, unreadable or malformed; an output that cannot be
        written; a database URL that is malformed, names no nba database, or whose database,
        user or password the server refuses; a --host that is not this machine's; a schema
        that needs `nba db upgrade`
    3   something the command needs is unavailable: the database does not answer, a port is
        in use, no service answers at --address
    70  an unexpected error: a bug (the one line names it; NBA_DEBUG=1 prints the traceback)
    130 interrupted (Ctrl-C)"""

from __future__ import annotations

from nba.cli.common import EXIT_BUG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, CliError
from nba.cli.main import main

__all__ = ["EXIT_BUG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError", "main"]
