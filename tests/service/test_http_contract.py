"""The OpenAPI document is true: schemathesis generates requests for every operation from it
(property-based: valid and invalid bodies, parameters and headers), sends them to a real server
and checks every answer against the document: no server error, only the statuses documented,
the content types and bodies they promise, invalid data refused, no call that needs a token
answered without one. With an editor's token, and with none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EDITOR_TOKEN, ROOT, Running

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
        "25",
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
    assert "Selected: 16/16" in done.stdout and "Tested: 16" in done.stdout, summary
    assert " passed" in done.stdout and "failure" not in done.stdout.split("SUMMARY", 1)[-1].lower(), summary
