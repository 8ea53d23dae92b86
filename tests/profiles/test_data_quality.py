"""Data quality: an event the profile definition refuses is answered INVALID_ARGUMENT and kept as
a dead letter (never lost, never half-applied), listed by ``nba profiles dead-letters``, and
applied by ``--replay`` once a fixed definition is live; near-duplicates (the same order from two
touch points, by the type's ``dedupe_by``) are counted once; ``nba profiles quality`` reports
each attribute's completeness and the refused events by source. Through a real server on SQLite
and PostgreSQL."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from conftest import POLICIES, ManualClock, Running, struct
from google.protobuf import timestamp_pb2
from prometheus_client import REGISTRY

from nba.cli import main
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

PROFILE = """
profile:
  event_types:
    complaint: {properties: {topic: string}}
    order: {properties: {amount: number, order_id: string}, dedupe_by: order_id}
    signup: {properties: {tier: string}}
  attributes:
    tier: {from: signup.tier}
  computed:
    complaints_30d: count(complaint) over 30d   # the sample set's retention rules read it
    surveys: count(complaint) where event.type == "survey"
    orders: count(order)
    spend: sum(order.amount)
"""
FIXED = PROFILE.replace(
    "    signup: {properties: {tier: string}}\n",
    "    signup: {properties: {tier: string}}\n    survey: {properties: {score: number}}\n",
).replace('surveys: count(complaint) where event.type == "survey"', "surveys: count(survey)")
NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def folder(tmp_path: Path, profile: str = PROFILE) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    (target / "profile.yaml").write_text(profile)
    return target


def tally(source: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("nba_profile_events_total", {"source": source, "outcome": outcome}) or 0.0


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


def test_a_refused_event_is_kept_and_applied_once_the_definition_accepts_it(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(NOON)
    server: Running = start(clock=clock, policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    url = server.service.settings.database_url
    before = {o: tally("app", o) for o in ("taken", "dead_letter")}
    stub.Track(
        ppb.TrackRequest(event_id="s-0", type="signup", source="web", customer_id="c-1", properties=struct({"tier": "gold"}))
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(
            ppb.TrackRequest(
                event_id="v-1",
                type="survey",
                source="app",
                customer_id="c-1",
                occurred_at=stamp(NOON - timedelta(hours=1)),
                properties=struct({"score": 9}),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "type: 'survey' is not an event type of the profile" in caught.value.details()
    assert "kept as a dead letter" in caught.value.details()
    assert tally("app", "dead_letter") == before["dead_letter"] + 1 and tally("app", "taken") == before["taken"]
    batch = stub.TrackBatch(
        ppb.TrackBatchRequest(
            events=[
                ppb.TrackRequest(event_id="v-2", type="survey", source="email", customer_id="c-2"),  # no time: now
                ppb.TrackRequest(event_id="o-1", type="order", customer_id="c-2", properties=struct({"amount": "ten"})),
                ppb.TrackRequest(event_id="o-2", type="order", customer_id="c-2", properties=struct({"amount": 10})),
                ppb.TrackRequest(event_id="", type="order", customer_id="c-2"),  # malformed: refused, not kept
            ]
        )
    )
    assert [r.error_code for r in batch.results] == ["INVALID_ARGUMENT", "INVALID_ARGUMENT", "", "INVALID_ARGUMENT"]
    assert [r.error_field for r in batch.results] == ["events[0].type", "events[1].properties.amount", "", "events[3].event_id"]
    assert "kept as a dead letter" in batch.results[1].error_message
    assert "dead letter" not in batch.results[3].error_message
    # sent again: one dead letter each, the attempt counted
    with pytest.raises(grpc.RpcError):
        stub.Track(ppb.TrackRequest(event_id="v-2", type="survey", source="email", customer_id="c-2"))
    profile = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-1"), metadata=Running.auth())
    assert profile.version == 1 and [e.event_id for e in profile.timeline] == ["s-0"]  # nothing half-applied

    capsys.readouterr()
    assert main(["profiles", "dead-letters", "--database-url", url]) == 0
    listing = capsys.readouterr().out
    assert "3 dead letters" in listing and "properties.amount: must be a number" in listing
    assert [line.split()[2] for line in listing.splitlines()[1:4]] == ["1", "2", "1"]  # v-1, v-2 (sent twice), o-1
    assert main(["profiles", "quality", "--database-url", url]) == 0
    quality = capsys.readouterr().out
    assert "2 customers" in quality  # c-1 (signup) and c-2 (order o-2)
    assert "tier" in quality and "50.0%" in quality
    assert "app / survey / type" in quality and "email / survey / type" in quality
    server.service._measure_quality()  # what the segment clock does every 10 minutes
    assert REGISTRY.get_sample_value("nba_profile_attribute_completeness", {"attribute": "tier"}) == 0.5

    # replayed under the same definition: still refused, kept
    assert main(["profiles", "dead-letters", "--replay", "--database-url", url]) != 0
    assert "0 applied, 0 applied before, 3 still refused" in capsys.readouterr().out

    files = {p.name: p.read_text() for p in (tmp_path / "policies").glob("*.yaml")}
    files["profile.yaml"] = FIXED
    server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=files)), metadata=server.auth())
    clock.advance(hours=2)
    assert main(["profiles", "dead-letters", "--replay", "--type", "survey", "--database-url", url]) == 0
    assert "2 applied, 0 applied before, 0 still refused" in capsys.readouterr().out
    profile = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-1"), metadata=Running.auth())
    surveyed = next(e for e in profile.timeline if e.event_id == "v-1")
    assert surveyed.occurred_at.ToDatetime(UTC) == NOON - timedelta(hours=1)  # when it happened
    assert profile.computed["surveys"] == 1.0
    later = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-2"), metadata=Running.auth())
    # sent without a time: it happened when first received, not when replayed
    assert next(e for e in later.timeline if e.event_id == "v-2").occurred_at.ToDatetime(UTC) == NOON
    assert main(["profiles", "dead-letters", "--database-url", url]) == 0
    left = capsys.readouterr().out
    assert "1 dead letters" in left and "o-1" in left  # the order's amount is still text
    # a replay run again applies nothing twice
    assert main(["profiles", "dead-letters", "--replay", "--type", "survey", "--database-url", url]) == 0
    assert "0 applied" in capsys.readouterr().out
    again = stub.Track(ppb.TrackRequest(event_id="v-2", type="survey", source="email", customer_id="c-2"))
    assert again.duplicate


def test_the_cli_names_what_goes_with_what(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    server = start(policies=folder(tmp_path))
    url = server.service.settings.database_url
    assert main(["profiles", "quality", "--replay", "--database-url", url]) != 0
    assert "--replay and --type go with: nba profiles dead-letters" in capsys.readouterr().err
    assert main(["profiles", "dead-letters", "x", "--database-url", url]) != 0
    assert "takes --replay and --type only" in capsys.readouterr().err
    assert main(["profiles", "dead-letters", "--database-url", url]) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_the_same_order_from_two_touch_points_counts_once(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: Running = start(policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    before = tally("store", "near_duplicate")

    def order(event_id: str, source: str, order_id: object, amount: float, **who: object) -> ppb.TrackResponse:
        return stub.Track(
            ppb.TrackRequest(
                event_id=event_id, type="order", source=source, properties=struct({"order_id": order_id, "amount": amount}), **who
            )
        )

    first = order("web-1", "web", "A-1234", 40.0, customer_id="c-9")
    assert not first.duplicate and not first.duplicate_of
    again = order("store-77", "store", "A-1234", 40.0, identities={"email": "ada@example.com"}, customer_id="c-9")
    assert again.duplicate and again.duplicate_of == "web-1" and again.customer_id == "c-9" and again.version == 1
    # sent again, it is the same answer; the key is read trimmed
    assert order("store-77", "store", "A-1234", 40.0, customer_id="c-9").duplicate_of == "web-1"
    assert not order("web-2", "web", "A-5678", 5.0, customer_id="c-9").duplicate
    assert order("app-2", "app", " A-5678 ", 5.0, customer_id="c-9").duplicate_of == "web-2"
    batch = stub.TrackBatch(
        ppb.TrackBatchRequest(
            events=[
                ppb.TrackRequest(
                    event_id="b-1", type="order", customer_id="c-8", properties=struct({"order_id": "B-1", "amount": 1})
                ),
                ppb.TrackRequest(
                    event_id="b-2", type="order", customer_id="c-8", properties=struct({"order_id": "B-1", "amount": 1})
                ),
            ]
        )
    )
    assert [(r.tracked.duplicate, r.tracked.duplicate_of) for r in batch.results] == [(False, ""), (True, "b-1")]
    profile = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-9"), metadata=Running.auth())
    assert profile.computed["orders"] == 2.0 and profile.computed["spend"] == 45.0
    assert sorted(e.event_id for e in profile.timeline) == ["web-1", "web-2"]
    assert tally("store", "near_duplicate") == before + 2


def test_dedupe_by_names_a_declared_property() -> None:
    from nba.policy.profile import ProfileSection, compile_profile

    section = {"event_types": {"order": {"properties": {"amount": "number", "paid": "bool"}, "dedupe_by": "paid"}}}
    _, problems = compile_profile(ProfileSection.model_validate(section), "profile.yaml")
    assert [p.field for p in problems] == ["profile.event_types.order.dedupe_by"]
    assert "'paid' is not a declared string or number property of 'order' (amount (number))" in str(problems[0])


def test_a_key_is_one_customers_and_goes_with_its_event(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime as dt

    server: Running = start(policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)

    def order(event_id: str, customer_id: str) -> ppb.TrackResponse:
        return stub.Track(
            ppb.TrackRequest(
                event_id=event_id, type="order", customer_id=customer_id, properties=struct({"order_id": "K-1", "amount": 5})
            )
        )

    assert not order("k-1", "c-1").duplicate
    other = order("k-2", "c-2")  # another customer's order with the same number: theirs, and c-1 is not named
    assert not other.duplicate and other.customer_id == "c-2" and not other.duplicate_of
    assert order("k-3", "c-1").duplicate_of == "k-1"
    # retention deletes the first report and its key: the same order reported again is taken
    assert server.service.store.purge_events(dt.now(UTC) + timedelta(seconds=1)) == 2
    again = order("k-4", "c-1")
    assert not again.duplicate and order("k-5", "c-1").duplicate_of == "k-4"


def test_an_identifier_of_an_undeclared_kind_is_kept_until_the_kind_is_declared(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    server: Running = start(policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    url = server.service.settings.database_url
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(ppb.TrackRequest(event_id="m-1", type="signup", customer_id="c-m", identities={"member_no": "M-77"}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "identities.member_no: unknown identifier kind 'member_no'" in caught.value.details()
    assert "kept as a dead letter" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:  # a malformed one is refused, and not kept
        stub.Track(ppb.TrackRequest(event_id="m-2", type="signup", customer_id="c-m", identities={"member_no": "M\x0077"}))
    assert "dead letter" not in caught.value.details()
    files = {p.name: p.read_text() for p in (tmp_path / "policies").glob("*.yaml")}
    files["profile.yaml"] = PROFILE.replace(
        "profile:\n", "profile:\n  identity:\n    kinds:\n      member_no: {unique: true}\n", 1
    )
    server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=files)), metadata=server.auth())
    capsys.readouterr()
    assert main(["profiles", "dead-letters", "--replay", "--database-url", url]) == 0
    assert "1 applied" in capsys.readouterr().out
    profile = stub.GetProfile(
        ppb.GetProfileRequest(identifier_kind="member_no", identifier_value="M-77"), metadata=Running.auth()
    )
    assert profile.customer_id == "c-m" and [(i.kind, i.value) for i in profile.identities] == [("member_no", "M-77")]


def test_an_identifier_its_kind_cannot_read_is_kept_until_the_definition_reads_it(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # a New York number written the American way, read as a UK one: no possible number
    server: Running = start(policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    url = server.service.settings.database_url
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(ppb.TrackRequest(event_id="p-1", type="signup", customer_id="c-p", identities={"phone": "1 212 555 0123"}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("identities.phone: '1 212 555 0123' is not a possible phone number")
    assert "kept as a dead letter" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:  # so is an e-mail address without its domain
        stub.Track(ppb.TrackRequest(event_id="p-2", type="signup", customer_id="c-q", identities={"email": "ann@"}))
    assert "kept as a dead letter" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:  # a near-duplicate key that cannot be one: kept too
        stub.Track(ppb.TrackRequest(event_id="p-3", type="order", customer_id="c-q", properties=struct({"order_id": "x" * 300})))
    assert "properties.order_id" in caught.value.details() and "kept as a dead letter" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:  # a value that cannot be stored at all is refused
        stub.Track(ppb.TrackRequest(event_id="p-4", type="signup", customer_id="c-q", identities={"phone": "1\x002"}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dead letter" not in caught.value.details()
    capsys.readouterr()
    assert main(["profiles", "dead-letters", "--database-url", url]) == 0
    listed = capsys.readouterr().out
    assert "p-1" in listed and "p-2" in listed and "p-3" in listed and "p-4" not in listed
    files = {p.name: p.read_text() for p in (tmp_path / "policies").glob("*.yaml")}
    files["profile.yaml"] = PROFILE.replace("profile:\n", "profile:\n  identity:\n    default_region: US\n", 1)
    server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=files)), metadata=server.auth())
    # the phone number reads now; the address still does not (exit status 1: something is left)
    assert main(["profiles", "dead-letters", "--replay", "--type", "signup", "--database-url", url]) == 1
    assert "1 applied, 0 applied before, 1 still refused" in capsys.readouterr().out
    profile = stub.GetProfile(
        ppb.GetProfileRequest(identifier_kind="phone", identifier_value="+12125550123"), metadata=Running.auth()
    )
    assert profile.customer_id == "c-p"
