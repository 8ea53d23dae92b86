"""The profile cache on its own (the database behind it is a function here; the end-to-end
tests in test_decide_on_profile.py run it on real servers): hits and misses, an invalidation
racing a read, a merge dropping every id cached for the absorbed customer, least-recently-used
eviction, a changed definition, and bounded trust without invalidations."""

from __future__ import annotations

import threading

from nba.policy.profile import ProfileSection, compile_profile
from nba.profiles.cache import ProfileCache
from nba.profiles.profile import Profile, TrackedEvent

DEFINITION, _ = compile_profile(
    ProfileSection.model_validate(
        {
            "event_types": {"order": {"properties": {"amount": "number"}}},
            "attributes": {"email": {"from": "order.email", "pii": True}},
            "computed": {"orders": "count(order)"},
        }
    )
)


class Database:
    """Stands in for the stored profiles: customer id -> survivor, survivor -> orders."""

    def __init__(self) -> None:
        self.survivor: dict[str, str] = {}
        self.orders: dict[str, int] = {}
        self.reads = 0
        #: set: the next read waits for it (a read in flight while something else happens)
        self.hold: threading.Event | None = None
        self.reading = threading.Event()

    def load(self, customer_id: str, identities: bool) -> tuple[Profile | None, dict[str, list[str]] | None]:
        self.reads += 1
        survivor = self.survivor.get(customer_id, customer_id)
        count = self.orders.get(survivor)
        profile = None
        if count is not None:
            profile = Profile(DEFINITION, survivor, 0.0)
            for n in range(count):
                profile.apply(TrackedEvent(f"e-{n}", survivor, "order", "web", 1.0 + n, {"amount": 1.0}))
        if self.hold is not None:
            hold, self.hold = self.hold, None
            self.reading.set()
            hold.wait(5)
        return profile, ({"email": ["x@example.com"]} if identities and profile else None)


def orders(cache: ProfileCache, customer_id: str) -> int | None:
    profile, _ = cache.get(customer_id)
    return None if profile is None else profile.version


def test_a_second_read_is_a_hit_and_an_invalidation_a_miss() -> None:
    db = Database()
    db.orders["c-1"] = 2
    cache = ProfileCache(db.load, lambda: DEFINITION)
    assert orders(cache, "c-1") == 2 and orders(cache, "c-1") == 2 and db.reads == 1
    assert orders(cache, "c-none") is None and orders(cache, "c-none") is None and db.reads == 2  # "none" is cached too
    db.orders["c-1"] = 3
    cache.invalidate(["c-1"])
    assert orders(cache, "c-1") == 3 and db.reads == 3


def test_a_read_that_began_before_an_invalidation_is_answered_but_not_kept() -> None:
    db = Database()
    db.orders["c-1"] = 1
    cache = ProfileCache(db.load, lambda: DEFINITION)
    release = db.hold = threading.Event()
    answers: list[int | None] = []
    reader = threading.Thread(target=lambda: answers.append(orders(cache, "c-1")))
    reader.start()
    assert db.reading.wait(5)  # the read has version 1 in hand ...
    db.orders["c-1"] = 2  # ... when another replica commits, and its invalidation arrives
    cache.invalidate(["c-1"])
    release.set()
    reader.join(5)
    assert answers == [1]  # answered as read, but not kept:
    assert orders(cache, "c-1") == 2 and db.reads == 2  # the next read goes to the database
    assert orders(cache, "c-1") == 2 and db.reads == 2  # and that one is kept


def test_a_merge_drops_every_id_cached_for_the_absorbed_customer() -> None:
    db = Database()
    db.orders["b"] = 1
    db.survivor["c"] = "b"  # c was absorbed into b before
    cache = ProfileCache(db.load, lambda: DEFINITION)
    assert orders(cache, "c") == 1 and orders(cache, "b") == 1 and len(cache) == 2
    db.orders["a"] = 5  # now b is absorbed into a: the tracker says [a, b]
    db.survivor.update({"b": "a", "c": "a"})
    cache.invalidate(["a", "b"])
    assert len(cache) == 0
    assert orders(cache, "c") == 5 and cache.get("c")[0].customer_id == "a"  # type: ignore[union-attr]


