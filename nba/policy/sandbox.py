"""Validation of drafts in a child process: what a marketer sends cannot stall the service.

Validating a draft compiles its rules with a third-party CEL library and evaluates them on
contexts sampled from its schema. That library holds the GIL while it evaluates (every other
thread of the process, Decide and health checks included, waits), cannot be cancelled, and
can panic or crash on input it does not expect. ``nba.policy.rule_cost`` refuses the costly rules it
can see, before CEL; this module bounds what it cannot see: every validation runs in a child
process,

* started from a forkserver that has the nba modules imported already (a child costs a fork,
  not an interpreter start);
* niced (``NICE``), with its address space limited to ``MEMORY_BYTES``;
* killed when the call's deadline passes (the gRPC call's remaining time, at most
  ``MAX_SECONDS``), when the client cancels, or when the service stops.

The child answers in JSON (never a pickle: the parent does not unpickle what the draft
made). A child that dies without answering (out of memory, a crash in a library) makes the
draft invalid, with a problem saying so.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from nba.errors import Cancelled, DeadlineExceeded, PolicySetError, Problem, ResourceExhausted, Unavailable

__all__ = ["MAX_SECONDS", "MEMORY_BYTES", "NICE", "Sandbox", "Validation"]

log = logging.getLogger(__name__)

#: the longest a validation may take, whatever the caller's deadline
MAX_SECONDS = 60.0
#: address space of a validating child (measured: 0.4 GiB at most, 0.12 GiB resident, for a
#: 2,000-offer draft)
MEMORY_BYTES = 2 * 1024**3
#: how much nicer than the service a validating child runs
NICE = 10
#: how often the parent looks at the child, the deadline and the client (seconds)
POLL_SECONDS = 0.05
#: the largest answer a child may send (problems of a draft of MAX_DRAFT_BYTES fit many times)
MAX_ANSWER_BYTES = 64 * 1024 * 1024

_lock = threading.Lock()
_context: Any = None


class Validation:
    """What a child found: ``valid``, every ``problems`` (warnings included), ``content_hash``."""

    __slots__ = ("content_hash", "problems", "valid")

    def __init__(self, valid: bool, problems: list[Problem], content_hash: str) -> None:
        self.valid, self.problems, self.content_hash = valid, problems, content_hash


class Sandbox:
    """Validations in child processes, for one owner (a ``Publisher``): ``close`` kills its
    children and refuses new validations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: set[Any] = set()
        self._closing = threading.Event()

    def validate(
        self,
        files: Mapping[str, str],
        now: datetime,
        timeout: float | None = None,
        is_active: Callable[[], bool] | None = None,
    ) -> Validation:
        """Validates ``files`` (name -> YAML text) as of ``now`` in a child process.

        ``timeout``: seconds the caller still waits (None: ``MAX_SECONDS``; capped at it);
        ``is_active``: False once the caller has gone (gRPC's ``context.is_active``).
        Raises ``DeadlineExceeded`` when the time is up, ``Cancelled`` when the caller went,
        ``ResourceExhausted`` when the child ran out of memory, ``Unavailable`` when the
        sandbox is closing; in each case the child has been killed."""
        seconds = MAX_SECONDS if timeout is None else max(0.0, min(timeout, MAX_SECONDS))
        if self._closing.is_set():
            raise Unavailable("the service is stopping; validate on another replica or retry later")
        context = _mp()
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_child, args=(sender, dict(files), now.isoformat(), MEMORY_BYTES), name="nba-validate", daemon=True
        )
        started = time.monotonic()
        with self._lock:
            self._children.add(child)
        try:
            child.start()
            sender.close()
            answer = self._wait(child, receiver, started + seconds, is_active)
        finally:
            if child.pid is not None:  # started
                if child.is_alive():
                    child.kill()
                child.join(5)
            receiver.close()
            with self._lock:
                self._children.discard(child)
        if answer.get("memory"):
            raise ResourceExhausted(
                f"validating the draft needed more than {MEMORY_BYTES // 1024**2} MiB: "
                "simplify its rules (fewer comprehensions, shorter lists) or its schema"
            )
        problems = [Problem(**p) for p in answer["problems"]]
        return Validation(bool(answer["valid"]), problems, str(answer.get("content_hash", "")))

    def close(self) -> None:
        """Kills every validating child and refuses new validations (at shutdown): a validation
        in flight then answers UNAVAILABLE at once instead of holding up the stop."""
        self._closing.set()
        with self._lock:
            children = list(self._children)
        for child in children:
            try:
                child.kill()
            except (OSError, ValueError, AttributeError):  # already gone
                pass

    @property
    def children(self) -> list[int]:
        """Process ids of the children validating now."""
        with self._lock:
            return [c.pid for c in self._children if c.pid is not None]

    def _wait(self, child: Any, receiver: Any, deadline: float, is_active: Callable[[], bool] | None) -> dict[str, Any]:
        while True:
            if receiver.poll(POLL_SECONDS):
                try:
                    return json.loads(receiver.recv_bytes(MAX_ANSWER_BYTES))
                except (EOFError, OSError, ValueError):
                    return self._died(child)
            if not child.is_alive() and not receiver.poll(0):
                return self._died(child)
            if self._closing.is_set():
                raise Unavailable("the service is stopping; validate on another replica or retry later")
            if is_active is not None and not is_active():
                raise Cancelled("the call was cancelled; its validation was stopped")
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    "validating the draft took longer than the call's deadline (at most "
                    f"{MAX_SECONDS:.0f} s) and was stopped: simplify its rules (fewer or smaller comprehensions "
                    "over context lists) or its schema (fewer listed values), or allow more time"
                )

    def _died(self, child: Any) -> dict[str, Any]:
        child.join(5)
        code = child.exitcode
        if self._closing.is_set():
            raise Unavailable("the service is stopping; validate on another replica or retry later")
        if code == -signal.SIGABRT:
            # Rust code (the CEL engine) that cannot allocate under the child's memory limit
            # aborts the process ("memory allocation of N bytes failed") where Python would
            # raise MemoryError: the same refusal
            log.warning("a validating child ran out of memory in the rule engine", extra={"exitcode": code})
            return {"memory": True}
        log.error("a validating child process died without answering", extra={"exitcode": code})
        return {
            "valid": False,
            "problems": [
                asdict(
                    Problem(
                        f"could not be validated: the rule engine died (exit code {code}); simplify the rules "
                        "(shorter, fewer nested brackets and comprehensions)"
                    )
                )
            ],
        }


def _mp() -> Any:
    global _context
    with _lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["nba.policy.sandbox", "nba.policy.loading", "nba.policy.checks"])
            _context = context
        return _context


def _child(sender: Any, files: dict[str, str], now: str, memory: int) -> None:
    """In the child: validates, and sends the answer as JSON bytes."""
    try:
        os.nice(NICE)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    except (OSError, ValueError) as exc:  # a platform without them still validates
        log.warning("could not limit the validating child", extra={"error": repr(exc)})
    from nba.policy.loading import parse_policy_set

    try:
        policy_set = parse_policy_set(files, datetime.fromisoformat(now))
        answer: dict[str, Any] = {
            "valid": True,
            "problems": [asdict(p) for p in policy_set.warnings],
            "content_hash": policy_set.content_hash,
        }
    except PolicySetError as exc:
        answer = {"valid": False, "problems": [asdict(p) for p in exc.problems]}
    except MemoryError:
        answer = {"memory": True}
    try:
        sender.send_bytes(json.dumps(answer).encode())
    except MemoryError:
        sender.send_bytes(b'{"memory": true}')
    finally:
        sender.close()
