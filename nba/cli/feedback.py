"""``nba feedback import FILE``: a campaign tool's file of responses (CSV or JSON Lines) sent to a
running service by ``FeedbackBatch``, with a report line for every line of the file.

Each line is one feedback event: ``event_id``, ``decision_id``, ``offer_id``, ``outcome``
(``clicked``, ``CLICKED`` or ``OUTCOME_CLICKED``), and optionally ``reward`` and ``occurred_at``
(RFC 3339). The events go to the service in batches; each is checked and applied as
``Feedback`` would, idempotent by ``event_id``, so the command is safe to run again after an
interruption: what was applied answers ``duplicate``. A batch the service cannot take now
(UNAVAILABLE) is sent again, with backoff, before its events are reported refused.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from nba.cli.common import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, CliError, _readable_file

#: events a FeedbackBatch call carries
BATCH = 500
#: attempts of a batch the service answers UNAVAILABLE, waiting 0.5, 1, 2 ... s between them
ATTEMPTS = 6
_FIELDS = ("event_id", "decision_id", "offer_id", "outcome", "reward", "occurred_at")


def _feedback(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from nba.v1 import decision_service_pb2 as pb
    from nba.v1 import decision_service_pb2_grpc as pb_grpc

    path = _readable_file(args.file, "FILE")
    report_path = Path(args.report) if args.report else path.with_name(path.name + ".report.jsonl")
    if not 1 <= args.batch <= 1000:
        raise CliError(f"--batch: {args.batch}: 1 to 1000 events a call")
    try:
        report = report_path.open("w")
    except OSError as exc:
        raise CliError(f"--report {report_path}: cannot write: {exc.strerror}") from None
    channel = grpc.insecure_channel(args.address)
    try:  # no service at all is said at once, not after the retries meant for a service's outage
        grpc.channel_ready_future(channel).result(timeout=3)
    except grpc.FutureTimeoutError:
        channel.close()
        report.close()
        raise CliError(f"--address {args.address}: UNAVAILABLE: no service answers there", EXIT_UNAVAILABLE) from None
    stub = pb_grpc.DecisionServiceStub(channel)
    totals: Counter[str] = Counter()
    shown = 0
    progress = sys.stderr.isatty() and not args.quiet
    lines = _count_lines(path)
    started = time.monotonic()
    try:
        with report:
            for batch in _batches(path, args.batch):
                requests: list[tuple[int, Any]] = []
                entries: list[tuple[int, str, str, str, str]] = []  # line, event_id, status, reason, code
                for number, fields, problem in batch:
                    event_id = str(fields.get("event_id", "") or "")
                    if problem is not None:
                        entries.append((number, event_id, "refused", problem, "INVALID_ARGUMENT"))
                        continue
                    try:
                        requests.append((number, json_format.ParseDict(_request_json(fields), pb.FeedbackRequest())))
                    except json_format.ParseError as exc:
                        entries.append((number, event_id, "refused", _parse_reason(exc), "INVALID_ARGUMENT"))
                for (number, request), result in zip(requests, _send(stub, [r for _, r in requests]), strict=True):
                    if result.error_code:
                        reason = result.error_message.split(": ", 1)[-1]
                        entries.append((number, request.event_id, "refused", reason, result.error_code))
                    else:
                        entries.append((number, request.event_id, _status(result.feedback), "", ""))
                for number, event_id, status, reason, code in sorted(entries):
                    _report(report, totals, number, event_id, status, reason, code)
                    if status == "refused" and shown < 5:
                        print(f"line {number}: refused: {reason}")
                        shown += 1
                if progress:
                    done = sum(totals.values())
                    share = done / lines if lines else 1.0
                    bar = "#" * int(share * 30)
                    sys.stderr.write(f"\r[{bar:30}] {done:,}/{lines:,} lines ({share:.0%})")
                    sys.stderr.flush()
    except grpc.RpcError as exc:
        raise CliError(f"--address {args.address}: {exc.code().name}: {exc.details()}", EXIT_UNAVAILABLE) from None
    finally:
        channel.close()
        if progress:
            sys.stderr.write("\n")
    seconds = time.monotonic() - started
    summary = ", ".join(f"{totals[k]:,} {k}" for k in ("applied", "duplicate", "late", "stored", "refused") if totals[k])
    print(f"{sum(totals.values()):,} lines in {seconds:.1f} s: {summary or 'nothing'}; the report: {report_path}")
    return EXIT_FAILED if totals["refused"] else EXIT_OK


def _status(answer: Any) -> str:
    if answer.duplicate:
        return "duplicate"
    if answer.late:
        return "late"
    return "applied" if answer.applied else "stored"


def _send(stub: Any, requests: list[Any]) -> list[Any]:
    """One result a request; a call the service cannot take now is retried with backoff."""
    import grpc

    from nba.v1 import decision_service_pb2 as pb

    if not requests:
        return []
    results: list[Any] = [None] * len(requests)
    pending = list(range(len(requests)))
    delay = 0.5
    for attempt in range(ATTEMPTS):
        try:
            answer = stub.FeedbackBatch(pb.FeedbackBatchRequest(events=[requests[i] for i in pending]), timeout=120)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == ATTEMPTS - 1:
                raise
            time.sleep(delay)
            delay *= 2
            continue
        retry = []
        for i, result in zip(pending, answer.results, strict=True):
            results[i] = result
            if result.error_code == "UNAVAILABLE":
                retry.append(i)
        if not retry or attempt == ATTEMPTS - 1:
            break
        pending = retry
        time.sleep(delay)
        delay *= 2
    return results


def _request_json(fields: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in fields.items() if k in _FIELDS and v not in (None, "")}
    outcome = str(out.get("outcome", "")).strip().upper()
    if outcome and not outcome.startswith("OUTCOME_"):
        outcome = "OUTCOME_" + outcome
    if outcome:
        out["outcome"] = outcome
    if isinstance(out.get("reward"), str):
        try:
            out["reward"] = float(out["reward"])
        except ValueError:
            pass  # json_format names it
    return out


def _parse_reason(exc: Exception) -> str:
    """json_format's complaint as ``field: what to fix``."""
    text = str(exc).split("\n", 1)[0]
    if "enum" in text.lower():
        return "outcome: must be impressed, clicked, accepted or rejected"
    found = re.search(r"(?:Failed to parse (\w+) field: )?(.*?)(?: at \"?FeedbackRequest\.(\w+)\"?)?\.?$", text)
    field = (found.group(3) or found.group(1) or "") if found else ""
    reason = found.group(2) if found else text
    if field in ("reward",) and "parse float" in reason:
        return f"reward: must be a number, got {reason.rsplit(': ', 1)[-1]!r}"
    return f"{field}: {reason}"[:300] if field else reason[:300]


