"""Hostile messages at every RPC of DecisionService and AdminService on a real server: random
bytes, valid messages mutated, every field sent with every wire type, strings of invalid UTF-8
and control characters, extreme numbers and timestamps, contexts nested past protobuf's own
limit, huge maps. Whatever comes in, the answer is a client status (never INTERNAL, UNKNOWN,
or UNAVAILABLE "retry" for something a retry cannot fix), and the server stays healthy.

The cases are drawn from a seeded generator: ``NBA_FUZZ_SEED`` replays a run, and
``NBA_FUZZ_CASES`` (cases per method) makes it longer.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import EDITOR_TOKEN, VIEWER_TOKEN, Running, struct
from google.protobuf import descriptor, struct_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from test_policies_e2e import BASE, policy_dir

from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import profile_service_pb2 as ppb

SEED = int(os.environ.get("NBA_FUZZ_SEED", "20261129"))
CASES = int(os.environ.get("NBA_FUZZ_CASES", "120"))

#: what a caller can be told about a message it sent; anything else is a fault of ours
CLIENT_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}

HOSTILE_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "é" * 300,
    "x" * 100_000,
    "../../etc/passwd",
    "%s%n",
    "' OR 1=1 --",
    "\\",
    "😀" * 70,
    "²",
    "٣",
    "9" * 40,
    "-1",
    "1e308",
]
HOSTILE_BYTES = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\xfe\xffb", b"\x80"]
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 2**64 - 1, 2**32]
DOUBLES = [0.0, -0.0, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan, 1e6, 1e6 + 1]


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def tag(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def deep_struct(levels: int, width: int = 1) -> bytes:
    data = struct_pb2.Struct(fields={"x": struct_pb2.Value(number_value=1)}).SerializeToString()
    for _ in range(levels - 1):
        value = length_delimited(5, data)  # Value.struct_value
        entries = b"".join(
            length_delimited(1, length_delimited(1, f"k{i}".encode()) + length_delimited(2, value)) for i in range(width)
        )
        data = entries
    return data


def deep_list(levels: int) -> bytes:
    """A Value that is a list of lists, ``levels`` deep."""
    data = struct_pb2.Value(number_value=1).SerializeToString()
    for _ in range(levels):
        data = length_delimited(6, length_delimited(1, data))  # Value.list_value -> ListValue.values
    return data


def random_field(rng: random.Random, number: int) -> bytes:
    """Field ``number`` with any wire type, including the deprecated groups and invalid ones."""
    wire = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
    if wire == 0:
        return tag(number, 0) + varint(rng.choice(INTS))
    if wire == 1:
        return tag(number, 1) + rng.randbytes(8)
    if wire == 2:
        return length_delimited(number, rng.randbytes(rng.randint(0, 40)))
    if wire == 5:
        return tag(number, 5) + rng.randbytes(4)
    return tag(number, wire) + rng.randbytes(rng.randint(0, 8))


def hostile_value(rng: random.Random, field: descriptor.FieldDescriptor) -> Any:
    kind = field.type
    if kind == field.TYPE_STRING:
        return rng.choice(HOSTILE_STRINGS)
    if kind == field.TYPE_DOUBLE:
        return rng.choice(DOUBLES)
    if kind in (field.TYPE_INT32, field.TYPE_ENUM):
        return rng.choice([0, 1, -1, 99, 2**31 - 1, -(2**31)])
    if kind == field.TYPE_INT64:
        return rng.choice([v for v in INTS if -(2**63) <= v < 2**63])
    if kind == field.TYPE_BOOL:
        return rng.random() < 0.5
    return None


def mutate_fields(rng: random.Random, message: Any) -> bytes:
    """The template with one to three fields given hostile values (through the API, so the
    encoding is valid) and, now and then, hostile raw bytes where a string belongs."""
    message = type(message).FromString(message.SerializeToString())
    fields = message.DESCRIPTOR.fields
    tail = b""
    for field in rng.sample(list(fields), k=min(len(fields), rng.randint(1, 3))):
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
            getattr(message, field.name).CopyFrom(
                timestamp_pb2.Timestamp(seconds=rng.choice(INTS[:7]) % (2**63), nanos=rng.choice([0, -1, 10**9, 2**31 - 1]))
            )
            if rng.random() < 0.5:
                getattr(message, field.name).seconds = rng.choice([-(2**63), 2**63 - 1, -62135596801, 253402300800])
        elif field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
            tail += length_delimited(field.number, deep_struct(rng.choice([8, 9, 12, 33, 34, 60, 120])))
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = {rng.choice(HOSTILE_STRINGS)[:300]: rng.choice(HOSTILE_STRINGS)[:1000] for _ in range(rng.randint(1, 5))}
            getattr(message, field.name).update(entries)
        elif field.message_type is not None and field.is_repeated:
            items = getattr(message, field.name)  # a batch: one item made hostile, and many copies
            if len(items) and rng.random() < 0.5:  # appended as raw bytes: it may not decode
                tail += length_delimited(field.number, mutate_fields(rng, items[0]))
            else:
                items.extend([items[0]] * rng.choice([0, 1, 50]) if len(items) else [])
        elif field.message_type is not None:
            nested = getattr(message, field.name)
            for inner in nested.DESCRIPTOR.fields:
                if inner.message_type is not None and inner.message_type.GetOptions().map_entry:
                    getattr(nested, inner.name).update({rng.choice(HOSTILE_STRINGS)[:300]: rng.choice(HOSTILE_STRINGS)})
        else:
            value = hostile_value(rng, field)
            if value is not None:
                try:
                    setattr(message, field.name, value)
                except (ValueError, TypeError):
                    pass
        if field.type == field.TYPE_STRING and rng.random() < 0.3:
            tail += length_delimited(field.number, rng.choice(HOSTILE_BYTES))
    return message.SerializeToString() + tail


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["flip", "cut", "insert", "repeat"])
        if op == "flip" and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == "cut" and data:
            del data[rng.randrange(len(data)) :]
        elif op == "insert":
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == "repeat":
            data += data[: rng.randint(0, len(data))]
    return bytes(data)


def payloads(rng: random.Random, template: Any, cases: int) -> Iterator[bytes]:
    numbers = [f.number for f in template.DESCRIPTOR.fields] + [rng.randint(20, 2**29 - 1) for _ in range(3)]
    valid = template.SerializeToString()
    for i in range(cases):
        kind = i % 6
        if kind == 0:
            yield rng.randbytes(rng.randint(0, 300))
        elif kind == 1:
            yield mutate_bytes(rng, valid)
        elif kind == 2:
            yield valid + b"".join(random_field(rng, rng.choice(numbers)) for _ in range(rng.randint(1, 4)))
        elif kind == 3:
            yield mutate_fields(rng, template)
        elif kind == 4:  # a length that runs past the end, or a varint that never ends
            yield rng.choice(
                [
                    valid + tag(rng.choice(numbers), 2) + varint(2**31),
                    valid + b"\xff" * 11,
                    tag(rng.choice(numbers), 2) + varint(2**64 - 1),
                ]
            )
        else:
            yield valid  # the real thing now and then: a hostile mix is not only garbage


def templates(decision: pb.DecideResponse) -> dict[str, tuple[Any, list[tuple[str, str]]]]:
    """Every RPC of both services, with a valid request (whose fields the mutations start from)
    and the metadata it is sent with."""
    editor = [("authorization", f"Bearer {EDITOR_TOKEN}")]
    small = apb.PolicySetDraft(files={"set.yaml": BASE})
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    track = ppb.TrackRequest(
        event_id="t-1",
        customer_id="c-1",
        identities={"email": "a@b.co", "phone": "+442079460018"},
        type="order",
        source="web",
        occurred_at=now,
        properties=struct({"amount": 12.5, "items": [{"sku": "x"}]}),
    )
    return {
        "/nba.v1.DecisionService/Decide": (
            pb.DecideRequest(
                request_id="r-1",
                customer_id="c-1",
                channel="web",
                limit=2,
                explain=True,
                context=struct({"customer": {"age": 30, "segment": "a", "risk": False, "tags": ["x"], "more": {}}}),
            ),
            [],
        ),
        "/nba.v1.DecisionService/Feedback": (
            pb.FeedbackRequest(
                event_id="e-1",
                decision_id=decision.decision_id,
                offer_id=decision.offers[0].offer_id,
                outcome=pb.OUTCOME_CLICKED,
                reward=0.5,
                occurred_at=now,
            ),
            [],
        ),
        "/nba.v1.DecisionService/FeedbackBatch": (
            pb.FeedbackBatchRequest(
                events=[
                    pb.FeedbackRequest(
                        event_id="e-2",
                        decision_id=decision.decision_id,
                        offer_id=decision.offers[0].offer_id,
                        outcome=pb.OUTCOME_CLICKED,
                    ),
                    pb.FeedbackRequest(event_id="e-3", decision_id="nope", offer_id="x", outcome=pb.OUTCOME_ACCEPTED),
                ]
            ),
            [],
        ),
        "/nba.v1.AdminService/GetLivePolicySet": (apb.GetLivePolicySetRequest(), editor),
        "/nba.v1.AdminService/ValidatePolicySet": (apb.ValidatePolicySetRequest(draft=small), editor),
        "/nba.v1.AdminService/PublishPolicySet": (
            apb.PublishPolicySetRequest(draft=small, comment="fuzz", expected_live_version=1),
            editor,
        ),
        "/nba.v1.AdminService/ListPolicySetVersions": (apb.ListPolicySetVersionsRequest(page_size=5, page_token="2"), editor),
        "/nba.v1.AdminService/RollbackPolicySet": (apb.RollbackPolicySetRequest(version=1, comment="back"), editor),
        "/nba.v1.AdminService/PreviewPolicySet": (apb.PreviewPolicySetRequest(draft=small, last_n=20), editor),
        "/nba.v1.AdminService/GetOverview": (
            apb.GetOverviewRequest(
                start_time=timestamp_pb2.Timestamp(seconds=1_790_000_000),
                end_time=timestamp_pb2.Timestamp(seconds=1_790_086_400),
                channel="web",
                group="g",
                offer_id="a",
            ),
            editor,
        ),
        "/nba.v1.ProfileService/Track": (track, []),
        "/nba.v1.ProfileService/TrackBatch": (ppb.TrackBatchRequest(events=[track, track]), []),
        "/nba.v1.ProfileService/GetProfile": (ppb.GetProfileRequest(identifier_kind="email", identifier_value="a@b.co"), editor),
        "/nba.v1.ProfileService/Unmerge": (ppb.UnmergeRequest(customer_id="c-1"), editor),
        "/nba.v1.ProfileService/ForgetCustomer": (ppb.ForgetCustomerRequest(customer_id="c-fuzz", reason="fuzz"), editor),
    }


def every_method() -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for service in (
            pb.DESCRIPTOR.services_by_name["DecisionService"],
            apb.DESCRIPTOR.services_by_name["AdminService"],
            ppb.DESCRIPTOR.services_by_name["ProfileService"],
        )
        for method in service.methods
    }


def internal_errors() -> float:
    return sum(
        REGISTRY.get_sample_value("nba_rpc_errors_total", {"method": m.rsplit("/", 1)[1], "code": code}) or 0.0
        for m in every_method()
        for code in ("INTERNAL", "UNKNOWN")
    )


def test_hostile_messages_get_client_statuses_and_the_server_stays_healthy(start, tmp_path: Path) -> None:
    server: Running = start(policies=policy_dir(tmp_path))
    decision = server.stub.Decide(
        pb.DecideRequest(
            customer_id="c-1", channel="web", context=struct({"customer": {"age": 30, "segment": "a", "risk": False}})
        )
    )
    cases = templates(decision)
    assert set(cases) == every_method()  # a new RPC must join the fuzzing
    rng = random.Random(SEED)
    before = internal_errors()
    seen: Counter[tuple[str, str]] = Counter()
    faults: list[str] = []
    for method, (template, metadata) in cases.items():
        call: Callable[..., Any] = server.channel.unary_unary(method)  # raw bytes in and out
        for n, payload in enumerate(payloads(rng, template, CASES)):
            # now and then without a token, or with a viewer's: the answer must still be a client's
            sent = metadata if not metadata or n % 7 else ([] if n % 2 else [("authorization", f"Bearer {VIEWER_TOKEN}")])
            try:
                call(payload, metadata=sent, timeout=30)
                code = grpc.StatusCode.OK
                details = ""
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
            seen[(method.rsplit("/", 1)[1], code.name)] += 1
            if code not in CLIENT_CODES:
                faults.append(f"{method} seed={SEED} case={n} {code.name}: {details[:200]} payload={payload[:120]!r}")
    assert not faults, "\n".join(faults[:20])
    assert internal_errors() == before
    print(f"\nfuzz seed {SEED}, {CASES} cases a method:", dict(sorted(seen.items())))

    # Still healthy, and still deciding and learning.
    health = health_pb2_grpc.HealthStub(server.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="nba.v1.DecisionService"), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    response = server.stub.Decide(
        pb.DecideRequest(
            customer_id="c-after",
            channel="web",
            limit=2,
            context=struct({"customer": {"age": 41, "segment": "b", "risk": False}}),
        )
    )
    reply = server.stub.Feedback(
        pb.FeedbackRequest(
            event_id=f"after-{time.time()}",
            decision_id=response.decision_id,
            offer_id=response.offers[0].offer_id,
            outcome=pb.OUTCOME_ACCEPTED,
        )
    )
    assert reply.applied
    assert server.service.learning._learner.state_is_finite()
    assert all(math.isfinite(o.score) and 0 < o.propensity <= 1 for o in response.offers)


@pytest.mark.parametrize("levels", [34, 100, 1000])
def test_lists_nested_past_protobufs_limit_are_invalid(start, tmp_path: Path, levels: int) -> None:
    server: Running = start(policies=policy_dir(tmp_path))
    context = length_delimited(1, length_delimited(1, b"xs") + length_delimited(2, deep_list(levels)))
    request = pb.DecideRequest(customer_id="c", channel="web").SerializeToString() + length_delimited(4, context)
    with pytest.raises(grpc.RpcError) as raised:
        server.channel.unary_unary("/nba.v1.DecisionService/Decide")(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("context")


def test_a_huge_map_is_refused_by_its_limit(start, tmp_path: Path) -> None:
    """A context of 200,000 keys (well under gRPC's 8 MiB) and a draft of 50,000 files: each
    refused by its own limit, naming it."""
    server: Running = start(policies=policy_dir(tmp_path))
    context = b"".join(
        length_delimited(1, length_delimited(1, f"k{i}".encode()) + length_delimited(2, b"\x11" + b"\0" * 8))
        for i in range(200_000)
    )
    request = pb.DecideRequest(customer_id="c", channel="web").SerializeToString() + length_delimited(4, context)
    with pytest.raises(grpc.RpcError) as raised:
        server.channel.unary_unary("/nba.v1.DecisionService/Decide")(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("context: ") and "more than the limit of 65536" in raised.value.details()
    files = apb.PolicySetDraft(files={f"f{i}.yaml": "" for i in range(50_000)})
    with pytest.raises(grpc.RpcError) as raised:
        server.admin.ValidatePolicySet(
            apb.ValidatePolicySetRequest(draft=files), metadata=[("authorization", f"Bearer {EDITOR_TOKEN}")], timeout=30
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("draft.files: 50000 files, more than")


def test_health_and_reflection_refuse_garbage_as_invalid(server: Running) -> None:
    """Not only our services: the standard ones on the same port go through the same decoding."""
    check = server.channel.unary_unary("/grpc.health.v1.Health/Check")
    with pytest.raises(grpc.RpcError) as raised:
        check(b"\x0a\x02\xff\xfe", timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    watch = server.channel.unary_stream("/grpc.health.v1.Health/Watch")
    with pytest.raises(grpc.RpcError) as raised:
        list(watch(b"\xff\xff\xff", timeout=5))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reflect = server.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    with pytest.raises(grpc.RpcError) as raised:
        list(reflect(iter([b"\xff\xff\xff"]), timeout=5))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
