"""The console's overview at scale: `make bench-console`.

How long the overview page takes to load with 100,000 and with 10,000,000 logged decisions, on
the default store (SQLite). The decisions are generated in bulk in the shape the sample policy
set gives them (four channels, one to three offers answered from 24, the others screened out
for the sample's reasons, the eligible ones' numbers), spread over the last 90 days, and written
with the same insert the decision log uses; the rollups are counted from them by the same code
the writer runs (``nba.storage.rollups``), with feedback (an impression for every offer answered,
acceptances for about one in seven) counted into the rollups only: the feedback table stays empty,
since the page never reads it.

Then a real service on that database (``nba serve``'s defaults, the HTTP port) and a real browser
(Playwright, Debian's Chromium): signed in as a viewer, each period of the page (24 hours, 7,
30 and 90 days) is loaded five times, timed from navigation to the charts drawn (plotly.js
cached after the first load, as in a browser that has opened the console before), and
GetOverview's own time over gRPC. The median of each is reported and saved as JSON
(loadtests/results/bench_console.json).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from nba.config import Settings  # noqa: E402
from nba.policy.loading import load_policy_set  # noqa: E402
from nba.records import DecisionRecord, FeedbackEvent, FeedbackResult  # noqa: E402
from nba.storage.engine import open_engine  # noqa: E402
from nba.storage.migrations import ensure_schema  # noqa: E402
from nba.storage.rollups import Counts, decision_measures, feedback_measures, write_rollups  # noqa: E402
from nba.storage.store import Store  # noqa: E402

TOKEN = "bench-viewer-token-0123456789"
CHROMIUM = "/usr/bin/chromium"
REASONS = ["eligibility", "applicability", "suitability", "contact_cap", "suppression", "budget", "status"]
PERIODS = ["24h", "7d", "30d", "90d"]
CHUNK = 20_000


def templates(rng: random.Random, count: int = 2_000) -> list[tuple[DecisionRecord, list[tuple[str, int, float, int, float]]]]:
    """Decisions in the sample set's shape, and their answered offers (id, slot, propensity,
    eligible, value), to be stamped with new ids, customers and times (making each anew costs
    more than writing it)."""
    policy_set = load_policy_set(ROOT / "policies")
    offers = [o for o in policy_set.offers.values() if not o.offer.fallback]
    by_channel = {c: [o for o in offers if c in o.offer.channels] for c in policy_set.channels}
    out = []
    for _ in range(count):
        channel = rng.choice(policy_set.channels)
        candidates = by_channel[channel]
        eligible = rng.sample(candidates, k=min(len(candidates), rng.randint(2, 6)))
        filtered = [o for o in candidates if o not in eligible]
        numbers = np.array(
            [[p := rng.random() * 0.3, o.offer.value, 1.0, 1.0, p * o.offer.value, 0.0] for o in eligible], dtype="<f8"
        )
        numbers[:, 5] = numbers[:, 4] / numbers[:, 4].sum()
        answered = eligible[: rng.randint(1, 3)]
        record = DecisionRecord(
            decision_id="",
            request_id=None,
            customer_id="",
            channel=channel,
            created_at=datetime.now(UTC),
            policy_version="1-bench",
            model_version="linear-igw/0",
            features={"customer.age": rng.randint(18, 80), "customer.value.segment": rng.choice(["gold", "silver"])},
            candidates={
                "filtered": [[rng.choice(REASONS), "", "", [o.id for o in filtered]]] if filtered else [],
                "eligible": {
                    "ids": [o.id for o in eligible],
                    "numbers": base64.b64encode(numbers.tobytes()).decode(),
                    "errors": [],
                },
                "fallback": None,
            },
            offers=[
                {
                    "offer_id": o.id,
                    "name": o.offer.name,
                    "score": float(numbers[k, 4]),
                    "propensity": float(numbers[k, 5]),
                    "treatment": o.id,
                    "slot": k + 1,
                    "fallback": False,
                    "group": o.offer.group,
                }
                for k, o in enumerate(answered)
            ],
        )
        shown = [(o.id, k + 1, float(numbers[k, 5]), len(eligible), o.offer.value) for k, o in enumerate(answered)]
        out.append((record, shown))
    return out


def generate(store: Store, decisions: int, seed: int = 7) -> float:
    """Writes ``decisions`` decisions over the last 90 days and their rollups (counted by the
    writer's own code); returns the seconds it took."""
    started = time.monotonic()
    rng = random.Random(seed)
    pool = templates(rng)
    now = datetime.now(UTC)
    span = 90 * 24 * 3600
    done = 0
    while done < decisions:
        n = min(CHUNK, decisions - done)
        records = []
        stored: list[tuple[FeedbackEvent, FeedbackResult]] = []
        for i in range(n):
            template, shown = pool[rng.randrange(len(pool))]
            # in time order, as a log is written: a chunk's rollups fall in a few hours
            created = now - timedelta(seconds=span * (1 - (done + i + rng.random()) / decisions))
            record = replace(
                template,
                decision_id=f"{int(created.timestamp() * 1000):012x}{done + i:020x}",
                customer_id=f"c-{rng.randrange(1_000_000)}",
                created_at=created,
            )
            records.append(record)
            for offer_id, slot, propensity, eligible, value in shown:
                outcomes = [("impressed", 0.0), ("accepted", 1.0)] if rng.random() < 0.15 else [("impressed", 0.0)]
                for outcome, reward in outcomes:
                    event = FeedbackEvent(
                        f"{record.decision_id}-{slot}-{outcome}",
                        record.decision_id,
                        offer_id,
                        outcome,
                        reward,
                        created + timedelta(seconds=60),
                        created + timedelta(seconds=61),
                        {},
                        channel=record.channel,
                        slot=slot,
                        propensity=propensity,
                        eligible=eligible,
                        value=value,
                    )
                    stored.append((event, FeedbackResult(False, True, reward, None, 0.0 if outcome == "accepted" else None)))
        counts: Counts = defaultdict(float)
        decision_measures(records, counts)
        feedback_measures(stored, now=now.timestamp(), into=counts)
        with store.write() as conn:
            store.insert_decisions(conn, records)
            write_rollups(conn, counts)
        done += n
        if done % 1_000_000 == 0 or done == decisions:
            print(f"  {done:,} decisions written ({time.monotonic() - started:.0f} s)", flush=True)
    return time.monotonic() - started


def measure(database_url: str, workdir: Path) -> dict[str, Any]:
    """Times the overview page for each period, in a real browser, and GetOverview over gRPC."""
    import grpc
    from google.protobuf import timestamp_pb2
    from playwright.sync_api import sync_playwright

    from nba.service.server import create_server
    from nba.v1 import admin_service_pb2 as apb
    from nba.v1 import admin_service_pb2_grpc as apb_grpc

    settings = Settings(
        policies=ROOT / "policies",
        database_url=database_url,
        port=0,
        http_port=0,
        metrics_port=-1,
        admin_tokens=[f"bench:viewer:{TOKEN}"],
        policies_watch_seconds=0,
        log_format="text",
    )
    service, port = create_server(settings)
    assert service.http is not None
    base = f"http://127.0.0.1:{service.http.port}"
    out: dict[str, Any] = {"page_seconds": {}, "get_overview_seconds": {}}
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        admin = apb_grpc.AdminServiceStub(channel)
        now = datetime.now(UTC)
        for key, hours in zip(PERIODS, [24, 24 * 7, 24 * 30, 24 * 90], strict=True):
            start = timestamp_pb2.Timestamp()
            start.FromDatetime(now - timedelta(hours=hours))
            times = []
            for _ in range(5):
                began = time.perf_counter()
                admin.GetOverview(apb.GetOverviewRequest(start_time=start), metadata=[("authorization", f"Bearer {TOKEN}")])
                times.append(time.perf_counter() - began)
            out["get_overview_seconds"][key] = statistics.median(times)
        channel.close()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "/console")
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("body[data-charts=drawn]", timeout=120_000)  # plotly.js now cached
            for key in PERIODS:
                times = []
                for _ in range(5):
                    began = time.perf_counter()
                    page.goto(f"{base}/console?period={key}")
                    page.wait_for_selector("body[data-charts=drawn]", timeout=120_000)
                    times.append(time.perf_counter() - began)
                out["page_seconds"][key] = statistics.median(times)
            page.screenshot(path=str(workdir / "overview.png"), full_page=True)
            browser.close()
    finally:
        service.stop(grace=5.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", default="100000,10000000", help="comma-separated scales (default 100000,10000000)")
    parser.add_argument("--keep", action="store_true", help="keep the generated databases")
    args = parser.parse_args()
    scales = [int(s) for s in args.decisions.split(",")]
    results: dict[str, Any] = {"store": "sqlite", "scales": {}}
    workdir = Path(tempfile.mkdtemp(prefix="nba-bench-console-"))
    try:
        for scale in scales:
            path = workdir / f"nba-{scale}.db"
            url = f"sqlite:///{path}"
            engine = open_engine(url)
            ensure_schema(engine)
            store = Store(engine)
            print(f"{scale:,} decisions: generating...", flush=True)
            seconds = generate(store, scale)
            with store.read() as conn:
                rollup_rows = conn.exec_driver_sql("SELECT count(*) FROM decision_rollups").scalar()
            engine.dispose()
            found = measure(url, workdir)
            found.update(
                {
                    "generate_seconds": round(seconds, 1),
                    "database_bytes": path.stat().st_size,
                    "rollup_rows": rollup_rows,
                }
            )
            results["scales"][str(scale)] = found
            print(
                f"{scale:>12,} decisions  db {path.stat().st_size / 2**30:.2f} GiB, {rollup_rows:,} rollup rows;  page "
                + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in found["page_seconds"].items())
                + ";  GetOverview "
                + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in found["get_overview_seconds"].items()),
                flush=True,
            )
            if not args.keep:
                path.unlink()
        out = ROOT / "loadtests" / "results" / "bench_console.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved {out.relative_to(ROOT)}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")


if __name__ == "__main__":
    main()
