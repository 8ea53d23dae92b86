"""``nba feedback import FILE`` and ``FeedbackBatch``: a campaign tool's file of responses sent to a
running service, one report line per line (applied, duplicate, late, refused with the reason),
safe to run again; over HTTP, ``POST /v1/feedback:batch`` answers item by item."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from conftest import Running, customer, struct
from sqlalchemy import func, select

from nba.cli import main
from nba.storage.tables import FEEDBACK
from nba.v1 import decision_service_pb2 as pb


def decisions(server: Running, n: int) -> list[pb.DecideResponse]:
    return [
        server.stub.Decide(pb.DecideRequest(customer_id=f"c-{i}", channel="web", context=struct({"customer": customer()})))
        for i in range(n)
    ]


def stored(server: Running) -> int:
    with server.service.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(FEEDBACK)).scalar_one())


def test_a_file_is_imported_with_a_report_line_each_and_a_second_run_applies_nothing(start, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    server: Running = start()
    made = decisions(server, 3)
    lines = ["event_id,decision_id,offer_id,outcome,reward,occurred_at"]
    for n, d in enumerate(made):
        lines.append(f"imp-{n},{d.decision_id},{d.offers[0].offer_id},clicked,,")
    lines.append(f"imp-9,{made[0].decision_id},{made[0].offers[0].offer_id},OUTCOME_ACCEPTED,1.5,")
    lines.append(f"bad-1,{made[1].decision_id},{made[1].offers[0].offer_id},liked,,")  # no such outcome
    lines.append(f"bad-2,{'0' * 32},x,clicked,,")  # no such decision
    lines.append(f"bad-3,{made[2].decision_id},{made[2].offers[0].offer_id},clicked,lots,")  # a reward that is no number
    file = tmp_path / "responses.csv"
    file.write_text("\n".join(lines) + "\n")
    address = f"127.0.0.1:{server.port}"

    assert main(["feedback", "import", str(file), "--address", address, "--batch", "3"]) == 1  # something refused
    out = capsys.readouterr().out
    assert "7 lines" in out and "4 applied" in out and "3 refused" in out
    report = [json.loads(line) for line in (tmp_path / "responses.csv.report.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in report] == [
        (2, "applied"),
        (3, "applied"),
        (4, "applied"),
        (5, "applied"),
        (6, "refused"),
        (7, "refused"),
        (8, "refused"),
    ]
    assert "outcome" in report[4]["reason"] and report[5]["code"] == "NOT_FOUND" and "decision_id" in report[5]["reason"]
    assert report[6]["reason"] == "reward: must be a number, got 'lots'"
    assert stored(server) == 4

    # run again, as after an interruption: nothing applied twice
    assert main(["feedback", "import", str(file), "--address", address, "--report", str(tmp_path / "again.jsonl")]) == 1
    again = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [r["status"] for r in again[:4]] == ["duplicate"] * 4
    assert stored(server) == 4

    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(
        json.dumps(
            {
                "event_id": "j-1",
                "decision_id": made[1].decision_id,
                "offer_id": made[1].offers[0].offer_id,
                "outcome": "impressed",
            }
        )
        + "\n{not json\n"
        + json.dumps(
            {"event_id": "j-2", "decision_id": made[1].decision_id, "offer_id": "x", "outcome": "clicked", "colour": "red"}
        )
        + "\n"
    )
    assert main(["feedback", "import", str(jsonl), "--address", address, "--quiet"]) == 1
    report = [json.loads(line) for line in (tmp_path / "more.jsonl.report.jsonl").read_text().splitlines()]
    assert [r["status"] for r in report] == ["stored", "refused", "refused"]  # an impression after its click: kept, not learned
    assert report[1]["reason"].startswith("not JSON") and report[2]["reason"].startswith("colour: not a feedback field")


def test_no_service_is_exit_3_and_a_missing_file_exit_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["feedback", "import", str(tmp_path / "none.csv")]) == 2
    file = tmp_path / "one.jsonl"
    file.write_text(json.dumps({"event_id": "e", "decision_id": "d", "offer_id": "o", "outcome": "clicked"}) + "\n")
    assert main(["feedback", "import", str(file), "--address", "127.0.0.1:1", "--quiet"]) == 3
    assert "--address 127.0.0.1:1: UNAVAILABLE" in capsys.readouterr().err


def test_the_batch_over_http_answers_item_by_item(start) -> None:  # type: ignore[no-untyped-def]
    server: Running = start(http_port=0)
    made = decisions(server, 1)[0]
    good = {"event_id": "h-1", "decision_id": made.decision_id, "offer_id": made.offers[0].offer_id, "outcome": "OUTCOME_CLICKED"}
    events = [good, {**good, "event_id": "h-2", "offer_id": "nope"}, {**good, "event_id": ""}, good]
    with httpx.Client(base_url=f"http://127.0.0.1:{server.service.http.port}", timeout=30) as http:
        answer = http.post("/v1/feedback:batch", json={"events": events})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert results[0]["feedback"]["applied"] is True
    assert (results[1]["error_code"], results[1]["error_field"]) == ("NOT_FOUND", "events[1].offer_id")
    assert (results[2]["error_code"], results[2]["error_field"]) == ("INVALID_ARGUMENT", "events[2].event_id")
    assert results[3]["feedback"]["duplicate"] is True  # the same event twice in one batch: once
