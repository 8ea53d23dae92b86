"""One request body for ValidatePolicySet, PreviewPolicySet and PublishPolicySet (the README's
publish.json): `comment` and `expected_live_version` are accepted by all three, and the
precondition is checked alike."""

from __future__ import annotations

import grpc
import pytest
from conftest import POLICIES, VIEWER_TOKEN, Running
from google.protobuf import json_format

from nba.v1 import admin_service_pb2 as apb


def body(**fields: object) -> dict:
    files = {p.name: p.read_text() for p in POLICIES.glob("*.yaml") if not p.name.endswith("_test.yaml")}
    return {"draft": {"files": files}, "comment": "weekly review", "expected_live_version": 1, **fields}


REQUESTS = [
    ("ValidatePolicySet", apb.ValidatePolicySetRequest),
    ("PreviewPolicySet", apb.PreviewPolicySetRequest),
    ("PublishPolicySet", apb.PublishPolicySetRequest),
]


def call(server: Running, method: str, request_type: type, fields: dict) -> object:
    # Parsed as grpcurl parses JSON: an unknown field is an error, not ignored.
    request = json_format.ParseDict(fields, request_type(), ignore_unknown_fields=False)
    return getattr(server.admin, method)(request, metadata=server.auth())


@pytest.mark.parametrize(("method", "request_type"), REQUESTS)
def test_the_readme_body_is_accepted_by_every_call(server: Running, method: str, request_type: type) -> None:
    reply = call(server, method, request_type, body())
    assert reply.ByteSize() > 0


@pytest.mark.parametrize(("method", "request_type"), REQUESTS)
def test_a_version_no_longer_live_is_refused_alike(server: Running, method: str, request_type: type) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call(server, method, request_type, body(expected_live_version=2))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION, raised.value.details()
    assert "expected_live_version" in raised.value.details() or "live" in raised.value.details()


@pytest.mark.parametrize(("method", "request_type"), REQUESTS[:2])
def test_a_negative_version_is_invalid_argument_naming_the_field(server: Running, method: str, request_type: type) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call(server, method, request_type, body(expected_live_version=-3))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("expected_live_version:")


def test_a_viewer_may_validate_and_preview_with_the_same_body(server: Running) -> None:
    for method, request_type in REQUESTS[:2]:
        request = json_format.ParseDict(body(), request_type())
        assert getattr(server.admin, method)(request, metadata=server.auth(VIEWER_TOKEN)).ByteSize() > 0
