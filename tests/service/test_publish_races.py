"""Publishing races between replicas: two real servers on one database (a SQLite file, and
PostgreSQL), each with its own memory of what is live.

The database's activation history is the order of truth: an expected-version check and the
activation it guards are one step there, and every process only ever moves forward along that
history, so a publish is never undone by the process that made it, and two editors holding
the same version cannot both win.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import LOCAL_SUBCHANNELS, Running, struct
from test_policies_e2e import BASE, policy_dir

from nba.storage.engine import open_engine
from nba.storage.tables import PolicyActivationRow, PolicySetRow
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc


def draft(name: str) -> apb.PolicySetDraft:
    return apb.PolicySetDraft(files={"set.yaml": BASE + f"  - {{id: {name}, name: {name}, channels: [web], value: 5}}\n"})


def history(database_url: str) -> list[tuple[int, int, str, str]]:
    """Every activation, oldest first: (id, version, label, comment)."""
    engine = open_engine(database_url)
    a, p = PolicyActivationRow.__table__, PolicySetRow.__table__
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                a.select()
                .with_only_columns(a.c.id, a.c.version, p.c.content_hash, a.c.comment)
                .join_from(a, p, p.c.version == a.c.version)
                .order_by(a.c.id)
            ).all()
    finally:
        engine.dispose()
    return [(r.id, r.version, f"{r.version}-{r.content_hash[:12]}", r.comment) for r in rows]


def replicas(start: Callable[..., Running], tmp_path: Path, watch: float) -> tuple[Running, Running]:
    folder = policy_dir(tmp_path)
    return (
        start(policies=folder, policies_watch_seconds=watch, bus="database"),
        start(policies=folder, policies_watch_seconds=watch, bus="database"),
    )


def test_two_editors_on_two_replicas_with_the_same_expected_version_one_wins(start, tmp_path: Path, database_url: str) -> None:
    # No watcher: each replica's memory of the live set is as stale as it can be, so only the
    # database can tell who came first.
    one, two = replicas(start, tmp_path, watch=0)
    expected, winners = 1, []
    for round_ in range(6):
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}
        calls = {
            side: (
                server.admin.PublishPolicySet,
                apb.PublishPolicySetRequest(
                    draft=draft(f"r{round_}{side}"), comment=f"r{round_}{side}", expected_live_version=expected
                ),
            )
            for side, server in (("a", one), ("b", two))
        }
        if round_ % 2:  # a publish against a rollback, with the same expectation
            calls["b"] = (
                two.admin.RollbackPolicySet,
                apb.RollbackPolicySetRequest(
                    version=1 if expected != 1 else 2, comment=f"r{round_}b", expected_live_version=expected
                ),
            )

        def edit(
            side: str, call: Callable[..., object], request: object, barrier: threading.Barrier, results: dict[str, object]
        ) -> None:
            barrier.wait()
            try:
                results[side] = call(request, metadata=Running.auth())
            except grpc.RpcError as exc:
                results[side] = exc

        threads = [threading.Thread(target=edit, args=(side, *calls[side], barrier, results)) for side in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = {s: r for s, r in results.items() if isinstance(r, apb.PublishPolicySetResponse)}
        lost = {s: r for s, r in results.items() if isinstance(r, grpc.RpcError)}
        assert len(won) == 1 and len(lost) == 1, (round_, results)
        (side, reply), (_, refusal) = next(iter(won.items())), next(iter(lost.items()))
        assert not reply.unchanged
        assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"version {reply.live.version} is live, not {expected}" in refusal.details()
        winners.append((reply.live.version, f"r{round_}{side}"))
        expected = reply.live.version
    # Both replicas now hold the winner of the last round: the loser learned of it by losing.
    assert {one.service.policy_set.number, two.service.policy_set.number} == {expected}
    assert [(v, c) for _, v, _, c in history(database_url)][1:] == winners


def test_a_database_check_that_raced_a_publish_does_not_undo_it(start, tmp_path: Path, database_url: str) -> None:
    one, two = replicas(start, tmp_path, watch=0)
    publisher = one.service.publisher
    other = two.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=draft("from-two")), metadata=two.auth())
    with publisher._lock:  # the watcher's moment: it has read the newest activation, and waits
        checked = threading.Thread(target=publisher.check_database)
        checked.start()
        time.sleep(0.3)
        own = publisher.publish(draft("from-one").files, actor="test")  # activated after what it read
    checked.join()
    assert not own.unchanged and own.policy_set.number > other.live.version
    assert one.service.policy_set.version == own.policy_set.version  # not the older set it read
    decided = one.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": {"age": 30}})))
    assert decided.policy_version == own.policy_set.version
    assert history(database_url)[-1][2] == own.policy_set.version


def test_every_replica_reports_the_live_version_of_the_database(start, tmp_path: Path) -> None:
    one, two = replicas(start, tmp_path, watch=0)  # two's memory is never refreshed by a watcher
    published = one.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=draft("newer")), metadata=one.auth())
    # Validate and Preview check the same precondition against the database, as Publish does
    for call, request in (
        (two.admin.ValidatePolicySet, apb.ValidatePolicySetRequest),
        (two.admin.PreviewPolicySet, apb.PreviewPolicySetRequest),
    ):
        call(request(draft=draft("checked"), expected_live_version=published.live.version), metadata=two.auth())
        with pytest.raises(grpc.RpcError) as refused:
            call(request(draft=draft("checked"), expected_live_version=published.live.version - 1), metadata=two.auth())
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"(version {published.live.version} is)" in refused.value.details()
    live = two.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=two.auth())
    assert (live.version, live.label) == (published.live.version, published.live.label)
    listed = two.admin.ListPolicySetVersions(apb.ListPolicySetVersionsRequest(), metadata=two.auth())
    assert [v.version for v in listed.versions if v.live] == [published.live.version]
    assert listed.activations[0].version == published.live.version
    # so an editor who read it there can publish with it there
    again = two.admin.PublishPolicySet(
        apb.PublishPolicySetRequest(draft=draft("newest"), expected_live_version=live.version), metadata=two.auth()
    )
    assert again.live.version == published.live.version + 1


#: an expected version no publish can meet: always refused
NEVER_LIVE = 10**6


@dataclass
class Op:
    replica: int
    began: float
    ended: float
    comment: str
    expected: int
    outcome: str  # activated, unchanged, refused
    version: int = 0


@pytest.mark.slow
def test_publishes_and_rollbacks_on_two_replicas_under_decide_load_never_go_backwards(
    start, tmp_path: Path, database_url: str
) -> None:
    servers = replicas(start, tmp_path, watch=0.05)
    stop = threading.Event()
    # per (replica, thread): (began, ended, label) of every decision, in the order made
    decisions: dict[tuple[int, int], list[tuple[float, float, str]]] = {}
    failures: list[str] = []
    ops: list[Op] = []
    ops_lock = threading.Lock()

    def load(replica: int, thread: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{servers[replica].port}", options=LOCAL_SUBCHANNELS)
        stub = pb_grpc.DecisionServiceStub(channel)
        context = struct({"customer": {"age": 30, "segment": "a", "risk": False}})
        made = decisions.setdefault((replica, thread), [])
        i = 0
        while not stop.is_set():
            i += 1
            began = time.monotonic()
            try:
                reply = stub.Decide(
                    pb.DecideRequest(customer_id=f"c-{replica}-{thread}-{i}", channel="web", context=context, limit=2)
                )
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
                continue
            made.append((began, time.monotonic(), reply.policy_version))
        channel.close()

    def edit(replica: int, rounds: int) -> None:
        server = servers[replica]
        rng = random.Random(replica)
        known = [1]
        for n in range(rounds):
            comment = f"{replica}-{n}"
            live = server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=server.auth()).version
            expected = live if n % 3 == 0 else NEVER_LIVE if n % 6 == 5 else 0
            began = time.monotonic()
            try:
                if n % 4 == 3:
                    reply = server.admin.RollbackPolicySet(
                        apb.RollbackPolicySetRequest(version=rng.choice(known), comment=comment, expected_live_version=expected),
                        metadata=server.auth(),
                    )
                else:
                    reply = server.admin.PublishPolicySet(
                        apb.PublishPolicySetRequest(
                            draft=draft(f"p{replica}x{n % 7}"), comment=comment, expected_live_version=expected
                        ),
                        metadata=server.auth(),
                    )
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                with ops_lock:
                    ops.append(Op(replica, began, time.monotonic(), comment, expected, "refused"))
                continue
            ended = time.monotonic()
            known.append(reply.live.version)
            with ops_lock:
                ops.append(
                    Op(
                        replica,
                        began,
                        ended,
                        comment,
                        expected,
                        "unchanged" if reply.unchanged else "activated",
                        reply.live.version,
                    )
                )
            time.sleep(rng.uniform(0, 0.03))

    loaders = [threading.Thread(target=load, args=(r, t), daemon=True) for r in (0, 1) for t in (0, 1)]
    # 16 rounds each, racing the other's: on each replica 12 publishes and 4 rollbacks; 6 calls
    # expecting the version they just read as live (often stale by the time they land), 2
    # expecting one that never is (a publish and a rollback), 8 with no expectation
    editors = [threading.Thread(target=edit, args=(r, 16)) for r in (0, 1)]
    for t in loaders + editors:
        t.start()
    for t in editors:
        t.join()
    stop.set()
    for t in loaders:
        t.join()

    activations = history(database_url)
    newest = activations[-1][2]
    deadline = time.monotonic() + 30  # liveness, not speed: each replica adopts the newest
    while {s.service.policy_set.version for s in servers} != {newest} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [s.service.policy_set.version for s in servers] == [newest, newest]
    assert failures == []

    index = {comment: i for i, (_, _, _, comment) in enumerate(activations)}
    activated = [op for op in ops if op.outcome == "activated"]
    # Not lost: every activation acknowledged is in the history, once; nothing else is.
    assert sorted(op.comment for op in activated) == sorted(c for _, _, _, c in activations[1:])
    assert all(op.comment not in index for op in ops if op.outcome != "activated")
    # Not reordered: an activation acknowledged before another began comes first.
    for x in activated:
        for y in activated:
            if x.ended < y.began:
                assert index[x.comment] < index[y.comment], (x, y)
    # Atomic: an activation made with an expected version directly follows that version's.
    for op in activated:
        if op.expected:
            assert activations[index[op.comment] - 1][1] == op.expected, (op, activations[index[op.comment] - 1])

    # Every decision ran on an activation already made when it ended, never on one older than
    # its replica's own last acknowledged publish, and never older than its thread's previous.
    labels = [label for _, _, label, _ in activations]
    began_at = {index[op.comment]: op.began for op in activated}
    own = {r: sorted((op.ended, index[op.comment]) for op in activated if op.replica == r) for r in (0, 1)}
    backwards = 0
    lags: list[float] = []
    for (replica, _), made in decisions.items():
        at = 0
        for began, ended, label in made:
            floor = max([at] + [i for done, i in own[replica] if done < began])
            match = next((i for i in range(floor, len(labels)) if labels[i] == label and began_at.get(i, 0.0) <= ended), None)
            if match is None:
                backwards += 1
                continue
            if match > at and match in began_at:
                lags.append(began - began_at[match])
            at = match
    total = sum(len(made) for made in decisions.values())
    counts = {kind: sum(op.outcome == kind for op in ops) for kind in ("activated", "unchanged", "refused")}
    print(
        f"\n{database_url.split(':')[0]}: {total} decisions on 2 replicas, {len(activations) - 1} activations "
        f"({counts}), {sum(0 < op.expected < NEVER_LIVE for op in ops)} with an expected version; {backwards} decisions on a "
        f"version older than their replica already held; a replica first decided on a new activation "
        f"{statistics.median(lags) if lags else 0:.3f} s (median), {max(lags, default=0):.3f} s (max) after "
        "its publish began"
    )
    assert backwards == 0
    assert total > 200 and counts["activated"] > 12
    assert all(op.outcome == "refused" for op in ops if op.expected == NEVER_LIVE)
    assert counts["refused"] >= sum(op.expected == NEVER_LIVE for op in ops) > 0
