"""Segments: conditions over the profile, kept as profiles change, with exact entry and exit
times. Unit tests of the profile's membership (events, windows passing, days_since found by
bisection, late events, changed definitions), and end-to-end through real servers on SQLite and
PostgreSQL: a customer enters on events and leaves as a window passes (the segment clock records
it at its moment), rules read ``profile.segments``, GetProfile lists them, merges close the
absorbed customer's stays, and ``nba profiles segment`` counts and exports audiences."""

from __future__ import annotations

import csv
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import POLICIES, ManualClock, Running, struct
from google.protobuf import timestamp_pb2
from prometheus_client import REGISTRY
from sqlalchemy import select

from nba.cli import main
from nba.policy.profile import ProfileSection, compile_profile
from nba.profiles.profile import Profile, TrackedEvent
from nba.profiles.segments import PRECISION
from nba.storage.store import Store
from nba.storage.tables import PROFILE_SEGMENTS
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

DAY = 86400.0
T0 = 1_780_000_000.0

SECTION = {
    "event_types": {"complaint": {"properties": {"topic": "string"}}, "order": {"properties": {"amount": "number"}}},
    "computed": {
        "complaints_30d": "count(complaint) over 30d",
        "days_since_order": "days_since(order)",
        "orders": "count(order)",
    },
    "segments": {
        "frustrated": {"when": "profile.complaints_30d >= 2", "description": "two complaints in 30 days", "owner": "care"},
        "lapsed": {"when": "profile.days_since_order > 90.0"},
        "customers": {"when": "profile.orders >= 1"},
    },
}


def definition(**changes: object):  # type: ignore[no-untyped-def]
    section = {**SECTION, **changes}
    compiled, problems = compile_profile(ProfileSection.model_validate(section), "profile.yaml")
    assert problems == []
    return compiled


def track(profile: Profile, event_id: str, event_type: str, at: float) -> None:
    """What the tracker does with an event: the clock's changes up to it, the event, its changes."""
    profile.advance(at)
    profile.apply(TrackedEvent(event_id, profile.customer_id, event_type, "web", at, {}))
    profile.settle(at)


def changes(profile: Profile) -> list[tuple[str, float, bool]]:
    return [(c.segment, c.at, c.entered) for c in profile.segment_changes]


def test_conditions_are_checked_when_the_set_is_published() -> None:
    cases = {
        "profile.nope > 1": "profile.nope is not an attribute, computed attribute or activity",
        '"x" in profile.segments': "a segment reads the profile, not profile.segments",
        "profile.complaints_30d >": "segments.bad.when",
        "context.x == 1": "unknown variable 'context'",
        'profile.email.endsWith("@rival.example")': "profile.email is personal data (pii)",
    }
    for when, message in cases.items():
        section = {**SECTION, "attributes": {"email": {"from": "order.email", "pii": True}}, "segments": {"bad": {"when": when}}}
        section["event_types"] = {**SECTION["event_types"], "order": {"properties": {"amount": "number", "email": "string"}}}  # type: ignore[dict-item]
        _, problems = compile_profile(ProfileSection.model_validate(section), "profile.yaml")
        assert len(problems) == 1 and message in str(problems[0]), (when, problems)
        assert problems[0].field == "profile.segments.bad.when"
    reserved = {**SECTION, "computed": {**SECTION["computed"], "segments": "count(order)"}}  # type: ignore[dict-item]
    _, problems = compile_profile(ProfileSection.model_validate(reserved), "profile.yaml")
    assert any("'segments' is reserved" in str(p) for p in problems)


def test_events_enter_a_segment_at_their_time_and_a_passing_window_leaves_it_at_its_moment() -> None:
    profile = Profile(definition(), "c-1", T0)
    track(profile, "e-1", "complaint", T0)
    assert profile.segments == {} and changes(profile) == []
    track(profile, "e-2", "complaint", T0 + 5 * DAY)
    assert profile.segments == {"frustrated": T0 + 5 * DAY}
    assert changes(profile) == [("frustrated", T0 + 5 * DAY, True)]
    profile.plan()  # the first complaint leaves the 30-day window 30 days after it
    assert profile.segments_due == T0 + 30 * DAY
    # a read between the clock's passes sees the change without recording it
    assert profile.current_segments(T0 + 30 * DAY - 1) == {"frustrated": T0 + 5 * DAY}
    assert profile.current_segments(T0 + 30 * DAY) == {}
    assert "frustrated" not in profile.view(T0 + 31 * DAY)["segments"]
    assert len(profile.segment_changes) == 1
    profile.advance(T0 + 40 * DAY)  # the clock's pass, ten days late: the exit keeps its moment
    assert changes(profile)[1:] == [("frustrated", T0 + 30 * DAY, False)]
    assert profile.segments == {} and profile.segments_at == T0 + 40 * DAY


