"""Publishing under load: Decide calls keep flowing while policy sets are published and rolled
back many times; no call fails, and each decision names a version live during it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import LOCAL_SUBCHANNELS, POLICIES, Running, customer, struct

from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb


def files(extra: str = "") -> dict[str, str]:
    found = {p.name: p.read_text() for p in POLICIES.glob("*.yaml") if not p.name.endswith("_test.yaml")}
    found["extra.yaml"] = extra or "offers: []\n"
    return found


@pytest.mark.slow
# One engine: the live version a decision names is the service's memory, whatever the store;
# publishing and rolling back on each engine under Decide load, with no call failing, is
# test_publish_races's (two replicas racing on one database).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_publish_and_rollback_under_load_fail_no_call(start, tmp_path: Path) -> None:
    server: Running = start()
    stop = threading.Event()
    decisions: list[tuple[float, float, str]] = []
    failures: list[str] = []

    def load(worker: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=LOCAL_SUBCHANNELS)
        stub = server.stub.__class__(channel)
        context = struct({"customer": customer()})
        i = 0
        while not stop.is_set():
            i += 1
            began = time.monotonic()
            try:
                response = stub.Decide(pb.DecideRequest(customer_id=f"w{worker}-{i}", channel="web", context=context, limit=2))
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
                continue
            decisions.append((began, time.monotonic(), response.policy_version))
        channel.close()

    threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(6)]
    for t in threads:
        t.start()
    try:
        run_publishes(server, stop, threads, decisions, failures)
    finally:
        stop.set()


def run_publishes(
    server: Running,
    stop: threading.Event,
    threads: list[threading.Thread],
    decisions: list[tuple[float, float, str]],
    failures: list[str],
) -> None:

    # (call began, call ended, version live after it)
    timeline: list[tuple[float, float, str]] = [(0.0, 0.0, server.service.policy_set.version)]
    drafts = [
        files("offers:\n  - {id: promo-a, name: Promo A, channels: [web], group: cross-sell, value: 80}\n"),
        files("offers:\n  - {id: promo-b, name: Promo B, channels: [web], group: up-sell, value: 90}\n"),
        files(),
    ]
    invalid = files("offers:\n  - {id: promo-c, name: Promo C, channels: [fax]}\n")
    refused = 0
    # 12 rounds: two refusals, two rollbacks and publishes of each draft, each round a sandboxed
    # validation (about a second): the suite's budget, not the property, sets the number
    for round_ in range(12):
        began = time.monotonic()
        if round_ % 6 == 5:
            live_before = server.service.policy_set.version
            with pytest.raises(grpc.RpcError) as raised:
                server.admin.PublishPolicySet(
                    apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=invalid)), metadata=server.auth()
                )
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert server.service.policy_set.version == live_before  # an invalid draft changes nothing
            refused += 1
            continue
        if round_ % 4 == 3:
            version = 1 + round_ % 3
            reply = server.admin.RollbackPolicySet(apb.RollbackPolicySetRequest(version=version), metadata=server.auth())
        else:
            draft = apb.PolicySetDraft(files=drafts[round_ % 3])
            reply = server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=draft), metadata=server.auth())
        timeline.append((began, time.monotonic(), reply.live.label))
        time.sleep(0.02)
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()

    assert failures == []
    assert refused == 2
    assert len(decisions) > 300
    assert len({label for _, _, label in timeline}) >= 3
    # Version k was live from when its publish began until the next publish ended.
    intervals = [
        (timeline[k][0], timeline[k + 1][1] if k + 1 < len(timeline) else float("inf"), timeline[k][2])
        for k in range(len(timeline))
    ]
    for began, ended, version in decisions:
        live_then = {v for start_, end_, v in intervals if start_ <= ended and end_ >= began}
        assert version in live_then, (version, live_then)
    seen = {version for _, _, version in decisions}
    assert len(seen) >= 3  # decisions really ran under several versions
