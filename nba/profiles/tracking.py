"""Tracking: a touch-point event checked, resolved to its customer, stored once, and applied to
the customer's profile, all in one write transaction.

The rules (issue 13's contract): ``event_id`` is the idempotency key: the same event again is
a ``duplicate`` and changes nothing; the id reused for anything else is ``ALREADY_EXISTS``. An
event names its customer by ``customer_id``, by identifiers, or both (identity resolution:
``nba.profiles.identity``); one that links two customers merges them, the survivor applying
the absorbed customer's events. ``occurred_at`` places the event in time (late and
out-of-order events included); one dated more than the clock skew ahead is refused; without
it, the event happened when it was received.

The storage is handed in (``ProfileRepository``; ``nba.storage.store.Store`` is one), so this
module imports none.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from nba.clock import Clock, SystemClock
from nba.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NbaError
from nba.inputs import CLOCK_SKEW, check_id
from nba.policy.profile import ProfileDefinition
from nba.profiles.identity import Candidate, IdentityRules, resolve
from nba.profiles.profile import Profile, TrackedEvent, check

__all__ = ["ProfileRepository", "TrackInput", "TrackResult", "Tracker"]


class ProfileRepository(Protocol):
    """What tracking needs of storage (``nba.storage.profiles.Profiles``), inside ``write()``."""

    def write(self) -> AbstractContextManager[Any]: ...

    def read(self) -> AbstractContextManager[Any]: ...

    def survivor(self, conn: Any, customer_id: str) -> str | None: ...

    def load(self, conn: Any, customer_id: str) -> tuple[str, datetime, int, dict[str, Any]] | None: ...

    def created_at(self, conn: Any, customer_id: str) -> datetime | None: ...

    def save(
        self, conn: Any, customer_id: str, created_at: datetime, version: int, state: Mapping[str, Any], now: datetime
    ) -> None: ...

    def holders(self, conn: Any, kind: str, value: str) -> list[str]: ...

    def identities(self, conn: Any, customer_id: str) -> dict[str, list[str]]: ...

    def add_identities(self, conn: Any, customer_id: str, identities: Mapping[str, str]) -> None: ...

    def separated(self, conn: Any, a: str, b: str) -> bool: ...

    def merge(self, conn: Any, survivor: str, absorbed: str, cause: str, now: datetime) -> None: ...

    def stored_event(self, conn: Any, event_id: str) -> tuple[str, str] | None: ...

    def insert_event(
        self,
        conn: Any,
        event_id: str,
        customer_id: str,
        event_type: str,
        source: str,
        occurred_at: datetime,
        received_at: datetime,
        properties: Mapping[str, Any],
        identities: Mapping[str, str],
        content_hash: str,
    ) -> None: ...

    def events(self, conn: Any, customer_id: str) -> Iterable[tuple[str, str, str, datetime, dict[str, Any]]]: ...


@dataclass(frozen=True)
class TrackInput:
    """A touch-point event as a caller sends it."""

    event_id: str
    type: str
    customer_id: str = ""
    #: identifier kind -> value, as sent (normalised here)
    identities: Mapping[str, str] = field(default_factory=dict)
    #: the touch point
    source: str = ""
    #: when it happened (timezone-aware); None: when received
    occurred_at: datetime | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackResult:
    #: the event was stored before: nothing changed
    duplicate: bool
    #: the customer it belongs to (the survivor of any merge)
    customer_id: str
    #: customers this event merged into ``customer_id``
    merged: tuple[str, ...] = ()
    #: customers its identifiers point at that stay apart (a unique identifier differs, or an
    #: earlier merge of the two was undone)
    apart: tuple[str, ...] = ()
    #: the profile's version after the event
    version: int = 0


@dataclass(frozen=True)
class _Prepared:
    """An event past the checks that need no database."""

    event: TrackInput
    definition: ProfileDefinition
    rules: IdentityRules
    identities: Mapping[str, str]
    occurred: datetime
    now: datetime
    digest: str


class Tracker:
    """Tracks events against the profile definition ``definition()`` returns (the live policy
    set's), in ``repository``."""

    def __init__(
        self,
        repository: ProfileRepository,
        definition: Callable[[], ProfileDefinition],
        clock: Clock | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self._repository = repository
        self._definition = definition
        self._clock = clock or SystemClock()
        self._new_id = new_id or (lambda: f"cus-{uuid.uuid4().hex[:20]}")

    def track(self, event: TrackInput) -> TrackResult:
        """Raises ``InvalidArgument`` naming the field for an event that cannot be taken,
        ``AlreadyExists`` for an ``event_id`` used for another event, ``FailedPrecondition``
        for identifiers that name several customers and none that merges."""
        prepared = self._prepare(event)
        with self._repository.write() as conn:
            return self._take(conn, prepared)

    def track_many(self, events: list[TrackInput]) -> list[TrackResult | NbaError]:
        """Each event's result, or the error it earned, in order: one write transaction for
        the lot (a group commit: what makes a batch fast), each event taken or refused on its
        own. An event refused inside the transaction is refused before it writes anything; a
        database fault takes the batch again one event at a time, so it costs only its own."""
        prepared: list[_Prepared | NbaError] = []
        for event in events:
            try:
                prepared.append(self._prepare(event))
            except NbaError as exc:
                prepared.append(exc)
        results: list[TrackResult | NbaError] = []
        try:
            with self._repository.write() as conn:
                for item in prepared:
                    if isinstance(item, NbaError):
                        results.append(item)
                        continue
                    try:
                        results.append(self._take(conn, item))
                    except (InvalidArgument, AlreadyExists, FailedPrecondition) as exc:
                        results.append(exc)
        except Exception as exc:
            if isinstance(exc, NbaError) and not isinstance(exc, (InvalidArgument, AlreadyExists, FailedPrecondition)):
                raise  # the database is unavailable: nothing was taken, the caller retries the batch
            results = []
            for item in prepared:  # a fault in one event must not cost the others
                if isinstance(item, NbaError):
                    results.append(item)
                    continue
                try:
                    with self._repository.write() as conn:
                        results.append(self._take(conn, item))
                except NbaError as one:
                    results.append(one)
        return results

    def _prepare(self, event: TrackInput) -> _Prepared:
        """The checks that need no database: ids, the time, identifiers normalised, the
        event against the profile's declared types, and the content hash."""
        definition = self._definition()
        rules = IdentityRules(definition.kinds, definition.default_region)
        now = self._clock.now()
        check_id("event_id", event.event_id)
        check_id("type", event.type)
        check_id("customer_id", event.customer_id, required=False)
        check_id("source", event.source, required=False)
        identities = rules.normalise_all(event.identities)
        if not event.customer_id and not identities:
            raise InvalidArgument("customer_id: required when the event carries no identifier (identities)", field="customer_id")
        occurred = event.occurred_at or now
        if occurred.tzinfo is None:
            raise InvalidArgument("occurred_at: needs a time zone (UTC: ...Z)", field="occurred_at")
        occurred = occurred.astimezone(UTC)  # stored as UTC: SQLite keeps no offset
        if occurred > now + CLOCK_SKEW:
            raise InvalidArgument(
                f"occurred_at: {occurred.isoformat()} is in the future (beyond {CLOCK_SKEW.total_seconds() / 60:.0f} "
                "minutes of clock skew); send the time the event happened",
                field="occurred_at",
            )
        check(definition, event.type, event.properties)
        # an event sent without its time is the same event when sent again: its time is not part of it
        digest = _content_hash(event.customer_id, identities, event.type, event.source, event.occurred_at, event.properties)
        return _Prepared(event, definition, rules, identities, occurred, now, digest)

    def _take(self, conn: Any, item: _Prepared) -> TrackResult:
        """Within a write transaction: the event stored once and applied to its customer."""
        repo, event, definition, rules, now = self._repository, item.event, item.definition, item.rules, item.now
        stored = repo.stored_event(conn, event.event_id)
        if stored is not None:
            if stored[0] != item.digest:
                raise AlreadyExists(f"event_id: '{event.event_id}' was already used for another event; use a new event_id")
            customer = repo.survivor(conn, stored[1]) or stored[1]
            loaded = repo.load(conn, customer)
            return TrackResult(True, customer, version=loaded[2] if loaded else 0)

        def candidate(customer_id: str) -> Candidate | None:
            created = repo.created_at(conn, customer_id)
            if created is None:
                return None
            unique = {k: v[0] for k, v in repo.identities(conn, customer_id).items() if rules.unique(k) and v}
            return Candidate(customer_id, created.timestamp(), unique)

        def owners(kind: str, value: str) -> list[Candidate]:
            return [c for c in (candidate(h) for h in repo.holders(conn, kind, value)) if c is not None]

        explicit = (repo.survivor(conn, event.customer_id) or event.customer_id) if event.customer_id else None
        resolution = resolve(
            rules, explicit, item.identities, owners, candidate, lambda a, b: repo.separated(conn, a, b), self._new_id
        )
        customer = resolution.customer_id
        loaded = repo.load(conn, customer)
        profile = Profile.load(definition, loaded[3]) if loaded and loaded[3] else Profile(definition, customer, now.timestamp())
        created = loaded[1] if loaded else now
        for absorbed in resolution.merged:
            moved = [_tracked(absorbed, row) for row in repo.events(conn, absorbed)]
            repo.merge(conn, customer, absorbed, f"event {event.event_id}", now)
            profile.absorb(moved)
        repo.add_identities(conn, customer, resolution.identities)
        repo.insert_event(
            conn,
            event.event_id,
            customer,
            event.type,
            event.source,
            item.occurred,
            now,
            event.properties,
            item.identities,
            item.digest,
        )
        profile.apply(
            TrackedEvent(event.event_id, customer, event.type, event.source, item.occurred.timestamp(), dict(event.properties))
        )
        repo.save(conn, customer, created, profile.version, profile.dump(), now)
        return TrackResult(False, customer, resolution.merged, resolution.apart, profile.version)

    def profile(self, customer_id: str) -> Profile | None:
        """A customer's profile (by any id it has had), or None."""
        found = self.lookup(customer_id=customer_id)
        return found[0] if found else None

    def lookup(self, customer_id: str = "", kind: str = "", value: str = "") -> tuple[Profile, dict[str, list[str]]] | None:
        """A customer's profile and identifiers, by any id it has had or by one identifier;
        None when unknown. Raises ``InvalidArgument`` for a malformed identifier and
        ``FailedPrecondition`` for one several customers hold."""
        definition = self._definition()
        repo = self._repository
        if not customer_id and not kind:
            raise InvalidArgument("customer_id: required, or identifier_kind and identifier_value", field="customer_id")
        normalised = ""
        if kind:
            rules = IdentityRules(definition.kinds, definition.default_region)
            found = rules.normalise(kind, value, "identifier_value")
            if found is None:
                raise InvalidArgument(f"identifier_value: '{value}' is no identifier", field="identifier_value")
            normalised = found
        with repo.read() as conn:  # a read: no write lock held against trackers
            customer: str | None
            if kind:
                holders = repo.holders(conn, kind, normalised)
                if len(holders) > 1:
                    raise FailedPrecondition(
                        f"identifier_value: {kind} '{normalised}' is held by {len(holders)} customers "
                        f"({', '.join(holders)}); ask by customer_id"
                    )
                customer = holders[0] if holders else None
            else:
                check_id("customer_id", customer_id)
                customer = repo.survivor(conn, customer_id)
            loaded = repo.load(conn, customer) if customer else None
            identities = repo.identities(conn, customer) if loaded and customer else {}
        if loaded is None:
            return None
        profile = Profile.load(definition, loaded[3]) if loaded[3] else Profile(definition, loaded[0], loaded[1].timestamp())
        return profile, identities


def _tracked(customer_id: str, row: tuple[str, str, str, datetime, dict[str, Any]]) -> TrackedEvent:
    event_id, event_type, source, occurred, properties = row
    return TrackedEvent(event_id, customer_id, event_type, source, occurred.timestamp(), properties)


def _content_hash(
    customer_id: str,
    identities: Mapping[str, str],
    event_type: str,
    source: str,
    occurred: datetime | None,
    properties: Mapping[str, Any],
) -> str:
    """sha-256 of what an event says, canonically (sorted keys, UTC time): the same event sent
    twice hashes the same; anything else under its id does not."""
    body = {
        "customer_id": customer_id,
        "identities": dict(sorted(identities.items())),
        "type": event_type,
        "source": source,
        "occurred_at": occurred.astimezone(UTC).isoformat() if occurred is not None else None,
        "properties": _canonical(properties),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _canonical(value: Any) -> Any:
    """Numbers as floats, recursively: 10 and 10.0 are one value (gRPC's Struct sends floats,
    a JSON Lines import may send integers)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value
