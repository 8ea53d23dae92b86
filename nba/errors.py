"""Errors that know their gRPC status.

Every error a caller can cause is an ``NbaError`` carrying the status code it maps to, and
one interceptor (``nba.server``) turns it into ``context.abort``. Messages name the field to
fix.

    NbaError
    ├── InvalidArgument      INVALID_ARGUMENT: a request field is missing or malformed
    ├── NotFound             NOT_FOUND: a decision or offer that does not exist
    ├── AlreadyExists        ALREADY_EXISTS: an idempotency key reused for something else
    ├── Unavailable          UNAVAILABLE: cannot make it durable now; retry
    └── CatalogueError       FAILED_PRECONDITION: the offer catalogue is invalid
                             (carries every problem found, not just the first)
"""

from __future__ import annotations

from collections.abc import Sequence

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


class CatalogueError(NbaError):
    """The catalogue cannot be loaded; ``problems`` lists every reason, one a line."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid catalogue, {count} {noun}:\n  " + "\n  ".join(self.problems))
