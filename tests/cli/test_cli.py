"""The ``nba`` command as an operator runs it: real processes, signals, and a client that
knows only the contract and server reflection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import LOCAL_SUBCHANNELS, POLICIES, ROOT, customer, free_port
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


class Process:
    def __init__(self, tmp_path: Path, port: int | None = None, metrics_port: int | None = None, **env: str) -> None:
        self.port = port or free_port()  # a restarted replica keeps its address
        self.metrics_port = metrics_port or free_port()
        self.env = {
            **os.environ,
            "NBA_PORT": str(self.port),
            "NBA_HOST": "127.0.0.1",
            "NBA_METRICS_PORT": str(self.metrics_port),
            "NBA_HTTP_PORT": "-1",
            "NBA_DATABASE_URL": f"sqlite:///{tmp_path / 'nba.db'}",
            "NBA_POLICIES": str(POLICIES),
            "NBA_WORKERS": "1",
            **env,
        }
        self.stderr = tmp_path / f"serve-{self.port}.log"
        with self.stderr.open("a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "nba", "serve"], cwd=ROOT, env=self.env, stderr=log)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=LOCAL_SUBCHANNELS)

    def wait_serving(self, timeout: float = 30.0) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr.read_text()
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service="nba.v1.DecisionService"), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not serving after {timeout}s:\n{self.stderr.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # say what it was doing (nba serve dumps its threads on SIGUSR1)
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"did not stop within 30 s of {signal.Signals(sig).name}:\n{self.stderr.read_text()[-6000:]}"
            ) from None


@pytest.fixture
def processes(tmp_path: Path, database_url: str):
    started: list[Process] = []

    def run(**env: str) -> Process:
        p = Process(tmp_path, NBA_DATABASE_URL=database_url, **env)
        started.append(p)
        p.wait_serving()
        return p

    yield run
    for p in started:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


class ReflectionClient:
    """Knows nothing of nba's Python code: it learns the contract from the server."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        self.service = self.pool.FindServiceByName("nba.v1.DecisionService")

    def call(self, method: str, body: dict) -> dict:
        m = self.service.FindMethodByName(method)
        request_cls = message_factory.GetMessageClass(m.input_type)
        response_cls = message_factory.GetMessageClass(m.output_type)
        stub = self.channel.unary_unary(
            f"/{self.service.full_name}/{method}",
            request_serializer=lambda msg: msg.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        response = stub(json_format.ParseDict(body, request_cls()), timeout=10)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)


