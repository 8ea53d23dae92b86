"""Decide reads the customer's stored profile, through real servers on SQLite and PostgreSQL
and on two replicas sharing a Redis bus: a rule on a computed attribute changes eligibility
(``explain`` says why, and shows the fields read), a window's expiry changes it back with no
new event, fields sent in ``context.profile`` win, personal fields are read by rules but never
logged, and the decision log records the profile's version."""

from __future__ import annotations

import json
import shutil
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import POLICIES, REDIS, ManualClock, Running, redis_stream, struct
from google.protobuf import json_format, timestamp_pb2
from prometheus_client import REGISTRY

from nba.v1 import decision_service_pb2 as pb
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

PROFILE = """
profile:
  event_types:
    complaint: {properties: {topic: string}}
    signup: {properties: {email: string, tier: string}}
  attributes:
    email: {from: signup.email, pii: true}
    tier: {from: signup.tier}
  computed:
    complaints_7d: count(complaint) over 7d
    complaints_30d: count(complaint) over 30d   # the sample set's retention rules read it
offers:
  - id: apology
    name: We are sorry
    group: service
    channels: [web]
    value: 500.0
    eligibility: profile.complaints_7d >= 1
    treatment: {web: banner-apology}
  - id: vip-desk
    name: Your own desk
    group: service
    channels: [web]
    value: 400.0
    eligibility: profile.email.endsWith("@vip.example")
    treatment: {web: banner-vip}
  - id: careless
    name: A rule that returns the address
    group: service
    channels: [web]
    value: 1.0
    eligibility: 'has(profile.email) ? profile.email : false'
    treatment: {web: banner-careless}
policies:
  - id: one-apology-a-day
    type: contact_cap
    applies_to: {offers: [apology]}
    max: 1
    window: 1d
    counts: decided
    per: offer
"""

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def folder(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    (target / "profile.yaml").write_text(PROFILE)
    return target


def at(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def decide(server: Running, customer_id: str, context: dict | None = None) -> pb.DecideResponse:  # type: ignore[type-arg]
    return server.stub.Decide(
        pb.DecideRequest(
            customer_id=customer_id, channel="web", limit=10, explain=True, context=struct(context or {"customer": {"age": 30}})
        )
    )


def verdict(reply: pb.DecideResponse, offer_id: str) -> pb.OfferExplanation:
    return next(o for o in reply.explanation.offers if o.offer_id == offer_id)


def complain(server: Running, event_id: str, customer_id: str, when: datetime) -> ppb.TrackResponse:
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    return stub.Track(
        ppb.TrackRequest(
            event_id=event_id,
            type="complaint",
            source="call_center",
            customer_id=customer_id,
            occurred_at=at(when),
            properties=struct({"topic": "billing"}),
        )
    )


def test_a_rule_on_a_computed_attribute_decides_with_only_a_customer_id(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(T0)
    server = start(clock=clock, policies=folder(tmp_path))

    before = decide(server, "c-1")
    assert not verdict(before, "apology").eligible and verdict(before, "apology").reason == "eligibility"
    assert before.profile_version == 0  # no profile yet: an empty one, with no complaint
    assert json_format.MessageToDict(before.explanation.profile) == {"complaints_7d": 0.0, "complaints_30d": 0.0}

    assert complain(server, "e-1", "c-1", T0 - timedelta(days=2)).version == 1
    after = decide(server, "c-1")
    assert verdict(after, "apology").eligible and "apology" in {o.offer_id for o in after.offers}
    assert after.profile_version == 1
    assert json_format.MessageToDict(after.explanation.profile) == {"complaints_7d": 1.0, "complaints_30d": 1.0}

    # the window (now - 7d, now] expires exactly, with no new event: the complaint is in a
    # second before seven days have passed since it, and out when they have
    clock.set(T0 + timedelta(days=5, seconds=-1))
    assert verdict(decide(server, "c-1"), "apology").eligible
    clock.set(T0 + timedelta(days=5))
    expired = decide(server, "c-1")
    assert not verdict(expired, "apology").eligible
    assert json_format.MessageToDict(expired.explanation.profile) == {"complaints_7d": 0.0, "complaints_30d": 1.0}

    # a repeated event changes nothing
    assert complain(server, "e-1", "c-1", T0 - timedelta(days=2)).duplicate
    assert decide(server, "c-1").profile_version == 1

    # the decision log holds the profile's version and its learnable fields as features
    server.service.log.flush()
    logged = server.service.store.find_decision(after.decision_id)
    assert logged is not None and logged.profile_version == 1
    assert logged.features["profile.complaints_7d"] == 1
    assert server.service.store.find_decision(before.decision_id).profile_version == 0  # type: ignore[union-attr]


def test_context_wins_and_personal_fields_are_read_but_never_logged(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(T0)
    server = start(clock=clock, policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    stub.Track(
        ppb.TrackRequest(
            event_id="s-1",
            type="signup",
            customer_id="c-2",
            occurred_at=at(T0 - timedelta(hours=1)),
            properties=struct({"email": "ada@vip.example", "tier": "gold"}),
        )
    )
    complain(server, "e-2", "c-2", T0 - timedelta(hours=1))

    reply = decide(server, "c-2")
    assert verdict(reply, "vip-desk").eligible  # the rule read the personal field
    shown = json_format.MessageToDict(reply.explanation.profile)
    assert shown == {"complaints_7d": 1.0, "complaints_30d": 1.0, "tier": "gold"}  # ... which nothing shows

    # a rule returning something other than a boolean names its kind, never a personal value
    assert "ada@vip.example" not in str(reply.explanation)
    careless = verdict(reply, "careless")
    assert careless.reason == "rule_error" and careless.detail == "returned a text, not a boolean"

    # fields the request sends in context.profile win over the stored ones, for that request
    sent = decide(server, "c-2", {"customer": {"age": 30}, "profile": {"complaints_7d": 0, "email": "x@plain.example"}})
    assert not verdict(sent, "apology").eligible and not verdict(sent, "vip-desk").eligible
    assert json_format.MessageToDict(sent.explanation.profile)["complaints_7d"] == 0.0

    server.service.log.flush()
    stored = server.service.store.find_decision(reply.decision_id)
    assert stored is not None and stored.profile_version == 2
    assert "profile.email" not in stored.features and "ada@vip.example" not in str(stored.features)
    assert "ada@vip.example" not in str(stored.candidates)  # the careless rule's reason names a kind
    assert stored.features["profile.tier"] == "gold"
    given = server.service.store.find_decision(sent.decision_id)
    assert given is not None and "ada@vip.example" not in str(given.features)
    assert given.features["profile.email"] == "x@plain.example"  # what the caller sent is the caller's to log


def test_a_merged_id_decides_on_the_survivors_profile(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(T0)
    server = start(clock=clock, policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    first = stub.Track(
        ppb.TrackRequest(event_id="m-1", type="signup", customer_id="c-old", identities={"email": "m@example.com"})
    )
    assert not verdict(decide(server, "c-new"), "apology").eligible  # cached: c-new has no profile
    stub.Track(
        ppb.TrackRequest(
            event_id="m-2",
            type="complaint",
            customer_id="c-new",
            identities={"email": "m@example.com"},
            occurred_at=at(T0 - timedelta(hours=2)),
            properties=struct({"topic": "delivery"}),
        )
    )
    assert first.customer_id == "c-old"
    for customer_id in ("c-old", "c-new"):  # the absorbed id reads the survivor's profile
        reply = decide(server, customer_id)
        assert verdict(reply, "apology").eligible and reply.profile_version == 2, customer_id


def test_replicas_on_a_redis_bus_decide_on_an_event_tracked_on_the_other(
    start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    with redis_stream() as stream:
        policies = folder(tmp_path)
        one = start(policies=policies, bus=REDIS, bus_stream=stream)
        with monkeypatch.context() as patch:  # another machine: replicas tell their entries apart by host and pid
            patch.setattr(socket, "gethostname", lambda: "replica-two")
            two = start(policies=policies, bus=REDIS, bus_stream=stream)
        assert not verdict(decide(two, "c-3"), "apology").eligible  # two caches "no profile"
        assert two.service.profile_cache.get("c-3")[0] is None

        complain(one, "e-3", "c-3", datetime.now(UTC) - timedelta(minutes=5))
        deadline = time.monotonic() + 5.0
        reply = decide(two, "c-3")
        while time.monotonic() < deadline and not verdict(reply, "apology").eligible:
            time.sleep(0.01)
            reply = decide(two, "c-3")
        assert verdict(reply, "apology").eligible and reply.profile_version == 1


def test_get_profile_answers_the_timeline_the_decisions_and_the_next_best_actions(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import grpc
    from conftest import VIEWER_TOKEN

    clock = ManualClock(T0)
    server = start(clock=clock, policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    viewer = [("authorization", f"Bearer {VIEWER_TOKEN}")]
    for n, hours in enumerate((3, 1, 2)):  # out of order: the timeline is by time
        complain(server, f"t-{n}", "c-5", T0 - timedelta(hours=hours))
    stub.Track(ppb.TrackRequest(event_id="t-9", type="signup", customer_id="c-5b", identities={"email": "five@example.com"}))
    stub.Track(ppb.TrackRequest(event_id="t-10", type="signup", customer_id="c-5", identities={"email": "five@example.com"}))
    made = decide(server, "c-5b")  # under the absorbed id: still the customer's
    server.stub.Feedback(
        pb.FeedbackRequest(
            event_id="f-1", decision_id=made.decision_id, offer_id=made.offers[0].offer_id, outcome=pb.OUTCOME_CLICKED
        )
    )
    server.service.log.flush()
    decisions_before = server.service.store.count_decisions()
    counted_before = REGISTRY.get_sample_value("nba_decisions_total", {"channel": "web"})

    page = stub.GetProfile(
        ppb.GetProfileRequest(
            customer_id="c-5", timeline_limit=2, decisions_limit=5, next_best_actions_channel="web", next_best_actions_limit=3
        ),
        metadata=viewer,
    )
    assert page.customer_id == "c-5" and list(page.merged_ids) == ["c-5b"]
    assert [e.event_id for e in page.timeline] == ["t-9", "t-10"]  # both at T0, the newest: by event id, descending
    assert page.next_timeline_page_token
    rest = stub.GetProfile(
        ppb.GetProfileRequest(customer_id="c-5", timeline_limit=2, timeline_page_token=page.next_timeline_page_token),
        metadata=viewer,
    )
    assert [e.event_id for e in rest.timeline] == ["t-1", "t-2"]
    last = stub.GetProfile(
        ppb.GetProfileRequest(customer_id="c-5", timeline_limit=2, timeline_page_token=rest.next_timeline_page_token),
        metadata=viewer,
    )
    assert [e.event_id for e in last.timeline] == ["t-0"] and not last.next_timeline_page_token
    assert last.timeline[0].source == "call_center" and last.timeline[0].properties["topic"] == "billing"

    [decision] = page.decisions
    assert decision.decision_id == made.decision_id and decision.customer_id == "c-5b"
    assert list(decision.offer_ids) == [o.offer_id for o in made.offers] and decision.profile_version == 5
    assert [(f.event_id, f.outcome) for f in decision.feedback] == [("f-1", "clicked")]

    assert "apology" in [o.offer_id for o in page.next_best_actions] and len(page.next_best_actions) <= 3
    server.service.log.flush()
    assert server.service.store.count_decisions() == decisions_before  # neither logged ...
    assert REGISTRY.get_sample_value("nba_decisions_total", {"channel": "web"}) == counted_before  # ... nor counted
    for _ in range(3):  # ... nor held against the apology's cap of one a day
        again = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-5", next_best_actions_channel="web"), metadata=viewer)
        assert [o.offer_id for o in again.next_best_actions] == ["apology"]

    import base64

    nested = base64.urlsafe_b64encode(b"[" * 100_000).decode()  # JSON nested past any recursion limit
    for bad, field in (
        (ppb.GetProfileRequest(customer_id="c-5", timeline_page_token="not-a-token"), "timeline_page_token"),
        (ppb.GetProfileRequest(customer_id="c-5", timeline_page_token=nested[:2000]), "timeline_page_token"),
        (ppb.GetProfileRequest(customer_id="c-5", timeline_page_token=nested), "timeline_page_token"),
        (ppb.GetProfileRequest(customer_id="c-5", timeline_limit=501), "timeline_limit"),
        (ppb.GetProfileRequest(customer_id="c-5", next_best_actions_channel="fax"), "next_best_actions_channel"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetProfile(bad, metadata=viewer)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in caught.value.details()


def test_a_read_mask_answers_only_the_fields_asked_for(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import grpc
    from conftest import VIEWER_TOKEN
    from google.protobuf import field_mask_pb2

    server = start(clock=ManualClock(T0), policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    viewer = [("authorization", f"Bearer {VIEWER_TOKEN}")]
    complain(server, "r-1", "c-7", T0 - timedelta(hours=1))
    whole = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-7"), metadata=viewer)
    assert whole.timeline and whole.computed["complaints_7d"] == 1.0
    mask = field_mask_pb2.FieldMask(paths=["customer_id", "version", "computed"])
    part = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-7", read_mask=mask), metadata=viewer)
    assert (part.customer_id, part.version, part.computed) == (whole.customer_id, whole.version, whole.computed)
    assert not part.timeline and not part.attributes and not part.HasField("created_at") and not part.identities
    empty = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-7", read_mask=field_mask_pb2.FieldMask()), metadata=viewer)
    assert empty == whole  # an empty mask is no mask
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetProfile(
            ppb.GetProfileRequest(customer_id="c-7", read_mask=field_mask_pb2.FieldMask(paths=["version", "shoe_size"])),
            metadata=viewer,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "read_mask.paths[1]" in caught.value.details()


def test_an_import_with_the_bus_reaches_a_running_replicas_cache(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from nba.cli import main

    with redis_stream() as stream:
        server = start(policies=folder(tmp_path), bus=REDIS, bus_stream=stream)
        assert not verdict(decide(server, "c-imp"), "apology").eligible  # cached: no profile
        assert server.service.profile_cache.get("c-imp")[0] is None
        history = tmp_path / "history.jsonl"
        at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        history.write_text(
            json.dumps({"event_id": "imp-1", "type": "complaint", "customer_id": "c-imp", "occurred_at": at}) + "\n"
        )
        url = server.service.settings.database_url
        assert main(["profiles", "import", str(history), "--database-url", url, "--bus", REDIS, "--bus-stream", stream]) == 0
        deadline = time.monotonic() + 5.0
        reply = decide(server, "c-imp")
        while time.monotonic() < deadline and not verdict(reply, "apology").eligible:
            time.sleep(0.01)
            reply = decide(server, "c-imp")
        assert verdict(reply, "apology").eligible and reply.profile_version == 1
