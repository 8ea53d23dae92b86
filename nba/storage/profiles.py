"""Customer profiles in the database: profiles (their JSON state), the identifiers customers
hold, every touch-point event once, merges (and their undoing), and relationships.

Everything here runs inside the caller's write transaction (``Repository.write``), which holds
the database's write lock: an event's resolution, its storage and its profile's new state are
one commit, and two processes tracking events of one customer never interleave. Returns plain
values; identity resolution and the profile itself are ``nba.profiles``'.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy import exc as sa_exc

from nba.storage.engine import Repository, json_text, utc
from nba.storage.tables import (
    PROFILE_EVENT_KEYS,
    PROFILE_EVENTS,
    PROFILE_IDENTITIES,
    PROFILE_MERGES,
    PROFILE_RELATIONSHIPS,
    PROFILE_SEGMENTS,
    PROFILES,
    SEGMENT_COUNTS,
)

__all__ = ["MAX_MERGE_CHAIN", "ProfileRowValues", "Profiles", "StoredProfile"]

#: merges followed from an id to its survivor at most (a longer chain is a cycle: a bug)
MAX_MERGE_CHAIN = 64

#: (customer id, created at, version, state)
StoredProfile = tuple[str, datetime, int, dict[str, Any]]

# Statements built once: tracking runs several for every event, and building a select() anew
# each time cost as much as running it (a profile: half of tracking's time in SQLAlchemy's
# expression building). Values go in as bound parameters.
_MERGED_INTO = select(PROFILES.c.merged_into).where(PROFILES.c.customer_id == bindparam("customer_id"))
_LOAD = select(PROFILES.c.created_at, PROFILES.c.version, PROFILES.c.state).where(
    PROFILES.c.customer_id == bindparam("customer_id"), PROFILES.c.merged_into.is_(None)
)
_CREATED_AT = select(PROFILES.c.created_at).where(
    PROFILES.c.customer_id == bindparam("customer_id"), PROFILES.c.merged_into.is_(None)
)
_SAVE = (
    PROFILES.update()
    .where(PROFILES.c.customer_id == bindparam("key"))
    .values(
        version=bindparam("version"),
        state=bindparam("state"),
        updated_at=bindparam("updated_at"),
        built_under=bindparam("built_under"),
        due_at=bindparam("due_at"),
    )
)
_INSERT = PROFILES.insert()
_HOLDERS = select(PROFILE_IDENTITIES.c.customer_id).where(
    PROFILE_IDENTITIES.c.kind == bindparam("kind"), PROFILE_IDENTITIES.c.value == bindparam("value")
)
_IDENTITIES = (
    select(PROFILE_IDENTITIES.c.kind, PROFILE_IDENTITIES.c.value)
    .where(PROFILE_IDENTITIES.c.customer_id == bindparam("customer_id"))
    .order_by(PROFILE_IDENTITIES.c.kind, PROFILE_IDENTITIES.c.value)
)
_HOLDS = select(PROFILE_IDENTITIES.c.kind).where(
    PROFILE_IDENTITIES.c.kind == bindparam("kind"),
    PROFILE_IDENTITIES.c.value == bindparam("value"),
    PROFILE_IDENTITIES.c.customer_id == bindparam("customer_id"),
)
_STORED_EVENTS = select(PROFILE_EVENTS.c.event_id, PROFILE_EVENTS.c.content_hash, PROFILE_EVENTS.c.customer_id).where(
    PROFILE_EVENTS.c.event_id.in_(bindparam("event_ids", expanding=True))
)
#: ids a query asks for at once, at most (SQLite's bound-parameter limit is far above it)
_CHUNK = 1000
_ROWS = select(PROFILES.c.customer_id, PROFILES.c.created_at, PROFILES.c.version, PROFILES.c.state, PROFILES.c.merged_into).where(
    PROFILES.c.customer_id.in_(bindparam("ids", expanding=True))
)
_ROW = select(PROFILES.c.created_at, PROFILES.c.version, PROFILES.c.state, PROFILES.c.merged_into).where(
    PROFILES.c.customer_id == bindparam("customer_id")
)
_IDENTITIES_OF = select(PROFILE_IDENTITIES.c.customer_id, PROFILE_IDENTITIES.c.kind, PROFILE_IDENTITIES.c.value).where(
    PROFILE_IDENTITIES.c.customer_id.in_(bindparam("ids", expanding=True))
)

#: events a batch inserts with COPY on PostgreSQL from (fewer: an INSERT costs less than a COPY's set-up)
_COPY_FROM = 20
_COPY_EVENTS = (
    "COPY profile_events (event_id, customer_id, type, source, occurred_at, received_at, properties, identities, "
    "content_hash, origin) FROM STDIN"
)

#: (created at, version, state, merged into) of a stored profile row
ProfileRowValues = tuple[datetime, int, dict[str, Any], str | None]
_CREATED = select(PROFILES.c.customer_id, PROFILES.c.created_at).where(
    PROFILES.c.customer_id.in_(bindparam("customers", expanding=True))
)


def _due(state: Mapping[str, Any]) -> datetime | None:
    """When the profile next has work with no event: a segment's change, a prediction's horizon."""
    dues = [float(p["due"]) for p in (state.get("predictions") or {}).values()]
    if state.get("segments_due") is not None:
        dues.append(float(state["segments_due"]))
    return datetime.fromtimestamp(min(dues), UTC) if dues else None


class Profiles(Repository):
    """The ``profiles``, ``profile_identities``, ``profile_events`` and ``profile_merges`` tables."""

    def survivor(self, conn: Any, customer_id: str) -> str | None:
        """The customer ``customer_id`` is now (itself, or the survivor of the merges that
        absorbed it, through any chain of them); None for an id never seen."""
        current = customer_id
        for _ in range(MAX_MERGE_CHAIN):
            merged_into = conn.execute(_MERGED_INTO, {"customer_id": current}).first()
            if merged_into is None:
                return None if current == customer_id else current
            if merged_into[0] is None:
                return current
            current = merged_into[0]
        raise RuntimeError(f"the merges from customer '{customer_id}' do not end within {MAX_MERGE_CHAIN} steps")

    def load(self, conn: Any, customer_id: str) -> StoredProfile | None:
        """A profile that has not been merged away, or None."""
        row = conn.execute(_LOAD, {"customer_id": customer_id}).first()
        return (customer_id, utc(row.created_at), int(row.version), dict(row.state)) if row else None

    def created_at(self, conn: Any, customer_id: str) -> datetime | None:
        """When a profile that has not been merged away was first seen, or None (cheaper than
        ``load``: no state)."""
        found = conn.execute(_CREATED_AT, {"customer_id": customer_id}).scalar()
        return utc(found) if found is not None else None

    def save(
        self, conn: Any, customer_id: str, created_at: datetime, version: int, state: Mapping[str, Any], now: datetime
    ) -> None:
        """Writes a profile's state (inserting it the first time)."""
        built = state.get("built_under")
        due = _due(state)
        updated = conn.execute(
            _SAVE,
            {
                "key": customer_id,
                "version": version,
                "state": dict(state),
                "updated_at": now,
                "built_under": built,
                "due_at": due,
            },
        ).rowcount
        if not updated:
            conn.execute(
                _INSERT,
                {
                    "customer_id": customer_id,
                    "created_at": created_at,
                    "updated_at": now,
                    "version": version,
                    "merged_into": None,
                    "state": dict(state),
                    "built_under": built,
                    "due_at": due,
                },
            )

    def profile_row(self, conn: Any, customer_id: str) -> ProfileRowValues | None:
        """One customer's row (created at, version, state, the customer it was merged into or
        None), or None for an id never seen: a read of a profile by its own id in one query."""
        row = conn.execute(_ROW, {"customer_id": customer_id}).first()
        return (utc(row.created_at), int(row.version), dict(row.state), row.merged_into) if row else None

    def profile_rows(self, conn: Any, customer_ids: Iterable[str]) -> dict[str, ProfileRowValues]:
        """The rows of many customers at once, by id: (created at, version, state, the
        customer it was merged into or None). Ids never seen are absent."""
        found: dict[str, ProfileRowValues] = {}
        unique = sorted(set(customer_ids))
        for start in range(0, len(unique), _CHUNK):
            for row in conn.execute(_ROWS, {"ids": unique[start : start + _CHUNK]}):
                found[row.customer_id] = (utc(row.created_at), int(row.version), dict(row.state), row.merged_into)
        return found

    def identities_of(self, conn: Any, customer_ids: Iterable[str]) -> dict[str, dict[str, list[str]]]:
        """The identifiers of many customers at once: customer -> kind -> values (sorted);
        every customer asked for is there, with none perhaps."""
        unique = sorted(set(customer_ids))
        found: dict[str, dict[str, list[str]]] = {c: {} for c in unique}
        for start in range(0, len(unique), _CHUNK):
            for row in conn.execute(_IDENTITIES_OF, {"ids": unique[start : start + _CHUNK]}):
                found[row.customer_id].setdefault(row.kind, []).append(row.value)
        for held in found.values():
            for values in held.values():
                values.sort()
        return found

    def save_many(self, conn: Any, profiles: list[tuple[str, int, Mapping[str, Any]]], now: datetime) -> None:
        """Writes the state of profiles that exist (customer id, version, state), in one
        statement."""
        if profiles:
            conn.execute(
                _SAVE,
                [
                    {
                        "key": c,
                        "version": v,
                        "state": dict(state),
                        "updated_at": now,
                        "built_under": state.get("built_under"),
                        "due_at": _due(state),
                    }
                    for c, v, state in profiles
                ],
            )

    def holders(self, conn: Any, kind: str, value: str) -> list[str]:
        """The customers (survivors) holding an identifier, oldest first."""
        ids = conn.execute(_HOLDERS, {"kind": kind, "value": value}).scalars().all()
        survivors = {s for s in (self.survivor(conn, i) for i in ids) if s is not None}
        return self._oldest_first(conn, survivors)

    def identities(self, conn: Any, customer_id: str) -> dict[str, list[str]]:
        """A customer's identifiers by kind."""
        out: dict[str, list[str]] = {}
        for kind, value in conn.execute(_IDENTITIES, {"customer_id": customer_id}):
            out.setdefault(kind, []).append(value)
        return out

    def add_identities(self, conn: Any, customer_id: str, identities: Mapping[str, str], origin: str | None = None) -> None:
        """Identifiers held by ``customer_id`` from now on; ``origin``: the id the event that
        brought them named (an unmerge of it takes them back), ``customer_id`` by default."""
        for kind, value in sorted(identities.items()):
            if conn.execute(_HOLDS, {"kind": kind, "value": value, "customer_id": customer_id}).first() is None:
                conn.execute(
                    PROFILE_IDENTITIES.insert().values(
                        kind=kind, value=value, customer_id=customer_id, origin=origin or customer_id
                    )
                )

    def separated(self, conn: Any, a: str, b: str) -> bool:
        """Whether a merge between the two customers was undone (the pair is kept apart since):
        between them, or between any ids merged into them since (an unmerged customer's
        survivor may itself have been absorbed by another customer later)."""
        m, p = PROFILE_MERGES, PROFILES
        group_a = [a, *conn.execute(select(p.c.customer_id).where(p.c.merged_into == a)).scalars()]
        group_b = [b, *conn.execute(select(p.c.customer_id).where(p.c.merged_into == b)).scalars()]
        pair = or_(
            and_(m.c.survivor.in_(group_a), m.c.absorbed.in_(group_b)),
            and_(m.c.survivor.in_(group_b), m.c.absorbed.in_(group_a)),
        )
        return conn.execute(select(m.c.id).where(pair, m.c.undone_at.is_not(None)).limit(1)).first() is not None

    def merge(self, conn: Any, survivor: str, absorbed: str, cause: str, now: datetime) -> None:
        """Records that ``absorbed`` is ``survivor``: its id resolves to the survivor from now
        on, its identifiers and events are the survivor's (the caller rebuilds the survivor's
        state from them)."""
        conn.execute(PROFILES.update().where(PROFILES.c.customer_id == absorbed).values(merged_into=survivor, updated_at=now))
        # ids absorbed into it before now point at the survivor directly: every chain is one step
        conn.execute(PROFILES.update().where(PROFILES.c.merged_into == absorbed).values(merged_into=survivor, updated_at=now))
        if conn.execute(select(PROFILES.c.customer_id).where(PROFILES.c.customer_id == absorbed)).first() is None:
            # an id seen only on this event: kept, so that it resolves to the survivor
            conn.execute(
                PROFILES.insert().values(
                    customer_id=absorbed, created_at=now, updated_at=now, version=0, merged_into=survivor, state={}
                )
            )
        # identifiers move with their origin (an unmerge gives them back); one the survivor
        # holds already stays the survivor's
        i = PROFILE_IDENTITIES
        held = select(i.c.kind, i.c.value).where(i.c.customer_id == survivor)
        for kind, value in conn.execute(select(i.c.kind, i.c.value).where(i.c.customer_id == absorbed)).all():
            if conn.execute(held.where(i.c.kind == kind, i.c.value == value)).first() is None:
                conn.execute(
                    i.update()
                    .where(i.c.kind == kind, i.c.value == value, i.c.customer_id == absorbed)
                    .values(customer_id=survivor)
                )
        # one the survivor holds too (a shared device) stays under the absorbed id, unread while
        # it is merged (the survivor's own row answers), and the absorbed customer's again after
        # an unmerge
        conn.execute(PROFILE_EVENTS.update().where(PROFILE_EVENTS.c.customer_id == absorbed).values(customer_id=survivor))
        r = PROFILE_RELATIONSHIPS
        kept = {
            (row.kind, row.other_id) for row in conn.execute(select(r.c.kind, r.c.other_id).where(r.c.customer_id == survivor))
        }
        for row in conn.execute(select(r.c.kind, r.c.other_id).where(r.c.customer_id == absorbed)).all():
            if (row.kind, row.other_id) not in kept and row.other_id != survivor:
                conn.execute(
                    r.update()
                    .where(r.c.customer_id == absorbed, r.c.kind == row.kind, r.c.other_id == row.other_id)
                    .values(customer_id=survivor)
                )
        # a link the survivor holds too, or one to the survivor itself, stays under the absorbed
        # id (not shown while merged; the absorbed customer's again after an unmerge)
        conn.execute(
            PROFILE_MERGES.insert().values(
                survivor=survivor, absorbed=absorbed, at=now, cause=cause[:256], undone_at=None, undone_by=""
            )
        )

    def unmerge(self, conn: Any, customer_id: str, by: str, now: datetime) -> tuple[str, list[str]]:
        """Undoes the merge that absorbed ``customer_id``: returns (the survivor it leaves, the
        ids split off with it). Split off are ``customer_id`` and the ids merged into it before
        it was absorbed (through any chain); the events and identifiers whose origin is one of
        them go back to ``customer_id``, which is a customer of its own again. The merge is
        marked undone (by ``by``, at ``now``), so the two are kept apart from now on
        (``separated``). The caller rebuilds both profiles from their events. Raises
        ``LookupError`` for an id never seen and ``ValueError`` for one not merged."""
        p, m = PROFILES, PROFILE_MERGES
        row = conn.execute(select(p.c.merged_into).where(p.c.customer_id == customer_id)).first()
        if row is None:
            raise LookupError(customer_id)
        survivor = row.merged_into
        if survivor is None:
            raise ValueError(customer_id)
        split = [customer_id]
        for _ in range(MAX_MERGE_CHAIN):  # the ids customer_id had absorbed, and theirs
            found = set(
                conn.execute(
                    select(m.c.absorbed).where(m.c.survivor.in_(split), m.c.undone_at.is_(None), m.c.absorbed.not_in(split))
                ).scalars()
            )
            if not found:
                break
            split.extend(sorted(found))
        conn.execute(
            m.update().where(m.c.absorbed == customer_id, m.c.undone_at.is_(None)).values(undone_at=now, undone_by=by[:128])
        )
        # the pair is kept apart whichever merge joined them (customer_id may have been absorbed
        # by a customer that was itself absorbed by the survivor since)
        if not self.separated(conn, survivor, customer_id):
            conn.execute(
                m.insert().values(
                    survivor=survivor,
                    absorbed=customer_id,
                    at=now,
                    cause=f"unmerged by {by}"[:256],
                    undone_at=now,
                    undone_by=by[:128],
                )
            )
        conn.execute(p.update().where(p.c.customer_id == customer_id).values(merged_into=None, updated_at=now))
        others = split[1:]
        if others:
            conn.execute(p.update().where(p.c.customer_id.in_(others)).values(merged_into=customer_id, updated_at=now))
        e, i = PROFILE_EVENTS, PROFILE_IDENTITIES
        conn.execute(e.update().where(e.c.customer_id == survivor, e.c.origin.in_(split)).values(customer_id=customer_id))
        conn.execute(i.update().where(i.c.customer_id == survivor, i.c.origin.in_(split)).values(customer_id=customer_id))
        r = PROFILE_RELATIONSHIPS
        conn.execute(r.update().where(r.c.customer_id == survivor, r.c.origin.in_(split)).values(customer_id=customer_id))
        return survivor, split

    # Segments (nba.profiles.segments): stays, hourly counts, and when each profile is next due

    def record_segments(self, conn: Any, customer_id: str, changes: Iterable[tuple[str, float, bool]]) -> None:
        """Entries and exits (segment, epoch seconds, entered) of a customer, in order: an entry
        opens a stay, an exit closes the open one; both counted in their hour."""
        s = PROFILE_SEGMENTS
        counts: dict[tuple[str, int], list[int]] = {}
        for segment, at, entered in changes:
            when = datetime.fromtimestamp(at, UTC)
            if entered:
                conn.execute(s.insert().values(customer_id=customer_id, segment=segment, entered_at=when, exited_at=None))
            else:
                conn.execute(
                    s.update()
                    .where(s.c.customer_id == customer_id, s.c.segment == segment, s.c.exited_at.is_(None))
                    .values(exited_at=when)
                )
            counts.setdefault((segment, int(at // 3600)), [0, 0])[0 if entered else 1] += 1
        self._count_segments(conn, counts)

    def leave_segments(self, conn: Any, customer_id: str, now: datetime) -> list[str]:
        """Closes every stay of a customer still open (merged away, or forgotten); returns the segments."""
        s = PROFILE_SEGMENTS
        open_stays = list(
            conn.execute(select(s.c.segment).where(s.c.customer_id == customer_id, s.c.exited_at.is_(None))).scalars()
        )
        if open_stays:
            conn.execute(s.update().where(s.c.customer_id == customer_id, s.c.exited_at.is_(None)).values(exited_at=now))
            hour = int(now.timestamp() // 3600)
            self._count_segments(conn, {(segment, hour): [0, 1] for segment in set(open_stays)})
        return sorted(set(open_stays))

    def _count_segments(self, conn: Any, counts: Mapping[tuple[str, int], list[int]]) -> None:
        c = SEGMENT_COUNTS
        for (segment, hour), (entered, exited) in sorted(counts.items()):
            key = (c.c.segment == segment) & (c.c.hour == hour)
            added = conn.execute(c.update().where(key).values(entered=c.c.entered + entered, exited=c.c.exited + exited))
            if not added.rowcount:
                conn.execute(c.insert().values(segment=segment, hour=hour, entered=entered, exited=exited))

    def due_profiles(self, conn: Any, now: datetime, limit: int) -> list[str]:
        """Up to ``limit`` customers (not merged away) whose segments change by ``now`` with no
        event, the most overdue first."""
        p = PROFILES
        return list(
            conn.execute(
                select(p.c.customer_id)
                .where(p.c.due_at <= now, p.c.merged_into.is_(None))
                .order_by(p.c.due_at, p.c.customer_id)
                .limit(limit)
            ).scalars()
        )

    def completeness(self, attributes: Iterable[str], conn: Any = None) -> tuple[int, dict[str, int]]:
        """(customers, how many of them hold a value of each attribute): one pass over the
        profiles in the database (JSON paths, no state parsed in Python)."""
        p = PROFILES
        names = sorted(set(attributes))
        held: list[Any]
        if self.engine.dialect.name == "sqlite":  # (its JSON index quotes a missing path as 'null')
            held = [func.json_extract(p.c.state, f"$.attributes.{name}") for name in names]
        else:
            held = [p.c.state["attributes"][name] for name in names]
        columns = [func.count(), *(func.count(h) for h in held)]
        query = select(*columns).where(p.c.merged_into.is_(None), p.c.version > 0)
        with self.reading(conn) as c:
            row = c.execute(query).one()
        return int(row[0]), {name: int(n) for name, n in zip(names, row[1:], strict=True)}

    def key_holder(self, conn: Any, event_type: str, key: str) -> str | None:
        """The first event of ``event_type`` with this ``dedupe_by`` value, or None."""
        k = PROFILE_EVENT_KEYS
        return conn.execute(select(k.c.event_id).where(k.c.type == event_type, k.c.key == key)).scalar()

    def add_event_keys(self, conn: Any, rows: list[tuple[str, str, str]]) -> None:
        """(type, key, event id) of events taken, each the first with its key now (a key whose
        event is gone, by retention or erasure, is taken over)."""
        k = PROFILE_EVENT_KEYS
        for event_type, key, event_id in rows:
            where = (k.c.type == event_type) & (k.c.key == key)
            if not conn.execute(k.update().where(where).values(event_id=event_id)).rowcount:
                conn.execute(k.insert().values(type=event_type, key=key, event_id=event_id))

    def postpone(self, conn: Any, customer_id: str, until: datetime) -> None:
        """Moves a profile's due time on (one that could not be evaluated: it must not block the rest)."""
        conn.execute(PROFILES.update().where(PROFILES.c.customer_id == customer_id).values(due_at=until))

    def segment_members(self, segment: str, conn: Any = None) -> Iterable[tuple[str, datetime]]:
        """The customers in a segment now, with when they entered, by customer id."""
        s = PROFILE_SEGMENTS
        query = (
            select(s.c.customer_id, s.c.entered_at)
            .where(s.c.segment == segment, s.c.exited_at.is_(None))
            .order_by(s.c.customer_id)
        )
        with self.reading(conn) as c:
            for row in c.execute(query).yield_per(1000):
                yield row.customer_id, utc(row.entered_at)

    def segment_sizes(self, conn: Any = None) -> dict[str, int]:
        """Customers in each segment now, by segment (a segment nobody is in is absent): the
        running sum of the hourly counts, kept in the same transactions as the stays (a few
        rows a segment a day to read, where counting the open stays would read every one)."""
        c = SEGMENT_COUNTS
        query = select(c.c.segment, func.sum(c.c.entered) - func.sum(c.c.exited)).group_by(c.c.segment)
        with self.reading(conn) as db:
            return {segment: int(n) for segment, n in db.execute(query) if n}

    def segment_history(self, segment: str, conn: Any = None) -> list[tuple[int, int, int]]:
        """(hour since the epoch, entries, exits) of each hour a segment changed, in order."""
        c = SEGMENT_COUNTS
        query = select(c.c.hour, c.c.entered, c.c.exited).where(c.c.segment == segment).order_by(c.c.hour)
        with self.reading(conn) as db:
            return [(int(h), int(e), int(x)) for h, e, x in db.execute(query)]

    def built_under_other(self, conn: Any, fingerprint: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` customers (not merged away), in id order after ``after``, whose
        profile was built under a definition other than ``fingerprint``."""
        p = PROFILES
        return list(
            conn.execute(
                select(p.c.customer_id)
                .where(
                    p.c.customer_id > after,
                    p.c.merged_into.is_(None),
                    or_(p.c.built_under.is_(None), p.c.built_under != fingerprint),
                )
                .order_by(p.c.customer_id)
                .limit(limit)
            ).scalars()
        )

    def count_built_under_other(self, fingerprint: str) -> int:
        """How many profiles (not merged away) were built under another definition."""
        p = PROFILES
        with self.read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(p)
                    .where(p.c.merged_into.is_(None), or_(p.c.built_under.is_(None), p.c.built_under != fingerprint))
                ).scalar_one()
            )

    def events_of(self, conn: Any, customer_ids: list[str]) -> dict[str, list[tuple[str, str, str, datetime, dict[str, Any]]]]:
        """The events of many customers at once, each customer's in the order ``events`` gives."""
        e = PROFILE_EVENTS
        found: dict[str, list[tuple[str, str, str, datetime, dict[str, Any]]]] = {c: [] for c in customer_ids}
        for start in range(0, len(customer_ids), _CHUNK):
            rows = conn.execute(
                select(e.c.customer_id, e.c.event_id, e.c.type, e.c.source, e.c.occurred_at, e.c.properties)
                .where(e.c.customer_id.in_(customer_ids[start : start + _CHUNK]))
                .order_by(e.c.customer_id, e.c.occurred_at, e.c.event_id)
            )
            for row in rows:
                found[row.customer_id].append((row.event_id, row.type, row.source, utc(row.occurred_at), dict(row.properties)))
        return found

    def purge_events(self, received_before: datetime, batch: int = 5000, budget_seconds: float = 0.5) -> int:
        """Retention: deletes touch-point events received before ``received_before``, oldest
        first, ``batch`` a transaction for at most ``budget_seconds``; returns how many. Events
        are read in id order, which is the order they were received (ids are taken under the
        write lock), so a pass reads only what it deletes and the first row it keeps. Profiles
        keep what the events made of them."""
        e = PROFILE_EVENTS
        started = time.monotonic()
        deleted = 0
        while time.monotonic() - started < budget_seconds:
            with self.write() as conn:
                rows = conn.execute(select(e.c.id, e.c.event_id, e.c.received_at).order_by(e.c.id).limit(batch)).all()
                old = [r for r in rows if utc(r.received_at) < received_before]
                gone = [r.id for r in old]
                if gone:
                    # their near-duplicate keys go with them: a report of the same thing later is taken
                    k = PROFILE_EVENT_KEYS
                    event_ids = [r.event_id for r in old]
                    for start in range(0, len(event_ids), _CHUNK):
                        conn.execute(k.delete().where(k.c.event_id.in_(event_ids[start : start + _CHUNK])))
                    deleted += conn.execute(e.delete().where(e.c.id.in_(gone))).rowcount
            if len(gone) < batch:
                break
        return deleted

    def add_relationship(self, conn: Any, customer_id: str, kind: str, other_id: str, event_id: str, at: datetime) -> None:
        """Links two customers (survivors, or an id no event has named yet), a row each way;
        a link already kept keeps its earliest event."""
        r = PROFILE_RELATIONSHIPS
        for one, other in ((customer_id, other_id), (other_id, customer_id)):
            key = and_(r.c.customer_id == one, r.c.kind == kind, r.c.other_id == other)
            held = conn.execute(select(r.c.since, r.c.event_id).where(key)).first()
            if held is None:
                conn.execute(
                    r.insert().values(customer_id=one, kind=kind, other_id=other, event_id=event_id, since=at, origin=one)
                )
            elif (at, event_id) < (utc(held.since), held.event_id):
                conn.execute(r.update().where(key).values(since=at, event_id=event_id))

    def relationships(self, customer_id: str, conn: Any = None) -> list[tuple[str, str, datetime, str]]:
        """A customer's relationships as (kind, the other customer, since, event id), the other
        followed through merges; by kind, then since. ``conn``: a ``snapshot`` to read in."""
        r = PROFILE_RELATIONSHIPS
        with self.reading(conn) as reader:
            rows = reader.execute(
                select(r.c.kind, r.c.other_id, r.c.since, r.c.event_id).where(r.c.customer_id == customer_id)
            ).all()
            found: dict[tuple[str, str], tuple[datetime, str]] = {}
            for row in rows:
                other = self.survivor(reader, row.other_id) or row.other_id
                if other == customer_id:
                    continue  # the two were merged since: one customer
                held = found.get((row.kind, other))
                since = (utc(row.since), row.event_id)
                if held is None or since < held:
                    found[(row.kind, other)] = since
        return sorted(((k, o, at, e) for (k, o), (at, e) in found.items()), key=lambda x: (x[0], x[2], x[1]))

    def stored_events(self, conn: Any, event_ids: list[str]) -> dict[str, tuple[str, str]]:
        """(content hash, customer id) of each of ``event_ids`` already stored, by event id."""
        found: dict[str, tuple[str, str]] = {}
        unique = sorted(set(event_ids))
        for start in range(0, len(unique), _CHUNK):
            for row in conn.execute(_STORED_EVENTS, {"event_ids": unique[start : start + _CHUNK]}):
                found[row.event_id] = (row.content_hash, row.customer_id)
        return found

    def insert_events(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Events as rows of ``profile_events`` (event_id, customer_id, type, source,
        occurred_at, received_at, properties, identities, content_hash, origin), in one
        statement: on PostgreSQL a COPY (a batch's events in one stream, several times cheaper
        than an INSERT a row), elsewhere an executemany."""
        if not rows:
            return
        if conn.dialect.name != "postgresql" or len(rows) < _COPY_FROM:
            conn.execute(PROFILE_EVENTS.insert(), rows)
            return
        # inside the caller's transaction: SQLAlchemy's connection is psycopg's, already in it
        cursor = conn.connection.driver_connection.cursor()
        try:
            self._copy_events(cursor, rows)
        except Exception as exc:
            # raised by psycopg itself, not through SQLAlchemy: said as SQLAlchemy would say it,
            # so an outage is told from a fault as for every other statement (is_outage)
            import psycopg

            if isinstance(exc, psycopg.Error):
                error = sa_exc.DBAPIError.instance("COPY profile_events", None, exc, psycopg.Error)
                raise error from exc
            raise
        finally:
            cursor.close()

    @staticmethod
    def _copy_events(cursor: Any, rows: list[dict[str, Any]]) -> None:
        with cursor.copy(_COPY_EVENTS) as copy:
            for row in rows:
                copy.write_row(
                    (
                        row["event_id"],
                        row["customer_id"],
                        row["type"],
                        row["source"],
                        row["occurred_at"],
                        row["received_at"],
                        json_text(row["properties"]),
                        json_text(row["identities"]),
                        row["content_hash"],
                        row.get("origin"),
                    )
                )

    def events(self, conn: Any, customer_id: str) -> Iterable[tuple[str, str, str, datetime, dict[str, Any]]]:
        """A customer's events as (event id, type, source, occurred at, properties), in the
        order their profile applies them: by time, equal times by event id."""
        e = PROFILE_EVENTS
        for row in conn.execute(
            select(e.c.event_id, e.c.type, e.c.source, e.c.occurred_at, e.c.properties)
            .where(e.c.customer_id == customer_id)
            .order_by(e.c.occurred_at, e.c.event_id)
        ):
            yield row.event_id, row.type, row.source, utc(row.occurred_at), dict(row.properties)

    def timeline(
        self, customer_id: str, limit: int, before: tuple[datetime, str] | None = None, conn: Any = None
    ) -> list[tuple[str, str, str, datetime, datetime, dict[str, Any]]]:
        """A page of a customer's events, newest first (equal times by event id, descending),
        as (event id, type, source, occurred at, received at, properties); ``before``: the
        (occurred at, event id) of the last event of the previous page; ``conn``: a
        ``snapshot`` to read in."""
        e = PROFILE_EVENTS
        query = (
            select(e.c.event_id, e.c.type, e.c.source, e.c.occurred_at, e.c.received_at, e.c.properties)
            .where(e.c.customer_id == customer_id)
            .order_by(e.c.occurred_at.desc(), e.c.event_id.desc())
            .limit(limit)
        )
        if before is not None:
            at, event_id = before
            query = query.where(or_(e.c.occurred_at < at, and_(e.c.occurred_at == at, e.c.event_id < event_id)))
        with self.reading(conn) as reader:
            rows = reader.execute(query).all()
        return [(r.event_id, r.type, r.source, utc(r.occurred_at), utc(r.received_at), dict(r.properties)) for r in rows]

    def absorbed_ids(self, customer_id: str, conn: Any = None) -> list[str]:
        """The ids merged into a customer (every chain is one step: ``merge`` keeps it so)."""
        with self.reading(conn) as reader:
            return sorted(
                reader.execute(select(PROFILES.c.customer_id).where(PROFILES.c.merged_into == customer_id)).scalars().all()
            )

    def _oldest_first(self, conn: Any, customers: set[str]) -> list[str]:
        if not customers:
            return []
        rows = conn.execute(_CREATED, {"customers": sorted(customers)}).all()
        return [r.customer_id for r in sorted(rows, key=lambda r: (utc(r.created_at), r.customer_id))]
