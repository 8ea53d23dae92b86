"""Every way to call `nba` wrongly gets one line naming what to fix, and the documented exit
code (README, "Exit codes"), never a traceback; read-only commands never create a database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import POLICIES, POSTGRES, ROOT, free_port, need_postgres
from sqlalchemy import create_engine

from nba.cli import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, main
from nba.cli.common import CliError, _database_errors
from nba.storage.store import Store

GOOD_LINE = {
    "context": {"customer": {"age": 34}},
    "candidates": [{"offer_id": "a", "probability": 0.7}, {"offer_id": "b", "probability": 0.3}],
    "chosen": "a",
    "propensity": 0.7,
    "reward": 1.0,
}

# (arguments, exit code, what the one line says). {tmp} is a fresh folder; {db} an nba database
# there; {log} a valid log; {bad_log} a log whose line 2 breaks the contract; {bin} a binary
# file; {text} a text file; {empty} an empty file; {yaml} a file of broken YAML.
BAD_INVOCATIONS = [
    (["nosuch"], EXIT_USAGE, "invalid choice: 'nosuch'"),
    (["export"], EXIT_USAGE, "the following arguments are required: --out"),
    (["export", "--out", "-", "--database-url", "sqlite:///{tmp}/typo.db"], EXIT_USAGE, "no database at /"),
    (["export", "--out", "-", "--database-url", "sqlite:///relative/typo.db"], EXIT_USAGE, "(relative: "),
    (["export", "--out", "-", "--database-url", "foo://bar"], EXIT_USAGE, "foo:// is not a database nba supports"),
    (["export", "--out", "-", "--database-url", "mysql://u@h/db"], EXIT_USAGE, "mysql:// is not a database nba supports"),
    (["export", "--out", "-", "--database-url", "not a url"], EXIT_USAGE, "'not a url' is not a database URL"),
    (["export", "--out", "-", "--database-url", "sqlite://"], EXIT_USAGE, "an in-memory SQLite database keeps nothing"),
    (["export", "--out", "-", "--database-url", "sqlite:///{text}"], EXIT_USAGE, "is not a SQLite database"),
    (["export", "--out", "-", "--database-url", "sqlite:///{empty}"], EXIT_USAGE, "holds no nba decision log"),
    (
        ["export", "--out", "-", "--database-url", "postgresql+psycopg://nobody@127.0.0.1:{closed}/x"],
        EXIT_UNAVAILABLE,
        "does not answer",
    ),
    (
        ["export", "--out", "{tmp}/missing/out.jsonl", "--database-url", "sqlite:///{db}"],
        EXIT_USAGE,
        "--out {tmp}/missing/out.jsonl: the folder",
    ),
    (["export", "--out", "{tmp}", "--database-url", "sqlite:///{db}"], EXIT_USAGE, "--out {tmp}: is a folder"),
    (["export", "--out", "{text}/out.jsonl", "--database-url", "sqlite:///{db}"], EXIT_USAGE, "does not exist"),
    (
        ["export", "--out", "-", "--since", "yesterday", "--database-url", "sqlite:///{db}"],
        EXIT_USAGE,
        "--since: 'yesterday' is not an ISO date",
    ),
    (["export", "--out", "-", "--config", "{tmp}/none.yaml"], EXIT_USAGE, "config file {tmp}/none.yaml"),
    (["export", "--out", "-", "--config", "{yaml}"], EXIT_USAGE, "config file {yaml}"),
    (["evaluate", "--log", "{tmp}/none.jsonl"], EXIT_USAGE, "--log {tmp}/none.jsonl: no such file"),
    (["evaluate", "--log", "{tmp}"], EXIT_USAGE, "--log {tmp}: is a folder"),
    (
        ["evaluate", "--log", "{bad_log}"],
        EXIT_FAILED,
        "{bad_log} line 2: propensity: 0.01 differs from the first-slot probability 0.7",
    ),
    (["evaluate", "--log", "{bin}"], EXIT_FAILED, "{bin} line 1: not UTF-8 text"),
    (["evaluate", "--log", "{text}"], EXIT_FAILED, "{text} line 1: not JSON"),
    (["evaluate", "--log", "{empty}"], EXIT_FAILED, "no logged decisions to evaluate in {empty}"),
    (["evaluate", "--log", "{log}", "--truth", "{tmp}/none.json"], EXIT_USAGE, "--truth {tmp}/none.json: no such file"),
    (["evaluate", "--log", "{log}", "--truth", "{text}"], EXIT_USAGE, "--truth {text}: not JSON"),
    (["evaluate", "--log", "{log}", "--truth", "{log}"], EXIT_USAGE, "--truth {log}: field: required"),
    (
        ["evaluate", "--log", "{log}", "--truth", "{truth_bad}"],
        EXIT_USAGE,
        "phases[0].probabilities.young.gold-card: must be a probability",
    ),
    (
        ["evaluate", "--log", "{log}", "--truth", "{truth_huge}"],
        EXIT_USAGE,
        "phases[0].probabilities.young.gold-card: must be a probability",
    ),
    (
        ["evaluate", "--log", "{log}", "--html", "{tmp}/missing/report.html"],
        EXIT_USAGE,
        "--html {tmp}/missing/report.html: the folder",
    ),
    (["evaluate", "--log", "{log}", "--json", "{tmp}"], EXIT_USAGE, "--json {tmp}: is a folder"),
    (["evaluate", "--log", "{log}", "--policy", "random"], EXIT_USAGE, "--policy random: not a policy"),
    (["evaluate", "--log", "{log}", "--policy", "learner:nope=1"], EXIT_USAGE, "unknown settings nope"),
    (
        ["evaluate", "--log", "{log}", "--policy", "draft:{tmp}/nothere"],
        EXIT_USAGE,
        "--policy draft:{tmp}/nothere: no such folder",
    ),
    (
        ["evaluate", "--log", "{log}", "--policy", "draft:{empty_dir}"],
        EXIT_USAGE,
        "--policy: the draft is not a valid policy set",
    ),
    (["evaluate", "--log", "{log}", "--bootstrap", "0"], EXIT_USAGE, "--bootstrap: 0: 1 to 100000 resamples"),
    (["evaluate", "--log", "{log}", "--bootstrap", "100001"], EXIT_USAGE, "--bootstrap: 100001: 1 to 100000 resamples"),
    (["evaluate", "--log", "{log}", "--seed", "-1"], EXIT_USAGE, "--seed: -1: 0 or more"),
    (["evaluate", "--log", "{log}", "--bootstrap", "many"], EXIT_USAGE, "argument --bootstrap: invalid int value"),
    (["evaluate", "--log", "{log}", "--default-reward", "nan"], EXIT_USAGE, "--default-reward: nan: a finite number"),
    (["evaluate", "--log", "{log}", "--since", "2026-13-01"], EXIT_USAGE, "--since: '2026-13-01' is not an ISO date"),
    (["evaluate", "--log", "{log}", "--refits", "1"], EXIT_USAGE, "--refits: 1: 0 (the reward model held fixed) or 2 to 100000"),
    (["evaluate", "--log", "{log}", "--reward-range", "0"], EXIT_USAGE, "--reward-range 0: give LOW,HIGH"),
    (["evaluate", "--log", "{log}", "--reward-range", "1,0"], EXIT_USAGE, "--reward-range 1,0: LOW below HIGH"),
    (["evaluate", "--log", "{log}", "--reward-range", "0,nan"], EXIT_USAGE, "--reward-range 0,nan: LOW below HIGH"),
    (["evaluate", "--log", "{log}", "--reward-range=-1,0.5"], EXIT_FAILED, "the log has a reward of 1, outside it"),
    (["evaluate", "--log", "{log}", "--offers", "{tmp}/none.jsonl"], EXIT_USAGE, "--offers {tmp}/none.jsonl: no such file"),
    (["evaluate", "--log", "{log}", "--offers", "{text}"], EXIT_FAILED, "{text} line 1: not JSON"),
    (["evaluate", "--log", "{log}", "--offers", "{log}"], EXIT_FAILED, "{log} line 1: offer_id: required"),
    (
        ["evaluate", "--log", "{log}", "--policy", "file:{tmp}/none.jsonl"],
        EXIT_USAGE,
        "--policy file:{tmp}/none.jsonl: no such file",
    ),
    (["evaluate", "--log", "{log}", "--policy", "mine=file:{log}"], EXIT_FAILED, "{log} line 1: decision_id: required"),
    (["evaluate", "--log", "{log}", "--policy", "file:"], EXIT_USAGE, "--policy file:: name the file"),
    (["evaluate", "--database-url", "sqlite:///{tmp}/typo.db"], EXIT_USAGE, "no database at"),
    (["evaluate", "--database-url", "sqlite:///{db}"], EXIT_FAILED, "no logged decisions to evaluate"),
    (
        ["simulate", "--address", "127.0.0.1:{closed}", "--decisions", "1", "--out", "{tmp}/sim"],
        EXIT_UNAVAILABLE,
        "--address 127.0.0.1:{closed}: no service answers",
    ),
    (["simulate", "--population", "{tmp}/none.yaml"], EXIT_USAGE, "--population {tmp}/none.yaml: no such file"),
    (["simulate", "--population", "{yaml}"], EXIT_USAGE, "--population {yaml}: not YAML at line"),
    (["simulate", "--population", "{log}"], EXIT_USAGE, "unknown keys"),
    (["simulate", "--population", "{population_bad}"], EXIT_USAGE, "persona 'young': share must be a number"),
    (["simulate", "--population", "{population_huge}"], EXIT_USAGE, "persona 'young': share must be a number"),
    (["simulate", "--population", "{population_template}"], EXIT_USAGE, "persona 'young': customer cannot generate a profile"),
    (["simulate", "--decisions", "0"], EXIT_USAGE, "--decisions: 0: at least 1"),
    (["simulate", "--block", "0"], EXIT_USAGE, "--block: 0"),
    (["simulate", "--concurrency", "0"], EXIT_USAGE, "--concurrency: 0"),
    (["simulate", "--reject-rate", "1.5"], EXIT_USAGE, "--reject-rate: 1.5"),
    (["simulate", "--drift-at", "-1"], EXIT_USAGE, "--drift-at: -1"),
    (["simulate", "--delay", "inf"], EXIT_USAGE, "--delay: inf"),
    (["simulate", "--out", "{text}/sim"], EXIT_USAGE, "--out {text}/sim: cannot create the folder"),
    (["policies", "frobnicate"], EXIT_USAGE, "invalid choice: 'frobnicate'"),
    (["policies", "validate", "{tmp}/none"], EXIT_USAGE, "policies validate: {tmp}/none is not a folder"),
    (["policies", "test", "{text}"], EXIT_USAGE, "policies test: {text} is not a folder"),
    (["policies", "preview", "{tmp}/drafts"], EXIT_USAGE, "DIR is the draft's folder: copy the live set and edit it"),
    (["policies", "preview", str(POLICIES), "--last", "0"], EXIT_USAGE, "--last: 0"),
    (["policies", "preview", str(POLICIES), "--database-url", "sqlite:///{tmp}/typo.db"], EXIT_USAGE, "no database at"),
    (["policies", "preview", str(POLICIES), "--database-url", "sqlite:///{db}"], EXIT_USAGE, "nothing is live in"),
    (["policies", "validate", "{empty_dir}"], EXIT_FAILED, "no *.yaml policy files"),
    (["db", "current", "--database-url", "sqlite:///{tmp}/typo.db"], EXIT_USAGE, "no database at"),
    (["db", "upgrade", "--database-url", "foo://x"], EXIT_USAGE, "foo:// is not a database nba supports"),
    (["db", "upgrade", "--database-url", "sqlite:///{text}/nba.db"], EXIT_USAGE, "cannot create the folder"),
    (["db", "upgrade", "--database-url", "sqlite:///{text}"], EXIT_USAGE, "text.txt is not a SQLite database"),
    (["db", "downgrade"], EXIT_USAGE, "invalid choice: 'downgrade'"),
    (["serve", "--port", "eighty"], EXIT_USAGE, "invalid configuration: port (--port, NBA_PORT)"),
    (
        ["serve", "--port", "9999", "--metrics-port", "9999"],
        EXIT_USAGE,
        "port (--port, NBA_PORT) and metrics_port (--metrics-port, NBA_METRICS_PORT) are both 9999",
    ),
    (
        ["serve", "--admin-tokens", "a:viewer:0123456789abcdef,b:editor:0123456789abcdef"],
        EXIT_USAGE,
        "each caller's token must be its own: given twice: 1 of them",
    ),
    (
        ["serve", "--admin-tokens", "a:viewer:0123456789abcdef,a:editor:fedcba9876543210"],
        EXIT_USAGE,
        "each caller's name must be its own: given twice: a",
    ),
    (["serve", "--admin-tokens", "a:viewer:0123456789abcdef\u00e9"], EXIT_USAGE, "not printable ASCII"),
    (["serve", "--log-level", "loud"], EXIT_USAGE, "argument --log-level: invalid choice"),
    (["serve", "--http-cors-origins", "app.example.com"], EXIT_USAGE, "'app.example.com' is not an origin"),
    (
        ["serve", "--callback-sources", "{tmp}/callbacks.yaml"],
        EXIT_USAGE,
        "callback_sources {tmp}/callbacks.yaml: source 'generic': the variable NBA_CALLBACK_GENERIC_SECRETS is not set",
    ),
    (["serve", "--database-url", "foo://x"], EXIT_USAGE, "foo:// is not a database nba supports"),
    (["serve", "--policies", "{tmp}/none"], EXIT_USAGE, "policies (--policies, NBA_POLICIES) {tmp}/none: no such folder"),
    (["serve", "--tls-cert", "{tmp}/none.pem", "--tls-key", "{tmp}/none.key"], EXIT_USAGE, "tls_cert (--tls-cert, NBA_TLS_CERT)"),
    (["serve", "--config", "{tmp}/none.yaml"], EXIT_USAGE, "config file {tmp}/none.yaml"),
]


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for key in list(os.environ):
        if key.startswith("NBA_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # relative paths land here, and nothing may be created
    db = tmp_path / "ok.db"
    assert main(["db", "upgrade", "--database-url", f"sqlite:///{db}"]) == 0
    (tmp_path / "log.jsonl").write_text(json.dumps(GOOD_LINE) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps(GOOD_LINE) + "\n" + json.dumps({**GOOD_LINE, "propensity": 0.01}) + "\n")
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(128, 256)) + bytes(range(128)))
    (tmp_path / "text.txt").write_text("hello\n")
    (tmp_path / "callbacks.yaml").write_text((ROOT / "examples" / "callbacks.yaml").read_text())
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\nb: {\n")
    (tmp_path / "truth.json").write_text(
        json.dumps({"field": "customer.persona", "phases": [{"until": None, "probabilities": {"young": {"gold-card": 1.5}}}]})
    )
    (tmp_path / "population.yaml").write_text("personas:\n  - {name: young, share: lots, customer: {age: 30}}\n")
    # a 400-digit integer overflows float(): a refusal naming the field, not an OverflowError
    (tmp_path / "huge.yaml").write_text("personas:\n  - {name: young, share: 1" + "0" * 400 + ", customer: {age: 30}}\n")
    (tmp_path / "huge.json").write_text(
        '{"field": "customer.persona", "phases": [{"until": null, "probabilities": '
        '{"young": {"gold-card": 1' + "0" * 400 + "}}}]}"
    )
    (tmp_path / "template.yaml").write_text("personas:\n  - {name: young, share: 1, customer: {age: {range: [a, 3]}}}\n")
    (tmp_path / "empty-folder").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # a port nobody listens on
    yield {
        "tmp": str(tmp_path),
        "db": str(db),
        "log": str(tmp_path / "log.jsonl"),
        "bad_log": str(tmp_path / "bad.jsonl"),
        "bin": str(tmp_path / "binary.jsonl"),
        "text": str(tmp_path / "text.txt"),
        "empty": str(tmp_path / "empty.jsonl"),
        "yaml": str(tmp_path / "broken.yaml"),
        "truth_bad": str(tmp_path / "truth.json"),
        "population_bad": str(tmp_path / "population.yaml"),
        "population_template": str(tmp_path / "template.yaml"),
        "population_huge": str(tmp_path / "huge.yaml"),
        "truth_huge": str(tmp_path / "huge.json"),
        "empty_dir": str(tmp_path / "empty-folder"),
        "closed": str(closed),
    }


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own exit (usage errors, --help)
        return int(exc.code or 0)


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(("argv", "code", "message"), BAD_INVOCATIONS, ids=[" ".join(a)[:70] for a, _, _ in BAD_INVOCATIONS])
def test_a_bad_invocation_is_one_line_naming_the_fix_and_its_exit_code(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    before = listing(Path(files["tmp"]))
    argv = [a.format(**files) for a in argv]
    assert run_main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message.format(**files) in lines[0], lines[0]
    assert lines[0].startswith(("nba", "error: ")), lines[0]  # policy problems keep the validator's own form
    created = listing(Path(files["tmp"])) - before
    assert not {p for p in created if not p.startswith("ok.db")}, f"a failed command created {created}"


def test_a_mistyped_sqlite_path_is_never_created_by_a_read_only_command(files: dict[str, str], capsys) -> None:
    typo = Path(files["tmp"]) / "var" / "nab.db"
    for argv in (["export", "--out", "-"], ["evaluate"], ["db", "current"], ["policies", "preview", str(POLICIES)]):
        assert run_main([*argv, "--database-url", f"sqlite:///{typo}"]) == EXIT_USAGE
        assert "no database at" in capsys.readouterr().err
    assert not typo.exists() and not typo.parent.exists()


def test_export_to_a_file_that_cannot_be_finished_leaves_the_previous_one(files: dict[str, str], capsys) -> None:
    out = Path(files["tmp"]) / "export.jsonl"
    out.write_text("the previous export\n")
    assert run_main(["export", "--out", str(out), "--database-url", f"sqlite:///{files['db']}"]) == 0
    assert out.read_text() == ""  # an empty log: an empty export, written whole
    assert not list(Path(files["tmp"]).glob(".*partial"))


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    return subprocess.run(
        [sys.executable, "-m", "nba", "serve", "--host", "127.0.0.1", "--log-level", "error", *args],
        cwd=ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, workers: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve(
            "--port",
            str(port),
            "--workers",
            workers,
            "--metrics-port",
            "-1",
            "--http-port",
            "-1",
            "--database-url",
            f"sqlite:///{tmp_path / 'nba.db'}",
            "--policies",
            str(POLICIES),
        )
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"nba: port {port} on 127.0.0.1 is in use"), result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("192.0.2.1", "nba: --host / NBA_HOST: 192.0.2.1 is not an address of this machine"),  # TEST-NET-1
        (
            "no-such-host.invalid",
            "nba: --host / NBA_HOST: 'no-such-host.invalid' is not an address, nor a host name that resolves",
        ),
    ],
)
def test_serve_on_a_host_that_is_not_this_machines_says_so_not_port_in_use(
    tmp_path: Path, workers: str, host: str, message: str
) -> None:
    result = serve(
        "--host",
        host,
        "--port",
        "0",
        "--workers",
        workers,
        "--metrics-port",
        "-1",
        "--http-port",
        "-1",
        "--database-url",
        f"sqlite:///{tmp_path / 'nba.db'}",
        "--policies",
        str(POLICIES),
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_metrics_port_in_use_says_so_in_one_line(tmp_path: Path, workers: str) -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        metrics = busy.getsockname()[1]
        result = serve(
            "--port",
            str(free_port()),
            "--workers",
            workers,
            "--metrics-port",
            str(metrics),
            "--http-port",
            "-1",
            "--database-url",
            f"sqlite:///{tmp_path / 'nba.db'}",
            "--policies",
            str(POLICIES),
        )
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"nba: metrics port {metrics}"), result.stderr


def test_the_exit_codes_are_the_ones_the_readme_documents() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Exit codes") :]
    section = section[: section.index("\n## ")]
    for code in (0, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, 70, 130):
        assert f"| {code} |" in section, code


@pytest.mark.parametrize("argv", [["export", "--out", "-"], ["db", "current"], ["db", "upgrade"]])
def test_a_postgresql_url_naming_a_database_the_server_has_not_is_a_usage_error(capsys, argv: list[str]) -> None:
    """The server answered and refused: the URL is wrong (exit 2), unlike a server that does
    not answer (exit 3, retry later)."""
    need_postgres()
    missing = POSTGRES.rsplit("/", 1)[0] + "/nba_no_such_database"
    assert run_main([*argv, "--database-url", missing]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert 'the server refused the connection: database "nba_no_such_database" does not exist' in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", EXIT_UNAVAILABLE, "does not answer"),
        ("sqlite:///{tmp}/is-a-directory", EXIT_USAGE, "unable to open database file"),
    ],
)
def test_an_outage_the_store_translated_is_still_one_line_and_its_exit_code(
    tmp_path: Path, url: str, code: int, says: str
) -> None:
    """The store raises DatabaseUnavailable (the driver's error its cause): the command line
    still answers as for the driver's own error, never "unexpected error ... a bug"."""
    url = url.format(tmp=tmp_path)
    (tmp_path / "is-a-directory").mkdir()
    engine = create_engine(url, connect_args={"connect_timeout": 1} if url.startswith("postgresql") else {})
    try:
        with pytest.raises(CliError) as caught, _database_errors(url):
            Store(engine).count_decisions()
    finally:
        engine.dispose()
    assert caught.value.code == code and says in str(caught.value)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_an_http_port_in_use_says_so_in_one_line(tmp_path: Path, workers: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        http = busy.getsockname()[1]
        result = serve(
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--workers",
            workers,
            "--metrics-port",
            "-1",
            "--http-port",
            str(http),
            "--database-url",
            f"sqlite:///{tmp_path / 'nba.db'}",
            "--policies",
            str(POLICIES),
        )
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"nba: HTTP port {http} on 127.0.0.1: "), result.stderr
    assert "--http-port / NBA_HTTP_PORT" in last
