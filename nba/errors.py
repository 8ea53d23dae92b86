"""Errors that know their gRPC status.

Every error a caller can cause is an ``NbaError`` carrying the status code it maps to, and
one interceptor (``nba.server``) turns it into ``context.abort``. Messages name the field to
fix.

    NbaError
    ├── InvalidArgument      INVALID_ARGUMENT: a request field is missing or malformed
    ├── NotFound             NOT_FOUND: a decision or offer that does not exist
    ├── AlreadyExists        ALREADY_EXISTS: an idempotency key reused for something else
    ├── Unavailable          UNAVAILABLE: cannot make it durable now; retry
    ├── FailedPrecondition   FAILED_PRECONDITION: the state is not what the caller expected
    ├── Unauthenticated      UNAUTHENTICATED: no valid bearer token
    ├── PermissionDenied     PERMISSION_DENIED: the token's role may not do this
    └── PolicySetError       INVALID_ARGUMENT: a policy set is invalid; carries
                             every problem found, not just the first, each a ``Problem``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc


class NbaError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(NbaError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(NbaError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(NbaError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(NbaError):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(NbaError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(NbaError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(NbaError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(NbaError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(NbaError):
    code = grpc.StatusCode.CANCELLED


class ResourceExhausted(NbaError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


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

    def __str__(self) -> str:
        parts = [self.file] if self.file else []
        if self.offer:
            parts.append(f"offer '{self.offer}'")
        if self.policy:
            parts.append(f"policy '{self.policy}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ": ".join([*parts, self.message])


class PolicySetError(NbaError):
    """A policy set cannot be used; ``problems`` lists every error (and any warnings)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, problems: Sequence[Problem | str]) -> None:
        self.problems = [p if isinstance(p, Problem) else Problem(p) for p in problems]
        errors = [p for p in self.problems if p.severity == "error"]
        count = len(errors)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid policy set, {count} {noun}:\n  " + "\n  ".join(str(p) for p in errors))

    @property
    def messages(self) -> list[str]:
        return [str(p) for p in self.problems if p.severity == "error"]


class SchemaError(RuntimeError):
    """The database's schema is not the one this code needs; the message says what to run.
    Not a request error: the process refuses to start (``nba.migrations``)."""
