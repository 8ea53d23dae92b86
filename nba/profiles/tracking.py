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
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from nba import metrics
from nba.clock import Clock, SystemClock
from nba.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NbaError, NotFound
from nba.inputs import CLOCK_SKEW, check_id
from nba.policy.profile import ProfileDefinition
from nba.profiles.cache import ProfileCache
from nba.profiles.identity import Candidate, IdentityRules, resolve
from nba.profiles.profile import NotInDefinition, Profile, TrackedEvent, check, id_text
from nba.profiles.scores import Example, ScoreModels

if TYPE_CHECKING:
    from nba.storage.dead_letters import DeadLetter

log = logging.getLogger("nba.profiles")

__all__ = ["DeadLettered", "ProfileRepository", "TrackInput", "TrackResult", "Tracker", "UnmergeResult"]

#: what a refused event's message says it became
KEPT = "kept as a dead letter: once the profile section accepts it, `nba profiles dead-letters --replay` applies it"


class DeadLettered(InvalidArgument):
    """An event the profile definition refused, now kept as a dead letter (INVALID_ARGUMENT to
    the caller, who learns it was not applied; nothing is lost)."""


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

    def add_identities(self, conn: Any, customer_id: str, identities: Mapping[str, str], origin: str | None = None) -> None: ...

    def separated(self, conn: Any, a: str, b: str) -> bool: ...

    def merge(self, conn: Any, survivor: str, absorbed: str, cause: str, now: datetime) -> None: ...

    def stored_events(self, conn: Any, event_ids: list[str]) -> dict[str, tuple[str, str]]: ...

    def unmerge(self, conn: Any, customer_id: str, by: str, now: datetime) -> tuple[str, list[str]]: ...

    def add_relationship(self, conn: Any, customer_id: str, kind: str, other_id: str, event_id: str, at: datetime) -> None: ...

    def profile_row(self, conn: Any, customer_id: str) -> tuple[datetime, int, dict[str, Any], str | None] | None: ...

    def profile_rows(
        self, conn: Any, customer_ids: Iterable[str]
    ) -> dict[str, tuple[datetime, int, dict[str, Any], str | None]]: ...

    def identities_of(self, conn: Any, customer_ids: Iterable[str]) -> dict[str, dict[str, list[str]]]: ...

    def save_many(self, conn: Any, profiles: list[tuple[str, int, Mapping[str, Any]]], now: datetime) -> None: ...

    def built_under_other(self, conn: Any, fingerprint: str, after: str, limit: int) -> list[str]: ...

    def events_of(
        self, conn: Any, customer_ids: list[str]
    ) -> dict[str, list[tuple[str, str, str, datetime, dict[str, Any]]]]: ...

    def insert_events(self, conn: Any, rows: list[dict[str, Any]]) -> None: ...

    def events(self, conn: Any, customer_id: str) -> Iterable[tuple[str, str, str, datetime, dict[str, Any]]]: ...

    def record_segments(self, conn: Any, customer_id: str, changes: Iterable[tuple[str, float, bool]]) -> None: ...

    def leave_segments(self, conn: Any, customer_id: str, now: datetime) -> list[str]: ...

    def postpone(self, conn: Any, customer_id: str, until: datetime) -> None: ...

    def dead_letters(
        self, after_id: int = 0, limit: int = 1000, event_type: str | None = None, conn: Any = None
    ) -> list[DeadLetter]: ...

    def drop_dead_letters(self, conn: Any, event_ids: Iterable[str]) -> None: ...

    def note_dead_letter(self, conn: Any, event_id: str, reason: str, field: str, now: datetime) -> None: ...

    def key_holder(self, conn: Any, event_type: str, key: str) -> str | None: ...

    def add_event_keys(self, conn: Any, rows: list[tuple[str, str, str]]) -> None: ...

    def due_profiles(self, conn: Any, now: datetime, limit: int) -> list[str]: ...

    def add_dead_letter(
        self,
        conn: Any,
        *,
        event_id: str,
        type: str,
        source: str,
        customer_id: str,
        identities: Mapping[str, str],
        occurred_at: datetime | None,
        properties: Mapping[str, Any],
        reason: str,
        field: str,
        now: datetime,
    ) -> None: ...


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
    #: when it was first received, for an event taken later than that (a dead letter replayed):
    #: an event sent without its time happened then; None: now
    received_at: datetime | None = None


@dataclass(frozen=True)
class UnmergeResult:
    #: the customer split off: a customer of its own again
    customer_id: str
    #: the customer it had been merged into
    survivor: str
    #: the ids merged into ``customer_id`` before it was absorbed: they resolve to it again
    merged_ids: tuple[str, ...]
    #: both profiles' versions after (each one more than before)
    version: int
    survivor_version: int


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
    #: for a near-duplicate (``duplicate`` set): the event it repeats (the first with its type's
    #: ``dedupe_by`` value)
    duplicate_of: str = ""


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
    #: why the definition refuses it (it is kept as a dead letter), or None
    refused: NotInDefinition | None = None


