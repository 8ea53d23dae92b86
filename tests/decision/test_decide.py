"""Decide through a real gRPC server: ranking, eligibility, fallback, idempotency, errors."""

from __future__ import annotations

import grpc
import pytest
from conftest import Running, customer, struct
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from nba.service.context import MAX_CONTEXT_BYTES, MAX_CONTEXT_DEPTH, MAX_CONTEXT_LEAVES
from nba.v1 import decision_service_pb2 as pb

WEB_ELIGIBLE = {
    "gold-card",
    "travel-insurance",
    "savings-account",
    "home-insurance",
    "mobile-bundle",
    "order-status",
    "premium-subscription",
    "paperless-billing",
    "loyalty-bonus-points",
}


def decide(server: Running, **fields) -> pb.DecideResponse:
    fields.setdefault("customer_id", "c-1")
    fields.setdefault("channel", "web")
    if "context" not in fields:
        fields["context"] = struct({"customer": customer()})
    elif isinstance(fields["context"], dict):
        fields["context"] = struct(fields["context"])
    return server.stub.Decide(pb.DecideRequest(**fields))


def logged(server: Running, decision_id: str):
    server.service.log.flush()
    return server.service.store.find_decision(decision_id)


def test_decide_returns_ranked_eligible_offers_with_propensities(server: Running) -> None:
    response = decide(server, limit=3)
    assert len(response.offers) == 3
    assert len({o.offer_id for o in response.offers}) == 3
    for offer in response.offers:
        assert 0 < offer.propensity <= 1
        assert offer.name and offer.treatment.startswith("banner-") and not offer.fallback
    assert response.decision_id and response.policy_version.startswith("1-")
    assert response.model_version == "linear-igw/0"
    assert not response.replayed


def test_limit_zero_means_one_and_a_huge_limit_is_clamped(server: Running) -> None:
    assert len(decide(server, limit=0).offers) == 1
    everything = decide(server, limit=2_000_000_000)
    eligible = logged(server, everything.decision_id)
    expected = [c["offer_id"] for c in eligible.candidate_list() if c["eligible"]]
    assert sorted(o.offer_id for o in everything.offers) == sorted(expected)
    assert everything.offers[-1].propensity == 1.0


def test_every_candidate_is_logged_with_eligibility_reason_and_probability(server: Running) -> None:
    profile = customer(flags={"churn_risk": False, "fraud_risk": True, "vulnerable": False})
    response = decide(server, context={"customer": profile}, limit=2)
    record = logged(server, response.decision_id)
    by_id = {c["offer_id"]: c for c in record.candidate_list()}
    web_offers = {o.id for o in server.service.policy_set.by_channel["web"]}
    assert set(by_id) == web_offers
    assert by_id["gold-card"] == {
        "offer_id": "gold-card",
        "eligible": False,
        "reason": "eligibility",
        "policy": "no-marketing-to-fraud-risk",
    }
    assert by_id["security-check"]["eligible"] is True
    # Propensities of the first slot form a distribution over the eligible offers.
    eligible = [c for c in record.candidate_list() if c["eligible"]]
    assert sum(c["probability"] for c in eligible) == pytest.approx(1.0)
    chosen = sorted((c for c in eligible if "slot" in c), key=lambda c: c["slot"])
    assert [c["offer_id"] for c in chosen] == [o.offer_id for o in response.offers]
    assert chosen[0]["propensity"] == pytest.approx(chosen[0]["probability"])
    assert [o.propensity for o in response.offers] == [pytest.approx(c["propensity"]) for c in chosen]
    assert record.features["customer.flags.fraud_risk"] is True
    assert record.features["customer.history.products"] == ["current-account"]


def test_a_rule_that_cannot_be_evaluated_filters_the_offer_and_says_why(server: Running) -> None:
    profile = customer()
    del profile["flags"]
    response = decide(server, context={"customer": profile}, limit=50)
    assert "gold-card" not in {o.offer_id for o in response.offers}
    gold = next(c for c in logged(server, response.decision_id).candidate_list() if c["offer_id"] == "gold-card")
    assert gold["reason"] == "rule_error" and gold["policy"] == "no-marketing-to-fraud-risk"
    assert "flags" in gold["detail"]


def test_fallback_when_nothing_else_is_eligible(server: Running) -> None:
    response = decide(server, channel="app", context={"customer": {"age": 45}}, limit=3)
    assert [(o.offer_id, o.fallback, o.propensity) for o in response.offers] == [("help-centre", True, 1.0)]
    record = logged(server, response.decision_id)
    assert not any(c["eligible"] for c in record.candidate_list() if not c.get("fallback"))
    assert record.candidate_list()[-1] == {
        "offer_id": "help-centre",
        "eligible": True,
        "fallback": True,
        "slot": 1,
        "propensity": 1.0,
        "probability": 1.0,
    }


