"""Governance: ForgetCustomer leaves no trace of the person (searched for in every table, on SQLite
and PostgreSQL), keeps their decisions for evaluation under a keyed pseudonym, is idempotent and
audited, needs an editor, and reaches the caches; ``nba profiles forget`` does the same. Personal
data is shown only to the role allowed; the sample set honours marketing consent."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from conftest import POLICIES, VIEWER_TOKEN, Running, struct
from sqlalchemy import select

from nba.cli import main
from nba.storage.tables import DECISIONS, ERASURES, FEEDBACK
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

PROFILE = """
profile:
  event_types:
    signup: {properties: {tier: string}}
    complaint: {properties: {topic: string, case_id: string, status: string}}
    purchase: {properties: {order_id: string, amount: number}, dedupe_by: order_id}
    household_link: {properties: {member_id: string}}
    referral: {properties: {friend_email: string}}
  attributes:
    tier: {from: signup.tier}
  computed:
    complaints_30d: count(complaint) over 30d   # the sample set's retention rules read it
    spend: sum(purchase.amount)
  activity:
    cases: {events: [complaint], key: case_id, closed: [resolved]}
  relationships:
    household: {from: household_link.member_id}
  segments:
    frustrated: {when: profile.complaints_30d >= 2}
"""
#: what names Ada anywhere: her ids, identifiers and the keys her callers chose
ADA = ["zq-ada-1", "zq-ada-2", "ada.lovelace@example.com", "+447911123456", "req-zq-ada", "fb-zq-ada", "ord-zq-ada"]


def folder(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    (target / "profile.yaml").write_text(PROFILE)
    return target


def track(server: Running, event_id: str, event_type: str, properties: dict, **who: object) -> ppb.TrackResponse:  # type: ignore[type-arg]
    return ppb_grpc.ProfileServiceStub(server.channel).Track(
        ppb.TrackRequest(event_id=event_id, type=event_type, source="web", properties=struct(properties), **who)
    )


def every_row(server: Running) -> dict[str, list[str]]:
    """Every row of every table the service created, as text."""
    from sqlalchemy import MetaData

    engine = server.service.engine
    tables = MetaData()
    tables.reflect(engine)
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for name, table in tables.tables.items():
            out[name] = [json.dumps(list(row), default=str) for row in conn.execute(select(table))]
    return out


def traces(server: Running, needles: list[str]) -> list[str]:
    found = []
    for table, rows in every_row(server).items():
        for row in rows:
            found += [f"{table}: {needle}" for needle in needles if needle.lower() in row.lower()]
    return found


def test_forget_customer_leaves_no_trace_and_keeps_decisions_under_a_pseudonym(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start(policies=folder(tmp_path))
    stub = ppb_grpc.ProfileServiceStub(server.channel)
    email = {"email": "Ada.Lovelace@Example.com"}
    track(server, "e-ada-1", "signup", {"tier": "gold"}, customer_id="zq-ada-1", identities={**email, "phone": "07911 123456"})
    track(server, "e-ada-2", "complaint", {"topic": "fees", "case_id": "K-1"}, customer_id="zq-ada-1")
    track(server, "e-ada-3", "complaint", {"topic": "fees", "case_id": "K-2"}, customer_id="zq-ada-2")
    merged = track(
        server, "e-ada-4", "purchase", {"order_id": "ord-zq-ada", "amount": 9.5}, customer_id="zq-ada-2", identities=email
    )
    assert merged.customer_id == "zq-ada-1" and list(merged.merged) == ["zq-ada-2"]
    track(server, "e-bob-1", "household_link", {"member_id": "zq-ada-1"}, customer_id="c-bob")
    track(server, "e-bob-2", "complaint", {"topic": "app", "case_id": "B-1"}, customer_id="c-bob")
    # bob names her again, her e-mail address written his way
    track(server, "e-bob-3", "referral", {"friend_email": " ADA.Lovelace@example.COM"}, customer_id="c-bob")
    with pytest.raises(grpc.RpcError):  # a dead letter naming her by her e-mail address only
        stub.Track(ppb.TrackRequest(event_id="e-ada-5", type="survey", identities=email))
    decided = []
    for n, customer in enumerate(["zq-ada-1", "zq-ada-2", "c-bob"]):
        decided.append(
            server.stub.Decide(
                pb.DecideRequest(
                    customer_id=customer,
                    channel="web",
                    limit=2,
                    request_id=f"req-zq-ada-{n}" if customer != "c-bob" else "req-bob",
                    context=struct(
                        {
                            "customer": {
                                "age": 36,
                                "email": "ada.lovelace@example.com" if customer != "c-bob" else "b@x.io",
                                # her number as the call centre writes it, not as it is stored
                                "phone": "+44 (0)7911 123-456" if customer != "c-bob" else "+44 20 7946 0000",
                            }
                        }
                    ),
                )
            )
        )
    for n, decision in enumerate(decided):
        server.stub.Feedback(
            pb.FeedbackRequest(
                event_id=f"fb-zq-ada-{n}" if n < 2 else "fb-bob",
                decision_id=decision.decision_id,
                offer_id=decision.offers[0].offer_id,
                outcome=pb.OUTCOME_ACCEPTED,
            )
        )
    assert traces(server, ADA)  # she is everywhere before

    with pytest.raises(grpc.RpcError) as caught:
        stub.ForgetCustomer(ppb.ForgetCustomerRequest(customer_id="zq-ada-2"), metadata=Running.auth(VIEWER_TOKEN))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    answer = stub.ForgetCustomer(
        ppb.ForgetCustomerRequest(customer_id="zq-ada-2", reason="ticket 42"), metadata=Running.auth()
    )  # by the merged id
    assert list(answer.customer_ids) == ["zq-ada-1", "zq-ada-2"] and answer.pseudonym.startswith("anon-")
    assert not answer.forgotten_before
    assert answer.erased["profiles"] == 2 and answer.erased["profile_events"] == 4 and answer.erased["decisions"] == 2
    assert answer.erased["feedback"] == 2 and answer.erased["profile_dead_letters"] == 1
    assert answer.erased["profile_relationships"] == 2  # bob's link to her, both ways
    assert answer.erased["named_elsewhere"] >= 2  # bob's link and referral events (and his profile)

    assert traces(server, ADA) == []  # searched in every table
    with server.service.store.read() as conn:
        kept = conn.execute(select(DECISIONS.c.customer_id, DECISIONS.c.features)).all()
        assert sorted(c for c, _ in kept) == sorted([answer.pseudonym, answer.pseudonym, "c-bob"])
        assert [f["customer.email"] for c, f in kept if c == answer.pseudonym] == ["[erased]", "[erased]"]
        assert [f["customer.phone"] for c, f in kept if c == answer.pseudonym] == ["[erased]", "[erased]"]
        assert [f["customer.phone"] for c, f in kept if c == "c-bob"] == ["+44 20 7946 0000"]
        assert len(conn.execute(select(FEEDBACK.c.id)).all()) == 3  # evaluation keeps every outcome
        audit = conn.execute(select(ERASURES)).one()
    assert (audit.pseudonym, audit.requested_by, audit.reason) == (answer.pseudonym, "ed", "ticket 42")
    # bob is untouched, but for the link to her
    bob = stub.GetProfile(ppb.GetProfileRequest(customer_id="c-bob"), metadata=Running.auth())
    assert bob.version == 3 and not bob.relationships
    for customer in ("zq-ada-1", "zq-ada-2"):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetProfile(ppb.GetProfileRequest(customer_id=customer), metadata=Running.auth())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # no cache kept her
    assert server.service.contacts.events("zq-ada-1", datetime.now(UTC).timestamp()) == []
    # her campaign tool sends an outcome again under its own key: still a duplicate, and a new
    # outcome of her decision is kept under a pseudonym of its key
    resent = server.stub.Feedback(
        pb.FeedbackRequest(
            event_id="fb-zq-ada-0",
            decision_id=decided[0].decision_id,
            offer_id=decided[0].offers[0].offer_id,
            outcome=pb.OUTCOME_ACCEPTED,
        )
    )
    assert resent.duplicate
    later = server.stub.Feedback(
        pb.FeedbackRequest(
            event_id="fb-zq-ada-later",
            decision_id=decided[0].decision_id,
            offer_id=decided[0].offers[0].offer_id,
            outcome=pb.OUTCOME_CLICKED,
        )
    )
    assert not later.duplicate
    assert traces(server, ADA) == []
    with server.service.store.read() as conn:
        assert len(conn.execute(select(FEEDBACK.c.id)).all()) == 4

    again = stub.ForgetCustomer(ppb.ForgetCustomerRequest(customer_id="zq-ada-1"), metadata=Running.auth())
    assert again.forgotten_before and again.pseudonym == answer.pseudonym and not any(again.erased.values())
    # she may come back: a new profile starts from her next event
    back = track(server, "e-ada-9", "signup", {"tier": "new"}, identities=email)
    assert back.customer_id != "zq-ada-1" and back.version == 1


def test_the_cli_forgets_by_identifier_and_names_what_to_fix(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    server = start(policies=folder(tmp_path))
    url = server.service.settings.database_url
    track(server, "e-1", "signup", {"tier": "gold"}, customer_id="zq-ada-1", identities={"email": "ada.lovelace@example.com"})
    assert main(["profiles", "forget", "--identifier", "email=ADA.LOVELACE@example.com", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "forgotten: zq-ada-1 -> anon-" in out and "profiles 1" in out
    server.service.profile_cache.invalidate(["zq-ada-1"])  # (a running service is told by ForgetCustomer or the bus)
    assert traces(server, ADA) == []
    assert main(["profiles", "forget", "--database-url", url]) != 0
    assert "CUSTOMER_ID: name the customer, or give --identifier" in capsys.readouterr().err
    assert main(["profiles", "forget", "--identifier", "email", "--database-url", url]) != 0
    assert "is not KIND=VALUE" in capsys.readouterr().err
    assert main(["profiles", "forget", "--identifier", "shoe=9", "--database-url", url]) == 2
    assert "identifier_kind: 'shoe' is not an identifier kind" in capsys.readouterr().err
    assert main(["profiles", "forget", "c-1", "--reason", "x" * 501, "--database-url", url]) == 2
    assert "reason: longer than 500 characters" in capsys.readouterr().err
    assert main(["profiles", "segments", "--reason", "x", "--database-url", url]) != 0
    assert "--identifier and --reason go with: nba profiles forget" in capsys.readouterr().err


def test_bad_requests_name_the_field(server_with_profile) -> None:  # type: ignore[no-untyped-def]
    stub = ppb_grpc.ProfileServiceStub(server_with_profile.channel)
    cases = [
        (ppb.ForgetCustomerRequest(), "customer_id: required"),
        (ppb.ForgetCustomerRequest(identifier_kind="email"), "identifier_value: give identifier_kind and identifier_value"),
        (ppb.ForgetCustomerRequest(customer_id="a", identifier_kind="email", identifier_value="a@b.co"), "not both"),
        (ppb.ForgetCustomerRequest(customer_id="a\x00"), "control character"),
        (ppb.ForgetCustomerRequest(identifier_kind="shoe_size", identifier_value="9"), "identifier_kind: 'shoe_size'"),
        (ppb.ForgetCustomerRequest(customer_id="a", reason="x" * 501), "reason: longer than 500"),
    ]
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ForgetCustomer(request, metadata=Running.auth())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details(), request


@pytest.fixture
def server_with_profile(start, tmp_path: Path) -> Running:  # type: ignore[no-untyped-def]
    return start(policies=folder(tmp_path))


def test_personal_data_is_shown_only_to_the_role_allowed(start) -> None:  # type: ignore[no-untyped-def]
    for role, viewer_sees in (("editor", False), ("viewer", True)):
        server = start(pii_role=role)  # the sample set: email is pii, kept from signup.email
        stub = ppb_grpc.ProfileServiceStub(server.channel)
        track(server, f"p-{role}", "signup", {"email": "grace@example.com", "tier": "gold"}, customer_id=f"c-grace-{role}")
        # the same property on another event type (undeclared there) is as personal
        track(server, f"q-{role}", "contact", {"sentiment": "calm", "email": "grace@example.com"}, customer_id=f"c-grace-{role}")
        for token, sees in ((VIEWER_TOKEN, viewer_sees), (None, True)):
            profile = stub.GetProfile(
                ppb.GetProfileRequest(customer_id=f"c-grace-{role}"), metadata=Running.auth(token) if token else Running.auth()
            )
            shown = "grace@example.com" if sees else "***"
            assert profile.attributes["email"] == shown and profile.attributes["tier"] == "gold", (role, token)
            events = {e.type: e.properties for e in profile.timeline}
            assert events["signup"]["email"] == shown and events["signup"]["tier"] == "gold"
            assert events["contact"]["email"] == shown and events["contact"]["sentiment"] == "calm"
        server.stop()


#: a customer of the sample set's examples (cross_sell_test.yaml), to whom most offers are open
CUSTOMER = {
    "age": 34,
    "demographics": {"region": "north", "household": "family", "income_band": "mid"},
    "activity": {"open_orders": 1, "complaints_90d": 0, "returns_90d": 0, "days_since_login": 2, "cart_value": 80},
    "history": {"tenure_months": 20, "products": ["current-account"], "channels_used": ["app", "web"], "last_purchase_days": 5},
    "value": {"segment": "silver", "clv": 2100, "monthly_spend": 260},
    "flags": {"churn_risk": False, "churn_score": 0.1, "fraud_risk": False, "vulnerable": False},
    "mood": "positive",
}


def test_the_sample_set_honours_marketing_consent(server: Running) -> None:
    """The customer's latest choice (the profile's consent_marketing) wins over the channel's record."""

    def refused(customer_id: str, consented_by_channel: bool, **profile: object) -> set[str]:
        """The offers the marketing-consent policy filtered out of an e-mail decision."""
        reply = server.stub.Decide(
            pb.DecideRequest(
                customer_id=customer_id,
                channel="email",
                limit=5,
                explain=True,
                context=struct(
                    {"customer": {**CUSTOMER, "consent": {"marketing": consented_by_channel, "email": True}}, "profile": profile}
                    if profile
                    else {"customer": {**CUSTOMER, "consent": {"marketing": consented_by_channel, "email": True}}}
                ),
            )
        )
        return {o.offer_id for o in reply.explanation.offers if o.policy == "marketing-consent"}

    assert refused("c-new", True) == set()
    without = refused("c-new", False)
    assert without  # every marketing offer on e-mail
    track(server, "consent-1", "consent", {"marketing": False, "email": True}, customer_id="c-said-no")
    assert refused("c-said-no", True) == without  # their own latest choice wins
    # a channel that sends the profile's consent itself cannot grant what they withdrew
    assert refused("c-said-no", True, consent_marketing=True) == without
    assert refused("c-new", False, consent_marketing=True) == set()  # nothing recorded: the request's is used
    track(server, "consent-2", "consent", {"marketing": True}, customer_id="c-said-no")
    assert refused("c-said-no", False) == set()