class _Unit:
    """One write transaction's unit of work: what it reads, kept for the rest of the
    transaction, and what it writes, held until ``flush`` (before the commit, and before a
    merge reads what was written). Tracking a batch then costs one read of each customer and
    identifier and one write of each profile, not one of each per event; events are inserted
    in one statement. A profile seen for the first time is inserted at once, so that the
    database answers for it like for any other (its identifiers' holders, its survivor)."""

    def __init__(
        self,
        repo: ProfileRepository,
        conn: Any,
        event_ids: list[str],
        learn: Callable[[Any, list[Example]], None] | None = None,
    ) -> None:
        self.repo, self.conn = repo, conn
        #: labels matured in this unit, learned at the flush (``ScoreModels.learn``)
        self.examples: list[Example] = []
        self._learn = learn
        #: event id -> (content hash, customer id): stored before, or earlier in this unit
        self.stored = repo.stored_events(conn, event_ids) if event_ids else {}
        self._survivors: dict[str, str | None] = {}
        self._created: dict[str, datetime | None] = {}
        self._identities: dict[str, dict[str, list[str]]] = {}
        self._holders: dict[tuple[str, str], list[str]] = {}
        #: customer -> (profile, created at), as changed by this unit
        self.profiles: dict[str, tuple[Profile, datetime]] = {}
        #: stored rows read ahead (``prefetch``): customer -> (created at, version, state)
        self._rows: dict[str, tuple[datetime, int, dict[str, Any]]] = {}
        self._dirty: dict[str, None] = {}
        self._events: list[dict[str, Any]] = []
        #: (type, dedupe_by value) -> its first event: read, or taken in this unit
        self._keys: dict[tuple[str, str], str | None] = {}
        self._new_keys: list[tuple[str, str, str]] = []

    def prefetch(self, customer_ids: Iterable[str]) -> None:
        """Reads ahead, in a few statements, what resolving events of these customers needs:
        their rows (survivor, creation, state) and their survivors' identifiers."""
        ids = sorted(set(customer_ids) - set(self._survivors))
        if not ids:
            return
        rows = self.repo.profile_rows(self.conn, ids)
        targets = sorted({r[3] for r in rows.values() if r[3] is not None} - set(rows) - set(self._survivors))
        rows.update(self.repo.profile_rows(self.conn, targets))
        survivors = []
        for customer_id in (*ids, *targets):
            row = rows.get(customer_id)
            if row is None:
                self._survivors[customer_id], self._created[customer_id] = None, None
            elif row[3] is not None:
                target = rows.get(row[3])
                if target is None or target[3] is not None:  # not one step (never, as merges keep it): ask later
                    continue
                self._survivors[customer_id], self._created[customer_id] = row[3], None
            else:
                self._survivors[customer_id], self._created[customer_id] = customer_id, row[0]
                self._rows[customer_id] = row[:3]
                survivors.append(customer_id)
        for customer_id, held in self.repo.identities_of(self.conn, survivors).items():
            self._identities.setdefault(customer_id, held)

    def survivor(self, customer_id: str) -> str | None:
        if customer_id not in self._survivors:
            self._survivors[customer_id] = self.repo.survivor(self.conn, customer_id)
        return self._survivors[customer_id]

    def created_at(self, customer_id: str) -> datetime | None:
        if customer_id in self.profiles:
            return self.profiles[customer_id][1]
        if customer_id not in self._created:
            self._created[customer_id] = self.repo.created_at(self.conn, customer_id)
        return self._created[customer_id]

    def identities(self, customer_id: str) -> dict[str, list[str]]:
        if customer_id not in self._identities:
            self._identities[customer_id] = self.repo.identities(self.conn, customer_id)
        return self._identities[customer_id]

    def holders(self, kind: str, value: str) -> list[str]:
        key = (kind, value)
        if key not in self._holders:
            self._holders[key] = self.repo.holders(self.conn, kind, value)
        return self._holders[key]

    def add_identities(self, customer_id: str, identities: Mapping[str, str], origin: str | None = None) -> None:
        held = self.identities(customer_id)
        new = {k: v for k, v in identities.items() if v not in held.get(k, ())}
        if not new:
            return
        self.repo.add_identities(self.conn, customer_id, new, origin)
        for kind, value in new.items():
            held.setdefault(kind, []).append(value)
            self._holders.pop((kind, value), None)

    def profile(self, definition: ProfileDefinition, customer_id: str, now: datetime) -> Profile:
        """The customer's profile as this unit has it: read once, or new (and inserted)."""
        held = self.profiles.get(customer_id)
        if held is not None:
            return held[0]
        row = self._rows.pop(customer_id, None)
        loaded = (customer_id, *row) if row is not None else self.repo.load(self.conn, customer_id)
        if loaded is not None:
            profile = (
                Profile.load(definition, loaded[3]) if loaded[3] else Profile(definition, customer_id, loaded[1].timestamp())
            )
            if profile.stale or profile.segments_stale:  # stored under an older definition: made again first
                profile.rebuild((_tracked(customer_id, row) for row in self.repo.events(self.conn, customer_id)), now.timestamp())
                self.changed(customer_id)
            self.profiles[customer_id] = (profile, loaded[1])
            return profile
        profile = Profile(definition, customer_id, now.timestamp())
        self.repo.save(self.conn, customer_id, now, 0, profile.dump(), now)
        self.profiles[customer_id] = (profile, now)
        self._survivors[customer_id] = customer_id
        self._created[customer_id] = now
        return profile

    def changed(self, customer_id: str) -> None:
        self._dirty[customer_id] = None

    def key_holder(self, event_type: str, key: str) -> str | None:
        if (event_type, key) not in self._keys:
            self._keys[(event_type, key)] = self.repo.key_holder(self.conn, event_type, key)
        return self._keys[(event_type, key)]

    def add_key(self, event_type: str, key: str, event_id: str) -> None:
        self._keys[(event_type, key)] = event_id
        self._new_keys.append((event_type, key, event_id))

    def add_event(self, row: dict[str, Any]) -> None:
        self._events.append(row)
        self.stored[row["event_id"]] = (row["content_hash"], row["customer_id"])

    def merge(
        self, definition: ProfileDefinition, survivor: str, absorbed: str, cause: str, now: datetime, at: float
    ) -> list[TrackedEvent]:
        """Merges ``absorbed`` into ``survivor``; returns the absorbed customer's events. The
        absorbed customer leaves its segments at ``at`` (the merging event's moment), after
        the changes its own clock brought until then."""
        gone = self.profile(definition, absorbed, now)
        gone.advance(at)
        _record_segments(self.repo, self.conn, gone, exact=False)
        if gone.segments:
            left = max(at, gone.segments_at or at)
            self.repo.leave_segments(self.conn, absorbed, datetime.fromtimestamp(left, UTC))
        self.flush(now)  # what this unit wrote of either is read and moved by the merge
        moved = [_tracked(absorbed, row) for row in self.repo.events(self.conn, absorbed)]
        self.repo.merge(self.conn, survivor, absorbed, cause, now)
        # ids, identifiers and holders moved: read them again
        self._survivors.clear()
        self._created.clear()
        self._identities.clear()
        self._holders.clear()
        self._rows.clear()
        self.profiles.pop(absorbed, None)
        self._dirty.pop(absorbed, None)
        return moved

    def flush(self, now: datetime) -> None:
        if self._events:
            self.repo.insert_events(self.conn, self._events)
            self._events = []
        if self._new_keys:
            self.repo.add_event_keys(self.conn, self._new_keys)
            self._new_keys = []
        if self.examples and self._learn is not None:
            self._learn(self.conn, self.examples)
            self.examples = []
        for customer_id in self._dirty:
            _record_segments(self.repo, self.conn, self.profiles[customer_id][0], exact=False)
        # every dirty profile has its row (``profile`` inserts a new one at once): one UPDATE for all
        self.repo.save_many(self.conn, [(c, self.profiles[c][0].version, self.profiles[c][0].dump()) for c in self._dirty], now)
        self._dirty.clear()


