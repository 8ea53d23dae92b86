"""The HTTP/JSON API on its own port, beside gRPC in the same service: the same calls give the
same results over both; every error is a problem details object (RFC 9457) with the status of
the gRPC code and the field at fault; tokens and roles as on gRPC; limits, media types, CORS,
TLS and metrics (a database away: 503 with Retry-After, in storage/test_faults.py). Through a real server (uvicorn on a real port), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from conftest import EDITOR_TOKEN, POLICIES, VIEWER_TOKEN, Running, customer, struct
from google.protobuf import json_format

from nba.v1 import decision_service_pb2 as pb
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

EDITOR = {"authorization": f"Bearer {EDITOR_TOKEN}"}
VIEWER = {"authorization": f"Bearer {VIEWER_TOKEN}"}


def client(server: Running, **options: Any) -> httpx.Client:
    assert server.service.http is not None
    return httpx.Client(base_url=f"http://127.0.0.1:{server.service.http.port}", timeout=30, **options)


def as_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response's problem details, checked for the shape every error has."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"] == "about:blank"
    return body  # type: ignore[no-any-return]


def test_the_same_calls_over_http_and_grpc_give_the_same_results(start) -> None:  # type: ignore[no-untyped-def]
    server: Running = start(http_port=0)
    profiles = ppb_grpc.ProfileServiceStub(server.channel)
    context = {"customer": customer()}
    with client(server) as http:
        # a decision made over gRPC is replayed over HTTP by its request_id, and the other way round
        by_grpc = server.stub.Decide(
            pb.DecideRequest(request_id="r-1", customer_id="c-1", channel="web", limit=2, context=struct(context))
        )
        replayed = http.post(
            "/v1/decide", json={"request_id": "r-1", "customer_id": "c-1", "channel": "web", "limit": 2, "context": context}
        )
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["replayed"] is True
        assert {k: v for k, v in replayed.json().items() if k != "replayed"} == {
            k: v for k, v in as_json(by_grpc).items() if k != "replayed"
        }
        by_http = http.post(
            "/v1/decide",
            json={"customer_id": "c-1", "channel": "web", "limit": 2, "context": context},
            headers={"idempotency-key": "r-2"},  # the header is the request_id
        ).json()
        again = server.stub.Decide(
            pb.DecideRequest(request_id="r-2", customer_id="c-1", channel="web", limit=2, context=struct(context))
        )
        assert again.replayed and as_json(again)["decision_id"] == by_http["decision_id"]
        assert [o["offer_id"] for o in by_http["offers"]] == [o.offer_id for o in again.offers]

        # feedback sent over one is a duplicate over the other; its key reused for another outcome is a conflict
        offer = by_http["offers"][0]["offer_id"]
        sent = {"event_id": "f-1", "decision_id": by_http["decision_id"], "offer_id": offer, "outcome": "OUTCOME_CLICKED"}
        first = http.post("/v1/feedback", json=sent)
        assert first.status_code == 200 and first.json() == {
            "applied": True,
            "reward": first.json()["reward"],
            "duplicate": False,
            "late": False,
        }
        echo = server.stub.Feedback(
            pb.FeedbackRequest(event_id="f-1", decision_id=by_http["decision_id"], offer_id=offer, outcome=pb.OUTCOME_CLICKED)
        )
        assert echo.duplicate and as_json(echo)["reward"] == first.json()["reward"]
        clash = problem(http.post("/v1/feedback", json={**sent, "outcome": "OUTCOME_ACCEPTED"}), 409)
        assert clash["field"] == "event_id" and clash["code"] == "ALREADY_EXISTS"
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.Feedback(
                pb.FeedbackRequest(
                    event_id="f-1", decision_id=by_http["decision_id"], offer_id=offer, outcome=pb.OUTCOME_ACCEPTED
                )
            )
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS and caught.value.details() == clash["detail"]

        # an event tracked over HTTP is on the profile gRPC reads, and GetProfile says the same over both
        tracked = http.post(
            "/v1/track",
            json={"event_id": "t-1", "type": "complaint", "customer_id": "c-1", "source": "web", "properties": {"topic": "fees"}},
        )
        assert tracked.status_code == 200 and tracked.json()["customer_id"] == "c-1", tracked.text
        profiles.Track(ppb.TrackRequest(event_id="t-2", type="complaint", customer_id="c-1", properties=struct({"topic": "app"})))
        assert http.post(
            "/v1/track", json={"event_id": "t-2", "type": "complaint", "customer_id": "c-1", "properties": {"topic": "app"}}
        ).json()["duplicate"]
        over_grpc = profiles.GetProfile(ppb.GetProfileRequest(customer_id="c-1"), metadata=Running.auth())
        over_http = http.get("/v1/profiles/c-1", headers=EDITOR)
        assert over_http.status_code == 200, over_http.text
        assert over_http.json() == as_json(over_grpc)
        assert over_http.json()["version"] == "2"  # proto3 JSON: 64-bit integers as text
        masked = http.get("/v1/profiles/c-1", params={"read_mask": "customer_id,version"}, headers=EDITOR).json()
        assert masked["customer_id"] == "c-1" and masked["version"] == "2" and not masked.get("attributes")
        assert http.head("/v1/profiles/c-1", headers=EDITOR).status_code == 200  # HEAD: GET's answer, no body
        both = problem(
            http.get("/v1/profiles/c-1", params={"identifier_kind": "email", "identifier_value": "a@b.co"}, headers=EDITOR), 400
        )
        assert both["field"] == "identifier_kind" and "not a query parameter of this call" in both["detail"]
        by_identifier = http.get(
            "/v1/profiles", params={"identifier_kind": "email", "identifier_value": "nobody@example.com"}, headers=EDITOR
        )
        assert problem(by_identifier, 404)["code"] == "NOT_FOUND"


def test_a_batch_answers_item_by_item(start) -> None:  # type: ignore[no-untyped-def]
    server: Running = start(http_port=0)
    with client(server) as http:
        events = [
            {"event_id": "b-1", "type": "complaint", "customer_id": "c-2", "properties": {"topic": "fees"}},
            {"event_id": "", "type": "complaint", "customer_id": "c-2"},
            {"event_id": "b-3", "type": "complaint", "customer_id": "c-2", "occurred_at": "2999-01-01T00:00:00Z"},
        ]
        answer = http.post("/v1/track:batch", json={"events": events})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert results[0]["tracked"]["customer_id"] == "c-2" and not results[0]["error_code"]
        assert (results[1]["error_code"], results[1]["error_field"]) == ("INVALID_ARGUMENT", "events[1].event_id")
        assert (results[2]["error_code"], results[2]["error_field"]) == ("INVALID_ARGUMENT", "events[2].occurred_at")
        again = http.post("/v1/track:batch", json={"events": events[:1]}).json()["results"][0]
        assert again["tracked"]["duplicate"] is True  # re-sent: nothing applied twice


def test_every_error_is_a_problem_with_the_status_of_its_grpc_code(start) -> None:  # type: ignore[no-untyped-def]
    server: Running = start(http_port=0)
    with client(server) as http:
        missing = problem(http.post("/v1/decide", json={"channel": "web"}), 400)
        assert missing["field"] == "customer_id" and missing["errors"][0]["field"] == "customer_id"
        wrong_type = problem(http.post("/v1/decide", json={"customer_id": "c", "channel": "web", "limit": "three"}), 400)
        assert wrong_type["detail"] == "limit: must be a whole number, got a text"
        nested = problem(http.post("/v1/track:batch", json={"events": [{"event_id": "x", "properties": 3}]}), 400)
        assert nested["field"] == "events[0].properties" and "must be a JSON object" in nested["detail"]
        unknown = problem(http.post("/v1/decide", json={"customer_id": "c", "chanel": "web"}), 400)
        assert unknown["detail"] == "chanel: no such field" and unknown["field"] == "chanel"
        broken = problem(
            http.post(
                "/v1/decide", content=b'{"customer_id": "c",\n "channel": web}', headers={"content-type": "application/json"}
            ),
            400,
        )
        assert broken["detail"].startswith("body: not JSON at line 2, column 13")
        assert (
            problem(
                http.post("/v1/decide", content=b"customer_id=c", headers={"content-type": "application/x-www-form-urlencoded"}),
                415,
            )["field"]
            == "content-type"
        )
        deep: Any = 1
        for _ in range(40):
            deep = {"a": deep}
        assert (
            "nested 41 levels deep, more than 24"
            in problem(http.post("/v1/decide", json={"customer_id": "c", "context": deep}), 400)["detail"]
        )
        too_large = http.post(
            "/v1/track", content=b"{" + b" " * (9 * 1024 * 1024) + b"}", headers={"content-type": "application/json"}
        )
        assert "more than 8,388,608" in problem(too_large, 413)["detail"]
        unknown_decision = problem(
            http.post(
                "/v1/feedback", json={"event_id": "e", "decision_id": "0" * 32, "offer_id": "o", "outcome": "OUTCOME_CLICKED"}
            ),
            404,
        )
        assert unknown_decision["field"] == "decision_id"
        assert "no route" in problem(http.get("/v1/nothing"), 404)["detail"]
        not_allowed = http.get("/v1/decide")
        assert problem(not_allowed, 405) and not_allowed.headers["allow"] == "POST"
        key_twice = problem(
            http.post(
                "/v1/decide", json={"customer_id": "c", "channel": "web", "request_id": "a"}, headers={"idempotency-key": "b"}
            ),
            400,
        )
        assert key_twice["field"] == "request_id"
        query = problem(http.get("/v1/admin/policy-set/versions", params={"page_size": "many"}, headers=EDITOR), 400)
        assert query["detail"] == "page_size: must be a whole number, got 'many'"
        # tokens and roles, as on gRPC
        anonymous = http.get("/v1/profiles/c-1")
        assert problem(anonymous, 401)["code"] == "UNAUTHENTICATED" and anonymous.headers["www-authenticate"].startswith("Bearer")
        assert (
            problem(http.get("/v1/admin/policy-set", headers={"authorization": "Bearer nope"}), 401)["detail"]
            == "authorization: unknown token"
        )
        live = http.get("/v1/admin/policy-set", headers=VIEWER)
        assert live.status_code == 200 and live.json()["version"] == "1"
        files = {p.name: p.read_text() for p in POLICIES.glob("*.yaml")}
        files["channels.yaml"] += "\n# edited over HTTP\n"
        draft = {"draft": {"files": files}, "comment": "over HTTP", "expected_live_version": "1"}
        denied = problem(http.post("/v1/admin/policy-set:publish", json=draft, headers=VIEWER), 403)
        assert denied["code"] == "PERMISSION_DENIED" and "needs an editor" in denied["detail"]
        published = http.post("/v1/admin/policy-set:publish", json=draft, headers=EDITOR)
        assert published.status_code == 200, published.text
        assert published.json()["live"]["version"] == "2" and not published.json()["unchanged"]
        stale = problem(http.post("/v1/admin/policy-set:publish", json=draft, headers=EDITOR), 412)
        assert stale["code"] == "FAILED_PRECONDITION"
        bad = {"draft": {"files": {**files, "offers.yaml": "offers: [{id: x}]"}}}
        refused = http.post("/v1/admin/policy-set:validate", json=bad, headers=EDITOR)
        assert refused.status_code == 200 and refused.json()["valid"] is False and refused.json()["problems"]
        invalid = problem(http.post("/v1/admin/policy-set:publish", json=bad, headers=EDITOR), 400)
        assert invalid["problems"] and invalid["errors"][0]["field"].startswith("offers.yaml")
