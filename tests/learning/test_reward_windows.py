"""Rewards that arrive late, or never: reward windows closed with a controllable clock."""

from __future__ import annotations

import time

from conftest import ManualClock, Running, customer, struct
from sqlalchemy import select

from nba.service.server import reward_windows
from nba.storage.tables import FeedbackRow
from nba.v1 import decision_service_pb2 as pb


def decide(server: Running, limit: int = 2) -> pb.DecideResponse:
    return server.stub.Decide(
        pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": customer()}), limit=limit)
    )


def feedback(server: Running, decision: pb.DecideResponse, event_id: str, outcome: int, offer: int = 0) -> pb.FeedbackResponse:
    return server.stub.Feedback(
        pb.FeedbackRequest(
            event_id=event_id, decision_id=decision.decision_id, offer_id=decision.offers[offer].offer_id, outcome=outcome
        )
    )


def rows(server: Running) -> list:
    with server.service.engine.connect() as conn:
        return conn.execute(select(FeedbackRow.__table__).order_by(FeedbackRow.__table__.c.id)).all()


def wait_for_updates(server: Running, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.service.learning._learner.n_updates < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.service.learning._learner.n_updates == n


def test_offers_without_feedback_get_the_default_reward_exactly_once(start) -> None:
    clock = ManualClock()
    server = start(clock=clock, window_check_seconds=0, reward_default=-0.05)
    decision = decide(server)
    impressed = feedback(server, decision, "e1", pb.OUTCOME_IMPRESSED, offer=0)
    assert impressed.applied
    clock.advance(days=6, hours=23)  # not yet: the longest window is 7 days
    time.sleep(0.3)
    assert [r.outcome for r in rows(server)] == ["impressed"]

    clock.advance(hours=1, seconds=1)
    wait_for_updates(server, 2)
    stored = rows(server)
    assert [(r.offer_id, r.outcome, r.reward, r.applied) for r in stored] == [
        (decision.offers[0].offer_id, "impressed", 0.0, True),
        (decision.offers[1].offer_id, "no_response", -0.05, True),  # only the unanswered offer
    ]
    clock.advance(days=30)
    time.sleep(0.3)
    assert len(rows(server)) == 2  # closed once, never again
    version = server.service.learning.version
    server.stop()
    again = start(clock=clock, window_check_seconds=0)
    assert again.service.learning.version == version  # replayed once, not twice
    assert again.service.store.count_open_decisions() == 0


def test_feedback_after_its_window_is_stored_and_reported_but_not_learned(start) -> None:
    clock = ManualClock()
    server = start(clock=clock, window_check_seconds=3600)  # windows are not being closed here
    decision = decide(server, limit=1)
    clock.advance(hours=2)
    late_impression = feedback(server, decision, "e1", pb.OUTCOME_IMPRESSED)  # impressions count for 1 hour
    assert (late_impression.late, late_impression.applied) == (True, False)
    clock.advance(days=1)
    late_click = feedback(server, decision, "e2", pb.OUTCOME_CLICKED)  # clicks count for 1 day
    assert (late_click.late, late_click.applied) == (True, False)
    accepted = feedback(server, decision, "e3", pb.OUTCOME_ACCEPTED)  # acceptances for 7 days
    assert (accepted.late, accepted.applied, accepted.reward) == (False, True, 1.0)
    assert server.service.learning._learner.n_updates == 1
    assert [(r.outcome, r.late, r.applied) for r in rows(server)] == [
        ("impressed", True, False),
        ("clicked", True, False),
        ("accepted", False, True),
    ]
    assert feedback(server, decision, "e3", pb.OUTCOME_ACCEPTED).duplicate


def test_feedback_after_the_window_closed_is_late(start) -> None:
    clock = ManualClock()
    server = start(clock=clock, window_check_seconds=0, window_accepted_seconds=86400, window_rejected_seconds=86400)
    decision = decide(server, limit=1)
    clock.advance(days=1, seconds=1)
    wait_for_updates(server, 1)  # the default reward
    reply = feedback(server, decision, "e1", pb.OUTCOME_ACCEPTED)
    assert (reply.late, reply.applied, reply.reward) == (True, False, 0.0)
    assert server.service.learning._learner.n_updates == 1
    assert [r.outcome for r in rows(server)] == ["no_response", "accepted"]


def test_windows_are_configurable_per_outcome(settings_for) -> None:
    settings = settings_for(window_clicked_seconds=60, window_accepted_seconds=120)
    windows = reward_windows(settings)
    assert windows.seconds["clicked"] == 60 and windows.longest == 7 * 86400  # rejections: 7 days


def test_retention_deletes_old_closed_decisions_once_a_snapshot_holds_their_feedback(start, monkeypatch) -> None:
    monkeypatch.setattr("nba.service.maintenance.RETENTION_SECONDS", 0.0)  # look at every log write
    clock = ManualClock()
    server = start(clock=clock, window_check_seconds=0, decision_retention_days=10, snapshot_seconds=3600)
    old = decide(server)
    assert feedback(server, old, "old-accepted", pb.OUTCOME_ACCEPTED).applied
    clock.advance(days=11)  # its windows have closed, and it is past retention
    wait_for_updates(server, 2)  # the accepted offer, and the default reward of the other

    def stored(decision_id: str) -> tuple[bool, int]:
        server.service.log.flush()
        with server.service.engine.connect() as conn:
            events = conn.execute(select(FeedbackRow.__table__).where(FeedbackRow.__table__.c.decision_id == decision_id)).all()
        return server.service.store.find_decision(decision_id) is not None, len(events)

    decide(server)  # a log write: retention looks, but no snapshot holds the feedback yet
    assert stored(old.decision_id) == (True, 2)  # a restart would need it to replay

    server.service.learning.maybe_snapshot(server.service.store, force=True)
    recent = decide(server)
    # the newest event always stays (SQLite would give its id to the next one): one for recent
    assert feedback(server, recent, "recent-clicked", pb.OUTCOME_CLICKED).applied
    deadline = time.monotonic() + 5
    while stored(old.decision_id)[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored(old.decision_id) == (False, 0)  # gone, with its feedback
    assert stored(recent.decision_id) == (True, 1)  # within retention
    version = server.service.learning.version
    server.stop()
    assert start(clock=clock, window_check_seconds=0).service.learning.version == version


def test_retention_never_deletes_the_newest_event(start, monkeypatch) -> None:
    """On SQLite a deleted newest row gives its id to the next event, and every process that
    follows the log by id would skip it: the newest event stays, whatever its age."""
    monkeypatch.setattr("nba.service.maintenance.RETENTION_SECONDS", 0.0)
    clock = ManualClock()
    server = start(clock=clock, window_check_seconds=0, decision_retention_days=1, snapshot_seconds=3600)
    old = decide(server)
    assert feedback(server, old, "only", pb.OUTCOME_ACCEPTED).applied
    clock.advance(days=8)
    wait_for_updates(server, 2)
    server.service.learning.maybe_snapshot(server.service.store, force=True)
    newest = rows(server)[-1].id
    decide(server)  # a write: retention looks
    server.service.log.flush()
    assert rows(server)[-1].id == newest  # kept, with its decision
    again = decide(server)
    assert feedback(server, again, "next", pb.OUTCOME_ACCEPTED).applied
    assert rows(server)[-1].id > newest