def test_an_event_after_an_expiry_records_the_expiry_first() -> None:
    profile = Profile(definition(), "c-1", T0)
    track(profile, "e-1", "complaint", T0)
    track(profile, "e-2", "complaint", T0 + DAY)
    track(profile, "e-3", "complaint", T0 + 45 * DAY)  # one complaint in 30 days from day 30 on
    assert changes(profile) == [("frustrated", T0 + DAY, True), ("frustrated", T0 + 30 * DAY, False)]
    track(profile, "e-4", "complaint", T0 + 46 * DAY)
    assert changes(profile)[-1] == ("frustrated", T0 + 46 * DAY, True)


def test_a_condition_on_days_since_is_dated_to_the_millisecond() -> None:
    profile = Profile(definition(), "c-1", T0)
    track(profile, "o-1", "order", T0)
    assert profile.segments == {"customers": T0}
    profile.plan(exact=False)  # what tracking stores: a bound, the last probe before the change
    assert profile.segments_due == T0 + 90 * DAY
    profile._due_known = False
    profile.plan()  # what the clock stores when it wakes then: the change, dated
    crossing = T0 + 90 * DAY  # days_since_order > 90 holds from just after it
    assert crossing < profile.segments_due <= crossing + 2 * PRECISION
    profile.advance(T0 + 200 * DAY)
    entered = changes(profile)[-1]
    assert entered[0] == "lapsed" and entered[2] and crossing < entered[1] <= crossing + 2 * PRECISION
    track(profile, "o-2", "order", T0 + 201 * DAY)  # an order ends it at once
    assert changes(profile)[-1] == ("lapsed", T0 + 201 * DAY, False)


def test_a_change_is_never_dated_before_the_last_evaluation() -> None:
    profile = Profile(definition(), "c-1", T0)
    track(profile, "e-1", "complaint", T0 + 10 * DAY)
    track(profile, "e-2", "complaint", T0 + 2 * DAY)  # what was stated is not rewritten
    assert changes(profile) == [("frustrated", T0 + 10 * DAY, True)]


def test_thousands_of_events_in_a_window_cost_a_few_dozen_evaluations() -> None:
    views = definition(
        event_types={"view": {}},
        computed={"views_7d": "count(view) over 7d"},
        segments={"busy": {"when": "profile.views_7d >= 3"}},
    )
    profile = Profile(views, "c-1", T0)
    for n in range(4000):
        profile.apply(TrackedEvent(f"v-{n}", "c-1", "view", "web", T0 + n * 100, {}))
    profile.settle(T0 + 4000 * 100)
    evaluations = 0
    values = profile.values

    def counted(now: float, include_pii: bool = True, names: frozenset[str] | None = None) -> dict[str, object]:
        nonlocal evaluations
        evaluations += 1
        return values(now, include_pii, names)

    profile.values = counted  # type: ignore[method-assign]
    profile.plan()
    # busy until the third newest view is 7 days old, exactly
    assert profile.segments_due == T0 + 3997 * 100 + 7 * DAY
    assert evaluations <= 50


def test_a_stored_profile_keeps_its_membership_and_a_changed_condition_is_evaluated_again() -> None:
    profile = Profile(definition(), "c-1", T0)
    track(profile, "e-1", "complaint", T0)
    track(profile, "e-2", "complaint", T0 + DAY)
    profile.plan()
    stored = profile.dump()
    again = Profile.load(definition(), stored)
    assert again.segments == {"frustrated": T0 + DAY} and not again.segments_stale
    assert again.segments_due == T0 + 30 * DAY
    stricter = definition(segments={"frustrated": {"when": "profile.complaints_30d >= 3"}})
    assert stricter.fingerprint != definition().fingerprint
    changed = Profile.load(stricter, stored)
    assert changed.segments_stale and changed.dump()["built_under"] is None
    assert changed.current_segments(T0 + 2 * DAY) == {}  # read under the new condition at once
    changed.rebuild([], T0 + 2 * DAY)
    assert changes(changed) == [("frustrated", T0 + 2 * DAY, False)] and not changed.segments_stale


