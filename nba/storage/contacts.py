"""Contact history and offer counters: what each customer was shown and did, and per offer
counts by quarter hour, which contact caps, suppressions and budgets read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from nba.days import BUCKET_SECONDS
from nba.records import ContactEvent
from nba.storage.engine import Repository
from nba.storage.tables import CONTACT_EVENTS, FEEDBACK, OFFER_COUNTERS

__all__ = ["Contacts"]


class Contacts(Repository):
    """The ``contact_events`` and ``offer_counters`` tables."""

    def contact_events(self, customer_id: str, since: float, up_to: int | None = None) -> list[ContactEvent]:
        """A customer's contact events since ``since``; with ``up_to``, only those with ids up
        to it (a process that follows others' events: the later ones reach it by the bus or
        the tail, and must not be counted twice)."""
        table = CONTACT_EVENTS
        query = (
            select(table.c.at, table.c.kind, table.c.offer_id, table.c.group, table.c.channel)
            .where(table.c.customer_id == customer_id, table.c.at >= since)
            .order_by(table.c.at)
        )
        if up_to is not None:
            query = query.where(table.c.id <= up_to)
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [ContactEvent(customer_id, r.at, r.kind, r.offer_id, r.group, r.channel) for r in rows]

    def insert_contacts(self, conn: Any, events: list[ContactEvent]) -> None:
        if not events:
            return
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(
            'INSERT INTO contact_events (customer_id, at, kind, offer_id, "group", channel, origin) '
            f"VALUES ({', '.join([mark] * 7)})",
            [(e.customer_id, e.at, e.kind, e.offer_id, e.group, e.channel, self.origin) for e in events],
        )
        increments: dict[tuple[str, str, int], int] = {}
        for e in events:
            key = (e.offer_id, e.kind, int(e.at // BUCKET_SECONDS))
            increments[key] = increments.get(key, 0) + 1
        self._add_counts(conn, [{"offer_id": o, "kind": k, "quarter": q, "count": n} for (o, k, q), n in increments.items()])

    def _add_counts(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        table = OFFER_COUNTERS
        dialect = self.engine.dialect
        if dialect.name in ("sqlite", "postgresql"):
            # Both speak INSERT ... ON CONFLICT DO UPDATE; written out once, since building the
            # statement with SQLAlchemy on every write cost more than running it.
            mark = "?" if dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                f"INSERT INTO offer_counters (offer_id, kind, quarter, count) VALUES ({mark}, {mark}, {mark}, {mark}) "
                "ON CONFLICT (offer_id, kind, quarter) DO UPDATE SET count = offer_counters.count + excluded.count",
                [(r["offer_id"], r["kind"], r["quarter"], r["count"]) for r in rows],
            )
            return
        for row in rows:  # any other database: read, then write
            key = (table.c.offer_id == row["offer_id"]) & (table.c.kind == row["kind"]) & (table.c.quarter == row["quarter"])
            if conn.execute(table.update().where(key).values(count=table.c.count + row["count"])).rowcount == 0:
                conn.execute(table.insert().values(**row))

    def contact_events_after(self, after_id: int, limit: int = 5000, up_to: int | None = None) -> tuple[list[ContactEvent], int]:
        """Contact events other processes wrote after ``after_id`` (up to ``up_to``), and the
        last id seen."""
        table = CONTACT_EVENTS
        query = select(table).where(table.c.id > after_id).order_by(table.c.id).limit(limit)
        if up_to is not None:
            query = query.where(table.c.id <= up_to)
        with self.read() as conn:
            rows = conn.execute(query).all()
        events = [
            ContactEvent(r.customer_id, r.at, r.kind, r.offer_id, r.group, r.channel) for r in rows if r.origin != self.origin
        ]
        return events, (rows[-1].id if rows else after_id)

    def positions(self, conn: Any) -> tuple[int, int]:
        """The newest feedback and contact-event ids seen by ``conn`` (within a write
        transaction, which holds the write lock, nobody else commits meanwhile)."""
        feedback = conn.execute(select(func.max(FEEDBACK.c.id))).scalar() or 0
        contacts = conn.execute(select(func.max(CONTACT_EVENTS.c.id))).scalar() or 0
        return int(feedback), int(contacts)

    def last_ids(self) -> tuple[int, int]:
        """The newest feedback and contact-event ids: where a new process starts reading."""
        with self.read() as conn:
            return self.positions(conn)

    def counter_rows(self) -> list[tuple[str, str, int, int]]:
        """Every (offer, kind, quarter, count) row; quarter 0 holds compacted totals."""
        table = OFFER_COUNTERS
        with self.read() as conn:
            return [tuple(r) for r in conn.execute(select(table.c.offer_id, table.c.kind, table.c.quarter, table.c.count)).all()]

    def compact(self, contacts_before: float, counters_before: float) -> None:
        """Drops contact events older than any policy looks back, and folds the counters of
        quarter hours that began before ``counters_before`` (epoch seconds) into each offer's
        total (quarter 0)."""
        contacts, counters = CONTACT_EVENTS, OFFER_COUNTERS
        with self.write() as conn:
            # The newest row stays whatever its age: SQLite would give its id to the next
            # event, and processes that follow the log by id would skip that one.
            newest = select(func.max(contacts.c.id)).scalar_subquery()
            conn.execute(contacts.delete().where(contacts.c.at < contacts_before, contacts.c.id < newest))
            quarters_before = int(counters_before // BUCKET_SECONDS)
            old = (counters.c.quarter > 0) & (counters.c.quarter < quarters_before)
            totals = conn.execute(
                select(counters.c.offer_id, counters.c.kind, func.sum(counters.c.count))
                .where(old)
                .group_by(counters.c.offer_id, counters.c.kind)
            ).all()
            conn.execute(counters.delete().where(old))
            self._add_counts(conn, [{"offer_id": o, "kind": k, "quarter": 0, "count": int(n)} for o, k, n in totals])