class Tracker:
    """Tracks events against the profile definition ``definition()`` returns (the live policy
    set's), in ``repository``."""

    def __init__(
        self,
        repository: ProfileRepository,
        definition: Callable[[], ProfileDefinition],
        clock: Clock | None = None,
        new_id: Callable[[], str] | None = None,
        cache: ProfileCache | None = None,
        changed: Callable[[list[str]], None] | None = None,
        scores: ScoreModels | None = None,
    ) -> None:
        self._repository = repository
        #: the predictive scores' models: predictions opened and labels learned as events come
        self.scores = scores
        self._definition = definition
        self._clock = clock or SystemClock()
        self._new_id = new_id or (lambda: f"cus-{uuid.uuid4().hex[:20]}")
        #: this process's hot profiles: each profile saved goes in after the commit
        self.cache = cache
        #: told the ids of every profile changed (survivors and absorbed ids), after the commit:
        #: how other processes hear of it (the Redis bus)
        self._changed = changed or (lambda ids: None)

    def track(self, event: TrackInput) -> TrackResult:
        """Raises ``InvalidArgument`` naming the field for an event that cannot be taken,
        ``AlreadyExists`` for an ``event_id`` used for another event, ``FailedPrecondition``
        for identifiers that name several customers and none that merges, and ``DeadLettered``
        (an ``InvalidArgument``) for one the profile definition refuses, once it is kept."""
        try:
            prepared = self._prepare(event)
        except NbaError as exc:
            _tally(event.source, exc)
            raise
        saved: dict[str, tuple[Profile, tuple[str, ...]]] = {}
        doubtful: list[str] = []
        started = self.cache.begin() if self.cache is not None else 0
        kept: DeadLettered | None = None
        try:
            with self._repository.write() as conn:
                unit = _Unit(self._repository, conn, [prepared.event.event_id], self._learn)
                try:
                    try:
                        result = self._take(unit, prepared, saved)
                    except DeadLettered as exc:
                        kept = exc  # raised once the dead letter is committed
                    unit.flush(prepared.now)
                except BaseException:
                    doubtful, saved = _ids(saved), {}  # rolled back, or (at the commit) not known
                    raise
        except BaseException as exc:
            doubtful, saved = doubtful or _ids(saved), {}
            if isinstance(exc, NbaError):
                _tally(event.source, exc)
            raise
        finally:
            self._after(started, saved, doubtful)
        if kept is not None:
            _tally(event.source, kept)
            raise kept
        _tally(event.source, result)
        return result

    def _learn(self, conn: Any, examples: list[Example]) -> None:
        if self.scores is not None and examples:
            self.scores.learn(conn, examples)

    def _after(self, started: int, saved: dict[str, tuple[Profile, tuple[str, ...]]], doubtful: list[str]) -> None:
        """After a write, whatever its end: the saved profiles into the cache, and their ids to
        the other processes. ``doubtful``: ids of a write whose commit failed, perhaps after it
        took effect: dropped here and announced too, so no process keeps an older profile."""
        if self.cache is not None:
            self.cache.saved(started, saved.values())
            if doubtful:
                self.cache.invalidate(doubtful)
        changed = [i for profile, absorbed in saved.values() for i in (profile.customer_id, *absorbed)]
        if changed or doubtful:
            self._changed(list(dict.fromkeys([*changed, *doubtful])))

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
        saved: dict[str, tuple[Profile, tuple[str, ...]]] = {}
        doubtful: list[str] = []
        started = self.cache.begin() if self.cache is not None else 0
        try:
            try:
                with self._repository.write() as conn:
                    taken = [i for i in prepared if not isinstance(i, NbaError)]
                    unit = _Unit(self._repository, conn, [i.event.event_id for i in taken], self._learn)
                    unit.prefetch(i.event.customer_id for i in taken if i.event.customer_id)
                    for item in prepared:
                        if isinstance(item, NbaError):
                            results.append(item)
                            continue
                        try:
                            results.append(self._take(unit, item, saved))
                        except (InvalidArgument, AlreadyExists, FailedPrecondition) as exc:
                            results.append(exc)
                    unit.flush(self._clock.now())
            except Exception as exc:
                doubtful, saved = _ids(saved), {}  # rolled back, or (at the commit) not known
                if isinstance(exc, NbaError) and not isinstance(exc, (InvalidArgument, AlreadyExists, FailedPrecondition)):
                    raise  # the database is unavailable: the caller retries the batch
                results = []
                for item in prepared:  # a fault in one event must not cost the others
                    if isinstance(item, NbaError):
                        results.append(item)
                        continue
                    one_saved: dict[str, tuple[Profile, tuple[str, ...]]] = {}
                    try:
                        with self._repository.write() as conn:
                            unit = _Unit(self._repository, conn, [item.event.event_id], self._learn)
                            try:
                                results.append(self._take(unit, item, one_saved))
                            except DeadLettered as exc:
                                results.append(exc)  # kept: committed with the rest
                            unit.flush(item.now)
                    except NbaError as one:
                        results.append(one)
                        continue
                    for key, value in one_saved.items():
                        saved.pop(key, None)
                        saved[key] = value
        finally:
            self._after(started, saved, doubtful)
        for event, outcome in zip(events, results, strict=True):
            _tally(event.source, outcome)
        return results

    def _prepare(self, event: TrackInput) -> _Prepared:
        """The checks that need no database: ids, the time, identifiers normalised, the
        event against the profile's declared types, and the content hash."""
        definition = self._definition()
        rules = IdentityRules(definition.kinds, definition.default_region)
        now = self._clock.now()
        check_id("event_id", event.event_id)
        check_id("type", event.type, max_length=64)  # the columns' lengths: longer would be the database's error
        check_id("customer_id", event.customer_id, required=False)
        check_id("source", event.source, required=False, max_length=128)
        # an identifier of a kind the profile does not declare is the definition's to fix: the
        # event is kept as a dead letter, its identifiers as sent, rather than refused
        unknown = {k: v for k, v in event.identities.items() if k not in definition.kinds}
        for kind, value in unknown.items():
            check_id(f"identities.{kind}", kind, max_length=64)
            check_id(f"identities.{kind}", value)
        # a value that is no identifier of its kind (an e-mail address without a domain, a phone
        # number read in the wrong region) is the source's or the definition's to fix: kept too
        identities: dict[str, str] = {}
        malformed: dict[str, str] = {}
        misread: InvalidArgument | None = None
        for kind, value in event.identities.items():
            if kind not in definition.kinds:
                continue
            check_id(f"identities.{kind}", value)
            try:
                normalised = rules.normalise(kind, value)
            except InvalidArgument as exc:
                malformed[kind] = value
                misread = misread or exc
                continue
            if normalised is not None:
                identities[kind] = normalised
        if not event.customer_id and not identities and not unknown and not malformed:
            raise InvalidArgument("customer_id: required when the event carries no identifier (identities)", field="customer_id")
        occurred = event.occurred_at or event.received_at or now
        if occurred.tzinfo is None:
            raise InvalidArgument("occurred_at: needs a time zone (UTC: ...Z)", field="occurred_at")
        occurred = occurred.astimezone(UTC)  # stored as UTC: SQLite keeps no offset
        if occurred > now + CLOCK_SKEW:
            raise InvalidArgument(
                f"occurred_at: {occurred.isoformat()} is in the future (beyond {CLOCK_SKEW.total_seconds() / 60:.0f} "
                "minutes of clock skew); send the time the event happened",
                field="occurred_at",
            )
        refused = None
        if misread is not None:
            refused = NotInDefinition(str(misread), field=misread.field)
            identities = {**identities, **malformed}  # (kept as sent with the dead letter; never resolved)
        if unknown and refused is None:
            kind = sorted(unknown)[0]
            refused = NotInDefinition(
                f"identities.{kind}: unknown identifier kind '{kind}'; declared kinds: {', '.join(sorted(definition.kinds))}",
                field=f"identities.{kind}",
            )
            identities = {**identities, **unknown}  # (kept as sent with the dead letter; never resolved)
        try:
            check(definition, event.type, event.properties)
        except NotInDefinition as exc:
            refused = refused or exc
        for event_type, prop in (*definition.relationships.values(), *definition.dedupe.items()):
            other = id_text(event.properties.get(prop)) if event_type == event.type else None
            if other is not None and refused is None:
                try:  # an id another customer or event is known by: kept as a dead letter if it cannot be one
                    check_id(f"properties.{prop}", other)
                except InvalidArgument as exc:
                    refused = NotInDefinition(str(exc), field=exc.field)
        # an event sent without its time is the same event when sent again: its time is not part of it
        digest = _content_hash(event.customer_id, identities, event.type, event.source, event.occurred_at, event.properties)
        return _Prepared(event, definition, rules, identities, occurred, now, digest, refused)

    def _take(self, unit: _Unit, item: _Prepared, saved: dict[str, tuple[Profile, tuple[str, ...]]]) -> TrackResult:
        """Within a write transaction (``unit``): the event stored once and applied to its
        customer. The profile changed goes into ``saved`` (by customer, in the order of their
        last change, with every id it absorbed in this transaction). Raises before it changes
        anything."""
        event, definition, rules, now = item.event, item.definition, item.rules, item.now
        stored = unit.stored.get(event.event_id)
        if stored is not None:
            if stored[0] != item.digest:
                raise AlreadyExists(f"event_id: '{event.event_id}' was already used for another event; use a new event_id")
            return _repeated(unit, stored[1])
        if item.refused is not None:
            unit.repo.add_dead_letter(
                unit.conn,
                event_id=event.event_id,
                type=event.type,
                source=event.source,
                customer_id=event.customer_id,
                identities=item.identities,
                occurred_at=event.occurred_at.astimezone(UTC) if event.occurred_at is not None else None,
                properties=event.properties,
                reason=str(item.refused),
                field=item.refused.field or "",
                now=now,
            )
            raise DeadLettered(f"{item.refused}; {KEPT}", field=item.refused.field)
        dedupe_by = definition.dedupe.get(event.type)
        key = id_text(event.properties.get(dedupe_by)) if dedupe_by is not None else None
        if key is not None:
            first = unit.key_holder(event.type, key)
            if first is not None:  # the same thing from another touch point: counted once
                if first not in unit.stored:
                    unit.stored.update(unit.repo.stored_events(unit.conn, [first]))
                held = unit.stored.get(first)
                # only for the customer the first report went to: a key another customer's event
                # holds says nothing of this one (and the answer must not name them)
                if held is not None and self._same_customer(unit, item, unit.survivor(held[1]) or held[1]):
                    return _repeated(unit, held[1], first)
                key = None  # taken as an event of its own; the key stays the first report's

        def candidate(customer_id: str) -> Candidate | None:
            created = unit.created_at(customer_id)
            if created is None:
                return None
            unique = {k: v[0] for k, v in unit.identities(customer_id).items() if rules.unique(k) and v}
            return Candidate(customer_id, created.timestamp(), unique)

        def owners(kind: str, value: str) -> list[Candidate]:
            return [c for c in (candidate(h) for h in unit.holders(kind, value)) if c is not None]

        explicit = (unit.survivor(event.customer_id) or event.customer_id) if event.customer_id else None
        resolution = resolve(
            rules,
            explicit,
            item.identities,
            owners,
            candidate,
            lambda a, b: unit.repo.separated(unit.conn, a, b),
            self._new_id,
        )
        customer = resolution.customer_id
        profile = unit.profile(definition, customer, now)
        at = _segment_time(item.occurred, now)
        profile.advance(at)  # what the clock changed before the event, at its moments
        if self.scores is not None and definition.scores:
            # predictions whose horizon ended before this event: negative, renewed from the profile
            # without it (the clock had not come by yet)
            unit.examples.extend(profile.mature(min(item.occurred, now).timestamp(), self.scores.predict))
        for absorbed in resolution.merged:
            profile.absorb(unit.merge(definition, customer, absorbed, f"event {event.event_id}", now, at))
        unit.add_identities(customer, resolution.identities, origin=event.customer_id or customer)
        for kind, (event_type, prop) in definition.relationships.items():
            other = id_text(event.properties.get(prop)) if event_type == event.type else None
            if other is not None:  # checked by _prepare
                other = unit.survivor(other) or other
                if other != customer:
                    unit.repo.add_relationship(unit.conn, customer, kind, other, event.event_id, item.occurred)
        if key is not None:
            unit.add_key(event.type, key, event.event_id)
        unit.add_event(
            {
                "event_id": event.event_id,
                "customer_id": customer,
                "type": event.type,
                "source": event.source,
                "occurred_at": item.occurred,
                "received_at": now,
                "properties": dict(event.properties),
                "identities": dict(item.identities),
                "content_hash": item.digest,
                # the id the event named (an absorbed one included), else the one it resolved to:
                # an unmerge of that id gives the event back to it
                "origin": event.customer_id or customer,
            }
        )
        tracked = TrackedEvent(
            event.event_id, customer, event.type, event.source, item.occurred.timestamp(), dict(event.properties)
        )
        profile.apply(tracked)
        profile.settle(at)
        if self.scores is not None and definition.scores:
            unit.examples.extend(profile.observe(tracked, self.scores.predict))
        unit.changed(customer)
        absorbed_ids = list(resolution.merged)
        for gone in resolution.merged:  # absorbed in this transaction: its saved profile is gone
            absorbed_ids.extend(saved.pop(gone, (None, ()))[1])
        absorbed_ids.extend(saved.pop(customer, (None, ()))[1])
        saved[customer] = (profile, tuple(dict.fromkeys(absorbed_ids)))
        return TrackResult(False, customer, resolution.merged, resolution.apart, profile.version)

    @staticmethod
    def _same_customer(unit: _Unit, item: _Prepared, customer: str) -> bool:
        """Whether the event names ``customer``: by its id, or by an identifier they hold."""
        named = item.event.customer_id
        if named and (unit.survivor(named) or named) == customer:
            return True
        return any(customer in unit.holders(kind, value) for kind, value in item.identities.items())

    def unmerge(self, customer_id: str, by: str) -> UnmergeResult:
        """Undoes the merge that absorbed ``customer_id`` (``by``: who asked, recorded with it).
        The customer is one of its own again, with the ids merged into it before, the events
        and identifiers that were first theirs (events and identifiers stored before migration
        0005 have no known origin: they stay with the survivor), and both profiles rebuilt
        from their events. The pair is kept apart from now on: the identifiers that joined
        them no longer merge them. Raises ``InvalidArgument`` for a malformed id, ``NotFound``
        for an id never seen, ``FailedPrecondition`` for one that is not merged."""
        check_id("customer_id", customer_id)
        definition = self._definition()
        now = self._clock.now()
        repo = self._repository
        saved: dict[str, tuple[Profile, tuple[str, ...]]] = {}
        doubtful: list[str] = []
        started = self.cache.begin() if self.cache is not None else 0
        try:
            with repo.write() as conn:
                try:
                    survivor, split = repo.unmerge(conn, customer_id, by, now)
                except LookupError:
                    raise NotFound(f"customer_id: no customer '{customer_id}' (no event has named it)") from None
                except ValueError:
                    raise FailedPrecondition(
                        f"customer_id: '{customer_id}' is not merged into another customer: there is no merge to undo "
                        "(name the absorbed id, not the survivor)"
                    ) from None
                try:
                    before = repo.load(conn, survivor)
                    assert before is not None, survivor
                    for customer, absorbed in ((survivor, ()), (customer_id, tuple(split[1:]))):
                        stored = repo.load(conn, customer)
                        assert stored is not None, customer  # both are customers of their own now
                        profile = Profile(definition, customer, stored[1].timestamp())
                        profile.absorb(_tracked(customer, row) for row in repo.events(conn, customer))
                        if customer == survivor and stored[3]:  # (the split-off one left its segments when merged)
                            profile.carry_segments(Profile.load(definition, stored[3]))
                        profile.settle(now.timestamp())
                        _record_segments(repo, conn, profile)
                        # each id's version goes on from the highest it has answered: the split-off
                        # id answered the survivor's while merged
                        profile.version = max(stored[2], before[2]) + 1
                        repo.save(conn, customer, stored[1], profile.version, profile.dump(), now)
                        saved[customer] = (profile, absorbed)
                except BaseException:
                    doubtful, saved = [survivor, *split], {}
                    raise
        except BaseException:
            doubtful, saved = doubtful or _ids(saved), {}
            raise
        finally:
            self._after(started, saved, doubtful)
        return UnmergeResult(customer_id, survivor, tuple(split[1:]), saved[customer_id][0].version, saved[survivor][0].version)

    def profile(self, customer_id: str) -> Profile | None:
        """A customer's profile (by any id it has had), or None."""
        found = self.lookup(customer_id=customer_id)
        return found[0] if found else None

    def load(self, customer_id: str, identities: bool = False) -> tuple[Profile | None, dict[str, list[str]] | None]:
        """A customer's profile from the database, by any id it has had (None: unknown) and,
        with ``identities``, its identifiers: the cache's loader."""
        definition = self._definition()
        repo = self._repository
        with repo.read() as conn:  # a read: no write lock held against trackers
            # the customer's own row first: one query for a profile asked for by its own id,
            # the merge chain followed only for an id merged into another
            row = repo.profile_row(conn, customer_id)
            loaded: tuple[str, datetime, int, dict[str, Any]] | None = None
            if row is not None and row[3] is None:
                loaded = (customer_id, row[0], row[1], row[2])
            elif row is not None:
                customer = repo.survivor(conn, customer_id)
                loaded = repo.load(conn, customer) if customer else None
            if loaded is None:
                return None, None
            found = repo.identities(conn, loaded[0]) if identities else None
            profile = Profile.load(definition, loaded[3]) if loaded[3] else Profile(definition, loaded[0], loaded[1].timestamp())
            if profile.stale or profile.segments_stale:
                # stored under an older definition and not backfilled yet: read right now, from
                # the events (the backfill, or the customer's next event, stores it)
                profile.rebuild(
                    (_tracked(loaded[0], event) for event in repo.events(conn, loaded[0])), self._clock.now().timestamp()
                )
                profile.segment_changes.clear()  # recorded by whoever stores it
        return profile, (found if found is not None else {}) if identities else None

    def backfill(self, after: str = "", limit: int = 200) -> tuple[list[str], str | None]:
        """Rebuilds, from their stored events, up to ``limit`` profiles (in id order after
        ``after``) built under another definition than the live one, in one write transaction;
        returns the ids rebuilt and where to go on from (None: none left after ``after``).
        Idempotent: a profile another process rebuilt meanwhile is not among them. Caches drop
        the profiles (here and, by the bus, elsewhere) rather than take them: a backfill walks
        every profile, and would push the hot ones out."""
        definition = self._definition()
        repo = self._repository
        ids: list[str] = []
        started = self.cache.begin() if self.cache is not None else 0
        try:
            with repo.write() as conn:
                ids = repo.built_under_other(conn, definition.fingerprint, after, limit)
                rows = repo.profile_rows(conn, ids)
                changed: list[tuple[str, int, Mapping[str, Any]]] = []
                now = self._clock.now()
                profiles = {
                    c: Profile.load(definition, rows[c][2]) if rows[c][2] else Profile(definition, c, rows[c][0].timestamp())
                    for c in ids
                }
                # events are read only for what is rebuilt from them (a changed segment needs none)
                events = repo.events_of(conn, [c for c, p in profiles.items() if p.stale]) if ids else {}
                for customer_id in ids:
                    version, profile = rows[customer_id][1], profiles[customer_id]
                    profile.rebuild((_tracked(customer_id, row) for row in events.get(customer_id, ())), now.timestamp())
                    _record_segments(repo, conn, profile)
                    changed.append((customer_id, version, profile.dump()))
                repo.save_many(conn, changed, now)
        finally:
            self._after(started, {}, ids)  # dropped and announced, whether the commit took or not
        return ids, (ids[-1] if len(ids) == limit else None)

    def sweep_segments(self, limit: int = 200) -> list[str]:
        """Records the segment entries and exits the clock brought (a window passing) for up to
        ``limit`` profiles due by now (``profiles.due_at``), most overdue first, in one write
        transaction; returns their ids. Versions do not change: no event was applied.
        Idempotent: a profile another process did meanwhile is no longer due. A profile that
        cannot be evaluated is logged and looked at again an hour later, not retried at once
        ahead of the others."""
        definition = self._definition()
        repo = self._repository
        with repo.read() as conn:  # most passes find nothing: no write lock taken for that
            if not repo.due_profiles(conn, self._clock.now(), 1):
                return []
        saved: dict[str, tuple[Profile, tuple[str, ...]]] = {}
        doubtful: list[str] = []
        started = self.cache.begin() if self.cache is not None else 0
        try:
            with repo.write() as conn:
                now = self._clock.now()
                ids = repo.due_profiles(conn, now, limit)
                rows = repo.profile_rows(conn, ids)
                changed: list[tuple[str, int, Mapping[str, Any]]] = []
                examples: list[Example] = []
                try:
                    for customer_id in ids:
                        created, version, state, _ = rows[customer_id]
                        try:
                            profile = (
                                Profile.load(definition, state)
                                if state
                                else Profile(definition, customer_id, created.timestamp())
                            )
                            if profile.stale or profile.segments_stale:
                                events = [_tracked(customer_id, r) for r in repo.events(conn, customer_id)]
                                profile.rebuild(events, now.timestamp())
                            else:
                                profile.advance(now.timestamp())
                            matured = profile.mature(now.timestamp(), self.scores.predict) if self.scores is not None else []
                            profile.plan()
                        except Exception:
                            log.exception("segments of a profile could not be evaluated", extra={"customer_id": customer_id})
                            repo.postpone(conn, customer_id, now + timedelta(hours=1))
                            continue
                        examples.extend(matured)  # (only a profile that could be evaluated teaches)
                        _record_segments(repo, conn, profile)
                        changed.append((customer_id, version, profile.dump()))
                        saved[customer_id] = (profile, ())
                    self._learn(conn, examples)
                    repo.save_many(conn, changed, now)
                except BaseException:
                    doubtful, saved = list(ids), {}
                    raise
        except BaseException:
            doubtful, saved = doubtful or _ids(saved), {}
            raise
        finally:
            self._after(started, saved, doubtful)
        return ids

    def replay_dead_letters(
        self, event_type: str | None = None, batch: int = 500, report: Callable[[dict[str, int]], None] | None = None
    ) -> dict[str, int]:
        """Takes every dead letter (of ``event_type``, or all) again, oldest first, a batch a
        transaction, under the definition now live: an event it accepts is applied (at the time
        it happened; one sent without a time happened when first received) and its dead letter
        dropped; one it still refuses keeps its dead letter with the new reason. Safe to run
        again after an interruption: an event applied already answers duplicate. Returns
        counts: applied, duplicate, refused (``report`` gets them after each batch)."""
        repo = self._repository
        counts = {"applied": 0, "duplicate": 0, "refused": 0}
        after = 0
        while letters := repo.dead_letters(after, batch, event_type):
            after = letters[-1].id
            results = self.track_many(
                [
                    TrackInput(
                        d.event_id,
                        d.type,
                        d.customer_id,
                        dict(d.identities),
                        d.source,
                        d.occurred_at,
                        dict(d.properties),
                        received_at=d.received_at,
                    )
                    for d in letters
                ]
            )
            done: list[str] = []
            other: list[tuple[str, NbaError]] = []
            for letter, result in zip(letters, results, strict=True):
                if isinstance(result, DeadLettered):
                    counts["refused"] += 1  # its row has the new reason
                elif isinstance(result, AlreadyExists):  # the sender sent a fixed event under its id: superseded
                    counts["duplicate"] += 1
                    done.append(letter.event_id)
                elif isinstance(result, NbaError):
                    counts["refused"] += 1
                    other.append((letter.event_id, result))
                else:
                    counts["duplicate" if result.duplicate else "applied"] += 1
                    done.append(letter.event_id)
            with repo.write() as conn:
                repo.drop_dead_letters(conn, done)
                for event_id, error in other:
                    repo.note_dead_letter(conn, event_id, str(error), getattr(error, "field", None) or "", self._clock.now())
            if report is not None:
                report(dict(counts))
        return counts

    def lookup(
        self, customer_id: str = "", kind: str = "", value: str = "", identities: bool = True
    ) -> tuple[Profile, dict[str, list[str]]] | None:
        """A customer's profile and (unless ``identities`` is False: then none, and a cached
        profile needs no database) its identifiers, by any id it has had or by one identifier;
        None when unknown. Raises ``InvalidArgument`` for a malformed identifier and
        ``FailedPrecondition`` for one several customers hold."""
        definition = self._definition()
        if not customer_id and not kind:
            raise InvalidArgument("customer_id: required, or identifier_kind and identifier_value", field="customer_id")
        if kind:
            rules = IdentityRules(definition.kinds, definition.default_region)
            normalised = rules.normalise(kind, value, "identifier_value")
            if normalised is None:
                raise InvalidArgument(f"identifier_value: '{value}' is no identifier", field="identifier_value")
            with self._repository.read() as conn:
                holders = self._repository.holders(conn, kind, normalised)
            if len(holders) > 1:
                raise FailedPrecondition(
                    f"identifier_value: {kind} '{normalised}' is held by {len(holders)} customers "
                    f"({', '.join(holders)}); ask by customer_id"
                )
            if not holders:
                return None
            customer_id = holders[0]
        else:
            check_id("customer_id", customer_id)
        profile, found = (
            self.cache.get(customer_id, identities=identities) if self.cache is not None else self.load(customer_id, identities)
        )
        if profile is None:
            return None
        return profile, found or {}


