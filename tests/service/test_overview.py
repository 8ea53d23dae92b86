"""The overview (AdminService.GetOverview, GET /v1/admin/overview): its figures, read from the
rollups the decision log keeps as it writes, equal what the decision log itself says, counted
here row by row; on SQLite and PostgreSQL, over gRPC and HTTP."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from conftest import VIEWER_TOKEN, Running, customer, struct
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import select

from nba.evaluation.overview import overview, period
from nba.records import expand_candidates
from nba.storage.rollups import write_rollups
from nba.storage.tables import DECISION_ROLLUPS, DECISION_ROLLUPS_DAILY, DECISIONS, FEEDBACK
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb

OUTCOMES = [pb.OUTCOME_IMPRESSED, pb.OUTCOME_CLICKED, pb.OUTCOME_ACCEPTED, pb.OUTCOME_REJECTED]


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def traffic(server: Running, n: int = 60) -> None:
    """Decisions on two channels for varied customers, and feedback of every outcome."""
    for i in range(n):
        person = customer(
            id=f"c-{i}",
            age=18 + (i * 7) % 60,
            flags={"churn_risk": i % 3 == 0, "churn_score": 0.5, "fraud_risk": i % 11 == 0, "vulnerable": False},
        )
        channel = "web" if i % 2 else "email"
        decided = server.stub.Decide(
            pb.DecideRequest(customer_id=f"c-{i}", channel=channel, limit=2, context=struct({"customer": person}))
        )
        for slot, offer in enumerate(decided.offers):
            server.stub.Feedback(
                pb.FeedbackRequest(
                    event_id=f"f-{i}-{slot}-a",
                    decision_id=decided.decision_id,
                    offer_id=offer.offer_id,
                    outcome=pb.OUTCOME_IMPRESSED,
                )
            )
            if (i + slot) % 3:
                outcome = OUTCOMES[1 + (i + slot) % 3]
                server.stub.Feedback(
                    pb.FeedbackRequest(
                        event_id=f"f-{i}-{slot}-b", decision_id=decided.decision_id, offer_id=offer.offer_id, outcome=outcome
                    )
                )
        if i == 5:  # a resent event is a duplicate: counted once
            server.stub.Feedback(
                pb.FeedbackRequest(
                    event_id=f"f-{i}-0-a",
                    decision_id=decided.decision_id,
                    offer_id=decided.offers[0].offer_id,
                    outcome=pb.OUTCOME_IMPRESSED,
                )
            )
    server.service.log.flush(10)


def from_the_log(server: Running, channel: str = "") -> dict[str, Any]:
    """The same figures counted from the decision log's own rows."""
    store = server.service.store
    with store.read() as conn:
        decisions = conn.execute(select(DECISIONS.c.channel, DECISIONS.c.offers, DECISIONS.c.candidates)).all()
        feedback = conn.execute(
            select(FEEDBACK.c.outcome, DECISIONS.c.channel).join(DECISIONS, DECISIONS.c.decision_id == FEEDBACK.c.decision_id)
        ).all()
    decisions = [d for d in decisions if not channel or d.channel == channel]
    outcomes = Counter(f.outcome for f in feedback if not channel or f.channel == channel)
    reasons: Counter[tuple[str, str]] = Counter()
    for d in decisions:
        for c in expand_candidates(d.candidates, d.offers):
            if not c["eligible"] and c.get("reason") and c["reason"] != "fallback":
                reasons[(c["reason"], c["offer_id"])] += 1
    return {
        "decisions": len(decisions),
        "fallbacks": sum(1 for d in decisions if d.offers and d.offers[0].get("fallback")),
        "empty": sum(1 for d in decisions if not d.offers),
        "offered": sum(len(d.offers) for d in decisions),
        "impressions": outcomes["impressed"],
        "clicks": outcomes["clicked"],
        "acceptances": outcomes["accepted"],
        "rejections": outcomes["rejected"],
        "reasons": reasons,
    }