def test_own_saves_replace_the_entry_without_a_read() -> None:
    db = Database()
    db.orders["c-1"] = 1
    cache = ProfileCache(db.load, lambda: DEFINITION)
    assert orders(cache, "c-1") == 1
    started = cache.begin()
    saved = Profile(DEFINITION, "c-1", 0.0)
    for n in range(4):
        saved.apply(TrackedEvent(f"s-{n}", "c-1", "order", "web", 1.0 + n, {"amount": 2.0}))
    cache.saved(started, [(saved, ())])
    assert orders(cache, "c-1") == 4 and db.reads == 1
    # a save that raced another replica's change of the same customer is not kept
    started = cache.begin()
    cache.invalidate(["c-1"])
    cache.saved(started, [(saved, ())])
    db.orders["c-1"] = 9
    assert orders(cache, "c-1") == 9 and db.reads == 2


def test_the_least_recently_used_go_first() -> None:
    db = Database()
    db.orders.update({"a": 1, "b": 1, "c": 1})
    cache = ProfileCache(db.load, lambda: DEFINITION, size=2)
    orders(cache, "a")
    orders(cache, "b")
    orders(cache, "a")  # a is used again: b is the least recent
    orders(cache, "c")
    reads = db.reads
    orders(cache, "a")
    assert db.reads == reads  # a stayed
    orders(cache, "b")
    assert db.reads == reads + 1  # b went


def test_a_changed_definition_reads_again_and_trust_is_bounded_without_invalidations() -> None:
    db = Database()
    db.orders["c-1"] = 1
    definition = [DEFINITION]
    trust = [float("inf")]
    cache = ProfileCache(db.load, lambda: definition[0], fresh_seconds=lambda: trust[0])
    orders(cache, "c-1")
    orders(cache, "c-1")
    assert db.reads == 1
    definition[0] = compile_profile(ProfileSection.model_validate({"computed": {"orders": "count(order)"}}))[0]
    orders(cache, "c-1")
    assert db.reads == 2
    trust[0] = 0.0  # the bus is down: nothing cached is trusted for long
    orders(cache, "c-1")
    assert db.reads == 3


def test_a_decision_reads_personal_fields_apart_and_an_unknown_customer_as_empty() -> None:
    db = Database()
    cache = ProfileCache(db.load, lambda: DEFINITION)
    empty = cache.view("nobody", 10.0)
    assert (empty.version, dict(empty.learnable), dict(empty.private)) == (0, {"orders": 0}, {})
    db.orders["c-1"] = 2
    view = cache.view("c-1", 10.0)
    assert view.version == 2 and dict(view.learnable) == {"orders": 2} and "email" not in view.learnable


def test_a_read_that_began_before_this_process_saved_is_not_kept_over_the_save() -> None:
    db = Database()
    db.orders["c-1"] = 1
    cache = ProfileCache(db.load, lambda: DEFINITION)
    release = db.hold = threading.Event()
    reader = threading.Thread(target=lambda: orders(cache, "c-1"))
    reader.start()
    assert db.reading.wait(5)  # a decision has version 1 in hand ...
    started = cache.begin()  # ... when this process tracks an event and saves version 2
    saved = Profile(DEFINITION, "c-1", 0.0)
    for n in range(2):
        saved.apply(TrackedEvent(f"s-{n}", "c-1", "order", "web", 1.0 + n, {"amount": 1.0}))
    cache.saved(started, [(saved, ())])
    release.set()
    reader.join(5)
    assert orders(cache, "c-1") == 2 and db.reads == 1  # the save stands; the older read was not kept
