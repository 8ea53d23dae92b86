"""Publishing: which policy set is live, and how it changes, safely.

Every distinct content is a version (a monotonic number plus its content hash) recorded in
the decision log's database with its files; every change of the live set is an activation
(who, when, from where: ``file``, ``api`` or ``rollback``). Making a set live is one
reference swap in the decider: a decision in flight finishes on the set it started with, and
no call fails during a publish or a rollback. An invalid draft changes nothing.

The policies folder and the admin API are two doors to the same room. At start, the folder is
published if its content differs from what the folder last published; otherwise the live set
is whatever was last activated (perhaps through the API). While running, a watcher publishes
the folder when its files change (or on SIGHUP), through the same validation, and picks up
activations made by other replicas sharing the database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nba import metrics
from nba.clock import Clock, SystemClock
from nba.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PolicySetError,
    Problem,
    ResourceExhausted,
)
from nba.policy import sandbox
from nba.policy.lines import locate
from nba.policy.loading import parse_policy_set, read_files
from nba.policy.policy_set import PolicySet, content_hash
from nba.storage.engine import DatabaseUnavailable
from nba.storage.policy_sets import Activation
from nba.storage.store import Store

__all__ = ["Publisher", "Published"]

log = logging.getLogger(__name__)

MAX_FILES = 200
#: what a background thread lets through (anything else is logged, counted, and survived)
_FATAL = (KeyboardInterrupt, SystemExit)
MAX_DRAFT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Published:
    policy_set: PolicySet
    unchanged: bool


class Publisher:
    """Owns the live policy set; ``on_swap`` is called with every newly live set."""

    def __init__(
        self,
        store: Store,
        folder: Path | None,
        on_swap: Callable[[PolicySet], None],
        clock: Clock | None = None,
        isolate: bool = True,
    ) -> None:
        """``isolate``: validate drafts in a child process (``nba.policy.sandbox``); off only where
        the drafts are trusted and a process per validation is too much (tools, tests)."""
        self._isolate = isolate
        self._sandbox = sandbox.Sandbox()
        self._store = store
        self._folder = folder
        self._on_swap = on_swap
        self._clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._live: PolicySet | None = None
        self._activation_id = 0
        self._folder_hash: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def sandbox(self) -> sandbox.Sandbox:
        """Where drafts are validated (``nba.policy.sandbox``)."""
        return self._sandbox

    @property
    def store(self) -> Store:
        return self._store

    @property
    def live(self) -> PolicySet:
        assert self._live is not None, "start() first"
        return self._live

    # Start and watch ----------------------------------------------------------------

    def start(self) -> PolicySet:
        """Makes the right set live at start; raises ``PolicySetError`` if none is usable."""
        with self._lock:
            folder_files = read_files(self._folder) if self._folder is not None else None
            folder_hash = content_hash(folder_files) if folder_files else None
            self._folder_hash = folder_hash
            live = self._store.live_activation()
            if folder_files and (live is None or folder_hash != self._store.last_file_hash()):
                self.publish(folder_files, actor="policies folder", source="file", comment=str(self._folder))
            elif live is not None:
                try:
                    self._adopt(live)
                except PolicySetError as exc:
                    if not folder_files:
                        raise
                    log.error(
                        "the live policy set no longer loads; publishing the folder instead",
                        extra={"version": live.version, "problems": exc.messages},
                    )
                    self.publish(folder_files, actor="policies folder", source="file", comment=str(self._folder))
            elif not folder_files:
                raise PolicySetError([Problem(f"{self._folder}: no *.yaml policy files and nothing published")])
            return self.live

    def watch(self, interval_seconds: float) -> None:
        """Polls the folder (and the database, for other replicas) every interval."""
        if interval_seconds <= 0 or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, args=(interval_seconds,), name="nba-policies", daemon=True)
        self._watcher.start()

    def reload(self) -> None:
        """Checks the folder now (SIGHUP), whether or not it is being watched."""
        if self._watcher is not None:
            self._wake.set()
            return

        def check() -> None:
            try:
                self.check_folder()
            except BaseException as exc:  # a panic in a library is a BaseException
                if isinstance(exc, _FATAL):
                    raise
                metrics.POLICY_RELOAD_FAILURES.inc()
                log.exception("reloading the policies folder failed")

        threading.Thread(target=check, name="nba-policies-reload", daemon=True).start()

    def stop(self) -> None:
        """Stops the watcher, and every validation in flight (its child is killed)."""
        self._sandbox.close()
        self._stop.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def _watch(self, interval: float) -> None:
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            # Nothing one pass meets may end the thread: later changes and SIGHUP would never
            # be published again. A panic inside a library (pyo3's PanicException) is a
            # BaseException, not an Exception.
            try:
                self.check_folder()
            except BaseException as exc:
                if isinstance(exc, _FATAL):
                    raise
                metrics.POLICY_RELOAD_FAILURES.inc()
                log.exception("checking the policies folder failed")
            try:
                self.check_database()
            except BaseException as exc:
                if isinstance(exc, _FATAL):
                    raise
                if isinstance(exc, DatabaseUnavailable):  # said once by the decision log; looked at again next time
                    log.warning("checking for policy changes: the database is unavailable", extra={"error": repr(exc)})
                else:
                    log.exception("checking for policy changes failed")

    def check_folder(self) -> bool:
        """Publishes the folder if its files changed since it was last read."""
        if self._folder is None:
            return False
        try:
            files = read_files(self._folder)
        except PolicySetError as exc:  # a file that is not UTF-8 text, a directory named *.yaml
            unreadable = "unreadable:" + "\n".join(exc.messages)
            if unreadable != self._folder_hash:  # counted and said once, until the folder changes
                self._folder_hash = unreadable
                metrics.POLICY_RELOAD_FAILURES.inc()
                log.error("cannot read the policies folder; the live set is unchanged", extra={"problems": exc.messages})
            return False
        digest = content_hash(files) if files else None
        if digest == self._folder_hash or not files:
            return False
        try:
            published = self.publish(files, actor="policies folder", source="file", comment=str(self._folder))
        except (PolicySetError, InvalidArgument, DeadlineExceeded, ResourceExhausted) as exc:
            self._folder_hash = digest  # refused for good (too slow or too big too): wait for the next change
            metrics.POLICY_RELOAD_FAILURES.inc()
            log.error(
                "the changed policies folder is invalid; the live set is unchanged",
                extra={"problems": exc.messages if isinstance(exc, PolicySetError) else [str(exc)]},
            )
            return False
        self._folder_hash = digest
        return not published.unchanged

    def check_database(self) -> bool:
        """Adopts a set another process activated after the one this process holds.

        Only a newer activation (a larger id: ids follow commit order) is adopted, compared
        under the lock: a read that raced with this process's own publish or rollback must
        not put the older set back."""
        newest = self._store.newest_activation_id()
        if newest <= self._activation_id:
            return False
        live = self._store.live_activation()
        with self._lock:
            if live is None or live.id <= self._activation_id:
                return False
            self._adopt(live)
        return True

    def refresh(self) -> PolicySet:
        """The live set, after adopting a newer activation if the database has one: what a
        caller reading the live version (to send it back as ``expected_live_version``) must
        see, whichever replica it asks. If the database cannot be read or the newer set not
        loaded, the set this process serves (the watcher tries again)."""
        try:
            self.check_database()
        except Exception as exc:
            log.warning("reading the live policy set from the database failed", extra={"error": repr(exc)})
        return self.live

    # Validate, publish, roll back -----------------------------------------------------

    def validate(
        self, files: Mapping[str, str], timeout: float | None = None, is_active: Callable[[], bool] | None = None
    ) -> tuple[PolicySet | None, list[Problem]]:
        """Compiles a draft; returns it (None if invalid) and every problem found.

        The draft is validated in a child process (``nba.policy.sandbox``), then compiled here
        without evaluating any rule. ``timeout`` (seconds) and ``is_active`` are the caller's:
        ``DeadlineExceeded``, ``Cancelled``, ``ResourceExhausted`` when the validation had to
        be stopped."""
        self._check_draft(files)
        try:
            policy_set = self._compile(files, timeout, is_active)
        except PolicySetError as exc:
            return None, exc.problems
        return policy_set, policy_set.warnings

    def _compile(
        self, files: Mapping[str, str], timeout: float | None = None, is_active: Callable[[], bool] | None = None
    ) -> PolicySet:
        """A draft validated and compiled (``PolicySetError`` if it is invalid)."""
        now = self._clock.now()
        if not self._isolate:
            try:
                policy_set = parse_policy_set(dict(files), now)
            except PolicySetError as exc:
                raise PolicySetError(locate(files, exc.problems)) from None
            policy_set.warnings = locate(files, policy_set.warnings)
            return policy_set
        checked = self._sandbox.validate(files, now, timeout, is_active)
        if not checked.valid:
            raise PolicySetError(locate(files, checked.problems))
        # Valid in the child: compiling it here again evaluates no rule, and its rules are
        # within the cost limits (nba.policy.rule_cost), so this cannot stall the process.
        policy_set = parse_policy_set(dict(files), now, sampled=False)
        policy_set.warnings = locate(files, checked.problems)
        return policy_set

    def publish(
        self,
        files: Mapping[str, str],
        actor: str,
        source: str = "api",
        comment: str = "",
        expected_live: int = 0,
        timeout: float | None = None,
        is_active: Callable[[], bool] | None = None,
    ) -> Published:
        """Makes a draft live (``PolicySetError`` listing every problem if it is invalid).

        With ``expected_live``, only if that version is live in the database at the moment of
        the activation (``FailedPrecondition`` otherwise): the check and the activation are one
        transaction, so of two editors expecting the same version on two replicas one wins.
        Content that is live already changes nothing (``unchanged``). ``timeout`` and
        ``is_active`` bound the validation, as for ``validate``."""
        self._check_draft(files)
        policy_set = self._compile(files, timeout, is_active)  # raises with every error
        with self._lock:
            result = self._store.publish(
                policy_set.files, policy_set.content_hash, actor, source, comment, self._clock.now(), expected_live
            )
            return self._settle(policy_set, result, expected_live, source, actor)

    def rollback(
        self,
        version: int,
        actor: str,
        comment: str = "",
        expected_live: int = 0,
        timeout: float | None = None,
        is_active: Callable[[], bool] | None = None,
    ) -> Published:
        """Makes an earlier version live again; ``NotFound`` for an unknown version,
        ``FailedPrecondition`` if it no longer loads or ``expected_live`` is not live.
        ``timeout`` and ``is_active`` bound its validation, as for ``validate``."""
        row = self._store.policy_set_row(version)
        if row is None:
            raise NotFound(f"version: no policy set version {version}")
        try:
            policy_set = self._compile(row.files, timeout, is_active)  # as a draft: the limits may have changed
        except PolicySetError as exc:
            raise FailedPrecondition(f"version: {version} no longer loads: {exc}") from None
        with self._lock:
            result = self._store.activate(version, actor, "rollback", comment, self._clock.now(), expected_live)
            return self._settle(policy_set, result, expected_live, "rollback", actor)

    def _settle(self, policy_set: PolicySet, result: Activation, expected_live: int, source: str, actor: str) -> Published:
        """After the database said what is live: swaps to ``policy_set`` if it is, or to the
        newer set another process made live. Call with the lock held."""
        if not result.refused:
            policy_set.number = result.version
            if result.id > self._activation_id:  # otherwise this process holds it already
                self._activation_id = result.id
                self._swap(policy_set, source, actor)
            return Published(self.live, unchanged=not result.activated)
        self._catch_up()
        raise FailedPrecondition(
            f"expected_live_version: version {result.version} is live, not {expected_live}; reload it and try again"
        )

    def _catch_up(self) -> None:
        """Adopts the newest activation if it is newer than the one held (lock held)."""
        try:
            live = self._store.live_activation()
            if live is not None and live.id > self._activation_id:
                self._adopt(live)
        except Exception:  # the caller's answer does not depend on it; the watcher tries again
            log.exception("adopting the live policy set failed")

    def _adopt(self, live: Any) -> None:
        # Activated after its validation (here or by another process): compiled without
        # evaluating its rules again on sampled contexts, which could keep this process busy.
        policy_set = parse_policy_set(live.files, self._clock.now(), sampled=False)
        policy_set.number = live.version
        self._activation_id = live.id
        self._swap(policy_set, live.source, live.actor)

    def _swap(self, policy_set: PolicySet, source: str, actor: str) -> None:
        policy_set.batches  # noqa: B018  # compiled (seconds for a large set) before it is reported live
        self._live = policy_set
        self._on_swap(policy_set)
        metrics.POLICY_VERSION.set(policy_set.number)
        log.info(
            "policy set live",
            extra={
                "policy_version": policy_set.version,
                "source": source,
                "actor": actor,
                "offers": len(policy_set.offers),
                "warnings": [str(w) for w in policy_set.warnings],
            },
        )

    @staticmethod
    def _check_draft(files: Mapping[str, str]) -> None:
        if not files:
            raise InvalidArgument("draft.files: empty; send every file of the set (name -> YAML text)")
        if len(files) > MAX_FILES:
            raise InvalidArgument(f"draft.files: {len(files)} files, more than {MAX_FILES}")
        size = sum(len(k) + len(v) for k, v in files.items())
        if size > MAX_DRAFT_BYTES:
            raise InvalidArgument(f"draft.files: {size} bytes, more than {MAX_DRAFT_BYTES}")
        for name in files:
            if "/" in name or "\\" in name or name.startswith("."):
                raise InvalidArgument(f"draft.files: {name!r} must be a plain file name like offers.yaml")