def test_the_overview_equals_what_the_decision_log_says(server: Running) -> None:
    traffic(server)
    answer = server.admin.GetOverview(apb.GetOverviewRequest(), metadata=server.auth(VIEWER_TOKEN))
    for channel, figures in [("", answer.totals), *((s.key, s.figures) for s in answer.by_channel)]:
        expected = from_the_log(server, channel)
        got = {
            k: getattr(figures, k)
            for k in ("decisions", "fallbacks", "empty", "offered", "impressions", "clicks", "acceptances", "rejections")
        }
        assert got == {k: v for k, v in expected.items() if k != "reasons"}, channel
        if figures.impressions:
            assert figures.acceptance_rate == pytest.approx(figures.acceptances / figures.impressions)
        assert figures.fallback_rate == pytest.approx(figures.fallbacks / figures.decisions)
    assert {s.key for s in answer.by_channel} == {"web", "email"}
    totals = answer.totals
    assert totals.decisions == 60 and totals.impressions > 0 and totals.acceptances > 0
    # filter reasons, offer by offer
    assert Counter({(r.reason, r.offer_id): r.count for r in answer.filter_reasons}) == from_the_log(server)["reasons"]
    # offers and groups add up to the totals of the offers' figures
    assert sum(s.figures.offered for s in answer.by_offer) == totals.offered
    assert sum(s.figures.acceptances for s in answer.by_group) == totals.acceptances
    # value: the accepted offers' value, as the decisions weighed them
    values = {o.offer.id: o.offer.value for o in server.service.policy_set.offers.values()}
    assert totals.value == pytest.approx(sum(values[s.key] * s.figures.acceptances for s in answer.by_offer))
    assert totals.feedback_events == totals.impressions + totals.clicks + totals.acceptances + totals.rejections
    assert totals.mean_learning_lag_seconds >= 0 and totals.HasField("gain_over_uniform")
    # the series covers the period hour by hour and adds up
    assert answer.bucket == "hour" and len(answer.series) in (24, 25)
    assert sum(p.figures.decisions for p in answer.series) == 60
    # budgets as screening reads them: the sample set's retention budget counts acceptances today
    [budget] = [b for b in answer.budgets if b.policy == "retention-discount-budget"]
    assert (budget.counts, budget.period, budget.max, budget.paced) == ("accepted", "day", 200, True)
    assert budget.offer_id == "retention-discount-20"
    assert budget.spent == sum(s.figures.acceptances for s in answer.by_offer if s.key == budget.offer_id)
    assert 0 < budget.expected < 200


def test_one_channel_one_group_one_offer(server: Running) -> None:
    traffic(server, 30)
    auth = server.auth(VIEWER_TOKEN)
    web = server.admin.GetOverview(apb.GetOverviewRequest(channel="web"), metadata=auth)
    assert web.totals.decisions == from_the_log(server, "web")["decisions"] == 15
    assert [s.key for s in web.by_channel] == ["web"]
    everything = server.admin.GetOverview(apb.GetOverviewRequest(), metadata=auth)
    top = everything.by_offer[0]
    one = server.admin.GetOverview(apb.GetOverviewRequest(offer_id=top.key), metadata=auth)
    assert [s.key for s in one.by_offer] == [top.key] and one.totals.offered == top.figures.offered
    assert one.totals.decisions == everything.totals.decisions  # a decision's own figures count every decision
    group = server.service.policy_set.offers[top.key].offer.group
    grouped = server.admin.GetOverview(apb.GetOverviewRequest(group=group), metadata=auth)
    assert [s.key for s in grouped.by_group] == [group]
    assert all(server.service.policy_set.offers[s.key].offer.group == group for s in grouped.by_offer)


