"""Forgetting a customer: ``ForgetCustomer`` and ``nba profiles forget`` (the right to erasure,
GDPR Art. 17).

``Eraser.forget`` resolves the customer (by any id they have had, or by an identifier), flushes
the decision log (a decision still in the writer's queue would be written after the erasure,
naming them), erases and pseudonymises in one write transaction (``nba.storage.erasure``), then
has every cache drop them (``after``: this process's profile cache, contact history and recent
decisions, and the other processes by the bus). Idempotent: forgetting again finds nothing left,
and says the customer was forgotten before.

Pseudonyms are keyed (HMAC-SHA256, RFC 2104), not plain hashes: customer ids and identifiers are
guessable, and a plain hash of a guess would find its rows again. Without the key, a pseudonym
names nobody; with it, one customer's decisions still group together for evaluation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from nba.clock import Clock, SystemClock
from nba.errors import FailedPrecondition, InvalidArgument
from nba.inputs import check_id, check_text
from nba.policy.profile import ProfileDefinition
from nba.profiles.identity import IdentityRules
from nba.records import PSEUDONYM_PREFIX

__all__ = ["FORGOTTEN", "Eraser", "ErasureResult", "Pseudonyms", "naming"]

#: marks a forgotten customer's id among the profile ids on the bus (ids hold no control character)
FORGOTTEN = "\x1fforgotten\x1f"


class ErasureStore(Protocol):
    """What forgetting needs of storage (``nba.storage.erasure.Erasures``, the ``Store``)."""

    def read(self) -> AbstractContextManager[Any]: ...

    def write(self) -> AbstractContextManager[Any]: ...

    def holders(self, conn: Any, kind: str, value: str) -> list[str]: ...

    def customer_ids(self, conn: Any, customer_id: str) -> list[str]: ...

    def forgotten(self, conn: Any, pseudonym: str) -> bool: ...

    def erase_customer(
        self,
        conn: Any,
        ids: list[str],
        pseudonym: str,
        pseudonymise: Callable[[str], str],
        now: datetime,
        requested_by: str,
        reason: str = "",
        identifiers: Iterable[str] = (),
        audit: bool = True,
        names: Callable[[str, set[str]], bool] | None = None,
    ) -> dict[str, int]: ...


class Pseudonyms:
    """Keyed pseudonyms: ``anon-`` and 26 base32 characters (130 bits) of HMAC-SHA256 under
    ``key``, by kind (a customer id and a caller's key of the same text differ)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonym key needs at least 16 bytes")
        self._key = key

    def customer(self, customer_id: str) -> str:
        return self._make("customer", customer_id)

    def key(self, value: str) -> str:
        """A caller-chosen key (a request_id, a feedback event_id) that may name the customer."""
        return self._make("key", value)

    def _make(self, kind: str, value: str) -> str:
        digest = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()
        return PSEUDONYM_PREFIX + base64.b32encode(digest).decode().rstrip("=").lower()[:26]


_PHONE_LIKE = re.compile(r"\+?[\d\s\-().]{6,32}")


def naming(rules: IdentityRules) -> Callable[[str, set[str]], bool]:
    """Whether a text names a customer whose ids and identifiers (normalised, casefolded) are
    ``named``: equal to one of them, or an e-mail address or phone number that normalises to
    one ("Ada@Example.com ", "020 7946 0018" for +442079460018), read as ``rules`` read them."""
    emails = [kind for kind, spec in rules.kinds.items() if spec.format == "email"]
    phones = [kind for kind, spec in rules.kinds.items() if spec.format == "phone"]

    def names(text: str, named: set[str]) -> bool:
        if text.strip().casefold() in named:
            return True
        kinds = emails if "@" in text else phones if _PHONE_LIKE.fullmatch(text.strip()) else []
        for kind in kinds:
            try:
                normalised = rules.normalise(kind, text)
            except InvalidArgument:
                continue
            if normalised is not None and normalised.casefold() in named:
                return True
        return False

    return names


@dataclass(frozen=True)
class ErasureResult:
    #: what the customer's decisions carry now
    pseudonym: str
    #: the ids erased: the customer and every id merged into them
    customer_ids: tuple[str, ...]
    #: rows erased or pseudonymised, by table
    counts: dict[str, int] = field(default_factory=dict)
    #: the customer had been forgotten before (nothing of them was left but what came since)
    forgotten_before: bool = False


class Eraser:
    """Forgets customers in ``store``; ``pseudonyms()`` gives the keyed pseudonyms (made on
    first use), ``flush()`` writes what the decision log holds, ``after(ids)`` drops the
    customers from every cache."""

    def __init__(
        self,
        store: ErasureStore,
        definition: Callable[[], ProfileDefinition],
        pseudonyms: Callable[[], Pseudonyms],
        flush: Callable[[], None] = lambda: None,
        after: Callable[[list[str]], None] = lambda ids: None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._definition = definition
        self._pseudonyms = pseudonyms
        self._flush = flush
        self._after = after
        self._clock = clock or SystemClock()

    def forget(
        self, customer_id: str = "", kind: str = "", value: str = "", requested_by: str = "", reason: str = ""
    ) -> ErasureResult:
        """Raises ``InvalidArgument`` naming the field for a malformed id, identifier or reason,
        ``FailedPrecondition`` for an identifier several customers hold."""
        check_text("reason", reason, max_length=500)
        if bool(kind) != bool(value):
            raise InvalidArgument(
                "identifier_value: give identifier_kind and identifier_value together", field="identifier_value"
            )
        if customer_id and kind:
            raise InvalidArgument("customer_id: give customer_id or an identifier, not both", field="customer_id")
        if not customer_id and not kind:
            raise InvalidArgument("customer_id: required, or identifier_kind and identifier_value", field="customer_id")
        store = self._store
        named: set[str] = set()
        definition = self._definition()
        rules = IdentityRules(definition.kinds, definition.default_region)
        if kind:
            if kind not in definition.kinds:
                raise InvalidArgument(
                    f"identifier_kind: '{kind[:64]}' is not an identifier kind ({', '.join(sorted(definition.kinds))})",
                    field="identifier_kind",
                )
            normalised = rules.normalise(kind, value, "identifier_value")
            if normalised is None:
                raise InvalidArgument(f"identifier_value: '{value[:80]}' is no identifier", field="identifier_value")
            with store.read() as conn:
                holders = store.holders(conn, kind, normalised)
            if len(holders) > 1:
                raise FailedPrecondition(
                    f"identifier_value: {kind} '{normalised}' is held by {len(holders)} customers; forget each by customer_id"
                )
            named.add(normalised)
            customer_id = holders[0] if holders else ""
        else:
            check_id("customer_id", customer_id)
        pseudonyms = self._pseudonyms()
        self._flush()
        with store.write() as conn:
            # an identifier nobody holds (any more): only the dead letters naming it are left
            ids = store.customer_ids(conn, customer_id) if customer_id else []
            pseudonym = pseudonyms.customer(ids[0]) if ids else pseudonyms.key(f"{kind}:{sorted(named)[0]}")
            before = store.forgotten(conn, pseudonym)
            counts = store.erase_customer(
                conn,
                ids,
                pseudonym,
                pseudonyms.key,
                self._clock.now(),
                requested_by or "unknown",
                reason,
                named,
                names=naming(rules),
            )
        self._after(ids)
        return ErasureResult(pseudonym, tuple(ids), counts, before)
