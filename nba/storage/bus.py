"""The Redis Streams bus (``--bus redis://…``): replicas hear each other's events as they commit.

The shared database stays the source of truth and of order. Write transactions are
serialised (``Store.write``), so event ids follow commit order, and every transaction knows
the newest ids before and after it: its ``Span``. After committing, a replica adds one entry
to the stream: its span, the learning events it committed and the contact events it wrote.
Every other replica applies an entry whose span starts where it stands; if it starts further
on (an entry still in flight, or lost with a replica that crashed between its commit and its
publish), the replica first reads the missing ids from the database. Since positions only move
forward, every event is applied exactly once and in the same order everywhere, whatever order
the entries arrive in. With no entries for a while, a slow poll of the database catches up on
anything never published; with Redis unreachable, the replicas poll as ``--bus database``
does and say so (``nba_bus_up`` 0) until it is back.

We use redis-py's plain commands (XADD with an approximate MAXLEN, XREAD BLOCK) rather than
consumer groups: every replica must read every entry, and acknowledgement is its own position
in the database's order, not the stream's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nba import metrics
from nba.records import ContactEvent, LearningEvent

__all__ = ["BusEntry", "RedisBus", "Span"]

log = logging.getLogger(__name__)

#: the longest a publish or a read may hold the writer up when Redis hangs
SOCKET_TIMEOUT_SECONDS = 0.5
#: after a failure, how long to wait before trying Redis again
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Span:
    """The newest feedback and contact-event ids before and after one write transaction."""

    feedback_before: int
    feedback_after: int
    contacts_before: int
    contacts_after: int


@dataclass(frozen=True)
class BusEntry:
    origin: str
    span: Span
    events: list[LearningEvent]
    contacts: list[ContactEvent]


def encode(entry: BusEntry) -> dict[str, str]:
    s = entry.span
    return {
        "origin": entry.origin,
        "span": f"{s.feedback_before},{s.feedback_after},{s.contacts_before},{s.contacts_after}",
        "events": json.dumps(
            [[e.feedback_id, e.features, e.offer_id, e.reward, e.previous_reward, e.received_at] for e in entry.events],
            separators=(",", ":"),
        ),
        "contacts": json.dumps(
            [[c.customer_id, c.at, c.kind, c.offer_id, c.group, c.channel] for c in entry.contacts], separators=(",", ":")
        ),
    }


def decode(fields: dict[bytes, bytes]) -> BusEntry:
    a, b, c, d = (int(x) for x in fields[b"span"].split(b","))
    events = [LearningEvent(int(i), f, o, float(r), p, float(t)) for i, f, o, r, p, t in json.loads(fields[b"events"])]
    contacts = [ContactEvent(*c) for c in json.loads(fields[b"contacts"])]
    return BusEntry(fields[b"origin"].decode(), Span(a, b, c, d), events, contacts)


class RedisBus:
    """Publishes this replica's committed events and hands the others' to ``on_entry``."""

    def __init__(
        self, url: str, stream: str, origin: str, max_length: int = 100_000, on_state: Callable[[bool], None] | None = None
    ) -> None:
        import redis  # imported here: only replicas on Redis need it

        self._redis = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=SOCKET_TIMEOUT_SECONDS
        )
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.url = url
        self.stream = stream
        self.origin = origin
        self._max_length = max_length
        self._on_entry: Callable[[BusEntry], None] = lambda entry: None
        self._on_profiles: Callable[[list[str]], None] = lambda ids: None
        #: a profiles entry could not be published: the next one says "drop everything"
        self._profiles_lost = False
        self._on_state = on_state or (lambda up: None)
        self._up = False
        self._retry_at = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.BUS_UP.set(0)

    @property
    def up(self) -> bool:
        return self._up

    @property
    def client(self) -> Any:
        """The Redis connection pool, shared with reservations (``nba.decision.reservations``)."""
        return self._redis

    def _mark(self, up: bool, what: str, exc: Exception | None = None) -> None:
        changed = up != self._up
        if changed:
            if up:
                log.info("the bus is back", extra={"bus": self.stream})
            else:
                log.warning(
                    "the bus is unavailable: learning from the database until it returns",
                    extra={"bus": self.stream, "during": what, "error": repr(exc)},
                )
        self._up = up
        if changed:
            self._on_state(up)
        metrics.BUS_UP.set(1 if up else 0)
        if not up:
            metrics.BUS_ERRORS.labels(what).inc()
            self._retry_at = time.monotonic() + RETRY_SECONDS

    def publish(self, entry: BusEntry) -> bool:
        """Adds the entry to the stream; False (logged, counted) when Redis is unavailable:
        the events are in the database, and the others will read them from there."""
        return self._add(encode(entry))

    def publish_profiles(self, ids: list[str]) -> bool:
        """Says which customers' profiles this replica changed (their ids, absorbed ids
        included), so that the others drop what they cached of them; False when Redis is
        unavailable (the others then trust what they cached for a bounded time only)."""
        if self._profiles_lost:  # some were not sent: the others drop everything they cached
            ids = ["*"]
        sent = self._add({"origin": self.origin, "profiles": json.dumps(ids, separators=(",", ":"))})
        self._profiles_lost = not sent
        return sent

    def _add(self, fields: dict[Any, Any]) -> bool:
        if not self._up and time.monotonic() < self._retry_at:
            return False
        try:
            self._redis.xadd(self.stream, fields, maxlen=self._max_length, approximate=True)
        except self._errors as exc:
            self._mark(False, "publish", exc)
            return False
        metrics.BUS_PUBLISHED.inc()
        self._mark(True, "publish")
        return True

    def start(self, on_entry: Callable[[BusEntry], None], on_profiles: Callable[[list[str]], None] | None = None) -> None:
        self._on_entry = on_entry
        if on_profiles is not None:
            self._on_profiles = on_profiles
        try:  # up (or not) before the service says it is serving
            self._redis.ping()
            self._mark(True, "connect")
        except self._errors as exc:
            self._mark(False, "connect", exc)
        self._thread = threading.Thread(target=self._read, name="nba-bus", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2 * SOCKET_TIMEOUT_SECONDS + 1)
        self._redis.close()

    def _read(self) -> None:
        position: str | None = None
        while not self._stopping.is_set():
            if not self._up and time.monotonic() < self._retry_at:
                self._stopping.wait(0.05)
                continue
            try:
                if position is None:  # from now on: what came before is in the database
                    info: Any = self._redis.xinfo_stream(self.stream) if self._redis.exists(self.stream) else None
                    position = info["last-generated-id"].decode() if info else "0-0"
                    self._mark(True, "read")
                # blocks less than the socket timeout, so a quiet stream is not an error
                answer: Any = self._redis.xread({self.stream: position}, count=500, block=int(SOCKET_TIMEOUT_SECONDS * 600))
            except self._errors as exc:
                self._mark(False, "read", exc)
                position = None  # entries missed meanwhile come from the database
                continue
            self._mark(True, "read")
            for _stream, entries in answer or ():
                for entry_id, fields in entries:
                    position = entry_id.decode()
                    if b"profiles" in fields:  # profiles another replica changed
                        self._profiles_entry(position, fields)
                        continue
                    try:
                        entry = decode(fields)
                    except (KeyError, ValueError, TypeError) as exc:
                        log.warning("ignored a malformed bus entry", extra={"entry": position, "error": repr(exc)})
                        continue
                    if entry.origin != self.origin:
                        metrics.BUS_RECEIVED.inc()
                        self._on_entry(entry)

    def _profiles_entry(self, position: str, fields: dict[bytes, bytes]) -> None:
        try:
            ids = json.loads(fields[b"profiles"])
            origin = fields[b"origin"].decode()
            if not isinstance(ids, list):
                raise ValueError("profiles: not a list")
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("ignored a malformed bus entry", extra={"entry": position, "error": repr(exc)})
            return
        if origin != self.origin:
            metrics.BUS_RECEIVED.inc()
            self._on_profiles([str(i) for i in ids])
