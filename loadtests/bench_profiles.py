"""Customer profiles at scale, on PostgreSQL: `make bench-profiles`.

Generated customers (10 touch-point events each by default: orders, complaints, contacts, page
views over the last year, each customer known by an e-mail address too) are loaded in bulk:
each customer's profile is built by applying its events (``nba.profiles.profile.Profile``, as
tracking does), and profiles, identifiers and events go in with COPY. On top of them, through
a real gRPC server on a port (one process, the default settings, the sample policy set's
profile section):

- TrackBatch: events a second, batches of 500 new events of existing customers;
- GetProfile: p50 and p99 latency of the profile (a read mask), cold (first read: from the
  database) and cached, and of the whole view (timeline, decisions: database reads);
- Decide with a stored profile against Decide with the same fields sent inline: CPU time of
  the deciding thread per call (both ranked over the same policy set);
- two replicas on a Redis bus: from Track answering on one to the other's next decision
  reading the new profile version, p50 and p99;
- memory per cached profile (tracemalloc over the cache filling up);
- disk per event (the events table with its indexes, and the profiles table per customer).

At two scales (100,000 and 1,000,000 customers by default; ``--customers`` gives others) so
that the growth shows. PostgreSQL is the machine's (NBA_BENCH_POSTGRES, default the ``test``
database on 127.0.0.1), in a schema of its own, dropped afterwards. Results as a table, saved
as JSON (loadtests/results/bench_profiles.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

import grpc  # noqa: E402
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2  # noqa: E402

from nba.config import Settings  # noqa: E402
from nba.decision.decider import DecideInput  # noqa: E402
from nba.policy.loading import load_policy_set  # noqa: E402
from nba.profiles.profile import Profile, TrackedEvent  # noqa: E402
from nba.service.server import Service  # noqa: E402
from nba.storage.engine import open_engine  # noqa: E402
from nba.storage.migrations import ensure_schema  # noqa: E402

# the rule tracking stores a profile's due_at by, so that loaded profiles are stored alike
from nba.storage.profiles import _due as due  # noqa: E402
from nba.v1 import profile_service_pb2 as ppb  # noqa: E402
from nba.v1 import profile_service_pb2_grpc as ppb_grpc  # noqa: E402

POSTGRES = os.environ.get("NBA_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("NBA_BENCH_REDIS", "redis://127.0.0.1:6379/0")
TOKEN = "bench-viewer-token-0123456789"
NOW = datetime.now(UTC).replace(microsecond=0)
TYPES = (("order", 0.4), ("page_view", 0.3), ("contact", 0.2), ("complaint", 0.1))


def event_of(rng: random.Random, customer: str, n: int, now: datetime) -> tuple[str, str, str, datetime, dict[str, Any]]:
    """(event id, type, source, occurred at, properties): one generated touch-point event."""
    kind = rng.choices([t for t, _ in TYPES], [w for _, w in TYPES])[0]
    at = now - timedelta(seconds=rng.uniform(0, 365 * 86400))
    if kind == "order":
        properties: dict[str, Any] = {"amount": round(rng.uniform(5, 500), 2), "status": rng.choice(["open", "delivered"])}
        source = rng.choice(["web", "app", "store"])
    elif kind == "page_view":
        properties, source = {"page": rng.choice(["offers", "cards", "travel"])}, rng.choice(["web", "app"])
    elif kind == "contact":
        properties, source = {"sentiment": rng.choice(["positive", "neutral", "negative"])}, "call_center"
    else:
        properties, source = {"topic": rng.choice(["billing", "delivery"])}, rng.choice(["call_center", "email"])
    return f"{customer}-e{n}", kind, source, at, properties


def copy_rows(conn: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def load(url: str, policies: Path, start: int, count: int, per_customer: int) -> float:
    """Customers start .. start+count-1 with their events, built and COPYed; seconds taken."""
    began = time.perf_counter()
    definition = load_policy_set(policies).profile
    engine = open_engine(url)
    raw = engine.raw_connection()
    conn = raw.driver_connection
    rng = random.Random(start)
    chunk = 20_000
    try:
        for first in range(start, start + count, chunk):
            profiles, identities, events = [], [], []
            for c in range(first, min(first + chunk, start + count)):
                customer = f"c-{c}"
                generated = sorted((event_of(rng, customer, n, NOW) for n in range(per_customer)), key=lambda e: (e[3], e[0]))
                created = generated[0][3]
                profile = Profile(definition, customer, created.timestamp())
                for event_id, kind, source, at, properties in generated:
                    profile.apply(TrackedEvent(event_id, customer, kind, source, at.timestamp(), properties))
                    events.append(
                        (event_id, customer, kind, source, at, NOW, json.dumps(properties), "{}", uuid.uuid4().hex * 2, customer)
                    )
                # as tracking writes an import of history arriving now: segments evaluated on
                # arrival and the next time-driven change bounded, stored with the profile and
                # as its due_at (else every read would look for that change, and the segment
                # clock would never visit it), the state with the definition it was built
                # under (else the service would start backfilling every profile), events
                # received now and identifiers with their origin. The segment history (stays,
                # hourly counts) is not written: no figure here reads it.
                profile.settle(NOW.timestamp())
                profile.plan(exact=False)
                state = profile.dump()
                profiles.append(
                    (customer, created, NOW, profile.version, None, json.dumps(state), state["built_under"], due(state))
                )
                identities.append(("email", f"{customer}@example.com", customer, customer))
            copy_rows(
                conn,
                "profiles",
                ("customer_id", "created_at", "updated_at", "version", "merged_into", "state", "built_under", "due_at"),
                profiles,
            )
            copy_rows(conn, "profile_identities", ("kind", "value", "customer_id", "origin"), identities)
            copy_rows(
                conn,
                "profile_events",
                (
                    "event_id",
                    "customer_id",
                    "type",
                    "source",
                    "occurred_at",
                    "received_at",
                    "properties",
                    "identities",
                    "content_hash",
                    "origin",
                ),
                events,
            )
            conn.commit()
            print(f"\r  loaded {min(first + chunk, start + count):,} customers", end="", file=sys.stderr, flush=True)
        with conn.cursor() as cursor:
            cursor.execute("ANALYZE")
        conn.commit()
    finally:
        raw.close()
        engine.dispose()
    print(file=sys.stderr)
    return time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


def started(url: str, policies: Path, **overrides: Any) -> Service:
    """A service on a free port, quiet, the folder not watched."""
    settings = Settings(
        policies=policies,
        database_url=url,
        port=0,
        metrics_port=-1,
        http_port=-1,
        policies_watch_seconds=0,
        log_format="text",
        log_level="warning",
        **overrides,
    )
    service = Service(settings)
    service.start()
    return service


def stored_vs_inline(service: Service, chosen: list[str]) -> dict[str, float]:
    """Decide on the stored profile (cached) against the same fields inline: the CPU time of
    the deciding thread per call (the decider called in-process: gRPC's own cost, the same for
    both, left out; the log's writer thread is not this one)."""
    inline: dict[str, dict[str, Any]] = {}
    for customer in chosen:
        inline[customer] = dict(service.profile_cache.view(customer, time.time()).learnable)
    base = {"customer": {"age": 40, "flags": {"churn_risk": False, "fraud_risk": False}}}

    def cpu_per_call(stored: bool) -> float:
        began = time.thread_time()
        for customer in chosen:
            if stored:
                request = DecideInput(customer_id=customer, channel="web", context=base)
            else:  # a customer no event named (its empty profile cached), the fields sent
                request = DecideInput(
                    customer_id=f"inline-{customer}", channel="web", context={**base, "profile": inline[customer]}
                )
            service.decider.decide(request)
        return (time.thread_time() - began) / len(chosen)

    # a first pass of each warms what both read alike (the contact histories of as many
    # customers, the inline customers' empty profiles); the second is measured
    cpu_per_call(False)
    cpu_per_call(True)
    inline_cpu = cpu_per_call(False)
    stored_cpu = cpu_per_call(True)
    return {
        "decide_stored_cpu_ms": stored_cpu * 1000,
        "decide_inline_cpu_ms": inline_cpu * 1000,
        "decide_stored_over_inline": stored_cpu / inline_cpu if inline_cpu else float("nan"),
    }


def prepare(url: str, folder: Path) -> Path:
    """The sample policy set (its examples left out) copied into ``folder``, and nba's tables
    made at ``url``; returns the policy set's folder."""
    policies = folder / "policies"
    shutil.copytree(ROOT / "policies", policies, ignore=shutil.ignore_patterns("*_test.yaml"))
    engine = open_engine(url)
    ensure_schema(engine)
    engine.dispose()
    return policies


def stored_profile_ratio(customers: int = 20_000, samples: int = 2000) -> dict[str, Any]:
    """``stored_vs_inline`` alone, for `make bench`: ``customers`` generated customers loaded
    into a schema of their own on PostgreSQL (dropped afterwards), ``samples`` of them decided
    for. Raises ``OSError`` when PostgreSQL cannot be reached."""
    import psycopg

    schema = f"bench_profiles_{uuid.uuid4().hex[:8]}"
    libpq = POSTGRES.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        raise OSError(f"PostgreSQL at {POSTGRES}: {exc}") from None
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    folder = Path(tempfile.mkdtemp(prefix="nba-bench-profiles-"))
    try:
        policies = prepare(url, folder)
        load(url, policies, 0, customers, 10)
        service = started(url, policies)
        try:
            chosen = [f"c-{i}" for i in random.Random(5).sample(range(customers), samples)]
            for customer in chosen:
                service.profile_cache.get(customer)
            return {"customers": customers, **stored_vs_inline(service, chosen)}
        finally:
            service.stop(grace=1.0)
    finally:
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        shutil.rmtree(folder, ignore_errors=True)


def measure(url: str, policies: Path, customers: int, rng: random.Random, samples: int) -> dict[str, Any]:
    service = started(url, policies, admin_tokens=[f"bench:viewer:{TOKEN}"])
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    profiles = ppb_grpc.ProfileServiceStub(channel)
    viewer = [("authorization", f"Bearer {TOKEN}")]
    out: dict[str, Any] = {"customers": customers}
    try:
        # TrackBatch: new events of existing customers, 500 a call
        batches, size = max(4, samples // 100), 500
        sent = 0
        began = time.perf_counter()
        for b in range(batches):
            events = []
            for n in range(size):
                customer = f"c-{rng.randrange(customers)}"
                event_id, kind, source, at, properties = event_of(rng, customer, 1000 + b * size + n, NOW)
                values = struct_pb2.Struct()
                values.update(properties)
                events.append(
                    ppb.TrackRequest(
                        event_id=f"bench-{uuid.uuid4().hex}",
                        customer_id=customer,
                        type=kind,
                        source=source,
                        occurred_at=stamp(at),
                        properties=values,
                    )
                )
            reply = profiles.TrackBatch(ppb.TrackBatchRequest(events=events))
            assert all(r.HasField("tracked") for r in reply.results), reply.results[0]
            sent += size
        out["trackbatch_events_per_s"] = sent / (time.perf_counter() - began)

        # GetProfile, cold then cached: the profile (a read mask), and the whole view
        service.profile_cache.clear()
        chosen = [f"c-{i}" for i in rng.sample(range(customers), samples)]
        mask = field_mask_pb2.FieldMask(paths=["customer_id", "version", "attributes", "computed"])
        timings: dict[str, list[float]] = {"cold": [], "cached": [], "whole": []}
        for phase in ("cold", "cached", "whole"):
            for customer in chosen:
                request = ppb.GetProfileRequest(customer_id=customer, read_mask=None if phase == "whole" else mask)
                t = time.perf_counter()
                profiles.GetProfile(request, metadata=viewer)
                timings[phase].append((time.perf_counter() - t) * 1000)
        for phase, values in timings.items():
            out[f"getprofile_{phase}_p50_ms"] = statistics.median(values)
            out[f"getprofile_{phase}_p99_ms"] = percentile(values, 0.99)

        out.update(stored_vs_inline(service, chosen))

        # memory per cached profile
        service.profile_cache.clear()
        tracemalloc.start()
        first = tracemalloc.take_snapshot()
        for customer in chosen:
            service.profile_cache.get(customer)
        second = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in second.compare_to(first, "filename"))
        out["bytes_per_cached_profile"] = grown / len(chosen)
    finally:
        channel.close()
        service.stop(grace=1.0)

    engine = open_engine(url)
    with engine.connect() as conn:
        events = conn.exec_driver_sql("SELECT count(*) FROM profile_events").scalar_one()
        event_bytes = conn.exec_driver_sql("SELECT pg_total_relation_size('profile_events')").scalar_one()
        profile_bytes = conn.exec_driver_sql("SELECT pg_total_relation_size('profiles')").scalar_one()
    engine.dispose()
    out["events"] = events
    out["bytes_per_event"] = event_bytes / events
    out["profile_bytes_per_customer"] = profile_bytes / customers
    return out


def replica_delay(url: str, policies: Path, customers: int, rng: random.Random, samples: int) -> dict[str, Any]:
    """Two replicas on one database and a Redis bus: how long after Track returns on one the
    other's next decision reads the new profile version (its cached entry dropped by the bus
    entry, the profile read again)."""
    import socket

    import redis

    stream = f"nba-bench-profiles:{uuid.uuid4().hex[:8]}"
    replicas = []
    real_hostname = socket.gethostname
    try:
        for name in ("replica-one", "replica-two"):
            socket.gethostname = lambda name=name: name  # type: ignore[assignment]  # two machines' origins
            replicas.append(started(url, policies, bus=REDIS, bus_stream=stream))
        socket.gethostname = real_hostname
        one, two = replicas
        channel = grpc.insecure_channel(f"127.0.0.1:{one.port}")
        profiles = ppb_grpc.ProfileServiceStub(channel)
        delays = []
        for _ in range(samples):
            customer = f"c-{rng.randrange(customers)}"
            before = two.profile_cache.view(customer, time.time()).version  # cached on two
            profiles.Track(
                ppb.TrackRequest(
                    event_id=f"bench-replica-{uuid.uuid4().hex}", customer_id=customer, type="page_view", source="web"
                )
            )
            sent = time.perf_counter()
            while two.profile_cache.view(customer, time.time()).version == before:
                if time.perf_counter() - sent > 5:
                    raise RuntimeError(f"replica two did not see {customer}'s event within 5 s")
                time.sleep(0.0002)
            delays.append((time.perf_counter() - sent) * 1000)
        channel.close()
        return {"replica_p50_ms": statistics.median(delays), "replica_p99_ms": percentile(delays, 0.99)}
    finally:
        socket.gethostname = real_hostname
        for service in replicas:
            service.stop(grace=1.0)
        client = redis.Redis.from_url(REDIS)
        client.delete(stream)
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", default="100000,1000000", help="scales, comma-separated (default 100000,1000000)")
    parser.add_argument("--events-per-customer", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2000, help="customers read per measure (default 2000)")
    parser.add_argument("--out", default=str(ROOT / "loadtests" / "results" / "bench_profiles.json"))
    args = parser.parse_args(argv)
    scales = sorted(int(s) for s in args.customers.split(","))
    import psycopg

    schema = f"bench_profiles_{uuid.uuid4().hex[:8]}"
    libpq = POSTGRES.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    folder = Path(tempfile.mkdtemp(prefix="nba-bench-profiles-"))
    results: list[dict[str, Any]] = []
    try:
        policies = prepare(url, folder)
        loaded = 0
        rng = random.Random(11)
        for scale in scales:
            seconds = load(url, policies, loaded, scale - loaded, args.events_per_customer)
            loaded = scale
            print(f"{scale:,} customers: loaded in {seconds:.0f} s; measuring", file=sys.stderr)
            row = measure(url, policies, scale, rng, min(args.samples, scale))
            row.update(replica_delay(url, policies, scale, rng, min(200, scale)))
            row["load_seconds"] = seconds
            results.append(row)
            print(json.dumps(row, indent=2), file=sys.stderr)
    finally:
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"measured_at": NOW.isoformat(), "results": results}, indent=2) + "\n")
    print(table(results))
    return 0


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        ("customers", "customers", "{:,.0f}"),
        ("events", "events stored", "{:,.0f}"),
        ("load_seconds", "bulk load (s)", "{:.0f}"),
        ("trackbatch_events_per_s", "TrackBatch events/s", "{:,.0f}"),
        ("getprofile_cold_p50_ms", "GetProfile cold p50 (ms)", "{:.2f}"),
        ("getprofile_cold_p99_ms", "GetProfile cold p99 (ms)", "{:.2f}"),
        ("getprofile_cached_p50_ms", "GetProfile cached p50 (ms)", "{:.2f}"),
        ("getprofile_cached_p99_ms", "GetProfile cached p99 (ms)", "{:.2f}"),
        ("getprofile_whole_p50_ms", "GetProfile whole view p50 (ms)", "{:.2f}"),
        ("getprofile_whole_p99_ms", "GetProfile whole view p99 (ms)", "{:.2f}"),
        ("replica_p50_ms", "event on one replica, in the other's decision p50 (ms)", "{:.1f}"),
        ("replica_p99_ms", "... p99 (ms)", "{:.1f}"),
        ("decide_inline_cpu_ms", "Decide, fields inline: CPU ms/call", "{:.2f}"),
        ("decide_stored_cpu_ms", "Decide, stored profile: CPU ms/call", "{:.2f}"),
        ("decide_stored_over_inline", "stored / inline", "{:.2f}x"),
        ("bytes_per_cached_profile", "memory per cached profile (bytes)", "{:,.0f}"),
        ("bytes_per_event", "disk per event (bytes)", "{:,.0f}"),
        ("profile_bytes_per_customer", "disk per profile (bytes)", "{:,.0f}"),
    ]
    lines = ["| | " + " | ".join(f"{r['customers']:,}" for r in results) + " |", "| --- |" + " --- |" * len(results)]
    for key, label, fmt in rows[1:]:
        lines.append(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in results) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
