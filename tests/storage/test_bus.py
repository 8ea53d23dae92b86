"""The bus's entries and how a decision log applies them: exactly once, whatever arrives first
(the database read by the tail, or the entry), on both engines."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from nba.records import ContactEvent, LearningEvent
from nba.storage.bus import BusEntry, Span, decode, encode
from nba.storage.decision_log import DecisionLog, LogOptions
from nba.storage.engine import open_engine
from nba.storage.store import Store


def test_an_entry_survives_the_stream() -> None:
    entry = BusEntry(
        "host:1",
        Span(3, 5, 10, 12),
        [LearningEvent(4, {"customer.age": 30.0, "x": "y"}, "alpha", 1.0, None, 123.5)],
        [ContactEvent("c", 1.5, "decided", "alpha", "g", "web")],
    )
    fields = {k.encode(): v.encode() for k, v in encode(entry).items()}
    assert decode(fields) == entry


def test_contacts_half_read_by_the_tail_are_not_applied_twice(database_url: str, tmp_path: Path) -> None:
    """Another replica commits 6,000 contact events in one transaction; the tail reads them
    5,000 at a time and stops inside it; then the transaction's bus entry arrives. Every
    event reaches the contact history once."""
    engine = open_engine(database_url)
    heard: list[ContactEvent] = []
    lock = threading.Lock()

    class Listener:
        def learned(self, events: list[LearningEvent]) -> None:
            pass

        def contacted(self, events: list[ContactEvent]) -> None:
            with lock:
                heard.extend(events)

        def state_changed(self, up: bool) -> None:
            pass

        def after_write(self) -> None:
            pass

    log = DecisionLog(Store(engine, origin="here"), Listener(), LogOptions(tail_seconds=3600), shared=True)
    try:
        time.sleep(0.2)  # the writer's first tail (of nothing) is done; the next is an hour away
        other = Store(engine, origin="there")
        events = [ContactEvent(f"c-{i % 300}", 1000.0 + i, "decided", "alpha", "g", "web") for i in range(6000)]
        with other.write() as conn:
            before = other.positions(conn)
            other.insert_contacts(conn, events)
            after = other.positions(conn)
        log.replication.tail()  # reads 5,000 of them
        with lock:
            assert len(heard) == 5000
        log.deliver(BusEntry("there", Span(before[0], after[0], before[1], after[1]), [], events))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(heard) < 6000:
            time.sleep(0.02)
        time.sleep(0.1)
        with lock:
            assert len(heard) == 6000
            assert sorted(e.at for e in heard) == [e.at for e in events]
    finally:
        log.close()
        engine.dispose()


def test_profiles_a_replica_could_not_announce_make_the_others_drop_everything() -> None:
    """Redis goes away while a replica changes profiles: once it is back, the next entry of
    that replica says "*" (drop every cached profile), since the ids in between were lost."""
    from engines import OwnRedis

    from nba.storage.bus import RETRY_SECONDS, RedisBus

    with OwnRedis() as own:
        heard: list[list[str]] = []
        publisher = RedisBus(own.url, "nba-test:profiles", "replica-one")
        listener = RedisBus(own.url, "nba-test:profiles", "replica-two")
        listener.start(lambda entry: None, heard.append)
        publisher.start(lambda entry: None)
        try:
            assert publisher.publish_profiles(["c-1"])
            own.stop()
            assert not publisher.publish_profiles(["c-2", "c-3"])  # lost with Redis
            own.start()
            time.sleep(RETRY_SECONDS + 0.1)
            assert publisher.publish_profiles(["c-4"])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (not heard or heard[-1] != ["*"]):
                time.sleep(0.02)
            assert heard[0] == ["c-1"] and heard[-1] == ["*"]
            assert publisher.publish_profiles(["c-5"])  # and then ids again
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and heard[-1] != ["c-5"]:
                time.sleep(0.02)
            assert heard[-1] == ["c-5"]
        finally:
            publisher.close()
            listener.close()
