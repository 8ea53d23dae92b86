"""AdminService through a real server: tokens and roles, validate, publish, roll back,
versions, preview, and the policies folder as a second door to the same live set."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from conftest import EDITOR_TOKEN, POLICIES, VIEWER_TOKEN, Running, customer, struct
from test_policies_e2e import BASE, policy_dir

from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb


def draft(text: str = BASE, **more: str) -> apb.PolicySetDraft:
    return apb.PolicySetDraft(files={"set.yaml": text, **more})


def publish(server: Running, text: str = BASE, token: str | None = None, **fields) -> apb.PublishPolicySetResponse:
    metadata = server.auth(token) if token else server.auth()
    return server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=draft(text), **fields), metadata=metadata)


def web_decision(server: Running) -> pb.DecideResponse:
    return server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", context=struct({"customer": {"age": 30}})))


@pytest.mark.parametrize(
    ("metadata", "code", "message"),
    [
        ([], grpc.StatusCode.UNAUTHENTICATED, "send metadata 'authorization: Bearer <token>'"),
        ([("authorization", "Bearer nope-nope-nope-nope")], grpc.StatusCode.UNAUTHENTICATED, "unknown token"),
        ([("authorization", "Basic abc")], grpc.StatusCode.UNAUTHENTICATED, "Bearer"),
        (
            [("authorization", f"Bearer {VIEWER_TOKEN}")],
            grpc.StatusCode.PERMISSION_DENIED,
            "'vi' is a viewer; PublishPolicySet needs an editor",
        ),
        # two headers: neither is guessed at, whichever order a proxy left them in
        (
            [("authorization", f"Bearer {VIEWER_TOKEN}"), ("authorization", f"Bearer {EDITOR_TOKEN}")],
            grpc.StatusCode.UNAUTHENTICATED,
            "authorization: sent 2 times; send one",
        ),
        (
            [("authorization", f"Bearer {EDITOR_TOKEN}"), ("authorization", f"Bearer {VIEWER_TOKEN}")],
            grpc.StatusCode.UNAUTHENTICATED,
            "authorization: sent 2 times; send one",
        ),
    ],
)
def test_publishing_needs_an_editor_token(server: Running, metadata, code, message: str) -> None:
    before = server.service.policy_set.version
    with pytest.raises(grpc.RpcError) as raised:
        server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=draft()), metadata=metadata)
    assert raised.value.code() == code
    assert message in raised.value.details()
    assert server.service.policy_set.version == before


def test_the_scheme_is_case_insensitive_and_spaces_before_the_token_are_allowed(server: Running) -> None:
    for header in (f"bearer {VIEWER_TOKEN}", f"BEARER   {VIEWER_TOKEN}"):  # RFC 6750 §2.1: 1*SP
        live = server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=[("authorization", header)])
        assert live.live


def test_viewers_may_read_and_validate(server: Running) -> None:
    live = server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=server.auth(VIEWER_TOKEN))
    assert live.version == 1 and live.live and "policies.yaml" in live.files
    assert live.label == server.service.policy_set.version
    valid = server.admin.ValidatePolicySet(apb.ValidatePolicySetRequest(draft=draft()), metadata=server.auth(VIEWER_TOKEN))
    assert valid.valid and len(valid.content_hash) == 64


def test_without_configured_tokens_admin_is_disabled(start) -> None:
    server = start(admin_tokens=[])
    with pytest.raises(grpc.RpcError) as raised:
        server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=server.auth())
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no admin tokens are configured" in raised.value.details()
    assert web_decision(server).decision_id  # DecisionService needs no token


def test_an_invalid_draft_reports_every_error_and_changes_nothing(server: Running) -> None:
    broken = (
        BASE
        + """
  - {id: delta, name: Delta, channels: [fax]}
  - {id: echo, name: Echo, channels: [web], eligibility: 'customer.agee > 3'}
  - {id: foxtrot, name: Foxtrot, channels: [web], eligibility: 'customer.age > "x"'}
policies:
  - {id: cap, type: contact_cap, max: 1, window: 3 fortnights}
  - {id: stray, type: applicability, applies_to: {groups: [nope]}, rule: 'true'}
