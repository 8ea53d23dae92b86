"""Budget days follow the set's timezone to its true local midnight, whatever the offset (half
and quarter hours) and through daylight saving (days of 23 and 25 hours); pacing counts real
time; schedules read clock time; counters survive restarts and reach replicas by quarter hour."""

from __future__ import annotations

import math
import random
import textwrap
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import ManualClock, Running, struct

from nba.days import BUCKET_SECONDS, local_day, misaligned_day
from nba.decision.contacts import OfferCounters
from nba.decision.screening import claims, screen
from nba.policy.loading import parse_policy_set
from nba.policy.offers import Schedule
from nba.v1 import decision_service_pb2 as pb


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# zone, local date, its first instant (UTC), its length in hours
DAYS = [
    ("UTC", date(2026, 11, 24), utc(2026, 11, 24), 24),
    ("Europe/London", date(2026, 3, 29), utc(2026, 3, 29), 23),  # clocks forward at 01:00
    ("Europe/London", date(2026, 3, 30), utc(2026, 3, 29, 23), 24),
    ("Europe/London", date(2026, 10, 25), utc(2026, 10, 24, 23), 25),  # clocks back at 02:00
    ("Asia/Kolkata", date(2026, 11, 24), utc(2026, 11, 23, 18, 30), 24),
    ("Asia/Kathmandu", date(2026, 11, 24), utc(2026, 11, 23, 18, 15), 24),
    ("Pacific/Chatham", date(2026, 4, 5), utc(2026, 4, 4, 10, 15), 25),  # +13:45 to +12:45
    ("Pacific/Chatham", date(2026, 9, 27), utc(2026, 9, 26, 11, 15), 23),  # +12:45 to +13:45
    ("America/St_Johns", date(2026, 3, 8), utc(2026, 3, 8, 3, 30), 23),  # -03:30 to -02:30
    ("America/St_Johns", date(2026, 11, 1), utc(2026, 11, 1, 2, 30), 25),
    ("Africa/Cairo", date(2026, 4, 24), utc(2026, 4, 23, 22), 23),  # midnight itself is skipped: the day begins at 01:00
    ("America/Santiago", date(2026, 9, 6), utc(2026, 9, 6, 4), 23),  # likewise, at 24:00 of the day before
]


@pytest.mark.parametrize(("zone", "day", "start", "hours"), DAYS, ids=[f"{z}-{d}" for z, d, _, _ in DAYS])
def test_a_local_day_begins_at_its_first_instant_and_lasts_23_24_or_25_hours(
    zone: str, day: date, start: datetime, hours: int
) -> None:
    local = local_day(ZoneInfo(zone), day)
    assert datetime.fromtimestamp(local.start, UTC) == start
    assert local.seconds == hours * 3600
    assert local.start % BUCKET_SECONDS == 0  # an exact run of counter buckets
    assert datetime.fromtimestamp(local.start, ZoneInfo(zone)).date() == day
    assert datetime.fromtimestamp(local.start - 1, ZoneInfo(zone)).date() < day
    assert sum(b - a for a, b, _ in local.spans) == local.seconds
    assert local.fraction(local.start + local.seconds / 5) == pytest.approx(0.2)


def test_every_zone_in_use_begins_its_days_on_a_quarter_hour_and_others_are_refused() -> None:
    from zoneinfo import available_timezones

    for name in ("Asia/Kolkata", "Asia/Kathmandu", "Pacific/Chatham", "America/St_Johns", "Australia/Eucla"):
        assert misaligned_day(ZoneInfo(name), date(2026, 1, 1)) is None
    assert len(available_timezones()) > 300
    # local mean time: Amsterdam was +00:19:32 until 1937, Monrovia -00:44:30 until 1972
    assert misaligned_day(ZoneInfo("Europe/Amsterdam"), date(1930, 1, 1)) == date(1930, 1, 1)
    from nba.errors import PolicySetError

    with pytest.raises(
        PolicySetError,
        match=r"settings.timezone': 'Africa/Monrovia': its day of 1971-06-01 begins at "
        r"00:44:30 UTC, not on a quarter hour",
    ):
        parse_policy_set({"a.yaml": "settings: {timezone: Africa/Monrovia}\nchannels: [web]\n"}, now=utc(1971, 6, 1))