PROFILE = """
profile:
  event_types:
    complaint: {properties: {topic: string}}
    signup: {properties: {email: string}}
  attributes:
    email: {from: signup.email, pii: true}
  computed:
    complaints_30d: count(complaint) over 30d   # the sample set's retention rules read it
  segments:
    frustrated:
      when: profile.complaints_30d >= 2
      description: Complained twice in 30 days
      owner: care
offers:
  - id: care-call
    name: Our care team calls you
    group: service
    channels: [web]
    value: 500.0
    eligibility: '"frustrated" in profile.segments'
    treatment: {web: banner-care}
"""
NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def folder(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    (target / "profile.yaml").write_text(PROFILE)
    return target


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


def complain(server: Running, event_id: str, customer_id: str = "", email: str = "") -> ppb.TrackResponse:
    return ppb_grpc.ProfileServiceStub(server.channel).Track(
        ppb.TrackRequest(
            event_id=event_id,
            type="complaint",
            source="call_center",
            customer_id=customer_id,
            identities={"email": email} if email else {},
            properties=struct({"topic": "billing"}),
        )
    )


def eligible(server: Running, customer_id: str) -> bool:
    reply = server.stub.Decide(
        pb.DecideRequest(
            customer_id=customer_id, channel="web", limit=10, explain=True, context=struct({"customer": {"age": 30}})
        )
    )
    return next(o for o in reply.explanation.offers if o.offer_id == "care-call").eligible


def segments(server: Running, customer_id: str) -> list[tuple[str, datetime]]:
    profile = ppb_grpc.ProfileServiceStub(server.channel).GetProfile(
        ppb.GetProfileRequest(customer_id=customer_id), metadata=Running.auth()
    )
    return [(s.name, s.since.ToDatetime(UTC)) for s in profile.segments]


def stays(server: Running, customer_id: str) -> list[tuple[str, datetime, datetime | None]]:
    store = Store(server.service.engine)
    s = PROFILE_SEGMENTS
    with store.read() as conn:
        rows = conn.execute(
            select(s.c.segment, s.c.entered_at, s.c.exited_at).where(s.c.customer_id == customer_id).order_by(s.c.id)
        ).all()
    return [(r[0], _utc(r[1]), _utc(r[2]) if r[2] is not None else None) for r in rows]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def wait_for(condition, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the segment clock did not record the change in time"
        time.sleep(0.05)


def members_metric(segment: str) -> float | None:
    return REGISTRY.get_sample_value("nba_segment_members", {"segment": segment})


def test_a_customer_enters_on_events_and_leaves_when_the_window_passes(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(NOON)
    server = start(clock=clock, policies=folder(tmp_path), segment_clock_seconds=0.05)
    complain(server, "s-1", "c-1")
    assert segments(server, "c-1") == [] and not eligible(server, "c-1")
    clock.advance(days=3)
    complain(server, "s-2", "c-1")
    entered = NOON + timedelta(days=3)
    assert segments(server, "c-1") == [("frustrated", entered)]
    assert eligible(server, "c-1")  # a rule on profile.segments
    # the learner learns from them too (segments are not personal data)
    assert server.service.profile_cache.view("c-1", clock.now().timestamp()).learnable["segments"] == ["frustrated"]
    assert stays(server, "c-1") == [("frustrated", entered, None)]

    clock.advance(days=27, seconds=-1)  # a second before the first complaint is 30 days old
    assert segments(server, "c-1") == [("frustrated", entered)] and eligible(server, "c-1")
    clock.advance(seconds=1)
    assert segments(server, "c-1") == [] and not eligible(server, "c-1")  # no event needed
    left = NOON + timedelta(days=30)
    wait_for(lambda: stays(server, "c-1") == [("frustrated", entered, left)])

    url = server.service.settings.database_url
    assert main(["profiles", "segment", "frustrated", "--count", "--database-url", url]) == 0


def test_the_clock_records_the_exit_at_its_moment_even_when_it_comes_late(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(NOON)
    server = start(clock=clock, policies=folder(tmp_path), segment_clock_seconds=0.05)
    for n, customer in enumerate(["c-1", "c-1", "c-2", "c-2", "c-3"]):
        complain(server, f"e-{n}", customer)
    url = server.service.settings.database_url
    capsys.readouterr()
    assert main(["profiles", "segment", "frustrated", "--count", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == "2"
    audience = tmp_path / "frustrated.csv"
    assert main(["profiles", "segment", "frustrated", "--export", str(audience), "--database-url", url]) == 0
    with audience.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["customer_id"], datetime.fromisoformat(r["entered_at"])) for r in rows] == [("c-1", NOON), ("c-2", NOON)]
    server.service.segment_clock.count()
    assert members_metric("frustrated") == 2.0

    clock.advance(days=45)  # both leave on day 30, whenever the clock looks
    left = NOON + timedelta(days=30)
    wait_for(lambda: stays(server, "c-1") == [("frustrated", NOON, left)] and stays(server, "c-2")[0][2] == left)
    capsys.readouterr()
    assert main(["profiles", "segment", "frustrated", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == "0"
    assert main(["profiles", "segment", "frustrated", "--history", "--database-url", url]) == 0
    history = capsys.readouterr().out.splitlines()
    assert history[1].split()[-3:] == ["2", "0", "2"] and history[2].split()[-3:] == ["0", "2", "0"]
    assert main(["profiles", "segments", "--database-url", url]) == 0
    table = capsys.readouterr().out
    assert "frustrated" in table and "care / Complained twice in 30 days" in table
    server.service.segment_clock.count()
    assert members_metric("frustrated") == 0.0


def test_an_event_dated_ahead_counts_from_its_arrival_and_a_late_one_at_its_arrival(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(NOON)
    server = start(clock=clock, policies=folder(tmp_path), segment_clock_seconds=0.05)
    stub = ppb_grpc.ProfileServiceStub(server.channel)

    def complaint(event_id: str, customer_id: str, when: datetime) -> None:
        stub.Track(ppb.TrackRequest(event_id=event_id, type="complaint", customer_id=customer_id, occurred_at=stamp(when)))

    complaint("f-1", "c-ahead", NOON - timedelta(minutes=1))
    complaint("f-2", "c-ahead", NOON + timedelta(minutes=4))  # a device clock ahead, within the skew
    # it counts from its time, not before: the customer enters then, by the clock
    assert segments(server, "c-ahead") == [] and stays(server, "c-ahead") == []
    clock.advance(minutes=5)
    ahead = NOON + timedelta(minutes=4)
    assert segments(server, "c-ahead") == [("frustrated", ahead)]
    wait_for(lambda: stays(server, "c-ahead") == [("frustrated", ahead, None)])

    now = clock.now()
    complaint("l-1", "c-late", now - timedelta(minutes=2))  # within the skew: at its time
    complaint("l-2", "c-late", now - timedelta(days=3))  # an import of history: at its arrival
    assert stays(server, "c-late") == [("frustrated", now, None)]
    clock.advance(days=40)
    # the late complaint (3 days back) left the window first, 27 days after the stay began
    left = now - timedelta(days=3) + timedelta(days=30)
    wait_for(lambda: stays(server, "c-late") == [("frustrated", now, left)])


def test_a_merge_ends_the_absorbed_customers_stays(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(NOON)
    server = start(clock=clock, policies=folder(tmp_path))
    complain(server, "m-1", "c-old")
    clock.advance(hours=1)
    complain(server, "m-2", "c-new")
    complain(server, "m-3", "c-new")
    assert stays(server, "c-new") == [("frustrated", NOON + timedelta(hours=1), None)]
    clock.advance(hours=1)
    complain(server, "m-4", "c-old", email="ada@example.com")
    merged = complain(server, "m-5", "c-new", email="ada@example.com")
    assert merged.customer_id == "c-old" and list(merged.merged) == ["c-new"]
    merge_time = NOON + timedelta(hours=2)
    assert stays(server, "c-new") == [("frustrated", NOON + timedelta(hours=1), merge_time)]
    assert stays(server, "c-old") == [("frustrated", merge_time, None)]  # two of its own at m-4


def test_the_cli_names_what_to_fix(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    server = start(policies=folder(tmp_path))
    url = server.service.settings.database_url
    assert main(["profiles", "segment", "nope", "--database-url", url]) != 0
    assert "'nope' is not a segment of the live policy set (frustrated)" in capsys.readouterr().err
    assert main(["profiles", "segment", "--count", "--database-url", url]) != 0
    assert "NAME: name the segment" in capsys.readouterr().err
    assert main(["profiles", "import", "x.jsonl", "--count", "--database-url", url]) != 0
    assert "--count, --export and --history go with" in capsys.readouterr().err


def test_the_sample_set_declares_segments_over_its_computed_attributes() -> None:
    from nba.policy.loading import load_policy_set

    sample = load_policy_set(POLICIES).profile
    assert {s.name: s.reads for s in sample.segments} == {
        "frustrated": {"complaints_30d", "complaint_cases"},
        "lapsed": {"days_since_order"},
        "big_spenders": {"spend_365d"},
    }