"""
    )
    response = server.admin.ValidatePolicySet(apb.ValidatePolicySetRequest(draft=draft(broken)), metadata=server.auth())
    assert not response.valid
    errors = {(p.offer or p.policy, p.field): p.message for p in response.problems if p.severity == "error"}
    assert errors[("delta", "channels")].startswith("fax not declared")
    assert "field 'customer.agee' is not in the context schema" in errors[("echo", "eligibility")]
    assert "window" in next(k for k in errors if k[0] == "cap")[1]
    assert errors[("stray", "applies_to.groups")].startswith("no group 'nope'")
    assert all(p.file == "set.yaml" for p in response.problems if p.severity == "error")

    before = server.service.policy_set.version
    with pytest.raises(grpc.RpcError) as raised:
        publish(server, broken)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid policy set, 4 problems" in raised.value.details()
    # each problem is a field violation of the google.rpc.BadRequest detail, located
    from test_decide import field_violations

    violations = field_violations(raised.value)
    assert len(violations) == 4 and all(field.startswith("set.yaml: ") for field, _ in violations), violations
    assert ("set.yaml: offer 'delta': field 'channels'", errors[("delta", "channels")]) in violations
    assert server.service.policy_set.version == before
    assert web_decision(server).policy_version == before


def test_a_type_mismatch_is_refused_on_the_declared_schema(server: Running) -> None:
    bad = BASE + "  - {id: foxtrot, name: Foxtrot, channels: [web], eligibility: 'customer.age > \"x\"'}\n"
    response = server.admin.ValidatePolicySet(apb.ValidatePolicySetRequest(draft=draft(bad)), metadata=server.auth())
    problem = next(p for p in response.problems if p.severity == "error")
    assert (problem.offer, problem.field) == ("foxtrot", "eligibility")
    assert "type mismatch" in problem.message


def test_static_checks_are_warnings(server: Running) -> None:
    text = (
        BASE.replace("  - {id: help, name: Help, channels: [web], fallback: true, value: 0}\n", "")
        + """
  - {id: never, name: Never, channels: [web], eligibility: 'customer.age > 200'}
  - {id: stale, name: Stale, channels: [web], valid_until: 2020-01-01}
policies:
  - {id: zero, type: contact_cap, applies_to: {offers: [alpha]}, max: 0, window: 1d}
"""
    )
    response = server.admin.ValidatePolicySet(apb.ValidatePolicySetRequest(draft=draft(text)), metadata=server.auth())
    assert response.valid
    warnings = [f"{p.offer or p.policy}: {p.message}" for p in response.problems if p.severity == "warning"]
    assert any("channel 'web' has no live fallback" in w for w in warnings)
    assert any(w.startswith("never: eligibility is false for every sampled context") for w in warnings)
    assert any(w.startswith("never: its rules filter every sampled context") for w in warnings)
    assert any(w.startswith("stale: expired on 2020-01-01 but its status is still live") for w in warnings)
    assert any(w.startswith("zero: max is 0") for w in warnings)


def test_publish_rollback_and_the_version_history(server: Running) -> None:
    first = server.service.policy_set
    published = publish(server, comment="a smaller set")
    assert published.live.version == 2 and not published.unchanged
    assert web_decision(server).policy_version == published.live.label
    assert publish(server).unchanged  # the same content again: nothing changes

    with pytest.raises(grpc.RpcError) as raised:
        publish(server, BASE + "  - {id: delta, name: Delta, channels: [web]}\n", expected_live_version=1)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 2 is live, not 1" in raised.value.details()

    rolled = server.admin.RollbackPolicySet(apb.RollbackPolicySetRequest(version=1, comment="oops"), metadata=server.auth())
    assert rolled.live.version == 1 and rolled.live.label == first.version
    assert server.service.policy_set.version == first.version
    with pytest.raises(grpc.RpcError) as raised:
        server.admin.RollbackPolicySet(apb.RollbackPolicySetRequest(version=99), metadata=server.auth())
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    history = server.admin.ListPolicySetVersions(apb.ListPolicySetVersionsRequest(), metadata=server.auth(VIEWER_TOKEN))
    assert [(v.version, v.live) for v in history.versions] == [(2, False), (1, True)]
    assert history.versions[0].created_by == "ed" and history.versions[0].comment == "a smaller set"
    assert [(a.version, a.source, a.actor) for a in history.activations] == [
        (1, "rollback", "ed"),
        (2, "api", "ed"),
        (1, "file", "policies folder"),
    ]
    page = server.admin.ListPolicySetVersions(apb.ListPolicySetVersionsRequest(page_size=1), metadata=server.auth())
    assert [v.version for v in page.versions] == [2] and page.next_page_token == "2"
    rest = server.admin.ListPolicySetVersions(
        apb.ListPolicySetVersionsRequest(page_size=1, page_token=page.next_page_token), metadata=server.auth()
    )
    assert [v.version for v in rest.versions] == [1] and rest.next_page_token == ""


def test_the_live_set_survives_a_restart_and_the_folder_wins_only_when_changed(start, tmp_path: Path) -> None:
    folder = policy_dir(tmp_path)
    server = start(policies=folder)
    published = publish(server, BASE + "  - {id: delta, name: Delta, channels: [web]}\n")
    server.stop()
    again = start(policies=folder)  # the folder did not change: the API's publish stays live
    assert again.service.policy_set.version == published.live.label
    again.stop()
    (folder / "set.yaml").write_text(BASE + "  - {id: echo, name: Echo, channels: [web]}\n")
    third = start(policies=folder)  # the folder changed while we were down: it is published
    assert "echo" in third.service.policy_set.offers and third.service.policy_set.number == 3


def test_editing_the_folder_publishes_through_the_same_validation(start, tmp_path: Path) -> None:
    folder = policy_dir(tmp_path)
    server = start(policies=folder, policies_watch_seconds=0.1)
    (folder / "set.yaml").write_text(BASE + "  - {id: delta, name: Delta, channels: [fax]}\n")  # invalid
    time.sleep(0.5)
    assert server.service.policy_set.number == 1 and "delta" not in server.service.policy_set.offers
    (folder / "set.yaml").write_text(BASE + "  - {id: delta, name: Delta, channels: [web]}\n")
    deadline = time.monotonic() + 10
    while server.service.policy_set.number != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "delta" in server.service.policy_set.offers


def test_replicas_sharing_a_database_adopt_each_others_publishes(start, tmp_path: Path) -> None:
    folder = policy_dir(tmp_path)
    one = start(policies=folder, policies_watch_seconds=0.1)
    two = start(policies=folder, policies_watch_seconds=0.1)
    published = publish(one, BASE + "  - {id: delta, name: Delta, channels: [web]}\n")
    deadline = time.monotonic() + 10
    while two.service.policy_set.version != published.live.label and time.monotonic() < deadline:
        time.sleep(0.05)
    assert two.service.policy_set.version == published.live.label


def test_preview_reports_how_a_draft_would_change_eligibility_and_mix(start) -> None:
    server = start(seed=3)
    for i in range(60):
        profile = customer(age=16 + i % 40, flags={"churn_risk": i % 2 == 0, "fraud_risk": False, "vulnerable": False})
        decision = server.stub.Decide(
            pb.DecideRequest(customer_id=f"c-{i}", channel="web", context=struct({"customer": profile}))
        )
        if decision.offers[0].offer_id == "gold-card" or i % 4 == 0:
            server.stub.Feedback(
                pb.FeedbackRequest(
                    event_id=f"e-{i}",
                    decision_id=decision.decision_id,
                    offer_id=decision.offers[0].offer_id,
                    outcome=pb.OUTCOME_ACCEPTED,
                )
            )
    server.service.log.flush()
    files = {p.name: p.read_text() for p in POLICIES.glob("*.yaml") if not p.name.endswith("_test.yaml")}
    files["policies.yaml"] += """
  - id: gold-card-for-over-40s
    type: suitability
    applies_to: {offers: [gold-card]}
    rule: customer.age >= 40
