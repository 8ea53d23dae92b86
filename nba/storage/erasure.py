"""Erasure: a customer forgotten in every table that can hold who they are (``ForgetCustomer``).

In one write transaction: the profile rows of the customer and every id merged into them, their
touch-point events (and the near-duplicate keys of those events), identifiers, relationships
(both ways), merge records, segment stays (closed first, so that sizes stay right), contact
events, and the dead letters that name them (by id or by one of their identifiers) are deleted;
their decisions keep what evaluation needs (context, candidates, offers, propensities, feedback)
under a keyed pseudonym instead of the customer id, their caller-chosen keys (``request_id``, the
feedback ``event_id``) pseudonymised too, and any context value naming them (one of their ids or
identifiers, however written: the caller's ``names`` judges) replaced by ``[erased]``. Other
customers' events, profiles and dead letters that name them (a household link's ``member_id``, a
referral's e-mail) keep their place with the name replaced the same way: those rows are found by
a text search of their JSON for each id and identifier as stored, so a value written there
differently from how it is normalised is not found. An audit row names the customer by the
pseudonym only.

Rows are changed set-wise or by one executemany a table, not a statement a row: the erasure holds
the write lock throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, cast, delete, func, or_, select, update

from nba.storage.engine import json_text, utc
from nba.storage.profiles import Profiles
from nba.storage.tables import (
    CONTACT_EVENTS,
    DECISIONS,
    ERASURES,
    FEEDBACK,
    PROFILE_DEAD_LETTERS,
    PROFILE_EVENT_KEYS,
    PROFILE_EVENTS,
    PROFILE_IDENTITIES,
    PROFILE_MERGES,
    PROFILE_RELATIONSHIPS,
    PROFILE_SEGMENTS,
    PROFILES,
    SECRETS,
)

__all__ = ["ERASED", "Erasures"]

#: what a context value that named the customer reads after an erasure
ERASED = "[erased]"
_CHUNK = 1000


class Erasures(Profiles):
    """Erasing customers, the audit of it, and the keys nba keeps for itself."""

    def secret(self, name: str, make: Callable[[], str]) -> str:
        """The value kept under ``name``, made (and kept) the first time it is asked for."""
        s = SECRETS
        with self.write() as conn:
            found = conn.execute(select(s.c.value).where(s.c.name == name)).scalar()
            if found is not None:
                return str(found)
            # another process may make it at the same moment (PostgreSQL's writers do not wait
            # for each other here): the first kept is everyone's
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                f"INSERT INTO secrets (name, value) VALUES ({mark}, {mark}) ON CONFLICT (name) DO NOTHING", [(name, make())]
            )
            return str(conn.execute(select(s.c.value).where(s.c.name == name)).scalar())

    def read_secret(self, name: str) -> str | None:
        """The value kept under ``name``, or None."""
        with self.read() as conn:
            found = conn.execute(select(SECRETS.c.value).where(SECRETS.c.name == name)).scalar()
        return str(found) if found is not None else None

    def write_secret(self, name: str, value: str) -> None:
        """Keeps ``value`` under ``name``, in place of any before."""
        with self.write() as conn:
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                f"INSERT INTO secrets (name, value) VALUES ({mark}, {mark}) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [(name, value)],
            )

    def stored_secret(self, conn: Any, name: str) -> str | None:
        """The value kept under ``name`` (inside the caller's transaction), or None: never made."""
        found = conn.execute(select(SECRETS.c.value).where(SECRETS.c.name == name)).scalar()
        return str(found) if found is not None else None

    def customer_ids(self, conn: Any, customer_id: str) -> list[str]:
        """The customer an id is now (the survivor of its merges, or itself, known or not) and
        every id merged into them, the survivor first."""
        survivor = self.survivor(conn, customer_id) or customer_id
        merged = conn.execute(
            select(PROFILES.c.customer_id).where(PROFILES.c.merged_into == survivor).order_by(PROFILES.c.customer_id)
        ).scalars()
        return [survivor, *merged]

    def forgotten_among(self, conn: Any, pseudonyms: list[str]) -> dict[str, datetime]:
        """Which of these pseudonyms name customers forgotten before, and when last."""
        e = ERASURES
        if not pseudonyms:
            return {}
        rows = conn.execute(select(e.c.pseudonym, func.max(e.c.at)).where(e.c.pseudonym.in_(pseudonyms)).group_by(e.c.pseudonym))
        return {pseudonym: utc(at) for pseudonym, at in rows}

    def forgotten(self, conn: Any, pseudonym: str) -> bool:
        """Whether a customer with this pseudonym was forgotten before."""
        return conn.execute(select(ERASURES.c.id).where(ERASURES.c.pseudonym == pseudonym).limit(1)).first() is not None

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
    ) -> dict[str, int]:
        """Erases the customer known by ``ids`` (inside the caller's write transaction) and
        records it; returns what was erased or pseudonymised, by table. ``identifiers``: more
        values that name them (an identifier nobody holds any more, still in dead letters).
        ``names(text, named)``: whether a text value names them, ``named`` being their ids and
        identifiers casefolded (by default: equal to one of them, casefolded and stripped; the
        service also reads a phone number or e-mail written differently)."""
        counts: dict[str, int] = {}
        i = PROFILE_IDENTITIES
        held = [(kind, value) for kind, value in conn.execute(select(i.c.kind, i.c.value).where(i.c.customer_id.in_(ids)))]
        # an identifier others hold too (a shared device) names them as much: it keeps their dead letters
        shared = {
            (kind, value)
            for kind, value in held
            if conn.execute(
                select(i.c.customer_id).where(i.c.kind == kind, i.c.value == value, i.c.customer_id.not_in(ids)).limit(1)
            ).first()
        }
        own = {pair for pair in held if pair not in shared}
        identifiers = set(identifiers) | {value for _, value in held}
        for customer_id in ids:  # closed first: the hourly counts (segment sizes) stay right
            self.leave_segments(conn, customer_id, now)
        events = list(conn.execute(select(PROFILE_EVENTS.c.event_id).where(PROFILE_EVENTS.c.customer_id.in_(ids))).scalars())
        for start in range(0, len(events), _CHUNK):
            conn.execute(delete(PROFILE_EVENT_KEYS).where(PROFILE_EVENT_KEYS.c.event_id.in_(events[start : start + _CHUNK])))
        counts["profile_events"] = _deleted(conn, PROFILE_EVENTS, PROFILE_EVENTS.c.customer_id.in_(ids))
        counts["profile_identities"] = _deleted(conn, PROFILE_IDENTITIES, PROFILE_IDENTITIES.c.customer_id.in_(ids))
        r = PROFILE_RELATIONSHIPS
        named = {v.strip().casefold() for v in identifiers | set(ids)}
        judge = names or _equal
        counts["profile_relationships"] = _deleted(conn, r, or_(r.c.customer_id.in_(ids), r.c.other_id.in_(ids)))
        m = PROFILE_MERGES
        counts["profile_merges"] = _deleted(conn, m, or_(m.c.survivor.in_(ids), m.c.absorbed.in_(ids)))
        counts["profile_segments"] = _deleted(conn, PROFILE_SEGMENTS, PROFILE_SEGMENTS.c.customer_id.in_(ids))
        d = PROFILE_DEAD_LETTERS
        extra = set(identifiers) - {value for _, value in held}  # an identifier nobody holds any more
        letters = [
            row.id
            for row in conn.execute(select(d.c.id, d.c.customer_id, d.c.identities))
            if row.customer_id in ids
            or own & {(str(k), str(v)) for k, v in dict(row.identities).items()}
            or extra & {str(v) for v in dict(row.identities).values()}
        ]
        counts["profile_dead_letters"] = 0
        for start in range(0, len(letters), _CHUNK):
            counts["profile_dead_letters"] += _deleted(conn, d, d.c.id.in_(letters[start : start + _CHUNK]))
        counts["profiles"] = _deleted(conn, PROFILES, PROFILES.c.customer_id.in_(ids))
        counts["contact_events"] = _deleted(conn, CONTACT_EVENTS, CONTACT_EVENTS.c.customer_id.in_(ids))
        # what other customers hold that names them: kept for its owner, with the name erased
        counts["named_elsewhere"] = (
            _scrub_naming(conn, PROFILE_EVENTS, PROFILE_EVENTS.c.id, PROFILE_EVENTS.c.properties, named, judge)
            + _scrub_naming(conn, PROFILES, PROFILES.c.customer_id, PROFILES.c.state, named, judge)
            + _scrub_naming(conn, d, d.c.id, d.c.properties, named, judge)
            + _scrub_naming(conn, d, d.c.id, d.c.identities, named, judge)
        )
        decisions = conn.execute(
            select(DECISIONS.c.decision_id, DECISIONS.c.request_id, DECISIONS.c.features).where(DECISIONS.c.customer_id.in_(ids))
        ).all()
        if decisions:
            conn.execute(
                update(DECISIONS)
                .where(DECISIONS.c.decision_id == bindparam("b_decision"))
                .values(customer_id=pseudonym, request_id=bindparam("b_request"), features=bindparam("b_features")),
                [
                    {
                        "b_decision": decision_id,
                        "b_request": pseudonymise(request_id) if request_id else request_id,
                        "b_features": _scrubbed(features, named, judge),
                    }
                    for decision_id, request_id, features in decisions
                ],
            )
        counts["decisions"] = len(decisions)
        decision_ids = [row[0] for row in decisions]
        counts["feedback"] = 0
        for start in range(0, len(decision_ids), _CHUNK):
            rows = conn.execute(
                select(FEEDBACK.c.id, FEEDBACK.c.event_id).where(FEEDBACK.c.decision_id.in_(decision_ids[start : start + _CHUNK]))
            ).all()
            if rows:
                conn.execute(
                    update(FEEDBACK).where(FEEDBACK.c.id == bindparam("b_id")).values(event_id=bindparam("b_event")),
                    [{"b_id": row_id, "b_event": pseudonymise(event_id)} for row_id, event_id in rows],
                )
            counts["feedback"] += len(rows)
        if audit:
            conn.execute(
                ERASURES.insert().values(
                    pseudonym=pseudonym, requested_by=requested_by[:128], reason=reason[:500], at=now, counts=counts
                )
            )
        return counts