def test_offer_counters_count_from_any_quarter_hour_exactly() -> None:
    counters = OfferCounters()
    rng = random.Random(7)
    events = [(rng.choice("ab"), 1_789_999_200 + rng.uniform(0, 3 * 86400)) for _ in range(2000)]
    for i, (offer, at) in enumerate(events):
        counters.add(offer, "decided", at)
        if i % 97 == 0:  # the running sum kept per key stays right as events arrive, late ones too
            start = 1_789_999_200 + rng.randrange(0, 3 * 96) * BUCKET_SECONDS
            seen = events[: i + 1]
            assert counters.since(offer, "decided", start) == sum(1 for o, t in seen if o == offer and t >= start)
    start = 1_789_999_200 + 100 * BUCKET_SECONDS
    counters.add("a", "decided", start - 1)  # just before: not counted
    counters.add("a", "decided", start + 1)
    assert counters.since("a", "decided", start) == sum(1 for o, t in events if o == "a" and t >= start) + 1
    counters.prune(start)
    assert counters.since("a", "decided", start) == sum(1 for o, t in events if o == "a" and t >= start) + 1
    assert counters.total("a", "decided") == sum(1 for o, _ in events if o == "a") + 2


# -- through a real server, with a clock the test moves -------------------------------------


def budget_set(timezone: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        settings: {{timezone: {timezone}}}
        channels: [web]
        offers:
          - {{id: alpha, name: Alpha, channels: [web], value: 10}}
          - {{id: bravo, name: Bravo, channels: [web], value: 10}}
          - {{id: help, name: Help, channels: [web], fallback: true, value: 0}}
        policies:
          - {{id: two-a-day, type: budget, applies_to: {{offers: [alpha]}}, max: 2, counts: decided, period: day}}
    """) + textwrap.indent(textwrap.dedent(extra), "  ")


def folder_with(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "set.yaml").write_text(text)
    return folder


def alpha_shown(server: Running, customer_id: str) -> bool:
    reply = server.stub.Decide(
        pb.DecideRequest(customer_id=customer_id, channel="web", limit=2, context=struct({"customer": {"age": 30}}))
    )
    return "alpha" in {o.offer_id for o in reply.offers}


def spend(server: Running, tag: str) -> None:
    """Spends the day's budget of two, and checks it is spent."""
    assert [alpha_shown(server, f"{tag}-{i}") for i in range(3)] == [True, True, False]


# (zone, a local midnight as a UTC instant, hours to the next local midnight)
MIDNIGHTS = [
    ("UTC", utc(2026, 11, 25), 24),
    ("Europe/London", utc(2026, 3, 29), 23),  # the day clocks go forward
    ("Europe/London", utc(2026, 10, 24, 23), 25),  # the day they go back
    ("Asia/Kolkata", utc(2026, 11, 24, 18, 30), 24),
    ("Asia/Kathmandu", utc(2026, 11, 24, 18, 15), 24),
    ("Pacific/Chatham", utc(2026, 4, 4, 10, 15), 25),
    ("Pacific/Chatham", utc(2026, 9, 26, 11, 15), 23),
    ("America/St_Johns", utc(2026, 3, 8, 3, 30), 23),
    ("America/St_Johns", utc(2026, 11, 1, 2, 30), 25),
]


@pytest.mark.parametrize(("zone", "midnight", "hours"), MIDNIGHTS, ids=[f"{z}-{m:%m%d}" for z, m, _ in MIDNIGHTS])
def test_a_daily_budget_resets_at_local_midnight_and_survives_a_restart(
    start, tmp_path: Path, zone: str, midnight: datetime, hours: int
) -> None:
    assert datetime.fromtimestamp(midnight.timestamp(), ZoneInfo(zone)).strftime("%H:%M") == "00:00"
    folder = folder_with(tmp_path, budget_set(zone))
    clock = ManualClock(midnight - timedelta(minutes=10))  # 23:50 local
    server = start(clock=clock, policies=folder)
    spend(server, "late")
    clock.set(midnight - timedelta(seconds=1))
    assert not alpha_shown(server, "still-yesterday")
    clock.set(midnight)
    spend(server, "new-day")  # a new day: two more, then spent again
    server.service.log.flush()
    server.stop()

    # Restarted: the counters are rebuilt from the decision log, by quarter hour.
    clock.set(midnight + timedelta(hours=hours) - timedelta(seconds=1))  # the last second of that day
    again = start(clock=clock, policies=folder)
    assert not alpha_shown(again, "restarted")
    clock.set(midnight + timedelta(hours=hours))  # the next local midnight, 23, 24 or 25 hours on
    assert datetime.fromtimestamp(clock.now().timestamp(), ZoneInfo(zone)).strftime("%H:%M") == "00:00"
    spend(again, "next-day")


def test_replicas_share_a_half_hour_zone_budget_day(start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    midnight = utc(2026, 11, 24, 18, 30)  # 00:00 in Asia/Kolkata
    folder = folder_with(
        tmp_path,
        budget_set(
            "Asia/Kolkata",
            textwrap.dedent("""\
          - {id: one-accepted, type: budget, applies_to: {offers: [bravo]}, max: 1, counts: accepted, period: day}
    """),
        ),
    )
    clock = ManualClock(midnight - timedelta(minutes=20))
    one = start(clock=clock, policies=folder, bus="database")
    with monkeypatch.context() as patch:  # another machine: replicas tell their own events apart by host and pid
        patch.setattr(socket, "gethostname", lambda: "replica-two")
        two = start(clock=clock, policies=folder, bus="database")
    reply = one.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", limit=2, context=struct({"customer": {"age": 30}})))
    assert "bravo" in {o.offer_id for o in reply.offers}
    one.stub.Feedback(
        pb.FeedbackRequest(event_id="e-1", decision_id=reply.decision_id, offer_id="bravo", outcome=pb.OUTCOME_ACCEPTED)
    )

    def bravo_on_two(customer_id: str) -> bool:
        answer = two.stub.Decide(
            pb.DecideRequest(customer_id=customer_id, channel="web", limit=2, context=struct({"customer": {"age": 30}}))
        )
        return "bravo" in {o.offer_id for o in answer.offers}

    deadline = time.monotonic() + 10
    while bravo_on_two("probe") and time.monotonic() < deadline:  # the other replica hears the acceptance
        time.sleep(0.05)
    assert not bravo_on_two("late")
    clock.set(midnight - timedelta(seconds=1))
    assert not bravo_on_two("last-second")
    clock.set(midnight)
    assert bravo_on_two("new-day")


def test_schedules_read_the_clock_of_half_hour_zones_and_clock_changes(start, tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path,
        budget_set("Asia/Kolkata").replace(
            "{id: bravo, name: Bravo, channels: [web], value: 10}",
            '{id: bravo, name: Bravo, channels: [web], value: 10, schedule: {days: [wed], hours: ["00:00-00:30"]}}',
        ),
    )
    clock = ManualClock(utc(2026, 11, 24, 18, 25))  # Tuesday 23:55 in Kolkata
    server = start(clock=clock, policies=folder)

    def bravo() -> bool:
        reply = server.stub.Decide(
            pb.DecideRequest(customer_id="c", channel="web", limit=3, context=struct({"customer": {"age": 30}}))
        )
        return "bravo" in {o.offer_id for o in reply.offers}

    assert not bravo()
    clock.set(utc(2026, 11, 24, 18, 30))  # Wednesday 00:00
    assert bravo()
    clock.set(utc(2026, 11, 24, 18, 59, 59))
    assert bravo()
    clock.set(utc(2026, 11, 24, 19, 0))  # 00:30
    assert not bravo()


def test_clock_times_in_daylight_saving_gaps_never_come_and_in_overlaps_hold_twice() -> None:
    london = ZoneInfo("Europe/London")
    schedule = Schedule(hours=["01:00-02:00"])

    def active(at: datetime) -> bool:
        return schedule.active_at(at.astimezone(london))

    # 29 March 2026: 01:00 GMT becomes 02:00 BST; 01:00-02:00 does not exist that day
    assert not any(active(utc(2026, 3, 29, 0, 0) + timedelta(minutes=m)) for m in range(0, 24 * 60, 5))
    # 25 October 2026: 02:00 BST becomes 01:00 GMT; 01:00-02:00 comes twice, two real hours
    minutes = [m for m in range(0, 25 * 60) if active(utc(2026, 10, 24, 23) + timedelta(minutes=m))]
    assert len(minutes) == 120 and minutes[0] == 60  # from 00:00 UTC (01:00 BST) to 02:00 UTC (02:00 GMT)
    # so pacing over that schedule spreads a day's budget over both hours
    day = local_day(london, date(2026, 10, 25))
    assert schedule.day_fraction(day, utc(2026, 10, 25, 1).timestamp()) == pytest.approx(0.5)  # 01:00 GMT, one hour in


def test_contact_caps_count_real_hours_across_a_clock_change(start, tmp_path: Path) -> None:
    """A cap's window is a duration (1d is 24 hours), the same in every zone and across clock
    changes; only budgets and schedules follow the calendar."""
    folder = folder_with(
        tmp_path,
        budget_set(
            "Europe/London",
            textwrap.dedent("""\
          - {id: once-a-day, type: contact_cap, applies_to: {offers: [bravo]}, max: 1, window: 1d, counts: decided}
    """),
        ),
    )
    clock = ManualClock(utc(2026, 10, 24, 12))  # noon BST, the day before clocks go back
    server = start(clock=clock, policies=folder)

    def bravo() -> bool:
        reply = server.stub.Decide(
            pb.DecideRequest(customer_id="same", channel="web", limit=3, context=struct({"customer": {"age": 30}}))
        )
        return "bravo" in {o.offer_id for o in reply.offers}

    assert bravo()
    clock.set(utc(2026, 10, 25, 11, 59, 59))  # 23:59:59 later (11:59:59 GMT)
    assert not bravo()
    clock.set(utc(2026, 10, 25, 12, 0, 1))
    assert bravo()


# -- even pacing over local days of 23, 24 and 25 hours ---------------------------------------


@pytest.mark.parametrize(
    ("zone", "now", "share"),
    [
        ("UTC", utc(2026, 11, 24, 6), 6 / 24),
        ("Europe/London", utc(2026, 10, 25, 12), 13 / 25),  # noon GMT on the 25-hour day: 13 hours passed
        ("Europe/London", utc(2026, 3, 29, 11), 11 / 23),  # noon BST on the 23-hour day: 11 hours passed
        ("Asia/Kolkata", utc(2026, 11, 24, 0, 30), 6 / 24),  # 06:00 local
        ("Pacific/Chatham", utc(2026, 9, 27, 4, 15), 17 / 23),  # 18:00 +13:45: 17 real hours in
    ],
)
def test_even_pacing_allows_the_share_of_the_real_day_passed(zone: str, now: datetime, share: float) -> None:
    policy_set = parse_policy_set(
        {"a.yaml": budget_set(zone).replace("max: 2, counts: decided, period: day", "max: 2300, counts: decided, pacing: even")}
    )
    allowed = 2300 * share + 115  # and a burst of 5%
    counters = OfferCounters()
    day_start = local_day(ZoneInfo(zone), now.astimezone(ZoneInfo(zone)).date()).start
    counters.add("alpha", "decided", day_start, n=int(allowed) - 1)
    verdict = {v.offer.id: v for v in screen(policy_set, "web", {}, "c", now, None, counters).verdicts}["alpha"]
    assert verdict.eligible
    counters.add("alpha", "decided", now.timestamp(), n=1)
    verdict = {v.offer.id: v for v in screen(policy_set, "web", {}, "c", now, None, counters).verdicts}["alpha"]
    assert (verdict.eligible, verdict.reason) == (False, "pacing")
    # what a decision would reserve: the same limit, on the local day's own key
    (claim,) = claims(policy_set, policy_set.offers["alpha"], "web", "c", now, None, counters)
    local = now.astimezone(ZoneInfo(zone)).date()
    assert claim.key.endswith(f"{local.isoformat()}@{zone}") and claim.limit == math.ceil(allowed)
    assert claim.expires == local_day(ZoneInfo(zone), local).end


# -- schedules: precomputed spans, the exact share of scheduled time -------------------------


def reference_active(schedule: Schedule, local: datetime) -> bool:
    """The definition, as a schedule reads: its days, then any of its hour ranges; a range
    past midnight belongs to the day it starts on (its end is on the next day)."""
    from datetime import time as clock_time

    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    today = schedule.days is None or names[local.weekday()] in schedule.days
    yesterday = schedule.days is None or names[(local.weekday() - 1) % 7] in schedule.days
    if schedule.hours is None:
        return today
    t = local.time()
    for text in schedule.hours:
        start, end = (clock_time.fromisoformat(p.strip()) for p in text.split("-"))
        if (today and start <= t < end) if start < end else ((today and t >= start) or (yesterday and t < end)):
            return True
    return False


@pytest.mark.parametrize(
    "hours",
    [None, ["08:00-12:30", "14:00-20:00"], ["22:00-02:00"], ["09:00-17:00", "12:00-18:30"], ["00:00-00:15"], ["23:45-00:00"]],
)
def test_a_schedule_is_active_exactly_when_its_definition_says(hours: list[str] | None) -> None:
    schedule = Schedule(days=["mon", "wed", "sun"], hours=hours)
    start = datetime(2026, 11, 23)  # a Monday
    for minute in range(0, 7 * 24 * 60, 5):
        local = (start + timedelta(minutes=minute, seconds=minute % 60)).replace(tzinfo=UTC)
        assert schedule.active_at(local) == reference_active(schedule, local), local


WORKDAYS = ["08:00-12:30", "14:00-20:00"]  # 4.5 + 6 = 10.5 scheduled hours a day


@pytest.mark.parametrize(
    ("hours", "zone", "day", "at", "expected"),
    [
        (WORKDAYS, "UTC", date(2026, 11, 24), utc(2026, 11, 24, 7), 0.0),
        (WORKDAYS, "UTC", date(2026, 11, 24), utc(2026, 11, 24, 10, 15), 2.25 / 10.5),
        (WORKDAYS, "UTC", date(2026, 11, 24), utc(2026, 11, 24, 13), 4.5 / 10.5),
        (WORKDAYS, "UTC", date(2026, 11, 24), utc(2026, 11, 24, 15, 7, 30), (4.5 + 1.125) / 10.5),
        (WORKDAYS, "UTC", date(2026, 11, 24), utc(2026, 11, 24, 21), 1.0),
        (WORKDAYS, "Asia/Kolkata", date(2026, 11, 24), utc(2026, 11, 24, 4, 30), 2 / 10.5),  # 10:00 local
        (WORKDAYS, "Asia/Kathmandu", date(2026, 11, 24), utc(2026, 11, 24, 9, 15), 5.5 / 10.5),  # 15:00 local
        (WORKDAYS, "Europe/London", date(2026, 3, 29), utc(2026, 3, 29, 9), 2 / 10.5),  # 10:00 BST, a Sunday
        (WORKDAYS, "UTC", date(2026, 11, 28), utc(2026, 11, 28, 12), 1.0),  # a Saturday: not scheduled at all
        # 00:00-04:00 on the day clocks skip 01:00-02:00: three real hours; at 03:00 BST two have passed
        (["00:00-04:00"], "Europe/London", date(2026, 3, 29), utc(2026, 3, 29, 2), 2 / 3),
        # 00:00-04:00 on the day clocks repeat 01:00-02:00: five real hours; at the second 01:30, 2.5
        (["00:00-04:00"], "Europe/London", date(2026, 10, 25), utc(2026, 10, 25, 1, 30), 2.5 / 5),
        # 00:00-04:00 in St John's on its 23-hour day (02:00 skipped to 03:00): three real hours
        (["00:00-04:00"], "America/St_Johns", date(2026, 3, 8), utc(2026, 3, 8, 5, 30, 0), 2 / 3),  # 03:00 NDT
    ],
)
def test_pacing_a_scheduled_offer_uses_the_exact_share_of_its_scheduled_time(
    hours: list[str], zone: str, day: date, at: datetime, expected: float
) -> None:
    schedule = Schedule(days=["mon", "tue", "wed", "thu", "fri", "sun"], hours=hours)
    assert schedule.day_fraction(local_day(ZoneInfo(zone), day), at.timestamp()) == pytest.approx(expected, abs=1e-12)


def test_hourly_counters_stored_before_the_upgrade_keep_their_meaning(database_url: str) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from nba.storage.engine import open_engine
    from nba.storage.migrations import _config, head_revision, upgrade
    from nba.storage.store import Store

    now = utc(2026, 11, 24, 12)
    hour = int(now.timestamp() // 3600)
    engine = create_engine(database_url)
    with engine.begin() as conn:  # what the first release wrote: hours, and compacted totals in hour 0
        command.upgrade(_config(conn), "0001")
        conn.exec_driver_sql(
            "INSERT INTO offer_counters (offer_id, kind, hour, count) VALUES "
            f"('alpha', 'decided', 0, 5), ('alpha', 'decided', {hour - 13}, 3), ('alpha', 'decided', {hour - 1}, 2), "
            f"('alpha', 'decided', {hour // 4}, 7)"
        )  # an hour whose number is another's quarter: no collision
    assert upgrade(engine) == ("0001", head_revision())  # through 0002, which reshapes the counters
    engine.dispose()
    engine = open_engine(database_url)
    rows = sorted(Store(engine).counter_rows())
    assert rows == sorted(
        [
            ("alpha", "decided", 0, 5),
            ("alpha", "decided", 4 * (hour - 13), 3),
            ("alpha", "decided", 4 * (hour - 1), 2),
            ("alpha", "decided", 4 * (hour // 4), 7),
        ]
    )
    counters = OfferCounters()
    counters.load(rows, recent_since=now.timestamp() - 48 * 3600)
    today = local_day(ZoneInfo("UTC"), now.date())
    assert counters.since("alpha", "decided", today.start) == 2  # 11:00 today, not 23:00 yesterday
    assert counters.total("alpha", "decided") == 17
    with engine.begin() as conn:  # and back: the quarters of each hour add up again
        conn.exec_driver_sql(
            f"INSERT INTO offer_counters (offer_id, kind, quarter, count) VALUES ('alpha', 'decided', {4 * (hour - 1) + 3}, 4)"
        )
        command.downgrade(_config(conn), "0001")
    with engine.connect() as conn:
        back = sorted(tuple(r) for r in conn.exec_driver_sql("SELECT offer_id, kind, hour, count FROM offer_counters"))
    assert back == sorted(
        [
            ("alpha", "decided", 0, 5),
            ("alpha", "decided", hour - 13, 3),
            ("alpha", "decided", hour - 1, 6),
            ("alpha", "decided", hour // 4, 7),
        ]
    )
    engine.dispose()


def test_compaction_folds_old_quarters_into_totals_and_keeps_the_local_day(database_url: str) -> None:
    from nba.records import ContactEvent
    from nba.storage.engine import open_engine
    from nba.storage.store import Store

    store = Store(open_engine(database_url))
    now = utc(2026, 11, 24, 18, 40)  # 00:10 on 25 November in Asia/Kolkata
    ats = [now - timedelta(days=3), now - timedelta(minutes=20), now - timedelta(minutes=5), now - timedelta(minutes=4)]
    with store.write() as conn:
        store.insert_contacts(conn, [ContactEvent("c", at.timestamp(), "accepted", "alpha", "", "web") for at in ats])
    store.compact(now.timestamp() - 90 * 86400, now.timestamp() - 48 * 3600)
    rows = sorted(store.counter_rows())
    quarter = int(now.timestamp() // BUCKET_SECONDS)
    assert rows == [("alpha", "accepted", 0, 1), ("alpha", "accepted", quarter - 1, 1), ("alpha", "accepted", quarter, 2)]
    counters = OfferCounters()
    counters.load(rows, recent_since=now.timestamp() - 48 * 3600)
    today = local_day(ZoneInfo("Asia/Kolkata"), date(2026, 11, 25))
    assert counters.since("alpha", "accepted", today.start) == 2  # 23:50 the day before is not today's
    assert counters.total("alpha", "accepted") == 4
    store.engine.dispose()
