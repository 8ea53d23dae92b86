"""ProfileService through a real server on its port, on SQLite and PostgreSQL: events in by
Track and TrackBatch (one result per event), the profile back by GetProfile (by id or by an
identifier, with a viewer token), and every refusal a client status naming the field."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from conftest import EDITOR_TOKEN, POLICIES, VIEWER_TOKEN, ManualClock, Running, struct
from google.protobuf import field_mask_pb2, json_format, timestamp_pb2

from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

PROFILE = """
profile:
  event_types:
    order: {properties: {amount: number, status: string, order_id: string}}
    contact: {properties: {sentiment: string}}
    complaint: {properties: {topic: string}}
    household_link: {properties: {member_id: string}}
  computed:
    spend_30d: sum(order.amount) over 30d
    last_mood: last(contact.sentiment)
    orders: count(order)
    complaints_30d: count(complaint) over 30d
  activity:
    orders_open: {events: [order], key: order_id, closed: [delivered]}
  relationships:
    household: {from: household_link.member_id}
"""


@pytest.fixture
def server(start, tmp_path: Path) -> Running:  # type: ignore[no-untyped-def]
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    # the sample set's profile section, with this test's in its place (the sample's retention
    # rules read complaints_30d, so it stays)
    (folder / "profile.yaml").write_text(PROFILE)
    return start(policies=folder)


def at(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def viewer() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {VIEWER_TOKEN}")]


def test_events_in_and_the_profile_back(server: Running) -> None:
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    now = datetime.now(UTC)
    first = stub.Track(
        ppb.TrackRequest(
            event_id="e-1",
            type="order",
            source="web",
            identities={"email": "Ada@Example.com"},
            occurred_at=at(now - timedelta(days=2)),
            properties=struct({"amount": 40.0, "order_id": "A-1", "status": "placed"}),
        )
    )
    assert not first.duplicate and first.customer_id and first.version == 1
    second = stub.Track(
        ppb.TrackRequest(
            event_id="e-2",
            type="contact",
            source="call_center",
            customer_id="c-9",
            identities={"email": "ada@example.com"},
            properties=struct({"sentiment": "calm"}),
        )
    )
    assert second.customer_id == first.customer_id and list(second.merged) == ["c-9"]  # the older profile survives
    again = stub.Track(
        ppb.TrackRequest(
            event_id="e-2",
            type="contact",
            source="call_center",
            customer_id="c-9",
            identities={"email": "ada@example.com"},
            properties=struct({"sentiment": "calm"}),
        )
    )
    assert again.duplicate

    # identifiers are personal data: an editor sees them (--pii-role), a viewer reads ***
    by_id = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-9"), metadata=Running.auth())
    by_email = stub.GetProfile(
        ppb.GetProfileRequest(identifier_kind="email", identifier_value=" ADA@example.com"), metadata=Running.auth()
    )
    masked = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-9"), metadata=viewer())
    assert [(i.kind, i.value) for i in masked.identities] == [("email", "***")] and masked.computed == by_id.computed
    assert by_id == by_email and by_id.customer_id == first.customer_id and by_id.version == 2
    assert json_format.MessageToDict(by_id.computed) == {
        "spend_30d": 40.0,
        "last_mood": "calm",
        "orders": 1.0,
        "complaints_30d": 0.0,
    }
    assert [(i.kind, i.value) for i in by_id.identities] == [("email", "ada@example.com")]
    assert [(a.activity, a.key, a.status, a.open, a.last_event_type) for a in by_id.activity] == [
        ("orders_open", "A-1", "placed", True, "order")
    ]
    assert abs(by_id.activity[0].since.ToDatetime(UTC) - (now - timedelta(days=2))) < timedelta(milliseconds=1)


def test_a_batch_answers_each_event_on_its_own(server: Running) -> None:
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    reply = stub.TrackBatch(
        ppb.TrackBatchRequest(
            events=[
                ppb.TrackRequest(event_id="b-1", type="order", customer_id="c-1", properties=struct({"amount": 5.0})),
                ppb.TrackRequest(event_id="b-2", type="order", customer_id="c-1", properties=struct({"amount": "five"})),
                ppb.TrackRequest(event_id="b-3", type="visit", customer_id="c-1"),
                ppb.TrackRequest(event_id="b-1", type="order", customer_id="c-1", properties=struct({"amount": 6.0})),
                ppb.TrackRequest(event_id="b-4", type="order", customer_id="c-1", properties=struct({"amount": 7.0})),
            ]
        )
    )
    outcome = [(r.tracked.customer_id if r.HasField("tracked") else "", r.error_code, r.error_field) for r in reply.results]
    assert outcome == [
        ("c-1", "", ""),
        ("", "INVALID_ARGUMENT", "events[1].properties.amount"),
        ("", "INVALID_ARGUMENT", "events[2].type"),
        ("", "ALREADY_EXISTS", "events[3].event_id"),
        ("c-1", "", ""),
    ]
    assert "events[1]: properties.amount: must be a number" in reply.results[1].error_message
    profile = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-1"), metadata=viewer())
    assert profile.version == 2 and json_format.MessageToDict(profile.computed)["spend_30d"] == 12.0


def test_a_household_link_shows_on_both_profiles(server: Running) -> None:
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    linked = at(datetime.now(UTC) - timedelta(hours=1))
    stub.Track(
        ppb.TrackRequest(
            event_id="h-1", type="household_link", customer_id="h-a", occurred_at=linked, properties=struct({"member_id": "h-b"})
        )
    )
    stub.Track(ppb.TrackRequest(event_id="h-2", type="order", customer_id="h-b", properties=struct({"amount": 1.0})))
    for customer, other in (("h-a", "h-b"), ("h-b", "h-a")):
        profile = stub.GetProfile(ppb.GetProfileRequest(customer_id=customer), metadata=viewer())
        assert [(r.kind, r.customer_id, r.event_id, r.since) for r in profile.relationships] == [
            ("household", other, "h-1", linked)
        ]
    masked = stub.GetProfile(
        ppb.GetProfileRequest(customer_id="h-a", read_mask=field_mask_pb2.FieldMask(paths=["customer_id"])), metadata=viewer()
    )
    assert not masked.relationships


def test_a_published_change_of_definition_is_read_right_at_once_and_backfilled(server: Running, tmp_path: Path) -> None:
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    now = datetime.now(UTC)
    for n in range(6):
        stub.Track(
            ppb.TrackRequest(
                event_id=f"k-{n}",
                type="order",
                customer_id=f"k-{n % 3}",
                occurred_at=at(now - timedelta(days=10 * n)),
                properties=struct({"amount": 10.0 * (n + 1)}),
            )
        )
    assert (
        json_format.MessageToDict(stub.GetProfile(ppb.GetProfileRequest(customer_id="k-0"), metadata=viewer()).computed)[
            "spend_30d"
        ]
        == 10.0
    )
    files = {
        path.name: path.read_text() for path in (tmp_path / "policies").glob("*.yaml") if not path.name.endswith("_test.yaml")
    }
    files["profile.yaml"] = PROFILE.replace("spend_30d: sum(order.amount) over 30d", "spend_30d: sum(order.amount) over 45d")
    server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=files)), metadata=server.auth())
    # k-0's orders are 0 and 30 days old: both within 45 days, whether or not the backfill has come by
    assert (
        json_format.MessageToDict(stub.GetProfile(ppb.GetProfileRequest(customer_id="k-0"), metadata=viewer()).computed)[
            "spend_30d"
        ]
        == 50.0
    )
    deadline = time.monotonic() + 30
    while server.service.backfill.progress().running or server.service.backfill.progress().done < 3:
        assert time.monotonic() < deadline, server.service.backfill.progress()
        time.sleep(0.05)
    fingerprint = server.service.policy_set.profile.fingerprint
    assert server.service.backfill.progress().fingerprint == fingerprint
    assert server.service.store.count_built_under_other(fingerprint) == 0


def test_an_editor_undoes_a_merge_and_the_two_stay_apart(server: Running) -> None:
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    now = datetime.now(UTC)
    for event_id, identities, amount in (
        ("u-1", {"email": "kim@example.com"}, 10.0),
        ("u-2", {"phone": "+447700900123"}, 20.0),
        ("u-3", {"email": "kim@example.com", "phone": "+447700900123"}, 5.0),  # links the two
    ):
        stub.Track(
            ppb.TrackRequest(
                event_id=event_id,
                type="order",
                identities=identities,
                occurred_at=at(now - timedelta(minutes=10 - len(event_id))),
                properties=struct({"amount": amount}),
            )
        )
    survivor = stub.GetProfile(
        ppb.GetProfileRequest(identifier_kind="email", identifier_value="kim@example.com"), metadata=viewer()
    )
    assert len(survivor.merged_ids) == 1 and json_format.MessageToDict(survivor.computed)["orders"] == 3
    absorbed = survivor.merged_ids[0]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Unmerge(ppb.UnmergeRequest(customer_id=absorbed), metadata=viewer())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED and "Unmerge needs an editor" in caught.value.details()
    editor = [("authorization", f"Bearer {EDITOR_TOKEN}")]
    undone = stub.Unmerge(ppb.UnmergeRequest(customer_id=absorbed), metadata=editor)
    assert (undone.customer_id, undone.survivor_id) == (absorbed, survivor.customer_id)
    assert undone.survivor_version == survivor.version + 1
    back = stub.GetProfile(ppb.GetProfileRequest(customer_id=absorbed), metadata=editor)
    kept = stub.GetProfile(ppb.GetProfileRequest(customer_id=survivor.customer_id), metadata=editor)
    assert back.customer_id == absorbed and [i.value for i in back.identities] == ["+447700900123"]
    assert json_format.MessageToDict(back.computed)["spend_30d"] == 20.0 and [e.event_id for e in back.timeline] == ["u-2"]
    assert not kept.merged_ids and json_format.MessageToDict(kept.computed)["spend_30d"] == 15.0
    # the identifiers that joined them do not join them again
    again = stub.Track(
        ppb.TrackRequest(event_id="u-4", type="order", identities={"email": "kim@example.com", "phone": "+447700900123"})
    )
    assert again.customer_id == survivor.customer_id
    assert not stub.GetProfile(ppb.GetProfileRequest(customer_id=survivor.customer_id), metadata=viewer()).merged_ids
    for customer_id, code in ((absorbed, "FAILED_PRECONDITION"), ("nobody", "NOT_FOUND"), ("", "INVALID_ARGUMENT")):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Unmerge(ppb.UnmergeRequest(customer_id=customer_id), metadata=editor)
        assert caught.value.code().name == code and "customer_id" in caught.value.details()


@pytest.mark.parametrize(
    ("call", "code", "says"),
    [
        (lambda s: s.Track(ppb.TrackRequest(type="order", customer_id="c-1")), "INVALID_ARGUMENT", "event_id: required"),
        (lambda s: s.Track(ppb.TrackRequest(event_id="x", type="order")), "INVALID_ARGUMENT", "customer_id: required"),
        (
            lambda s: s.Track(ppb.TrackRequest(event_id="x", type="order", identities={"email": "no"})),
            "INVALID_ARGUMENT",
            "identities.email: 'no' is not an e-mail address",
        ),
        (
            lambda s: s.Track(
                ppb.TrackRequest(
                    event_id="x", type="order", customer_id="c", occurred_at=at(datetime.now(UTC) + timedelta(hours=1))
                )
            ),
            "INVALID_ARGUMENT",
            "occurred_at: .* is in the future",
        ),
        (lambda s: s.GetProfile(ppb.GetProfileRequest(customer_id="c-1")), "UNAUTHENTICATED", "authorization"),
        (
            lambda s: s.GetProfile(ppb.GetProfileRequest(customer_id="nobody"), metadata=viewer()),
            "NOT_FOUND",
            "customer_id: no profile",
        ),
        (
            lambda s: s.GetProfile(ppb.GetProfileRequest(identifier_kind="email"), metadata=viewer()),
            "INVALID_ARGUMENT",
            "identifier_value: give identifier_kind and identifier_value together",
        ),
    ],
)
def test_refusals_are_client_statuses_naming_the_field(server: Running, call, code: str, says: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(ppb_grpc.ProfileServiceStub(server.channel))
    assert caught.value.code().name == code and __import__("re").search(says, caught.value.details()), caught.value.details()


def test_events_past_their_retention_are_deleted_and_the_profile_keeps_what_they_made(start, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("nba.service.maintenance.RETENTION_SECONDS", 0.0)  # look at every log write
    clock = ManualClock(datetime.now(UTC))
    server = start(clock=clock, profile_event_retention_days=1)
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    stub.Track(ppb.TrackRequest(event_id="old", type="order", customer_id="r-1", properties=struct({"amount": 7.0})))
    clock.advance(days=2)
    stub.Track(ppb.TrackRequest(event_id="new", type="order", customer_id="r-1", properties=struct({"amount": 5.0})))
    deadline = time.monotonic() + 10
    while [e[0] for e in server.service.store.timeline("r-1", 10)] != ["new"]:
        assert time.monotonic() < deadline, server.service.store.timeline("r-1", 10)
        server.stub.Decide(pb.DecideRequest(customer_id="someone", channel="web"))  # a log write: maintenance runs
        time.sleep(0.05)
    profile = stub.GetProfile(ppb.GetProfileRequest(customer_id="r-1"), metadata=viewer())
    assert profile.version == 2 and json_format.MessageToDict(profile.computed)["spend_365d"] == 12.0
    assert [e.event_id for e in profile.timeline] == ["new"]
