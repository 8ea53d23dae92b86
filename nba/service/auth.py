"""Bearer tokens for AdminService (who may read, and who may change, the live policy set) and
for customer profiles (ProfileService.GetProfile: a viewer; ProfileService.Unmerge: an editor).

Tokens come from configuration as ``name:role:token`` (``--admin-tokens`` /
``NBA_ADMIN_TOKENS``). ``viewer`` may get, list, validate and preview; ``editor`` may also
publish and roll back. DecisionService needs no token: channel systems never hold editing
rights. With no tokens configured, AdminService refuses every call.
"""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from nba.errors import PermissionDenied, Unauthenticated

__all__ = ["AuthInterceptor", "Caller", "Tokens", "acting_as", "current_caller", "may", "needed_role"]

ADMIN_PREFIX = "/nba.v1.AdminService/"
EDITOR_METHODS = frozenset({"PublishPolicySet", "RollbackPolicySet"})
#: methods outside AdminService that need a token, and the least role: profiles hold personal data
PROTECTED = {
    "/nba.v1.ProfileService/GetProfile": "viewer",
    "/nba.v1.ProfileService/Unmerge": "editor",
    "/nba.v1.ProfileService/ForgetCustomer": "editor",
}
_RANK = {"viewer": 1, "editor": 2}


@dataclass(frozen=True)
class Caller:
    name: str
    role: str


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("nba_caller", default=None)


def may(role: str, needed: str) -> bool:
    """Whether ``role`` is ``needed`` or above (viewer < editor)."""
    return _RANK.get(role, 0) >= _RANK[needed]


def current_caller() -> Caller:
    """The authenticated caller of the admin call being served."""
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("authorization: no caller")
    return caller


def needed_role(method: str) -> str | None:
    """The least role a method needs (its full gRPC name, ``/nba.v1.AdminService/PublishPolicySet``),
    or None when it needs no token. The HTTP API asks the same of the method a route serves."""
    if method.startswith(ADMIN_PREFIX):
        return "editor" if method[len(ADMIN_PREFIX) :] in EDITOR_METHODS else "viewer"
    return PROTECTED.get(method)


@contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """``current_caller()`` is ``caller`` within the block (the call being served)."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)


class Tokens:
    """The configured bearer tokens (``name:role:token``), and who presents one."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._tokens: list[tuple[bytes, Caller]] = []
        for entry in entries:
            name, role, token = entry.split(":", 2)
            self._tokens.append((token.encode(), Caller(name, role)))

    def entries(self) -> list[tuple[bytes, Caller]]:
        """Each configured token and its caller (the console's sessions fingerprint them)."""
        return list(self._tokens)

    def authenticate(self, header: str, how: str = "metadata") -> Caller:
        """The caller whose token ``header`` (``Bearer <token>``) presents; ``Unauthenticated``
        otherwise. ``how`` names what carries it in the message: gRPC metadata, an HTTP header."""
        if not self._tokens:
            raise Unauthenticated("authorization: AdminService is disabled: no admin tokens are configured (NBA_ADMIN_TOKENS)")
        scheme, _, presented = header.partition(" ")
        presented = presented.strip(" ")  # RFC 6750 §2.1: "Bearer" 1*SP b64token
        if scheme.lower() != "bearer" or not presented:
            raise Unauthenticated(f"authorization: send {how} 'authorization: Bearer <token>'")
        found = None
        for token, caller in self._tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(token, presented.encode()):
                found = caller
        if found is None:
            raise Unauthenticated("authorization: unknown token")
        return found

    def authorize(self, headers: list[str], method: str, needed: str, how: str = "metadata") -> Caller:
        """The caller the ``authorization`` values present, if their role is ``needed`` or above;
        ``Unauthenticated`` or ``PermissionDenied`` otherwise."""
        if len(headers) > 1:  # which one would count is not for us to guess (RFC 6750 §2.1: one)
            raise Unauthenticated(f"authorization: sent {len(headers)} times; send one 'authorization: Bearer <token>'")
        caller = self.authenticate(headers[0] if headers else "", how)
        if not may(caller.role, needed):
            raise PermissionDenied(
                f"authorization: '{caller.name}' is a {caller.role}; {method.rsplit('/', 1)[-1]} needs an {needed}"
            )
        return caller


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = Tokens(tokens)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None:
            return handler
        needed = needed_role(method)
        if needed is None:
            return handler
        headers = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        inner = handler.unary_unary

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with acting_as(self._tokens.authorize(headers, method, needed)):
                return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
