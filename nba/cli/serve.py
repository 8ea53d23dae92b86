"""``nba serve``: the service, with its ports checked before anything starts."""

from __future__ import annotations

import argparse
import errno
import faulthandler
import logging
import signal
import sys
import threading
from typing import Any

from nba.cli.common import EXIT_UNAVAILABLE, CliError, _check_database_url, _database_errors, _settings, _setup_logging
from nba.config import Settings
from nba.errors import InvalidArgument


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level, settings.log_format)
    _check_database_url(settings.database_url)
    if settings.callback_sources is not None and settings.worker < 0:
        # checked once here: workers that fail on it at start would be restarted for ever
        from nba.service.http.callbacks import CallbackSources

        try:
            CallbackSources.load(settings.callback_sources)
        except InvalidArgument as exc:
            raise CliError(f"{exc} (--callback-sources, NBA_CALLBACK_SOURCES)") from None
    if not settings.policies.is_dir():
        raise CliError(
            f"policies (--policies, NBA_POLICIES) {settings.policies}: no such folder; name the policy "
            "set's folder (the sample: policies)"
        )
    if settings.workers > 1 and settings.worker < 0:
        from nba.service.supervisor import PortInUse, supervise

        with _database_errors(settings.database_url):
            try:
                return supervise(settings, sys.argv[1:] if args.argv is None else args.argv)
            except PortInUse as exc:
                if exc.kind == "HTTP":
                    raise _http_port_unavailable(settings, exc.strerror) from None
                raise _port_in_use(settings, metrics=exc.kind == "metrics", reason=exc.strerror) from None
    from nba.service.http.server import HttpPortUnavailable
    from nba.service.server import Service  # imported late: `nba policies` needs no gRPC code

    with _database_errors(settings.database_url):
        try:
            service = Service(settings)
        except HttpPortUnavailable as exc:
            raise _http_port_unavailable(settings, exc.strerror) from None
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
    # kill -USR1 PID writes every thread's stack to stderr: what a process that does not stop
    # (or answer) is doing, without stopping it
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Woken now and then, not blocked for good: a signal the kernel hands to another thread
    # (gRPC's, the log writer's) does not interrupt the main thread's wait, and Python runs
    # its handler only when the main thread next runs. Seen: SIGTERM ignored, shutdown hung.
    while not done.wait(0.2):
        pass
    service.stop()
    return 0


def _http_port_unavailable(settings: Settings, reason: str | None) -> CliError:
    return CliError(
        f"HTTP port {settings.http_port} on {settings.host}: {reason or 'in use'}: choose another with "
        "--http-port / NBA_HTTP_PORT (-1: no HTTP API)",
        EXIT_UNAVAILABLE,
    )


def _port_in_use(settings: Settings, metrics: bool, reason: str | None = None) -> CliError:
    """Why the gRPC or metrics port could not be bound, as one line naming the setting to change.
    gRPC says only "failed to bind", so the gRPC address is probed again with a plain socket to
    learn why: taken, not an address of this machine, a host name that does not resolve, or a
    port that needs privileges."""
    if metrics:
        return CliError(
            f"metrics port {settings.metrics_port}: {reason or 'in use'}: choose another with "
            "--metrics-port / NBA_METRICS_PORT (-1: no metrics)",
            EXIT_UNAVAILABLE,
        )
    cause = _bind_failure(settings.host, settings.port)
    if cause == "no such address":
        return CliError(
            f"--host / NBA_HOST: {settings.host} is not an address of this machine: give one of its "
            "addresses, or [::] for all of them"
        )
    if cause == "unresolved":
        return CliError(f"--host / NBA_HOST: {settings.host!r} is not an address, nor a host name that resolves")
    if cause == "privileged":
        return CliError(
            f"--port / NBA_PORT: port {settings.port} needs privileges this process has not "
            "(ports below 1024): choose one above 1023"
        )
    return CliError(
        f"port {settings.port} on {settings.host} is in use (another nba serve?): stop it, or choose "
        "another with --port / NBA_PORT",
        EXIT_UNAVAILABLE,
    )


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
