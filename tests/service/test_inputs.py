"""Values from outside are checked for range, not only presence: times, ids, names, free text
and the context's shape. The same answer on SQLite and PostgreSQL, through a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from conftest import EDITOR_TOKEN, POLICIES, ManualClock, Running, customer, struct
from google.protobuf import struct_pb2, timestamp_pb2
from sqlalchemy import select

from bandit import unflatten
from nba.errors import InvalidArgument
from nba.inputs import check_id, check_text, timestamp
from nba.service.context import MAX_CONTEXT_DEPTH, features_from_struct
from nba.storage.tables import FeedbackRow
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb

AUTH = [("authorization", f"Bearer {EDITOR_TOKEN}")]


def decide(server: Running, **fields: Any) -> pb.DecideResponse:
    fields.setdefault("customer_id", "c-1")
    fields.setdefault("channel", "web")
    fields.setdefault("context", struct({"customer": customer()}))
    return server.stub.Decide(pb.DecideRequest(**fields))


def refused(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, **kwargs)
    return raised.value


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(when)
    return value


def stored_feedback(server: Running) -> list[Any]:
    server.service.log.flush()
    with server.service.engine.connect() as conn:
        return conn.execute(select(FeedbackRow.__table__).order_by(FeedbackRow.__table__.c.id)).all()


# occurred_at --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "before",
    [timedelta(days=40), timedelta(days=8), timedelta(minutes=6), None],
    ids=["40-days", "8-days", "6-minutes", "year-1"],
)
def test_an_event_cannot_precede_its_decision(start, before: timedelta | None) -> None:
    """A rejection back-dated before a 30-day cool-off would lift the suppression at once, and
    impressions back-dated 8 days would escape a "3 in 7 days" cap: refused, naming the field."""
    clock = ManualClock()
    server = start(clock=clock)
    decision = decide(server)
    clock.advance(hours=1)
    when = datetime(1, 1, 1, tzinfo=UTC) if before is None else clock.now() - timedelta(hours=1) - before
    for outcome in (pb.OUTCOME_REJECTED, pb.OUTCOME_IMPRESSED):
        error = refused(
            server.stub.Feedback,
            pb.FeedbackRequest(
                event_id=f"e-{outcome}",
                decision_id=decision.decision_id,
                offer_id=decision.offers[0].offer_id,
                outcome=outcome,
                occurred_at=stamp(when),
            ),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("occurred_at: ") and "before its decision" in error.details()
        assert "5 minutes" in error.details()
    assert stored_feedback(server) == []
    assert server.service.learning.version == "linear-igw/0"


def test_within_the_clock_skew_an_event_is_taken_at_its_decision_or_now(start) -> None:
    clock = ManualClock()
    server = start(clock=clock)
    decision = decide(server, limit=2)
    decided = clock.now()
    clock.advance(minutes=10)
    first, second = (o.offer_id for o in decision.offers)
    for event_id, offer, when in (
        ("early", first, decided - timedelta(minutes=4)),
        ("ahead", second, clock.now() + timedelta(minutes=4)),
    ):
        server.stub.Feedback(
            pb.FeedbackRequest(
                event_id=event_id,
                decision_id=decision.decision_id,
                offer_id=offer,
                outcome=pb.OUTCOME_IMPRESSED,
                occurred_at=stamp(when),
            )
        )
    times = {r.event_id: r.occurred_at.replace(tzinfo=UTC) for r in stored_feedback(server)}
    assert times == {"early": decided, "ahead": clock.now()}
    error = refused(
        server.stub.Feedback,
        pb.FeedbackRequest(
            event_id="later",
            decision_id=decision.decision_id,
            offer_id=first,
            outcome=pb.OUTCOME_CLICKED,
            occurred_at=stamp(clock.now() + timedelta(minutes=6)),
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "in the future" in error.details()


@pytest.mark.parametrize(
    ("seconds", "nanos", "message"),
    [
        (0, -1, "occurred_at: nanos must be 0 to 999999999, got -1"),
        (0, 1_000_000_000, "occurred_at: nanos must be 0 to 999999999"),
        (-62_135_596_801, 0, "occurred_at: seconds must be -62135596800 to 253402300799"),
        (253_402_300_800, 0, "occurred_at: seconds must be"),
        (2**63 - 1, 999_999_999, "occurred_at: seconds must be"),
        (-(2**63), 0, "occurred_at: seconds must be"),
    ],
)
def test_timestamps_out_of_their_range_are_invalid_never_internal(
    server: Running, seconds: int, nanos: int, message: str
) -> None:
    decision = decide(server)
    error = refused(
        server.stub.Feedback,
        pb.FeedbackRequest(
            event_id="e",
            decision_id=decision.decision_id,
            offer_id=decision.offers[0].offer_id,
            outcome=pb.OUTCOME_CLICKED,
            occurred_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


def test_the_edges_of_the_timestamp_range_convert() -> None:
    assert timestamp("t", timestamp_pb2.Timestamp(seconds=-62_135_596_800)) == datetime(1, 1, 1, tzinfo=UTC)
    last = timestamp("t", timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999))
    assert last == datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


# Identifiers and text -------------------------------------------------------------------

CONTROLS = {"NUL": "\x00", "unit separator": "\x1f", "line feed": "\n", "DEL": "\x7f", "C1 NEL": "\x85", "C1 CSI": "\x9b"}


@pytest.mark.parametrize("field", ["customer_id", "request_id", "channel"])
def test_a_control_character_in_a_decide_id_is_invalid_on_every_engine(server: Running, field: str) -> None:
    """PostgreSQL cannot store U+0000 (it answered INTERNAL); SQLite could: both now refuse
    every control character alike, naming the field."""
    for char in CONTROLS.values():
        value = {"customer_id": f"c{char}1", "request_id": f"r{char}1", "channel": f"web{char}"}[field]
        error = refused(decide, server, **{field: value})
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, repr(char)
        assert error.details().startswith(f"{field}: contains a control character (U+{ord(char):04X})")
    server.service.log.flush()
    assert server.service.store.count_decisions() == 0


@pytest.mark.parametrize("field", ["event_id", "decision_id", "offer_id"])
def test_a_control_character_in_a_feedback_id_is_invalid_on_every_engine(server: Running, field: str) -> None:
    """On PostgreSQL a NUL in event_id was UNAVAILABLE "retry": a client retried for ever."""
    decision = decide(server)
    for char in CONTROLS.values():
        request = {
            "event_id": "e-1",
            "decision_id": decision.decision_id,
            "offer_id": decision.offers[0].offer_id,
            "outcome": pb.OUTCOME_CLICKED,
        }
        request[field] = request[field][:3] + char + request[field][3:]
        error = refused(server.stub.Feedback, pb.FeedbackRequest(**request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, repr(char)
        assert error.details().startswith(f"{field}: contains a control character (U+{ord(char):04X}) at position 3")
    assert stored_feedback(server) == []


def test_the_prefix_of_the_services_own_no_response_events_is_reserved(server: Running) -> None:
    """A client event named as the service names its default-reward events would stand in for
    the default reward of a decision whose windows close without feedback."""
    decision = decide(server)
    offer = decision.offers[0].offer_id
    request = pb.FeedbackRequest(
        event_id=f"no_response:{decision.decision_id}:{offer}",
        decision_id=decision.decision_id,
        offer_id=offer,
        outcome=pb.OUTCOME_CLICKED,
    )
    error = refused(server.stub.Feedback, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("event_id: the prefix 'no_response:' is reserved")
    assert stored_feedback(server) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"channel": "w" * 257}, "channel: longer than 256 characters (got 257)"),
        ({"customer_id": "c" * 257}, "customer_id: longer than 256 characters (got 257)"),
        ({"context": struct({"customer": {"a\x00": 1}})}, "context.customer: key 'a\\x00' contains a control character"),
        ({"context": struct({"customer": {"tab\there": 1}})}, "context.customer: key 'tab\\there' contains a control"),
        ({"context": struct({"customer": {"": 1}})}, "context.customer: an empty key"),
        ({"context": struct({"k" * 257: 1})}, "context: a key of 257 characters, longer than 256"),
        ({"context": struct({"orders": [{"bad\x07": 1}]})}, "context.orders[0]: key 'bad\\x07' contains a control"),
        ({"context": struct({"customer": {"ltv": 1e200}})}, "context.customer.ltv: 1e+200 is beyond ±2^53"),
        ({"context": struct({"orders": [{"total": -(2.0**53) - 4}]})}, "context.orders[0].total: -9.0072e+15 is beyond ±2^53"),
    ],
)
def test_lengths_and_context_keys_follow_the_same_rules(server: Running, fields: dict, message: str) -> None:
    error = refused(decide, server, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


def test_text_in_context_values_is_data_and_is_kept_on_every_engine(server: Running) -> None:
    """Values are the customer's data, not names: a note with a line feed (or even a NUL)
    is stored and read back the same on both engines (JSON escapes it)."""
    note = "line one\nline two\x00end"
    response = decide(server, context=struct({"customer": {**customer(), "note": note}}))
    server.service.log.flush()
    assert server.service.store.find_decision(response.decision_id).features["customer.note"] == note


def test_ids_of_the_limit_and_printable_unicode_are_accepted(server: Running) -> None:
    customer_id = "é" * 255 + "漢"
    response = decide(server, customer_id=customer_id, request_id="r-\u00a0-\u200b-😀" * 10)
    server.service.log.flush()
    assert server.service.store.find_decision(response.decision_id).customer_id == customer_id


def draft(**changes: str) -> apb.PolicySetDraft:
    files = {p.name: p.read_text() for p in POLICIES.glob("*.yaml") if not p.name.endswith("_test.yaml")}
    files.update(changes)
    return apb.PolicySetDraft(files=files)


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        (
            "PublishPolicySet",
            apb.PublishPolicySetRequest(draft=draft(), comment="weekly\x00review"),
            "comment: contains a control character (U+0000)",
        ),
        (
            "PublishPolicySet",
            apb.PublishPolicySetRequest(draft=draft(), comment="x" * 1001),
            "comment: longer than 1000 characters",
        ),
        (
            "RollbackPolicySet",
            apb.RollbackPolicySetRequest(version=1, comment="back\x1b[31m"),
            "comment: contains a control character (U+001B)",
        ),
        (
            "PublishPolicySet",
            apb.PublishPolicySetRequest(draft=draft(**{"extra\x00.yaml": "channels: [web]\n"})),
            "draft.files: a file name: contains a control character (U+0000)",
        ),
        (
            "ValidatePolicySet",
            apb.ValidatePolicySetRequest(draft=draft(**{"extra.yaml": "offers: []\x00\n"})),
            "draft.files['extra.yaml']: contains a control character (U+0000)",
        ),
        (
            "PreviewPolicySet",
            apb.PreviewPolicySetRequest(draft=draft(**{"n" * 257 + ".yaml": ""})),
            "draft.files: a file name: longer than 256 characters",
        ),
        ("ListPolicySetVersions", apb.ListPolicySetVersionsRequest(page_token="²"), "page_token: not a token"),
        ("ListPolicySetVersions", apb.ListPolicySetVersionsRequest(page_token="٣"), "page_token: not a token"),
        ("ListPolicySetVersions", apb.ListPolicySetVersionsRequest(page_token="9" * 40), "page_token: not a token"),
    ],
    ids=[
        "comment-nul",
        "comment-long",
        "rollback-comment-escape",
        "file-name-nul",
        "file-text-nul",
        "file-name-long",
        "token-superscript",
        "token-arabic-digit",
        "token-huge",
    ],
)
def test_admin_strings_follow_the_same_rules(server: Running, method: str, request_: Any, message: str) -> None:
    error = refused(getattr(server.admin, method), request_, metadata=AUTH)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in error.details()
    assert server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=AUTH).version == 1


def test_multiline_text_keeps_tabs_and_line_breaks(server: Running) -> None:
    reply = server.admin.PublishPolicySet(
        apb.PublishPolicySetRequest(
            draft=draft(**{"extra.yaml": "# a comment\r\n# with\ta tab\n"}), comment="line one\nline\ttwo"
        ),
        metadata=AUTH,
    )
    assert reply.live.version == 2
    listed = server.admin.ListPolicySetVersions(apb.ListPolicySetVersionsRequest(), metadata=AUTH)
    assert listed.versions[0].comment == "line one\nline\ttwo"


def test_the_shared_checker() -> None:
    assert check_id("x", "a b-c_d/é") == "a b-c_d/é"
    assert check_id("x", "", required=False) == ""
    with pytest.raises(InvalidArgument, match="x: required"):
        check_id("x", "")
    with pytest.raises(InvalidArgument, match=r"x: contains an unpaired surrogate \(U\+D800\) at position 1"):
        check_id("x", "a\ud800")
    assert check_text("t", "a\tb\r\nc") == "a\tb\r\nc"
    with pytest.raises(InvalidArgument, match=r"t: contains a control character \(U\+000B\)"):
        check_text("t", "a\vb")


# The depth of a context: one rule ----------------------------------------------------------


def nested(levels: int, leaf: Any) -> dict:
    """``leaf`` at level ``levels``: under ``levels`` keys."""
    value: Any = leaf
    for i in range(levels, 0, -1):
        value = {f"k{i}": value}
    return value


AT_LEVEL_8 = {
    "number": 1.0,
    "string": "s",
    "bool": True,
    "null": None,
    "empty struct": {},
    "empty list": [],
    "list of scalars": [1.0, "a", True],
}


@pytest.mark.parametrize("kind", AT_LEVEL_8)
def test_every_kind_of_value_may_be_at_level_8_and_none_at_9(kind: str) -> None:
    value = AT_LEVEL_8[kind]
    features = features_from_struct(struct(nested(MAX_CONTEXT_DEPTH, value)))
    assert list(features.values()) == [value]
    with pytest.raises(InvalidArgument, match="at level 9, nested deeper than 8 levels"):
        features_from_struct(struct(nested(MAX_CONTEXT_DEPTH + 1, value)))


@pytest.mark.parametrize(
    ("context", "deepest"),
    [
        (nested(7, [[1.0, 2.0]]), 8),  # a list in a list is one level deeper
        (nested(6, [[[1.0]]]), 8),
        (nested(7, [{"a": 1.0}]), 9),  # a struct in a list is one level deeper, its keys another
        (nested(6, [{"a": 1.0}]), 8),
        (nested(8, [{}]), 9),
        (nested(8, [[]]), 9),
        (nested(7, [{}]), 8),
    ],
)
def test_structs_and_lists_inside_lists_add_a_level(context: dict, deepest: int) -> None:
    message = struct(context)
    if deepest <= MAX_CONTEXT_DEPTH:
        assert unflatten(features_from_struct(message)) == context
    else:
        with pytest.raises(InvalidArgument, match="at level 9"):
            features_from_struct(message)


def deep_context_bytes(levels: int) -> bytes:
    """A DecideRequest whose context is ``levels`` structs deep, serialised by hand: protobuf's
    own Python refuses to build one past its recursion limit."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            if not n:
                return out + bytes([byte])
            out += bytes([byte | 0x80])

    inner = struct_pb2.Struct()
    inner.fields["x"].number_value = 1
    data = inner.SerializeToString()
    for _ in range(levels - 1):
        value = b"\x2a" + varint(len(data)) + data  # Value.struct_value
        entry = b"\x0a\x01a\x12" + varint(len(value)) + value  # map entry "a" -> value
        data = b"\x0a" + varint(len(entry)) + entry  # Struct.fields
    request = pb.DecideRequest(customer_id="c", channel="web").SerializeToString()
    return request + b"\x22" + varint(len(data)) + data


@pytest.mark.parametrize("levels", [9, 20, 33, 34, 40, 200])
def test_a_context_too_deep_for_protobuf_itself_is_invalid_not_internal(server: Running, levels: int) -> None:
    raw = server.channel.unary_unary("/nba.v1.DecisionService/Decide")
    error = refused(raw, deep_context_bytes(levels))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("context")
    assert "8 levels" in error.details()
    assert len(decide(server).offers) == 1
