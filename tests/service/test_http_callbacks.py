"""Campaign callbacks (``POST /v1/callbacks/{source}``) through a real server with the two
example sources (``examples/callbacks.yaml``): a signed payload applies, each event answered;
an unsigned, wrongly signed, stale or replayed one is refused and applies nothing; a secret is
rotated by sending two signatures; an event whose decision is not written yet is answered 503
so that the tool sends it again."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, Running, customer, struct
from sqlalchemy import func, select

from nba.ids import new_decision_id
from nba.service.http.callbacks import CallbackSources, signature_of
from nba.storage.tables import FEEDBACK
from nba.v1 import decision_service_pb2 as pb

SOURCES = ROOT / "examples" / "callbacks.yaml"
GENERIC = "generic-secret-0123456789abcdef"
MAILER_OLD, MAILER_NEW = "mailer-old-secret-0123456789", "mailer-new-secret-0123456789"


@pytest.fixture
def server(start, monkeypatch: pytest.MonkeyPatch) -> Running:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NBA_CALLBACK_GENERIC_SECRETS", GENERIC)
    monkeypatch.setenv("NBA_CALLBACK_MAILER_SECRETS", f"{MAILER_OLD},{MAILER_NEW}")
    return start(http_port=0, callback_sources=SOURCES)  # type: ignore[no-any-return]


def post(
    server: Running, source: str, payload: Any, secrets: list[str] | None = None, at: int | None = None, raw: bytes | None = None
) -> httpx.Response:
    body = raw if raw is not None else json.dumps(payload).encode()
    stamp = str(at if at is not None else int(time.time()))
    headers = {"content-type": "application/json"}
    if secrets is not None:
        headers["nba-timestamp"] = stamp
        headers["nba-signature"] = ",".join(f"v1={signature_of(s.encode(), stamp, body)}" for s in secrets)
    assert server.service.http is not None
    return httpx.post(
        f"http://127.0.0.1:{server.service.http.port}/v1/callbacks/{source}", content=body, headers=headers, timeout=30
    )


def stored(server: Running) -> int:
    with server.service.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(FEEDBACK)).scalar_one())


def decide(server: Running, customer_id: str) -> pb.DecideResponse:
    return server.stub.Decide(
        pb.DecideRequest(customer_id=customer_id, channel="email", context=struct({"customer": customer()}))
    )


def test_a_signed_payload_applies_and_is_taken_once(server: Running) -> None:
    d = decide(server, "c-1")
    event = {
        "event_id": "g-1",
        "decision_id": d.decision_id,
        "offer_id": d.offers[0].offer_id,
        "outcome": "OUTCOME_CLICKED",
        "occurred_at": None,
    }
    stamp = int(time.time())
    body = json.dumps({"events": [{**event, "outcome": "clicked"}]}).encode()
    answer = post(server, "generic", None, [GENERIC], stamp, body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "source": "generic",
        "results": [
            {"index": 0, "event_id": "g-1", "status": "applied", "error_code": "", "error_message": "", "error_field": ""}
        ],
    }
    assert stored(server) == 1
    replayed = post(server, "generic", None, [GENERIC], stamp, body)  # the same signed request again
    assert replayed.status_code == 409 and replayed.json()["code"] == "ALREADY_EXISTS"
    assert "taken before" in replayed.json()["detail"]
    again = post(server, "generic", None, [GENERIC], stamp - 1, body)  # the tool's retry, signed anew: a duplicate
    assert again.json()["results"][0]["status"] == "duplicate" and stored(server) == 1


def test_a_wrong_missing_or_stale_signature_is_401_and_applies_nothing(server: Running) -> None:
    d = decide(server, "c-2")
    payload = {
        "events": [{"event_id": "g-2", "decision_id": d.decision_id, "offer_id": d.offers[0].offer_id, "outcome": "clicked"}]
    }
    cases = {
        "no headers": post(server, "generic", payload),
        "another secret": post(server, "generic", payload, ["not-the-secret-0123456789"]),
        "an hour old": post(server, "generic", payload, [GENERIC], int(time.time()) - 3600),
        "from the future": post(server, "generic", payload, [GENERIC], int(time.time()) + 600),
    }
    body = json.dumps(payload).encode()
    stamp = str(int(time.time()))
    signature = signature_of(GENERIC.encode(), stamp, body)
    tampered = body.replace(b"clicked", b"accepted")  # the body changed after signing (or re-serialised)
    cases["a changed body"] = httpx.post(
        f"http://127.0.0.1:{server.service.http.port}/v1/callbacks/generic",  # type: ignore[union-attr]
        content=tampered,
        headers={"content-type": "application/json", "nba-timestamp": stamp, "nba-signature": f"v1={signature}"},
    )
    for name, answer in cases.items():
        assert answer.status_code == 401, (name, answer.text)
        assert answer.headers["www-authenticate"].startswith("NBA-Signature")
        assert answer.headers["content-type"] == "application/problem+json" and answer.json()["code"] == "UNAUTHENTICATED"
    assert "nba-timestamp" in cases["an hour old"].json()["detail"]
    assert stored(server) == 0
    assert post(server, "nobody", payload, [GENERIC]).status_code == 404


def test_the_mailer_source_maps_its_own_payload_and_a_secret_rotates(server: Running) -> None:
    d = decide(server, "c-3")
    offer = d.offers[0].offer_id
    now = int(time.time())

    def event(n: int, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "email": "ada@example.com",
            "timestamp": now,
            "event": name,
            "sg_event_id": f"sg-{n}",
            "sg_message_id": "m-1",
            "nba_decision_id": d.decision_id,
            "nba_offer_id": offer,
            **extra,
        }

    payload = [
        event(1, "processed"),
        event(2, "delivered"),
        event(3, "open"),
        event(4, "click"),
        event(5, "exploded"),
        event(6, "click", nba_decision_id=7),
    ]
    # signed with the old and the new secret while the new one rolls out; the server holds both
    answer = post(server, "mailer", payload, [MAILER_OLD, MAILER_NEW])
    assert answer.status_code == 200, answer.text
    statuses = [(r["event_id"], r["status"]) for r in answer.json()["results"]]
    assert statuses == [
        ("sg-1", "ignored"),
        ("sg-2", "applied"),
        ("sg-3", "stored"),
        ("sg-4", "applied"),
        ("sg-5", "refused"),
        ("sg-6", "refused"),
    ]
    refused = answer.json()["results"][4]
    assert refused["error_code"] == "INVALID_ARGUMENT" and refused["error_field"] == "events[4].event"
    assert "'exploded' is no outcome this source maps" in refused["error_message"]
    unknown = answer.json()["results"][5]  # an id sent as a number is read as its text: no such decision
    assert (unknown["error_code"], unknown["error_field"]) == ("NOT_FOUND", "events[5].nba_decision_id")
    assert (
        post(server, "mailer", payload[:1], [MAILER_NEW]).status_code == 200
    )  # the new secret alone, once the tool has switched
    assert post(server, "mailer", payload[:1], ["mailer-retired-secret-0123"]).status_code == 401
    # a replay is refused whichever secret its signature matches (replicas mid-rotation differ)
    body = json.dumps(payload[1:2]).encode()
    stamp = int(time.time()) - 2
    assert post(server, "mailer", None, [MAILER_OLD], stamp, body).status_code == 200
    assert post(server, "mailer", None, [MAILER_NEW], stamp, body).status_code == 409
    strange_headers = (
        {"nba-timestamp": "\u00b2\u00b3", "nba-signature": "v1=00"},
        {"nba-timestamp": str(int(time.time())), "nba-signature": "v1=\u00e9"},
    )
    for headers in strange_headers:
        strange = httpx.post(
            f"http://127.0.0.1:{server.service.http.port}/v1/callbacks/mailer",  # type: ignore[union-attr]
            content=body,
            headers={"content-type": "application/json", **{k: v.encode("latin-1") for k, v in headers.items()}},
        )
        assert strange.status_code == 401, strange.text


def test_an_event_whose_decision_is_not_written_yet_is_503_so_the_tool_retries(
    start, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NBA_CALLBACK_GENERIC_SECRETS", GENERIC)
    monkeypatch.setenv("NBA_CALLBACK_MAILER_SECRETS", MAILER_NEW)
    # replicas on one database: a decision another one made a moment ago may still be on its way
    server: Running = start(http_port=0, callback_sources=SOURCES, bus="database")
    payload = {"events": [{"event_id": "g-9", "decision_id": new_decision_id(), "offer_id": "gold-card", "outcome": "clicked"}]}
    answer = post(server, "generic", payload, [GENERIC])
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
    assert "send the payload again" in answer.json()["detail"]
    assert post(server, "generic", payload, [GENERIC]).status_code == 503  # not taken as a replay: it was never taken


def test_a_sources_file_names_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  Mailer:\n    secret_env: lower\n    fields: {event_id: id}\n")
    with pytest.raises(Exception, match=r"callback_sources .*bad.yaml: sources"):
        CallbackSources.load(bad, environ={})
    with pytest.raises(Exception, match="the variable NBA_CALLBACK_GENERIC_SECRETS is not set"):
        CallbackSources.load(SOURCES, environ={"NBA_CALLBACK_MAILER_SECRETS": MAILER_NEW})
    with pytest.raises(Exception, match="shorter than 16 characters"):
        CallbackSources.load(SOURCES, environ={"NBA_CALLBACK_MAILER_SECRETS": "short", "NBA_CALLBACK_GENERIC_SECRETS": GENERIC})


def test_the_readme_signing_example_runs_as_written(server: Running) -> None:
    import re
    import shutil
    import subprocess

    from test_readme import section

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: the README signs with it")
    block = re.findall(r"```sh\n(.*?)```", section("### Campaign callbacks: `POST /v1/callbacks/{source}`"), flags=re.DOTALL)[0]
    script = "\n".join(line for line in block.splitlines() if not line.startswith("export "))
    script = script.replace("localhost:8080", f"127.0.0.1:{server.service.http.port}")  # type: ignore[union-attr]
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={"PATH": "/usr/bin:/bin", "NBA_CALLBACK_GENERIC_SECRETS": GENERIC},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads("".join(line[2:].strip() for line in block.splitlines() if line.startswith("# ")))
    assert json.loads(done.stdout) == shown
