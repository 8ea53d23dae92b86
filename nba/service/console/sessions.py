"""Console sessions: who signed in with which admin token, in a signed cookie.

The cookie holds a keyed fingerprint of the token they signed in with (never the token), the
token's sign-out count then, a CSRF token and the time it was issued, signed with a key nba keeps
in its database (so every worker and replica reads the same cookie). A session is good for
``MAX_AGE_SECONDS`` and only while its token is still configured (removing a token from
``--admin-tokens`` signs out everyone who used it, at the next request) and not signed out:
signing out counts one more sign-out for the token, in the database, which ends every session of
that token (a copied cookie included). The role is the token's role now, not the one it had at
sign-in.

Changes need the session's CSRF token (the synchroniser token pattern, OWASP CSRF Prevention
Cheat Sheet): a form field ``csrf`` or the ``x-csrf-token`` header, compared in constant time;
a request whose ``Origin`` names another site is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer

from nba.errors import PermissionDenied, Unauthenticated
from nba.service.auth import Caller, Tokens

__all__ = ["COOKIE", "MAX_AGE_SECONDS", "Kept", "Session", "Sessions", "check_csrf", "check_origin"]

COOKIE = "nba_console"
#: a working day: a session signed in in the morning lasts until evening, not until next week
MAX_AGE_SECONDS = 8 * 3600


@dataclass(frozen=True)
class Session:
    caller: Caller
    csrf: str
    #: the keyed fingerprint of the token it was signed in with
    fingerprint: str = ""


def _name(fingerprint: str) -> str:
    """Where a token's sign-outs are counted: ``secrets.name``, at most 64 characters."""
    return f"console_signed_out_{fingerprint[:40]}"


class Kept(Protocol):
    """Where sign-outs are counted (the database's ``secrets``: nba.storage.erasure)."""

    def read_secret(self, name: str) -> str | None: ...

    def write_secret(self, name: str, value: str) -> None: ...


class Sessions:
    """Issues and reads session cookies. ``key()`` gives the signing key (made once, kept in the
    database); ``secure``: the cookie is ``Secure`` (nba serves TLS, or a proxy in front does);
    ``kept``: where sign-outs are counted (None: sessions end only by age or token)."""

    def __init__(self, tokens: Tokens, key: Callable[[], str], secure: bool = False, kept: Kept | None = None) -> None:
        self._tokens = tokens
        self._key = key
        self._kept = kept
        self.secure = secure

    @cached_property
    def _secret(self) -> str:
        return self._key()  # once a process: it reads (or makes) the key in the database

    @cached_property
    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._secret, salt="nba-console-session")

    def _fingerprint(self, token: bytes) -> str:
        return hmac.new(self._secret.encode(), token, hashlib.sha256).hexdigest()[:32]

    def sign_in(self, token: str) -> tuple[Caller, str]:
        """The caller ``token`` names and the cookie value of a new session;
        ``Unauthenticated`` for a token that is not configured."""
        caller = self._tokens.authenticate(f"Bearer {token.strip()}", "the sign-in form")
        fingerprint = self._fingerprint(token.strip().encode())
        value = self._serializer.dumps({"f": fingerprint, "g": self._signed_out(fingerprint), "c": secrets.token_urlsafe(24)})
        return caller, value

    def sign_out(self, session: Session) -> None:
        """Ends every session of the token ``session`` signed in with."""
        if self._kept is not None:
            self._kept.write_secret(_name(session.fingerprint), str(self._signed_out(session.fingerprint) + 1))

    def _signed_out(self, fingerprint: str) -> int:
        if self._kept is None:
            return 0
        value = self._kept.read_secret(_name(fingerprint))
        return int(value) if value is not None and value.isdigit() else 0

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, or None: no cookie, a forged or expired one, or its token
        no longer configured."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=MAX_AGE_SECONDS)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("f"), str) or not isinstance(data.get("c"), str):
            return None
        for token, caller in self._tokens.entries():
            if hmac.compare_digest(self._fingerprint(token), data["f"]):
                if data.get("g", 0) != self._signed_out(data["f"]):
                    return None  # signed out since
                return Session(caller, data["c"], data["f"])
        return None

    def cookie_header(self, value: str, max_age: int = MAX_AGE_SECONDS) -> str:
        """The ``set-cookie`` value: HttpOnly (no script reads it), SameSite=Lax (another site's
        form cannot send it; a link still opens the console signed in), Secure under TLS."""
        parts = [f"{COOKIE}={value}", "Path=/console", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    def sign_out_header(self) -> str:
        return self.cookie_header("", max_age=0)


def check_origin(origin: str | None, host: str | None) -> None:
    """``PermissionDenied`` when the browser says the request comes from a page of another site."""
    if origin and origin != "null" and host and urlsplit(origin).netloc.lower() != host.lower():
        raise PermissionDenied(f"origin: {origin[:100]!r} is not this console's; changes are taken from its own pages only")


def check_csrf(session: Session, sent: str | None, origin: str | None, host: str | None) -> None:
    """``PermissionDenied`` unless ``sent`` is the session's CSRF token and ``origin`` (when the
    browser sent one) is the console's own."""
    check_origin(origin, host)
    if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise PermissionDenied("csrf: missing or wrong; reload the page and try again")


def require(session: Session | None) -> Session:
    if session is None:
        raise Unauthenticated("sign in first")
    return session