def test_an_independent_client_decides_and_gives_feedback_through_reflection(processes) -> None:
    server = processes()
    client = ReflectionClient(server.channel)
    decision = client.call("Decide", {"customer_id": "c-9", "channel": "web", "context": {"customer": customer()}, "limit": 2})
    assert len(decision["offers"]) == 2 and decision["decision_id"]
    event = {
        "event_id": "ev-1",
        "decision_id": decision["decision_id"],
        "offer_id": decision["offers"][0]["offer_id"],
        "outcome": "OUTCOME_CLICKED",
    }
    assert client.call("Feedback", event) == {"applied": True, "reward": 0.3}
    assert client.call("Feedback", event) == {"duplicate": True, "reward": 0.3}
    for method, body, code in [
        ("Decide", {"channel": "web"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("Decide", {"customer_id": "c", "channel": "fax"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("Decide", {"customer_id": "c", "channel": "web", "limit": -3}, grpc.StatusCode.INVALID_ARGUMENT),
        ("Feedback", {**event, "event_id": "ev-2", "decision_id": "missing"}, grpc.StatusCode.NOT_FOUND),
        ("Feedback", {**event, "event_id": "ev-3", "offer_id": "security-check"}, grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            client.call(method, body)
        assert raised.value.code() == code, (body, raised.value.details())

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for expected in [
        'nba_decisions_total{channel="web"} 1.0',
        'nba_rpc_duration_seconds_count{method="Decide"} 4.0',
        'nba_rpc_duration_seconds_count{method="Feedback"} 4.0',
        'nba_feedback_total{outcome="clicked",result="applied"} 1.0',
        'nba_feedback_total{outcome="clicked",result="duplicate"} 1.0',
        'nba_offers_filtered_total{reason="eligibility"}',
        'nba_rpc_errors_total{code="INVALID_ARGUMENT",method="Decide"} 3.0',
    ]:
        assert expected in metrics, expected
    assert server.stop() == 0


def test_sigterm_flushes_every_decision_and_sigkill_loses_no_acknowledged_feedback(processes) -> None:
    # Decisions are written every 30 s at the earliest: only a graceful stop can write them.
    server = processes(NBA_LOG_FLUSH_SECONDS="30", NBA_LOG_BATCH_SIZE="100000", NBA_SNAPSHOT_SECONDS="3600")
    client = ReflectionClient(server.channel)
    decisions = [
        client.call("Decide", {"customer_id": f"c-{i}", "channel": "app", "context": {"customer": customer()}}) for i in range(50)
    ]
    assert server.stop(signal.SIGTERM) == 0
    assert stored_decisions(server.env["NBA_DATABASE_URL"]) == 50

    server = processes(NBA_SNAPSHOT_SECONDS="3600")
    client = ReflectionClient(server.channel)
    acknowledged = 0
    for i, d in enumerate(decisions):
        reply = client.call(
            "Feedback",
            {
                "event_id": f"k-{i}",
                "decision_id": d["decision_id"],
                "offer_id": d["offers"][0]["offer_id"],
                "outcome": "OUTCOME_ACCEPTED",
            },
        )
        acknowledged += reply.get("applied", False)
    assert acknowledged == 50
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL

    server = processes()
    client = ReflectionClient(server.channel)
    fresh = client.call("Decide", {"customer_id": "c", "channel": "app", "context": {"customer": customer()}})
    assert fresh["model_version"] == "linear-igw/50"  # every acknowledged event, replayed once
    assert server.stop() == 0


def stored_decisions(database_url: str) -> int:
    """The decisions in the log, counted in the database itself (without a `nba export` process)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("SELECT count(*) FROM decisions")).scalar_one()
    finally:
        engine.dispose()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nba", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_export_writes_one_decision_a_line_with_its_feedback(processes, tmp_path: Path) -> None:
    server = processes()
    client = ReflectionClient(server.channel)
    decision = client.call(
        "Decide", {"request_id": "r-1", "customer_id": "c-1", "channel": "web", "context": {"customer": customer()}, "limit": 2}
    )
    first = decision["offers"][0]["offer_id"]
    client.call(
        "Feedback", {"event_id": "x-1", "decision_id": decision["decision_id"], "offer_id": first, "outcome": "OUTCOME_IMPRESSED"}
    )
    client.call(
        "Feedback", {"event_id": "x-2", "decision_id": decision["decision_id"], "offer_id": first, "outcome": "OUTCOME_ACCEPTED"}
    )
    client.call("Decide", {"customer_id": "c-2", "channel": "email", "context": {"customer": customer()}})
    assert server.stop() == 0

    out = tmp_path / "export.jsonl"
    result = run_cli("export", "--out", str(out), env={"NBA_DATABASE_URL": server.env["NBA_DATABASE_URL"]})
    assert result.returncode == 0, result.stderr
    assert "exported 2 decisions" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["channel"] for line in lines] == ["web", "email"]
    line = lines[0]
    assert set(line) == {
        "decision_id",
        "request_id",
        "customer_id",
        "channel",
        "decided_at",
        "policy_version",
        "model_version",
        "profile_version",
        "features",
        "candidates",
        "offers",
        "feedback",
        "rewards",
        "closed",
    }
    assert line["profile_version"] == 0  # the sample set's profile section: no event named the customer
    assert line["features"]["profile.complaints_30d"] == 0
    assert line["closed"] is False  # its reward windows are still open
    assert line["decision_id"] == decision["decision_id"] and line["request_id"] == "r-1"
    assert line["features"]["customer.age"] == 34
    assert [o["slot"] for o in line["offers"]] == [1, 2]
    assert all(0 < o["propensity"] <= 1 for o in line["offers"])
    assert [(f["event_id"], f["outcome"], f["applied"]) for f in line["feedback"]] == [
        ("x-1", "impressed", True),
        ("x-2", "accepted", True),
    ]
    assert line["rewards"] == {first: 1.0}
    assert lines[1]["feedback"] == [] and lines[1]["rewards"] == {}
    # Every exported line passes the logged-data contract, and the export evaluates as a log.
    from nba.evaluation.logs import validate_line

    for number, exported in enumerate(lines, start=1):
        validate_line(exported, f"export line {number}")
    evaluated = run_cli("evaluate", "--log", str(out), "--policy", "logged", "--bootstrap", "10", "--include-open")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "2 decisions from" in evaluated.stdout and (tmp_path / "export.evaluation.html").exists()

    # A decision an older version stored outside today's contract (a reward of 1e308, accepted
    # before rewards had a range) is left out of an evaluation of the service's own log, with
    # a warning naming it, rather than stopping the run: nobody can edit that log.
    import sqlalchemy

    engine = sqlalchemy.create_engine(server.env["NBA_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE feedback SET reward = 1e308, pair_reward = 1e308 WHERE event_id = 'x-2'"))
    engine.dispose()
    own = run_cli(
        "evaluate",
        "--database-url",
        server.env["NBA_DATABASE_URL"],
        "--policy",
        "logged",
        "--bootstrap",
        "10",
        "--include-open",
        "--html",
        str(tmp_path / "own.html"),
    )
    assert own.returncode == 0, own.stderr
    assert "warning: 1 logged decisions break the logged-data contract and are left out" in own.stderr
    assert f"decision {decision['decision_id']}" in own.stderr and "1 decisions from" in own.stdout

    since = run_cli("export", "--out", "-", "--since", "2999-01-01", env={"NBA_DATABASE_URL": server.env["NBA_DATABASE_URL"]})
    assert since.returncode == 0 and since.stdout == ""
    # (a --since that is not a date: test_cli_errors, with the other bad invocations)


def test_serve_refuses_an_invalid_catalogue_naming_file_offer_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "channels: [web]\noffers:\n  - {id: x, name: X, channels: [web], eligibility: 'customer.age >'}\n"
    )
    result = run_cli(
        "serve",
        "--policies",
        str(tmp_path),
        "--port",
        str(free_port()),
        "--metrics-port",
        "-1",
        "--http-port",
        "-1",
        "--database-url",
        f"sqlite:///{tmp_path / 'x.db'}",
    )
    assert result.returncode == 1
    assert "bad.yaml: offer 'x': field 'eligibility': line 1, column" in result.stderr


def test_serve_refuses_bad_configuration_naming_the_setting() -> None:
    result = run_cli("serve", env={"NBA_PORT": "eighty"})
    assert result.returncode == 2
    assert "port (--port, NBA_PORT)" in result.stderr
    result = run_cli("serve", "--learner-alpha", "-1")
    assert result.returncode == 2 and "learner_alpha (--learner-alpha, NBA_LEARNER_ALPHA)" in result.stderr


def test_config_file_environment_and_flags_in_that_order(tmp_path: Path) -> None:
    from nba.config import load_settings

    config = tmp_path / "nba.yaml"
    config.write_text("port: 6000\nmetrics_port: 6001\nreward_clicked: 0.5\n")
    settings = load_settings({"metrics_port": "7001"}, environ={"NBA_PORT": "7000"}, config_file=config)
    assert (settings.port, settings.metrics_port, settings.reward_clicked) == (7000, 7001, 0.5)
    config.write_text("prot: 6000\n")
    with pytest.raises(ValueError, match="prot .*unknown setting"):
        load_settings(environ={}, config_file=config)


def test_policies_test_runs_the_examples() -> None:
    ok = run_cli("policies", "test", str(POLICIES))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "examples pass" in ok.stdout


def test_policies_test_reports_a_broken_expectation(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "channels: [web]\noffers:\n  - {id: x, name: X, channels: [web], eligibility: 'customer.age >= 18'}\n"
    )
    (tmp_path / "a_test.yaml").write_text("examples:\n  - {name: minors, channel: web, customer: {age: 12}, eligible: [x]}\n")
    result = run_cli("policies", "test", str(tmp_path))
    assert result.returncode == 1
    assert "FAIL a_test.yaml: 'minors': expected 'x' eligible, but eligibility" in result.stdout


# The example's code is what is checked (Decide and Feedback on each engine: the other tests
# here); test_readme runs it too, against `nba serve` as the README starts it.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_readme_python_example_runs(processes) -> None:
    server = processes()
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=ROOT,
        env={**os.environ, "NBA_ADDRESS": f"127.0.0.1:{server.port}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and lines[-1] == "applied 1.0"
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "examples" / "quickstart.py").read_text().split('"""\n\n', 1)[1].strip() in readme


def test_sighup_publishes_the_changed_folder_and_preview_compares_a_draft(processes, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "live-policies"
    shutil.copytree(POLICIES, folder)
    server = processes(
        NBA_POLICIES=str(folder), NBA_POLICIES_WATCH_SECONDS="0", NBA_ADMIN_TOKENS="ops:viewer:0123456789abcdef0123"
    )
    client = ReflectionClient(server.channel)
    for i in range(30):
        client.call("Decide", {"customer_id": f"c-{i}", "channel": "web", "context": {"customer": customer(age=18 + i)}})
    first = client.call("Decide", {"customer_id": "c", "channel": "web", "context": {"customer": customer()}})["policy_version"]
    assert first.startswith("1-")

    draft = tmp_path / "draft"
    shutil.copytree(folder, draft)
    with (draft / "policies.yaml").open("a") as f:
        f.write("\n  - {id: no-gold, type: eligibility, applies_to: {offers: [gold-card]}, rule: 'false'}\n")
    result = run_cli("policies", "preview", str(draft), "--last", "20", env={"NBA_DATABASE_URL": server.env["NBA_DATABASE_URL"]})
    assert result.returncode == 0, result.stderr
    assert "replayed 20 decisions against live 1-" in result.stdout
    assert "value of the live  set:" in result.stdout and "value of the draft set:" in result.stdout
    gold = next(line for line in result.stdout.splitlines() if line.startswith("gold-card"))
    assert "0.0%" in gold.split()[2]  # draft eligibility of the gold card

    shutil.copy(draft / "policies.yaml", folder / "policies.yaml")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    version = first
    while version == first and time.monotonic() < deadline:
        time.sleep(0.1)
        version = client.call("Decide", {"customer_id": "c", "channel": "web", "context": {"customer": customer()}})[
            "policy_version"
        ]
    assert version.startswith("2-")
    assert server.stop() == 0


def test_switches_are_flags_and_environment_booleans() -> None:
    import argparse

    from nba.cli.common import _add_settings_flags, _settings

    parser = argparse.ArgumentParser()
    _add_settings_flags(parser)
    assert _settings(parser.parse_args(["--durable-decisions"])).durable_decisions is True
    assert _settings(parser.parse_args(["--no-durable-decisions"])).durable_decisions is False
    assert _settings(parser.parse_args([])).durable_decisions is False

    from nba.config import load_settings

    assert load_settings(environ={"NBA_DURABLE_DECISIONS": "true"}).durable_decisions is True
    with pytest.raises(ValueError, match="durable_decisions"):
        load_settings(environ={"NBA_DURABLE_DECISIONS": "perhaps"})


def test_text_logs_show_the_fields_the_message_does_not_say() -> None:
    """`make serve` logs as text: 'policy set live' alone would not say which version."""
    import logging

    from nba.cli.common import TextFormatter

    record = logging.LogRecord("nba.service.publishing", logging.INFO, __file__, 1, "policy set live", None, None)
    record.policy_version, record.actor, record.offers = "3-abc", "policies folder", 24
    line = TextFormatter().format(record)
    assert line.endswith('INFO nba.service.publishing: policy set live policy_version=3-abc actor="policies folder" offers=24')
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("nba", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    failed.worker = 1
    first, *rest = TextFormatter().format(failed).splitlines()
    assert first.endswith("ERROR nba: failed worker=1") and rest[-1] == "ValueError: boom"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the database plays no part
def test_sigusr1_dumps_every_threads_stack_and_the_service_goes_on(processes) -> None:
    server = processes()
    server.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "decision_log.py" not in server.stderr.read_text():
        time.sleep(0.1)
    dumped = server.stderr.read_text()
    assert "Current thread" in dumped or "Thread 0x" in dumped, dumped[-2000:]
    assert "decision_log.py" in dumped  # the writer thread, waiting for work
    server.wait_serving()  # still answering
    assert server.stop() == 0