def test_a_period_without_traffic_is_empty_and_a_bad_period_is_refused(server: Running) -> None:
    traffic(server, 4)
    auth = server.auth(VIEWER_TOKEN)
    then = (datetime.now(UTC) - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
    old = server.admin.GetOverview(
        apb.GetOverviewRequest(start_time=stamp(then), end_time=stamp(then + timedelta(days=10))), metadata=auth
    )
    assert old.totals.decisions == 0 and old.bucket == "day" and len(old.series) == 10
    with pytest.raises(grpc.RpcError) as refused:
        server.admin.GetOverview(
            apb.GetOverviewRequest(start_time=stamp(then), end_time=stamp(then - timedelta(hours=1))), metadata=auth
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "end_time" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        server.admin.GetOverview(apb.GetOverviewRequest(), metadata=[])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_over_http_the_same_figures(start) -> None:  # type: ignore[no-untyped-def]
    server: Running = start(http_port=0)
    traffic(server, 10)
    auth = server.auth(VIEWER_TOKEN)
    by_grpc = json_format.MessageToDict(
        server.admin.GetOverview(apb.GetOverviewRequest(channel="web"), metadata=auth),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    assert server.service.http is not None
    with httpx.Client(base_url=f"http://127.0.0.1:{server.service.http.port}", timeout=30) as http:
        answer = http.get(
            "/v1/admin/overview",
            params={"channel": "web", "start_time": by_grpc["start_time"], "end_time": by_grpc["end_time"]},
            headers={"authorization": f"Bearer {VIEWER_TOKEN}"},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["totals"] == by_grpc["totals"] and body["by_offer"] == by_grpc["by_offer"]
        refused = http.get(
            "/v1/admin/overview", params={"start_time": "yesterday"}, headers={"authorization": f"Bearer {VIEWER_TOKEN}"}
        )
        assert refused.status_code == 400 and refused.json()["field"] == "start_time"


def test_a_decision_written_again_is_counted_once(server: Running) -> None:
    decided = server.stub.Decide(pb.DecideRequest(customer_id="c-1", channel="web", context=struct({"customer": customer()})))
    server.service.log.flush(10)
    record = server.service.store.find_decision(decided.decision_id)
    assert record is not None
    # As after an outage whose commit went through but whose answer was lost: the writer queues
    # the decision again and marks it so (making a real lost answer needs a database that dies
    # between its commit and its reply)
    server.service.log._requeued.add(record.decision_id)
    server.service.log.record(record)
    server.service.log.flush(10)
    answer = server.admin.GetOverview(apb.GetOverviewRequest(), metadata=server.auth(VIEWER_TOKEN))
    assert answer.totals.decisions == 1


def test_gain_over_uniform_is_the_ratio_of_the_two_ips_estimates() -> None:
    start, end = period(datetime(2026, 11, 30, 10, tzinfo=UTC), datetime(2026, 11, 30, 12, tzinfo=UTC), datetime.now(UTC))
    # two first-slot acceptances: one drawn with propensity 0.8 among 4 eligible, one 0.5 among 2
    totals = [
        ("web", "a", "reward_first", 1.0),
        ("web", "a", "uniform_first", 1.0 / (4 * 0.8)),
        ("web", "b", "reward_first", 1.0),
        ("web", "b", "uniform_first", 1.0 / (2 * 0.5)),
    ]
    found = overview(totals, [], start, end, {"a": "g", "b": "g"})
    assert found.totals.gain_over_uniform == pytest.approx(2.0 / (0.3125 + 1.0) - 1.0)
    assert found.by_offer["a"].gain_over_uniform == pytest.approx(1.0 / 0.3125 - 1.0)
    assert overview([], [], start, end, {}).totals.gain_over_uniform is None


def test_long_periods_read_whole_days_from_the_daily_rollups(server: Running) -> None:
    """A period of days reads the daily rollups for its whole days and the hourly ones for the
    hours at either end: the same sums as the hourly rollups alone."""
    store = server.service.store
    day = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) // 3600  # a UTC midnight, in hours
    counts: Any = defaultdict(float)
    for hour in range(day - 5, day + 24 * 4 + 7):  # from 19:00 the day before to 07:00 four days on
        counts[(hour, "web", "", "decisions")] += 1
        counts[(hour, "web", "a", "accepted")] += 2
        counts[(hour, "app", "b", "accepted")] += 3
    with store.write() as conn:
        write_rollups(conn, counts)
    first, end = day - 3, day + 24 * 4 + 5  # 21:00 the day before to 05:00: 3 + 96 + 5 hours
    totals = {(c, o, m): v for c, o, m, v in store.rollup_totals(first, end)}
    assert totals == {("web", "", "decisions"): 104, ("web", "a", "accepted"): 208, ("app", "b", "accepted"): 312}
    assert {(c, o, m): v for c, o, m, v in store.rollup_totals(first, end, "app")} == {("app", "b", "accepted"): 312}
    by_day = {
        (b, m): v for b, m, v in store.rollup_series(first, end, (first // 24) * 24, 24, ["decisions", "accepted"], "", {"a"})
    }
    assert by_day == {
        (0, "decisions"): 3,
        (0, "accepted"): 6,
        **{(n, "decisions"): 24 for n in (1, 2, 3, 4)},
        **{(n, "accepted"): 48 for n in (1, 2, 3, 4)},
        (5, "decisions"): 5,
        (5, "accepted"): 10,
    }
    by_hour = store.rollup_series(day, day + 3, day, 1, ["decisions"])
    assert sorted(by_hour) == [(0, "decisions", 1.0), (1, "decisions", 1.0), (2, "decisions", 1.0)]


def test_nba_db_rollups_counts_the_same_from_the_log(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    from nba.cli import main

    traffic(server, 30)
    auth = server.auth(VIEWER_TOKEN)
    kept = server.admin.GetOverview(apb.GetOverviewRequest(), metadata=auth)
    store = server.service.store
    with store.write() as conn:  # as a log written before revision 0014: no rollups
        conn.execute(DECISION_ROLLUPS.delete())
        conn.execute(DECISION_ROLLUPS_DAILY.delete())
    assert server.admin.GetOverview(apb.GetOverviewRequest(), metadata=auth).totals.decisions == 0
    assert main(["db", "rollups", "--database-url", server.service.settings.database_url]) == 0
    assert "rollups of 30 decisions counted" in capsys.readouterr().out
    again = server.admin.GetOverview(apb.GetOverviewRequest(), metadata=auth)
    # the same figures, but for the learning lag, which the log does not keep
    for before, after in [
        (kept.totals, again.totals),
        *((a.figures, b.figures) for a, b in zip(kept.by_offer, again.by_offer, strict=True)),
    ]:
        assert after.mean_learning_lag_seconds == 0
        left, right = (json_format.MessageToDict(f, preserving_proto_field_name=True) for f in (before, after))
        left.pop("mean_learning_lag_seconds", None)
        assert left == pytest.approx(right)  # sums of rewards may differ in their last bits: added in another order
    assert list(kept.filter_reasons) == list(again.filter_reasons)
