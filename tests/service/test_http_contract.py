"""The HTTP API's surface, which does not depend on the store (SQLite only here): CORS, the
metrics, the OpenAPI document's content, and the document is true: schemathesis generates requests for every operation from it
(property-based: valid and invalid bodies, parameters and headers), sends them to a real server
and checks every answer against the document: no server error, only the statuses documented,
the content types and bodies they promise, invalid data refused, no call that needs a token
answered without one. With an editor's token, and with none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EDITOR_TOKEN, ROOT, Running, customer
from prometheus_client import REGISTRY
from test_http_api import client, problem

ST = Path(sys.executable).parent / "st"
#: every check but positive_data_acceptance: the document cannot say every rule a valid call
#: obeys (a channel the policy set declares, a decision that exists), so a request the schema
#: allows may still be refused, with a 4xx the document lists
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the document and the checks do not depend on the store (the calls' behaviour
    on both is the other tests' work)."""
    return f"sqlite:///{tmp_path / 'nba.db'}"


@pytest.mark.parametrize("token", [EDITOR_TOKEN, None], ids=["editor", "anonymous"])
def test_schemathesis_finds_no_failure(start, tmp_path: Path, token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NBA_CALLBACK_GENERIC_SECRETS", "generic-secret-0123456789abcdef")
    monkeypatch.setenv("NBA_CALLBACK_MAILER_SECRETS", "mailer-secret-0123456789abcdef")
    server: Running = start(http_port=0, callback_sources=ROOT / "examples" / "callbacks.yaml")
    assert server.service.http is not None
    command = [
        str(ST),
        "run",
        f"http://127.0.0.1:{server.service.http.port}/openapi.json",
        *CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "20",
        "--seed",
        "20261130",
        "--workers",
        "1",
        "--no-color",
    ]
    if token is not None:
        command += ["--header", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    summary = done.stdout[-4000:]
    assert done.returncode == 0, summary
    assert "Selected: 17/17" in done.stdout and "Tested: 17" in done.stdout, summary
    assert " passed" in done.stdout and "failure" not in done.stdout.split("SUMMARY", 1)[-1].lower(), summary


def test_cors_is_off_unless_origins_are_configured(start) -> None:  # type: ignore[no-untyped-def]
    ask = {
        "origin": "https://app.example.com",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    with client(start(http_port=0)) as http:
        answer = http.options("/v1/decide", headers=ask)
        assert "access-control-allow-origin" not in answer.headers
        assert problem(answer, 405)
    with client(start(http_port=0, http_cors_origins=["https://app.example.com"])) as http:
        allowed = http.options("/v1/decide", headers=ask)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        stranger = http.options("/v1/decide", headers={**ask, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers


@pytest.fixture
def server(start) -> Running:  # type: ignore[no-untyped-def]
    return start(http_port=0)  # type: ignore[no-any-return]


def test_http_requests_are_counted_by_route_and_status(server: Running) -> None:
    def count(route: str, status: str) -> float:
        return REGISTRY.get_sample_value("nba_http_requests_total", {"route": route, "status": status}) or 0.0

    before = (count("POST /v1/decide", "200"), count("POST /v1/decide", "400"), count("unrouted", "404"))
    with client(server) as http:
        http.post("/v1/decide", json={"customer_id": "c", "channel": "web", "context": {"customer": customer()}})
        http.post("/v1/decide", json={"channel": "web"})
        http.get("/nowhere")
    after = (count("POST /v1/decide", "200"), count("POST /v1/decide", "400"), count("unrouted", "404"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    assert (REGISTRY.get_sample_value("nba_http_request_duration_seconds_count", {"route": "POST /v1/decide"}) or 0) >= 2


def test_the_openapi_document_lists_every_call_and_its_statuses(server: Running) -> None:
    with client(server) as http:
        document = http.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations >= {
        ("POST", "/v1/decide"),
        ("POST", "/v1/feedback"),
        ("POST", "/v1/track"),
        ("POST", "/v1/track:batch"),
        ("GET", "/v1/profiles/{customer_id}"),
    }
    assert sorted(document["paths"]["/v1/admin/policy-set:publish"]["post"]["responses"]) == [
        "200",
        "400",
        "401",
        "403",
        "412",
        "413",
        "415",
        "503",
        "504",
    ]
    decide = document["components"]["schemas"]["nba.v1.DecideRequest"]
    assert decide["properties"]["limit"]["type"] == ["integer", "null"]
    assert decide["properties"]["limit"]["description"].startswith("How many offers to return")  # the .proto's comment
    assert "request_id" in decide["properties"] and decide["additionalProperties"] is False
    assert not any("422" in item[m]["responses"] for item in document["paths"].values() for m in item)
