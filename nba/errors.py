"""Errors that know their status.

Every error a caller can cause is an ``NbaError`` carrying the name of the status it maps to
(a ``grpc.StatusCode`` name, which the HTTP surface maps to its own statuses), and one
interceptor (``nba.service.server``) turns it into ``context.abort``. The domain never
imports gRPC: the name is enough. Messages name the field to
fix.

    NbaError
    ├── InvalidArgument      INVALID_ARGUMENT: a request field is missing or malformed
    ├── NotFound             NOT_FOUND: a decision or offer that does not exist
    ├── AlreadyExists        ALREADY_EXISTS: an idempotency key reused for something else
    ├── Unavailable          UNAVAILABLE: cannot make it durable now; retry
    ├── FailedPrecondition   FAILED_PRECONDITION: the state is not what the caller expected
    ├── Unauthenticated      UNAUTHENTICATED: no valid bearer token
    ├── PermissionDenied     PERMISSION_DENIED: the token's role may not do this
    ├── DeadlineExceeded, Cancelled, ResourceExhausted
    └── PolicySetError       INVALID_ARGUMENT: a policy set is invalid; carries
                             every problem found, not just the first, each a ``Problem``

The parts' own errors are in the same tree, so any of them that reaches a caller has its
status: ``nba.config.ConfigError``, ``nba.evaluation.logs.LogError``, the rules'
``RuleSyntaxError`` and ``RuleLimitError`` (all ``InvalidArgument``), ``SchemaError``
(``FailedPrecondition``) and ``nba.storage.engine.DatabaseUnavailable`` (``Unavailable``).
Each keeps the builtin base it had (``ValueError``, ``RuntimeError``), so callers that catch
those still do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


class NbaError(Exception):
    #: the status, as a ``grpc.StatusCode`` name
    code: str = "INTERNAL"


class InvalidArgument(NbaError):
    """A request field is missing or malformed. ``field`` names it (a dotted path, such as
    ``context.customer.age``); by default it is read from the message, which by convention
    starts with the field: ``"limit: must be 0 or more, got -1"``."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(NbaError):
    code = "NOT_FOUND"


class AlreadyExists(NbaError):
    code = "ALREADY_EXISTS"


class Unavailable(NbaError):
    code = "UNAVAILABLE"


class FailedPrecondition(NbaError):
    code = "FAILED_PRECONDITION"


class Unauthenticated(NbaError):
    code = "UNAUTHENTICATED"


class PermissionDenied(NbaError):
    code = "PERMISSION_DENIED"


class DeadlineExceeded(NbaError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(NbaError):
    code = "CANCELLED"


class ResourceExhausted(NbaError):
    code = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class Problem:
    """One finding about a policy set, located as precisely as it can be."""

    message: str
    file: str = ""
    offer: str = ""
    policy: str = ""
    field: str = ""
    #: "error" refuses the set; "warning" is reported and the set is still usable
    severity: str = "error"
    #: the 1-based line of ``file`` it is about (0: unknown), set by ``nba.policy.lines.locate``
    line: int = 0

    def location(self) -> str:
        """Where the problem is, as the message's prefix says it (file, offer, policy, field),
        or "" when nothing locates it."""
        parts = [self.file] if self.file else []
        if self.offer:
            parts.append(f"offer '{self.offer}'")
        if self.policy:
            parts.append(f"policy '{self.policy}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ": ".join(parts)

    def __str__(self) -> str:
        location = self.location()
        return f"{location}: {self.message}" if location else self.message


class PolicySetError(NbaError):
    """A policy set cannot be used; ``problems`` lists every error (and any warnings)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, problems: Sequence[Problem | str]) -> None:
        self.problems = [p if isinstance(p, Problem) else Problem(p) for p in problems]
        errors = [p for p in self.problems if p.severity == "error"]
        count = len(errors)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid policy set, {count} {noun}:\n  " + "\n  ".join(str(p) for p in errors))

    @property
    def messages(self) -> list[str]:
        return [str(p) for p in self.problems if p.severity == "error"]


class SchemaError(FailedPrecondition, RuntimeError):
    """The database's schema is not the one this code needs; the message says what to run.
    Not a request error: the process refuses to start (``nba.storage.migrations``)."""


#: a field path at the head of a message: ``limit``, ``context.customer.age``, ``files[offers.yaml]``
_FIELD = re.compile(r"[A-Za-z_][\w.\-]*(\[[^\]]{1,256}\])?(\.[\w\-]+)*")
#: the most field violations one error carries (the rest are in its message): gRPC's trailers
#: are limited (8 KiB by default on most clients), and a policy set can have many problems
MAX_VIOLATIONS = 10
#: a violation's description is cut here, for the same reason
MAX_DESCRIPTION = 300


def field_of(exc: NbaError) -> str:
    """The field an error is about, whatever its status: its ``field``, or the field path its
    message starts with ("event_id: already used ..."), or "" when it names none.

    >>> field_of(AlreadyExists("event_id: 'e-1' was already used for another event"))
    'event_id'
    """
    explicit = getattr(exc, "field", None)
    if explicit:
        return str(explicit)
    head, separator, _ = str(exc).partition(": ")
    return head if separator and _FIELD.fullmatch(head) else ""


def field_violations(exc: NbaError) -> list[tuple[str, str]]:
    """(field, description) for each field at fault in an ``INVALID_ARGUMENT`` error, as
    ``google.rpc.BadRequest`` carries them (AIP-193): one per error of a policy set, located by
    file, offer, policy and field; otherwise the error's ``field``, or the field its message
    starts with, or ``request`` when it names none. At most ``MAX_VIOLATIONS``, descriptions cut
    at ``MAX_DESCRIPTION`` characters; empty for any other error.

    >>> field_violations(InvalidArgument("limit: must be 0 or more, got -1"))
    [('limit', 'must be 0 or more, got -1')]
    >>> field_violations(InvalidArgument("request: not a valid DecideRequest", field="request"))
    [('request', 'not a valid DecideRequest')]
    """
    if isinstance(exc, PolicySetError):
        found = [(p.location() or "policy_set", p.message) for p in exc.problems if p.severity == "error"]
    elif isinstance(exc, InvalidArgument):
        message = str(exc)
        head, separator, rest = message.partition(": ")
        if exc.field is not None:
            found = [(exc.field, rest if separator and head == exc.field else message)]
        elif separator and _FIELD.fullmatch(head):
            found = [(head, rest)]
        else:
            found = [("request", message)]
    else:
        return []
    return [
        (field[:MAX_DESCRIPTION], text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…")
        for field, text in found[:MAX_VIOLATIONS]
    ]