def _report(report: TextIO, totals: Counter[str], line: int, event_id: Any, status: str, reason: str, code: str) -> None:
    entry: dict[str, Any] = {"line": line, "event_id": str(event_id or ""), "status": status}
    if reason:
        entry["reason"] = reason
        entry["code"] = code
    report.write(json.dumps(entry) + "\n")
    totals[status] += 1


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        count = sum(1 for line in f if line.strip())
    return max(count - 1, 0) if path.suffix.lower() == ".csv" else count


def _batches(path: Path, size: int) -> Iterator[list[tuple[int, dict[str, Any], str | None]]]:
    """The file's lines as (line number, fields, what is wrong with the line or None), ``size`` at a time."""
    batch: list[tuple[int, dict[str, Any], str | None]] = []
    for entry in _lines(path):
        batch.append(entry)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte order mark is no header
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                missing = [
                    name for name in ("event_id", "decision_id", "offer_id", "outcome") if name not in (reader.fieldnames or [])
                ]
                if missing:
                    raise CliError(
                        f"FILE {path}: the CSV header lacks {', '.join(missing)} (it has: {', '.join(reader.fieldnames or [])})"
                    )
                for row in reader:
                    extra = [k for k in row if k not in _FIELDS and k is not None]
                    fields = {k: v for k, v in row.items() if k in _FIELDS}
                    problem = f"{extra[0]}: not a feedback field ({', '.join(_FIELDS)})" if extra else None
                    if None in row:
                        problem = "more values than the header names"
                    yield reader.line_num, fields, problem
            else:
                for number, text in enumerate(f, 1):
                    if not text.strip():
                        continue
                    try:
                        value = json.loads(text)
                    except json.JSONDecodeError as exc:
                        yield number, {}, f"not JSON at column {exc.colno}: {exc.msg}"
                        continue
                    if not isinstance(value, dict):
                        yield number, {}, "a line must be a JSON object"
                        continue
                    extra = [k for k in value if k not in _FIELDS]
                    yield number, value, (f"{extra[0]}: not a feedback field ({', '.join(_FIELDS)})" if extra else None)
    except UnicodeDecodeError as exc:
        raise CliError(f"FILE {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
