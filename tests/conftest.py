"""Shared fixtures: real servers on free ports over real databases.

Every test that touches the store runs twice: on a SQLite file, and on PostgreSQL (a schema of
its own in the database ``NBA_TEST_POSTGRES`` names, by default the ``test`` database on
127.0.0.1:5432). Without PostgreSQL those runs skip, saying why; with ``NBA_REQUIRE_SERVICES=1``
(CI) they fail instead.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from nba.config import Settings
from nba.service.server import Service, create_server
from nba.v1 import admin_service_pb2_grpc as apb_grpc
from nba.v1 import decision_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


#: ports this process has handed out: the OS may hand a just-closed port out again at once,
#: and a test that asks for two (a server's and its metrics endpoint's) must get two
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port found that this process has not handed out already")


#: gRPC shares subchannels between channels of one process by default: a channel to a port a
#: stopped test server used (the OS hands ports out again) could inherit its "connection
#: refused" backoff and fail at once against the new server on that port
LOCAL_SUBCHANNELS = [("grpc.use_local_subchannel_pool", 1)]

POSTGRES = os.environ.get("NBA_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@functools.cache
def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        import psycopg

        with psycopg.connect(_libpq(POSTGRES), connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES} is unavailable ({type(exc).__name__}: {exc})"


def skip_or_fail(reason: str | None) -> None:
    """Skips a test that needs a missing service, saying why; fails it in CI."""
    if reason:
        if require_services():
            pytest.fail(f"{reason}; NBA_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(reason)


def need_postgres() -> None:
    skip_or_fail(postgres_unavailable())


REDIS = os.environ.get("NBA_TEST_REDIS", "redis://127.0.0.1:6379/0")


@functools.cache
def redis_unavailable() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
        return None
    except Exception as exc:
        return f"Redis at {REDIS} is unavailable ({type(exc).__name__}: {exc})"


def need_redis() -> None:
    skip_or_fail(redis_unavailable())


@contextmanager
def redis_stream() -> Iterator[str]:
    """A stream key of its own on the test Redis, deleted afterwards."""
    import redis

    need_redis()
    key = f"nba-test:{uuid.uuid4().hex[:16]}"
    try:
        yield key
    finally:
        client = redis.Redis.from_url(REDIS)
        client.delete(key)
        client.close()


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL whose tables live in a fresh schema, dropped afterwards."""
    import psycopg

    need_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq(POSTGRES), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(_libpq(POSTGRES), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nba.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def settings_for(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "policies": POLICIES,
            "host": "127.0.0.1",
            "port": 0,
            "database_url": database_url,
            "metrics_port": -1,
            # the HTTP API only where a test asks for it (http_port=0): stopping it costs a tick
            "http_port": -1,
            "grace_seconds": 5.0,
            "log_format": "text",
            "admin_tokens": ADMIN_TOKENS,
            "policies_watch_seconds": 0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


EDITOR_TOKEN = "editor-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789abcdef"
ADMIN_TOKENS = [f"ed:editor:{EDITOR_TOKEN}", f"vi:viewer:{VIEWER_TOKEN}"]


class ManualClock:
    """Time that moves only when a test says so (the world's clock is outside the project)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # a Tuesday, noon UTC
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> None:
        with self._lock:
            self._now += timedelta(**delta)

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


class Running:
    """A started service and client stubs on its port."""

    def __init__(self, service: Service, port: int) -> None:
        self.service = service
        self.port = port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=LOCAL_SUBCHANNELS)
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.admin = apb_grpc.AdminServiceStub(self.channel)

    @staticmethod
    def auth(token: str = EDITOR_TOKEN) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token}")]

    def stop(self) -> None:
        self.channel.close()
        self.service.stop(grace=5.0)


@pytest.fixture
def start(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., Running]]:
    """Starts services; every one still running is stopped when the test ends."""
    running: list[Running] = []

    def run(clock: Any = None, **overrides: Any) -> Running:
        service, port = create_server(settings_for(**overrides), clock)
        r = Running(service, port)
        running.append(r)
        return r

    yield run
    for r in running:
        r.stop()


@pytest.fixture
def server(start: Callable[..., Running]) -> Running:
    return start()


def require_services() -> bool:
    return os.environ.get("NBA_REQUIRE_SERVICES") == "1"


def struct(value: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    s = struct_pb2.Struct()
    s.update(value)
    return s


def customer(**overrides: Any) -> dict[str, Any]:
    """A full Customer-360 profile (eligible for several web offers); override any part."""
    profile: dict[str, Any] = {
        "id": "c-1",
        "age": 34,
        "demographics": {"region": "north", "household": "family", "income_band": "mid"},
        "activity": {"open_orders": 1, "complaints_90d": 0, "returns_90d": 0, "days_since_login": 2, "cart_value": 80},
        "history": {
            "tenure_months": 20,
            "products": ["current-account"],
            "channels_used": ["app", "web"],
            "last_purchase_days": 5,
        },
        "value": {"segment": "silver", "clv": 2100, "monthly_spend": 260},
        "flags": {"churn_risk": False, "churn_score": 0.1, "fraud_risk": False, "vulnerable": False},
        "mood": "positive",
        "consent": {"email": True, "marketing": True, "phone": True},
    }
    profile.update(overrides)
    return profile
