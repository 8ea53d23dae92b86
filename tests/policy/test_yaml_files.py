"""YAML that people write means what it says: a key given twice is an error with its file,
line and column (policy files, their examples, the service's config file), and values YAML
1.1 would silently turn into something else are read as written or refused with a hint."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ROOT, Running

from nba.config import ConfigError, load_settings
from nba.errors import PolicySetError
from nba.evaluation.examples import load_examples
from nba.policy.loading import parse_policy_set
from nba.v1 import admin_service_pb2 as apb
from nba.yaml_loader import DuplicateKeyError, load_yaml

SET = """\
channels: [web]
offers:
  - {id: a, name: A, channels: [web]}
  - id: b
    name: B
    channels: [web]
policies:
  - {id: cap, type: contact_cap, max: 3, window: 7d}
"""


@pytest.mark.parametrize(
    ("text", "path", "second", "first"),
    [
        ("a: 1\nb: 2\na: 3\n", ("a",), (3, 1), (1, 1)),
        ("x:\n  y:\n    - {k: 1, j: 2, k: 3}\n", ("x", "y", 0, "k"), (3, 20), (3, 8)),
        ("s:\n  - id: o\n    m:\n      deep: 1\n      deep: 2\n", ("s", 0, "m", "deep"), (5, 7), (4, 7)),
        ("yes: 1\ntrue: 2\n", ("true",), (2, 1), (1, 1)),  # the same key as YAML reads it
        ("1: a\n0x1: b\n", ("0x1",), (2, 1), (1, 1)),
    ],
)
def test_a_key_given_twice_at_any_depth_is_located(
    text: str, path: tuple, second: tuple[int, int], first: tuple[int, int]
) -> None:
    with pytest.raises(DuplicateKeyError) as raised:
        load_yaml(text, "f.yaml")
    error = raised.value
    assert error.path == path
    assert (error.problem_mark.line + 1, error.problem_mark.column + 1) == second
    assert f"first at line {first[0]}, column {first[1]}" in error.problem
    assert 'in "f.yaml", line' in str(error)


def test_a_merge_may_be_overridden_and_distinct_keys_load() -> None:
    assert load_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n") == {"base": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}}
    assert load_yaml("") is None
    with pytest.raises(DuplicateKeyError):
        load_yaml("base: &b {x: 1, x: 2}\nc: {<<: *b}\n")  # inside the merged mapping itself it is not


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # two `offers:` keys: the first list would vanish
        (
            SET + "offers:\n  - {id: c, name: C, channels: [web]}\n",
            "a.yaml: field 'offers': line 9, column 1: key 'offers' is given twice in one mapping (first at line 2, column 1)",
        ),
        # a key repeated inside an offer: paused, then live
        (
            SET.replace("    channels: [web]\n", "    status: paused\n    channels: [web]\n    status: live\n", 1),
            "a.yaml: offer 'b': field 'status': line 8, column 5: key 'status' is given twice in one mapping (first at line 6, column 5)",
        ),
        (
            SET.replace("{id: a, name: A, channels: [web]}", "{id: a, name: A, channels: [web], treatment: {web: x, web: y}}"),
            "a.yaml: offer 'a': field 'treatment.web': line 3, column 59: key 'web' is given twice in one mapping (first at line 3, column 51)",
        ),
        (SET.replace("window: 7d}", "window: 7d, max: 4}"), "a.yaml: policy 'cap': field 'max': line 8"),
        (SET + "groups:\n  g: {lever: 2}\n  g: {lever: 3}\n", "a.yaml: field 'groups.g': line 11, column 3"),
        (SET + "schema:\n  customer.age: number\n  customer.age: string\n", "a.yaml: field 'schema.customer.age': line 11"),
        (SET + "settings: {timezone: UTC, timezone: Asia/Kolkata}\n", "a.yaml: field 'settings.timezone': line 9, column 27"),
    ],
)
def test_policy_files_with_a_key_given_twice_are_refused(text: str, expected: str) -> None:
    with pytest.raises(PolicySetError) as raised:
        parse_policy_set({"a.yaml": text})
    assert any(str(p).startswith(expected) for p in raised.value.problems), raised.value.messages


def test_validate_over_the_admin_api_reports_the_duplicate_structured(server: Running) -> None:
    text = SET + "offers:\n  - {id: c, name: C, channels: [web], fallback: true}\n"
    response = server.admin.ValidatePolicySet(
        apb.ValidatePolicySetRequest(draft=apb.PolicySetDraft(files={"set.yaml": text})), metadata=server.auth()
    )
    assert not response.valid
    problem = next(p for p in response.problems if p.severity == "error")
    assert (problem.file, problem.field) == ("set.yaml", "offers")
    assert problem.message.startswith("line 9, column 1: key 'offers' is given twice")


def test_example_files_with_a_key_given_twice_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a_test.yaml").write_text(
        textwrap.dedent("""\
        examples:
          - name: one
            channel: web
            eligible: [a]
            eligible: [b]
    """)
    )
    with pytest.raises(PolicySetError) as raised:
        load_examples(tmp_path)
    assert raised.value.messages == [
        "a_test.yaml: line 5, column 5: key 'eligible' is given twice in one mapping (first at line 4, column 5); "
        "YAML would keep only the last: merge the two, or remove one"
    ]


def test_the_config_file_with_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "nba.yaml"
    config.write_text("port: 6000\nmetrics_port: 6001\nport: 7000\n")
    with pytest.raises(ConfigError, match=r"nba.yaml: line 3, column 1: key 'port' is given twice .*first at line 1"):
        load_settings(environ={}, config_file=config)
    done = subprocess.run(
        [sys.executable, "-m", "nba", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "line 3, column 1: key 'port' is given twice" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # YAML 1.1 reads 1:30 as the sexagesimal number 90 (seconds, for a window): refused instead
        ("window: 1:30", "policy 'p': field 'window': '1:30' is not a window like 30m, 24h, 7d or 2w"),
        ("window: 24:00", "'24:00' is not a window"),
    ],
)
def test_sexagesimal_numbers_are_text_and_refused_where_a_window_is_expected(entry: str, expected: str) -> None:
    text = SET + f"  - {{id: p, type: contact_cap, max: 3, {entry}}}\n"
    with pytest.raises(PolicySetError) as raised:
        parse_policy_set({"a.yaml": text})
    assert any(expected in str(p) for p in raised.value.problems), raised.value.messages


def test_a_leading_zero_is_a_decimal_number_not_octal() -> None:
    policy_set = parse_policy_set({"a.yaml": SET + "  - {id: p, type: budget, max: 010}\n"})
    assert policy_set.policies["p"].max == 10  # YAML 1.1 would read 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("channels: [web, no]\n", "field 'channels.1': Input should be a valid string (YAML read it as the boolean false"),
        (
            "channels: [web]\noffers:\n  - {id: a, name: on, channels: [web]}\n",
            "offer 'a': field 'name': Input should be a valid string (YAML read it as the boolean true",
        ),
        (
            "channels: [web]\noffers:\n  - {id: 2026-01-01, name: A, channels: [web]}\n",
            "field 'id': Input should be a valid string (YAML read it as a date: quote it, as in '2026-01-01')",
        ),
        (
            "channels: [web]\noffers:\n  - {id: a, name: A, channels: [web], tags: [12]}\n",
            "field 'tags.0': Input should be a valid string (YAML read it as the number 12: quote it",
        ),
        (
            "channels: [web]\nschema: {customer.answer: {type: string, values: [yes, no]}}\n",
            "field 'schema.customer.answer': values of a string field must be text: True is not (YAML reads unquoted yes",
        ),
        (
            "channels: [web]\nschema: {customer.age: {type: number, values: [1, yes]}}\n",
            "field 'schema.customer.age': values of a number field must be numbers: True is not",
        ),
    ],
)
def test_values_yaml_reads_as_booleans_dates_or_numbers_where_text_is_expected_say_so(text: str, expected: str) -> None:
    with pytest.raises(PolicySetError) as raised:
        parse_policy_set({"a.yaml": text})
    assert any(expected in str(p) for p in raised.value.problems), raised.value.messages


def test_an_example_means_utc_and_sends_dates_as_text(tmp_path: Path) -> None:
    (tmp_path / "a_test.yaml").write_text(
        textwrap.dedent("""\
        examples:
          - {name: naive, channel: web, now: 2026-11-24 10:00:00, customer: {birthday: 1990-01-01}, eligible: [a]}
          - {name: date, channel: web, now: 2026-11-24, eligible: [a]}
    """)
    )
    (naive, first), (_, second) = load_examples(tmp_path)
    assert first.now == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # not the clock of the machine running it
    assert second.now == datetime(2026, 11, 24, tzinfo=UTC)
    assert first.customer == {"birthday": "1990-01-01"}  # what a channel system sends in JSON


def test_every_key_given_twice_in_a_file_is_reported_not_only_the_first(tmp_path: Path) -> None:
    text = (
        SET.replace("    channels: [web]\n", "    status: paused\n    channels: [web]\n    status: live\n", 1)
        + "offers:\n  - {id: c, name: C, channels: [web], value: 1, value: 2}\n"
    )
    with pytest.raises(PolicySetError) as raised:
        parse_policy_set({"a.yaml": text})
    found = [str(p) for p in raised.value.problems]
    assert any(p.startswith("a.yaml: offer 'b': field 'status': line 8, column 5: key 'status'") for p in found), found
    assert any(p.startswith("a.yaml: field 'offers': line 11, column 1: key 'offers'") for p in found), found
    assert any(p.startswith("a.yaml: offer 'c': field 'value': line 12, column 49: key 'value'") for p in found), found
    (tmp_path / "a_test.yaml").write_text("examples:\n  - name: one\n    name: two\n    channel: web\n    channel: app\n")
    with pytest.raises(PolicySetError) as examples:
        load_examples(tmp_path)
    assert "line 3, column 5: key 'name'" in examples.value.messages[0]
    assert "line 5, column 5: key 'channel'" in examples.value.messages[0]
