"""Console sessions: who signed in with which admin token, in a signed cookie.

The cookie holds the caller's name, a keyed fingerprint of the token they signed in with (never
the token), a CSRF token and the time it was issued, signed with a key nba keeps in its database
(so every worker and replica reads the same cookie). A session is good for ``MAX_AGE_SECONDS``
and only while its token is still configured: removing a token from ``--admin-tokens`` signs
out everyone who used it, at the next request. The role is the token's role now, not the one it
had at sign-in.

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
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer

from nba.errors import PermissionDenied, Unauthenticated
from nba.service.auth import Caller, Tokens

__all__ = ["COOKIE", "MAX_AGE_SECONDS", "Session", "Sessions"]

COOKIE = "nba_console"
#: a working day: a session signed in in the morning lasts until evening, not until next week
MAX_AGE_SECONDS = 8 * 3600


@dataclass(frozen=True)
class Session:
    caller: Caller
    csrf: str


class Sessions:
    """Issues and reads session cookies. ``key()`` gives the signing key (made once, kept in the
    database); ``secure``: the console is served over TLS, so the cookie is ``Secure``."""

    def __init__(self, tokens: Tokens, key: Callable[[], str], secure: bool = False) -> None:
        self._tokens = tokens
        self._key = key
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
        value = self._serializer.dumps({"f": self._fingerprint(token.strip().encode()), "c": secrets.token_urlsafe(24)})
        return caller, value

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
                return Session(caller, data["c"])
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


def check_csrf(session: Session, sent: str | None, origin: str | None, host: str | None) -> None:
    """``PermissionDenied`` unless ``sent`` is the session's CSRF token and ``origin`` (when the
    browser sent one) is the console's own."""
    if origin and origin != "null" and host and urlsplit(origin).netloc != host:
        raise PermissionDenied(f"origin: {origin[:100]!r} is not this console's; changes are taken from its own pages only")
    if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise PermissionDenied("csrf: missing or wrong; reload the page and try again")


def require(session: Session | None) -> Session:
    if session is None:
        raise Unauthenticated("sign in first")
    return session