"""
    report = server.admin.PreviewPolicySet(
        apb.PreviewPolicySetRequest(draft=apb.PolicySetDraft(files=files), last_n=50), metadata=server.auth(VIEWER_TOKEN)
    )
    assert report.decisions == 50 and report.live_version == server.service.policy_set.version
    gold = next(o for o in report.offers if o.offer_id == "gold-card")
    assert gold.live_eligible_rate > gold.draft_eligible_rate
    assert gold.draft_share < gold.live_share
    assert report.offers[0].offer_id == "gold-card"  # the biggest change comes first
    assert sum(o.live_share for o in report.offers) == pytest.approx(1 - report.live.empty_rate)
    assert "not simulated" in report.note
    for value in (report.live_value, report.draft_value):
        assert value.estimator == "dr" and value.low <= value.value <= value.high and value.ess > 0
    assert report.draft_value.value < report.live_value.value  # the draft withholds the offer that was accepted
    assert server.service.policy_set.version == report.live_version  # nothing was published

    # A reward an older version stored (1e308, before rewards had a range) breaks the
    # logged-data contract: that decision is left out of the estimates, and the note says so.
    import sqlalchemy

    with server.service.store.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE feedback SET reward = 1e308, pair_reward = 1e308 WHERE event_id = 'e-12'"))
    again = server.admin.PreviewPolicySet(
        apb.PreviewPolicySetRequest(draft=apb.PolicySetDraft(files=files), last_n=50), metadata=server.auth(VIEWER_TOKEN)
    )
    assert again.decisions == 50
    assert "1 logged decisions break the logged-data contract and are left out of the value estimates" in again.note
    assert "must be within ±1,000,000" in again.note


def test_a_preview_stops_replaying_when_its_check_says_the_call_is_over(start) -> None:
    """PreviewPolicySet passes a check of its call's deadline and client; the replay asks it
    before every decision, so a preview nobody waits for stops within one decision."""
    from nba.errors import DeadlineExceeded
    from nba.evaluation.preview import preview

    server = start()
    for i in range(30):
        server.stub.Decide(pb.DecideRequest(customer_id=f"c-{i}", channel="web", context=struct({"customer": customer()})))
    server.service.log.flush()
    asked = []

    def check() -> None:
        asked.append(1)
        if len(asked) == 5:
            raise DeadlineExceeded("the preview took longer than the call's deadline")

    live = server.service.policy_set
    with pytest.raises(DeadlineExceeded):
        preview(live, live, server.service.store.recent_lines(30), server.service.learning, check=check)
    assert len(asked) == 5  # not 30: it stopped at once
    report = preview(live, live, server.service.store.recent_lines(30), server.service.learning, check=lambda: None)
    assert report.decisions == 30


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "draft.files: empty"),
        ({"../evil.yaml": "channels: [web]"}, "must be a plain file name"),
        ({"notes.txt": "channels: [web]"}, "policy files must end in .yaml"),
    ],
)
def test_malformed_drafts_are_invalid_argument(server: Running, files, message: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        server.admin.PublishPolicySet(apb.PublishPolicySetRequest(draft=apb.PolicySetDraft(files=files)), metadata=server.auth())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()