#: sources given a label of their own in nba_profile_events_total (the rest: "other")
SOURCE_LABELS = 100
_sources: set[str] = set()


def _tally(source: str, outcome: TrackResult | NbaError) -> None:
    """Counts an event's outcome by its source (an outage is not the event's: not counted)."""
    if isinstance(outcome, TrackResult):
        kind = "near_duplicate" if outcome.duplicate_of else "duplicate" if outcome.duplicate else "taken"
    elif isinstance(outcome, DeadLettered):
        kind = "dead_letter"
    elif isinstance(outcome, InvalidArgument | AlreadyExists | FailedPrecondition):
        kind = "refused"
    else:
        return
    label = source[:128] or "(none)"
    if label not in _sources:
        if len(_sources) >= SOURCE_LABELS:
            label = "other"
        else:
            _sources.add(label)
    metrics.PROFILE_EVENTS.labels(label, kind).inc()


def _segment_time(occurred: datetime, received: datetime) -> float:
    """When the segment changes an event brings are dated: at the event's time when it arrives
    within the clock skew of it (never ahead of its arrival), else at its arrival: a late event
    (an import of history) does not rewrite what was stated meanwhile. ``Profile.settle`` also
    keeps it no earlier than the customer's last evaluation."""
    if occurred >= received - CLOCK_SKEW:
        return min(occurred, received).timestamp()
    return received.timestamp()


def _record_segments(repo: ProfileRepository, conn: Any, profile: Profile, exact: bool = True) -> None:
    """The profile's segment entries and exits written, and its next time-driven change found
    (``exact``: dated, else bounded: ``Profile.plan``), before it is saved."""
    profile.plan(exact)
    if profile.segment_changes:
        repo.record_segments(conn, profile.customer_id, [(c.segment, c.at, c.entered) for c in profile.segment_changes])
        profile.segment_changes = []


def _repeated(unit: _Unit, customer_id: str, first: str = "") -> TrackResult:
    """The answer to an event taken before (or, with ``first``, a near-duplicate of it): the
    customer it went to, now, and the profile's version."""
    customer = unit.survivor(customer_id) or customer_id
    held = unit.profiles.get(customer)
    if held is not None:
        return TrackResult(True, customer, version=held[0].version, duplicate_of=first)
    loaded = unit.repo.load(unit.conn, customer)
    return TrackResult(True, customer, version=loaded[2] if loaded else 0, duplicate_of=first)


def _ids(saved: Mapping[str, tuple[Profile, tuple[str, ...]]]) -> list[str]:
    return [i for profile, absorbed in saved.values() for i in (profile.customer_id, *absorbed)]


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
