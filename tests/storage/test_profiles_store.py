"""Customer profiles in the database, on SQLite and PostgreSQL: states saved and loaded, the
identifiers customers hold, merges that chain (an id absorbed two merges ago still resolves),
identifiers and events moving to the survivor, events in the order a profile applies them,
and pairs kept apart once a merge was undone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from nba.storage.engine import open_engine
from nba.storage.store import Store
from nba.storage.tables import PROFILE_MERGES

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def event(event_id: str, customer: str, kind: str, source: str, at: datetime, properties: dict) -> dict:  # type: ignore[type-arg]
    return {
        "event_id": event_id,
        "customer_id": customer,
        "type": kind,
        "source": source,
        "occurred_at": at,
        "received_at": T0,
        "properties": properties,
        "identities": {},
        "content_hash": "h" * 64,
    }


def test_profiles_identities_events_and_merges(database_url: str) -> None:
    engine = open_engine(database_url)
    store = Store(engine)
    try:
        with store.write() as conn:
            for n, customer in enumerate(("c-1", "c-2", "c-3")):
                store.save(conn, customer, T0 + timedelta(hours=n), 1, {"n": n}, T0)
            store.add_identities(conn, "c-1", {"email": "a@example.com"})
            store.add_identities(conn, "c-2", {"phone": "+442079460018", "device_id": "tablet"})
            store.add_identities(conn, "c-3", {"device_id": "tablet", "crm_id": "C3"})
            store.add_identities(conn, "c-3", {"crm_id": "C3"})  # again: no duplicate
            rows = [
                event(f"e-{i}", customer, "order", "web", at, {"amount": float(i)})
                for i, (customer, at) in enumerate(
                    (("c-2", T0 + timedelta(days=2)), ("c-1", T0), ("c-2", T0 + timedelta(days=1)))
                )
            ]
            store.insert_events(conn, [*rows, event("e-tie-b", "c-1", "contact", "app", T0, {})])
        with store.read() as conn:
            assert store.load(conn, "c-2")[1:] == (T0 + timedelta(hours=1), 1, {"n": 1})
            assert store.load(conn, "c-9") is None and store.survivor(conn, "c-9") is None
            assert store.holders(conn, "device_id", "tablet") == ["c-2", "c-3"]  # oldest first
            assert store.identities(conn, "c-3") == {"crm_id": ["C3"], "device_id": ["tablet"]}
            assert store.stored_events(conn, ["e-1", "nope", "e-1"]) == {"e-1": ("h" * 64, "c-1")}
            many = store.stored_events(conn, [f"x-{i}" for i in range(2500)] + ["e-0"])  # asked for in chunks
            assert many == {"e-0": ("h" * 64, "c-2")}

        with store.write() as conn:  # c-2 is c-1; then c-1 (and so c-2) is c-3's... the other way round
            store.merge(conn, "c-1", "c-2", "event e-7", T0)
            store.merge(conn, "c-3", "c-1", "event e-8", T0)
            store.merge(conn, "c-3", "c-new", "event e-9", T0)  # an id seen only on an event
        with store.read() as conn:
            assert [store.survivor(conn, c) for c in ("c-1", "c-2", "c-3", "c-new")] == ["c-3"] * 4
            assert store.load(conn, "c-1") is None  # merged away
            assert store.identities(conn, "c-3") == {
                "crm_id": ["C3"],
                "device_id": ["tablet"],
                "email": ["a@example.com"],
                "phone": ["+442079460018"],
            }
            assert store.holders(conn, "email", "a@example.com") == ["c-3"]
            assert [(e[0], e[3]) for e in store.events(conn, "c-3")] == [
                ("e-1", T0),
                ("e-tie-b", T0),
                ("e-2", T0 + timedelta(days=1)),
                ("e-0", T0 + timedelta(days=2)),
            ]
            assert not store.separated(conn, "c-1", "c-3")
        with store.write() as conn:  # an admin undid c-3 <- c-1: the pair is kept apart since
            conn.execute(update(PROFILE_MERGES).where(PROFILE_MERGES.c.absorbed == "c-1").values(undone_at=T0))
        with store.read() as conn:
            assert store.separated(conn, "c-3", "c-1") and store.separated(conn, "c-1", "c-3")
            assert not store.separated(conn, "c-3", "c-2")
    finally:
        engine.dispose()


def test_a_snapshot_reads_one_state_while_another_connection_writes(database_url: str) -> None:
    """GetProfile's timeline, merged ids and decisions are read in one snapshot: an event
    committed between two of its reads is in neither (or in both), never in one only."""
    engine = open_engine(database_url)
    store = Store(engine)
    try:
        with store.write() as conn:
            store.insert_events(conn, [event("e-1", "c-1", "order", "web", T0, {})])
        with store.snapshot() as conn:
            before = store.timeline("c-1", 10, conn=conn)
            with store.write() as other:  # another connection commits meanwhile
                store.insert_events(other, [event("e-2", "c-1", "order", "web", T0 + timedelta(minutes=1), {})])
            during = store.timeline("c-1", 10, conn=conn)
        after = store.timeline("c-1", 10)
        assert [e[0] for e in before] == [e[0] for e in during] == ["e-1"]
        assert [e[0] for e in after] == ["e-2", "e-1"]
    finally:
        engine.dispose()


def test_retention_deletes_the_events_received_before_the_cut_oldest_first(database_url: str) -> None:
    engine = open_engine(database_url)
    store = Store(engine)
    try:
        with store.write() as conn:
            rows = []
            for n in range(12):
                row = event(f"r-{n}", "c-1", "order", "web", T0 - timedelta(days=400), {})
                row["received_at"] = T0 - timedelta(days=12 - n)  # received a day apart, oldest first
                rows.append(row)
            store.insert_events(conn, rows)
        assert store.purge_events(T0 - timedelta(days=9, hours=12), batch=2) == 3  # r-0, r-1, r-2, two a transaction
        assert {e[0] for e in store.timeline("c-1", 20)} == {f"r-{n}" for n in range(3, 12)}
        assert store.purge_events(T0 - timedelta(days=30)) == 0
        assert len(store.timeline("c-1", 20)) == 9
    finally:
        engine.dispose()