def _deleted(conn: Any, table: Any, where: Any) -> int:
    return int(conn.execute(delete(table).where(where)).rowcount or 0)


def _equal(text: str, named: set[str]) -> bool:
    return text.strip().casefold() in named


def _scrubbed(value: Any, named: set[str], judge: Callable[[str, set[str]], bool] = _equal) -> Any:
    """``value`` with every text that names them (``judge``) replaced by ``ERASED``."""
    if isinstance(value, str):
        return ERASED if judge(value, named) else value
    if isinstance(value, Mapping):  # a key can name them too (activity keyed by an identifier)
        return {(ERASED if isinstance(k, str) and judge(k, named) else k): _scrubbed(v, named, judge) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, named, judge) for v in value]
    return value


def _scrub_naming(conn: Any, table: Any, key: Any, column: Any, named: set[str], judge: Callable[[str, set[str]], bool]) -> int:
    """Rows of ``table`` whose JSON ``column`` holds a text naming them, rewritten with the name
    erased; returns how many. The database finds the candidates (their JSON text contains one
    of ``named`` as JSON writes it); ``judge`` decides value by value."""
    needles = sorted({json_text(value)[1:-1].lower() for value in named if value})
    if not needles:
        return 0
    text = func.lower(cast(column, Text))
    found = conn.execute(select(key, column).where(or_(*(text.like(f"%{_escaped(n)}%", escape="\\") for n in needles)))).all()
    changed = [(k, after) for k, before in found if (after := _scrubbed(before, named, judge)) != before]
    if changed:
        conn.execute(
            update(table).where(key == bindparam("b_key")).values({column.name: bindparam("b_value")}),
            [{"b_key": k, "b_value": value} for k, value in changed],
        )
    return len(changed)


def _escaped(needle: str) -> str:
    return needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
