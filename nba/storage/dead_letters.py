"""Dead letters: touch-point events the profile definition refused (a type it does not declare,
a property of another type), kept whole with the reason, until a fixed definition applies them.

One row an ``event_id``: the same event sent again counts an attempt and keeps the newest
content and reason. Applying one (``nba profiles dead-letters --replay``, or the sender sending
it again once it conforms) removes it; an event that still does not conform keeps its row with
the new reason. Nothing here is read on the request path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from nba.storage.engine import Repository, utc
from nba.storage.tables import PROFILE_DEAD_LETTERS

__all__ = ["DeadLetter", "DeadLetters"]


@dataclass(frozen=True)
class DeadLetter:
    id: int
    event_id: str
    type: str
    source: str
    customer_id: str
    #: identifier kind -> value, normalised
    identities: Mapping[str, str]
    #: as sent (None: the event was sent without its time, which is then ``received_at``)
    occurred_at: datetime | None
    properties: Mapping[str, Any]
    #: when it first came, and when last
    received_at: datetime
    last_received_at: datetime
    attempts: int
    reason: str
    field: str


class DeadLetters(Repository):
    """The ``profile_dead_letters`` table."""

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
    ) -> None:
        """Keeps a refused event (inside the caller's write transaction); one already kept under
        its ``event_id`` takes the newest content and reason, and counts the attempt."""
        d = PROFILE_DEAD_LETTERS
        content = {
            "type": type[:64],
            "source": source[:128],
            "customer_id": customer_id[:256],
            "identities": dict(identities),
            "occurred_at": occurred_at,
            "properties": dict(properties),
            "reason": reason[:1000],
            "field": field[:256],
            "last_received_at": now,
        }
        updated = conn.execute(d.update().where(d.c.event_id == event_id).values(attempts=d.c.attempts + 1, **content)).rowcount
        if not updated:
            conn.execute(d.insert().values(event_id=event_id, received_at=now, attempts=1, **content))

    def drop_dead_letters(self, conn: Any, event_ids: Iterable[str]) -> None:
        """Forgets the dead letters of events now applied."""
        ids = sorted(set(event_ids))
        d = PROFILE_DEAD_LETTERS
        for start in range(0, len(ids), 1000):
            conn.execute(delete(d).where(d.c.event_id.in_(ids[start : start + 1000])))

    def note_dead_letter(self, conn: Any, event_id: str, reason: str, field: str, now: datetime) -> None:
        """A replay's new reason for refusing a dead letter (another than the definition's:
        its event_id used for another event since, identifiers naming several customers)."""
        d = PROFILE_DEAD_LETTERS
        conn.execute(
            d.update()
            .where(d.c.event_id == event_id)
            .values(reason=reason[:1000], field=field[:256], attempts=d.c.attempts + 1, last_received_at=now)
        )

    def dead_letters(
        self, after_id: int = 0, limit: int = 1000, event_type: str | None = None, conn: Any = None
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead letters after ``after_id``, oldest first (``event_type``: of that type only)."""
        d = PROFILE_DEAD_LETTERS
        query = select(d).where(d.c.id > after_id).order_by(d.c.id).limit(limit)
        if event_type is not None:
            query = query.where(d.c.type == event_type)
        with self.reading(conn) as c:
            return [
                DeadLetter(
                    int(r.id),
                    r.event_id,
                    r.type,
                    r.source,
                    r.customer_id,
                    dict(r.identities),
                    utc(r.occurred_at) if r.occurred_at is not None else None,
                    dict(r.properties),
                    utc(r.received_at),
                    utc(r.last_received_at),
                    int(r.attempts),
                    r.reason,
                    r.field,
                )
                for r in c.execute(query)
            ]

    def dead_letter_counts(self, conn: Any = None) -> list[tuple[str, str, str, int]]:
        """(source, type, field at fault, events) of the dead letters kept, most first."""
        d = PROFILE_DEAD_LETTERS
        n = func.count().label("n")
        query = select(d.c.source, d.c.type, d.c.field, n).group_by(d.c.source, d.c.type, d.c.field).order_by(n.desc())
        with self.reading(conn) as c:
            return [(s, t, f, int(k)) for s, t, f, k in c.execute(query)]