def test_a_decision_still_queued_when_its_customer_was_forgotten_is_erased_when_written(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    server = start(policies=folder(tmp_path))
    url = server.service.settings.database_url
    track(server, "q-1", "signup", {"tier": "gold"}, customer_id="zq-ada-1")
    made = server.stub.Decide(pb.DecideRequest(customer_id="zq-ada-1", channel="web", limit=2, request_id="req-zq-ada-q"))
    record = server.service.log.get(made.decision_id)
    assert record is not None
    # another process forgets her (the command line: this server's memory is not told)...
    assert main(["profiles", "forget", "zq-ada-1", "--database-url", url]) == 0
    # ...while this one still holds a decision of hers, made before, in its write-behind queue
    server.service.log.record(dataclasses.replace(record, decision_id="d-queued", request_id="req-zq-ada-late"))
    server.service.log.flush()
    server.service.profile_cache.invalidate(["zq-ada-1"])
    assert traces(server, ADA) == []
    # what happens after her erasure is a new customer's: kept as it comes
    later = server.stub.Decide(pb.DecideRequest(customer_id="zq-ada-1", channel="web", limit=2))
    server.service.log.flush()
    with server.service.store.read() as conn:
        ids = conn.execute(select(DECISIONS.c.decision_id).where(DECISIONS.c.customer_id == "zq-ada-1")).scalars().all()
    assert ids == [later.decision_id]