def test_the_same_request_id_returns_the_same_decision(server: Running) -> None:
    first = decide(server, request_id="req-1", limit=3)
    again = decide(server, request_id="req-1", limit=3)
    assert again.replayed and not first.replayed
    assert again.decision_id == first.decision_id
    assert list(again.offers) == list(first.offers)
    assert decide(server, request_id="req-2").decision_id != first.decision_id
    assert decide(server).decision_id != decide(server).decision_id  # no request_id: always new


def test_a_request_id_reused_for_another_customer_is_refused(server: Running) -> None:
    decide(server, request_id="req-x")
    with pytest.raises(grpc.RpcError) as raised:
        decide(server, request_id="req-x", customer_id="someone-else")
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "request_id: 'req-x' was already used for customer 'c-1'" in raised.value.details()


def test_request_ids_survive_a_restart(start) -> None:
    first_server = start()
    first = decide(first_server, request_id="req-r", limit=2)
    first_server.stop()
    again = decide(start(), request_id="req-r", limit=2)
    assert again.replayed and again.decision_id == first.decision_id
    assert [o.offer_id for o in again.offers] == [o.offer_id for o in first.offers]


def test_request_ids_expire_after_their_window(start) -> None:
    server = start(request_id_ttl_seconds=0.001)
    first = decide(server, request_id="req-t")
    assert decide(server, request_id="req-t").decision_id != first.decision_id


def deep(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest detail of a failed call, as (field, description) pairs."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert len(status.details) == 1 and status.details[0].Is(error_details_pb2.BadRequest.DESCRIPTOR)
    bad = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad)
    return [(v.field, v.description) for v in bad.field_violations]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"customer_id": ""}, "customer_id", "customer_id: required"),
        ({"customer_id": "x" * 300}, "customer_id", "customer_id: longer than 256"),
        ({"channel": "fax"}, "channel", "channel: 'fax' is not one of the policy set's channels (web, app, email, call_center)"),
        ({"channel": ""}, "channel", "channel: empty is not one of"),
        ({"limit": -1}, "limit", "limit: must be 0 or more"),
        ({"context": {"blob": "x" * (MAX_CONTEXT_BYTES + 1)}}, "context", f"more than the limit of {MAX_CONTEXT_BYTES}"),
        (
            {"context": deep(MAX_CONTEXT_DEPTH + 1)},
            "context" + ".n" * MAX_CONTEXT_DEPTH + ".leaf",
            f"nested deeper than {MAX_CONTEXT_DEPTH} levels",
        ),
        ({"context": {"xs": list(range(MAX_CONTEXT_LEAVES + 1))}}, "context", f"more than {MAX_CONTEXT_LEAVES} values"),
        ({"context": {"customer": {"a.b": 1}}}, "context.customer", "context.customer: key 'a.b' contains '.'"),
        ({"request_id": "r" * 300}, "request_id", "request_id: longer than 256"),
    ],
)
def test_bad_requests_get_invalid_argument_naming_the_field(server: Running, fields, field: str, message: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        decide(server, **fields)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()
    # The same, structured: a google.rpc.BadRequest naming the field, for clients that do not parse text.
    [(named, description)] = field_violations(raised.value)
    assert named == field and description and description in raised.value.details()


def test_a_message_that_is_not_protobuf_is_a_bad_request_on_the_whole_request(server: Running) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        server.channel.unary_unary("/nba.v1.DecisionService/Decide")(b"\xff\xff\xff", timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(raised.value)] == ["request"]


def test_limits_themselves_are_accepted(server: Running) -> None:
    decide(server, context=deep(MAX_CONTEXT_DEPTH))
    decide(server, context={"xs": list(range(MAX_CONTEXT_LEAVES))})


def test_a_decision_in_flight_is_not_affected_by_errors_of_others(server: Running) -> None:
    with pytest.raises(grpc.RpcError):
        decide(server, channel="fax")
    assert len(decide(server, limit=2).offers) == 2


def test_concurrent_calls_with_one_request_id_get_one_decision(server: Running) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: decide(server, request_id="req-race", limit=2), range(16)))
    assert len({r.decision_id for r in responses}) == 1
    assert sum(not r.replayed for r in responses) == 1
    server.service.log.flush()
    assert server.service.store.count_decisions() == 1
