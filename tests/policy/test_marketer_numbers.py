"""What a marketer writes cannot break the service: every number of a policy file has a
documented range (checked at validation, naming the field), products of values and levers stay
finite, a policy folder with a file that cannot be read is a validation problem naming it, an
undeclared group is an error, and schedule hours mean what a marketer expects."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ROOT, ManualClock, Running, struct

from nba import metrics
from nba.cli import EXIT_FAILED
from nba.errors import PolicySetError
from nba.policy.loading import parse_policy_set, read_files
from nba.policy.offers import MAX_LEVER, MAX_VALUE
from nba.policy.policies import MAX_COUNT, MAX_IGNORED
from nba.v1 import admin_service_pb2 as apb
from nba.v1 import decision_service_pb2 as pb

HUGE = 10**400

SET = """\
settings: {timezone: UTC}
channels: [web]
groups:
  retention: {lever: 1.0}
schema:
  customer.age: {type: number, min: 0, max: 120}
offers:
  - {id: alpha, name: Alpha, group: retention, channels: [web], value: 10, lever: 1.0}
  - {id: help, name: Help, channels: [web], fallback: true, value: 0}
policies:
  - {id: cap, type: contact_cap, applies_to: {offers: [alpha]}, max: 3, window: 7d}
  - {id: quiet, type: suppression, applies_to: {offers: [alpha]}, after: ignored, ignored: 3, days: 14}
  - {id: spend, type: budget, applies_to: {offers: [alpha]}, max: 100, pacing: even}
"""


def problems(files: dict[str, str]) -> list[str]:
    with pytest.raises(PolicySetError) as raised:
        parse_policy_set(files)
    return [str(p) for p in raised.value.problems if p.severity == "error"]


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("max: 3, window", f"max: {HUGE}, window", "policy 'cap': field 'max'"),
        ("ignored: 3,", f"ignored: {HUGE},", "policy 'quiet': field 'ignored'"),
        ("days: 14", f"days: {HUGE}", "policy 'quiet': field 'days'"),
        ("max: 100,", f"max: {HUGE},", "policy 'spend': field 'max'"),
        ("max: 100,", f"max: {MAX_COUNT + 1},", "policy 'spend': field 'max'"),
        ("window: 7d", f"window: {HUGE}", "policy 'cap': field 'window'"),
        ("window: 7d", f"window: {'9' * 400}d", "policy 'cap': field 'window'"),
        ("value: 10,", "value: 1.0e+200,", "offer 'alpha': field 'value'"),
        ("value: 10,", f"value: {HUGE},", "offer 'alpha': field 'value'"),
        ("lever: 1.0}\n  - {id: help", "lever: 1.0e+200}\n  - {id: help", "offer 'alpha': field 'lever'"),
        ("retention: {lever: 1.0}", "retention: {lever: 1.0e+200}", "field 'groups.retention.lever'"),
        ("retention: {lever: 1.0}", f"retention: {{lever: {MAX_LEVER * 2}}}", "field 'groups.retention.lever'"),
        ("max: 120}", "max: 1.0e+300}", "field 'schema.customer.age"),
    ],
)
def test_a_number_out_of_its_range_is_refused_naming_the_field(old: str, new: str, where: str) -> None:
    assert old in SET
    found = problems({"set.yaml": SET.replace(old, new, 1)})
    assert any(p.startswith(f"set.yaml: {where}") for p in found), found


def test_the_largest_numbers_allowed_give_finite_decisions_on_a_server(start, tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    text = (
        SET.replace("retention: {lever: 1.0}", f"retention: {{lever: {MAX_LEVER}}}")
        .replace("value: 10, lever: 1.0", f"value: {MAX_VALUE:.1f}, lever: {MAX_LEVER}")
        .replace("max: 3, window", f"max: {MAX_COUNT}, window")
        .replace("ignored: 3,", f"ignored: {MAX_IGNORED},")
        .replace("max: 100,", f"max: {MAX_COUNT},")
    )
    (folder / "set.yaml").write_text(text)
    server = start(policies=folder)
    for i in range(5):
        response = server.stub.Decide(
            pb.DecideRequest(
                customer_id=f"c-{i}", channel="web", limit=1, explain=True, context=struct({"customer": {"age": 30}})
            )
        )
        assert [o.offer_id for o in response.offers] == ["alpha"]
        alpha = next(e for e in response.explanation.offers if e.offer_id == "alpha")
        assert alpha.lever == MAX_LEVER * MAX_LEVER
        assert all(math.isfinite(x) for x in (alpha.value, alpha.lever, alpha.weight, alpha.score, alpha.probability))
        assert all(math.isfinite(o.score) and math.isfinite(o.propensity) for o in response.offers)
        server.stub.Feedback(
            pb.FeedbackRequest(
                event_id=f"e-{i}", decision_id=response.decision_id, offer_id="alpha", outcome=pb.OUTCOME_IMPRESSED
            )
        )


def test_validate_over_the_admin_api_refuses_a_huge_cap_as_invalid_argument(server: Running) -> None:
    draft = apb.PolicySetDraft(files={"set.yaml": SET.replace("max: 3, window", f"max: {HUGE}, window")})
    response = server.admin.ValidatePolicySet(apb.ValidatePolicySetRequest(draft=draft), metadata=server.auth())
    assert not response.valid
    assert [(p.policy, p.field) for p in response.problems if p.severity == "error"] == [("cap", "max")]


def test_an_offer_of_an_undeclared_group_is_an_error_when_groups_are_declared() -> None:
    text = SET.replace("group: retention, channels", "group: retension, channels")
    found = problems({"set.yaml": text})
    assert any(
        p.startswith("set.yaml: offer 'alpha': field 'group': group 'retension' is not declared (groups: retention)")
        for p in found
    ), found
    # without a groups: section, groups are whatever offers name (lever 1)
    loose = parse_policy_set({"set.yaml": text.replace("groups:\n  retention: {lever: 1.0}\n", "")})
    assert loose.offers["alpha"].offer.group == "retension"


# Files of the policies folder ----------------------------------------------------------------


def folder_with(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "set.yaml").write_text(SET)
    return folder


def test_a_file_that_is_not_utf8_or_a_directory_is_a_problem_naming_it(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    (folder / "latin1.yaml").write_bytes("offers: []\n# caf\xe9\n".encode("latin-1"))
    (folder / "nested.yaml").mkdir()
    with pytest.raises(PolicySetError) as raised:
        read_files(folder)
    assert raised.value.messages == [
        "latin1.yaml: line 2, column 6: byte 0xe9 is not UTF-8 text (save the file as UTF-8)",
        "nested.yaml: is a directory, not a file: policy files are the *.yaml files of the folder itself "
        "(rename the directory, or move its files up)",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "nba", "policies", "validate", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_FAILED, done.stderr
    assert "latin1.yaml: line 2, column 6: byte 0xe9 is not UTF-8" in done.stderr
    assert "nested.yaml: is a directory" in done.stderr and "Traceback" not in done.stderr
    (folder / "nested.yaml").rmdir()
    (folder / "latin1.yaml").unlink()
    (folder / "bad_test.yaml").write_bytes(b"examples: []\n\xff\n")
    done = subprocess.run(
        [sys.executable, "-m", "nba", "policies", "test", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_FAILED, done.stderr
    assert "bad_test.yaml: byte 13 (0xff) is not UTF-8 text" in done.stderr and "Traceback" not in done.stderr


def test_the_folder_watcher_counts_an_unreadable_file_once_and_publishes_the_next_good_change(
    start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = folder_with(tmp_path)
    server = start(policies=folder)
    publisher = server.service.publisher
    first = publisher.live.number
    failures = metrics.POLICY_RELOAD_FAILURES._value.get()
    (folder / "nested.yaml").mkdir()
    for _ in range(3):  # what the watcher does every interval, and SIGHUP
        assert publisher.check_folder() is False
    assert metrics.POLICY_RELOAD_FAILURES._value.get() == failures + 1
    assert [r.getMessage() for r in caplog.records if "cannot read the policies folder" in r.getMessage()] == [
        "cannot read the policies folder; the live set is unchanged"
    ]
    assert not any(r.exc_info for r in caplog.records)
    assert publisher.live.number == first
    (folder / "nested.yaml").rmdir()
    (folder / "set.yaml").write_text(SET.replace("value: 10,", "value: 11,"))
    assert publisher.check_folder() is True
    assert publisher.live.number > first
    deadline = time.monotonic() + 10
    while publisher.live.offers["alpha"].offer.value != 11 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert publisher.live.offers["alpha"].offer.value == 11


# Schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ("10:00-10:00", "'10:00-10:00' is empty (starts and ends at the same time); 00:00-24:00 is the whole day"),
        ("00:00-00:00", "is empty"),
        ("24:00-02:00", "24:00 may only end a range"),
        ("9-17", "is not a range like 09:00-17:30"),
        ("08:00-12:00-14:00", "is not a range like 09:00-17:30"),
    ],
)
def test_empty_or_malformed_schedule_hours_are_refused_with_a_clear_message(hours: str, message: str) -> None:
    text = SET.replace("value: 10, lever: 1.0}", f'value: 10, lever: 1.0, schedule: {{hours: ["{hours}"]}}}}')
    found = problems({"set.yaml": text})
    assert any("offer 'alpha': field 'schedule.hours'" in p and message in p for p in found), found


def test_hours_past_midnight_run_into_the_next_day_and_00_to_24_is_the_whole_day(start, tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "set.yaml").write_text(
        textwrap.dedent("""\
        settings: {timezone: UTC}
        channels: [web]
        offers:
          - {id: late, name: Late, channels: [web], schedule: {days: [fri], hours: ["22:00-02:00"]}}
          - {id: always, name: Always, channels: [web], schedule: {days: [sat], hours: ["00:00-24:00"]}}
          - {id: help, name: Help, channels: [web], fallback: true, value: 0}
    """)
    )
    clock = ManualClock(datetime(2026, 11, 27, 23, 0, tzinfo=UTC))  # a Friday, 23:00
    server = start(clock=clock, policies=folder)

    def shown() -> set[str]:
        response = server.stub.Decide(pb.DecideRequest(customer_id="c", channel="web", limit=5))
        return {o.offer_id for o in response.offers}

    assert shown() == {"late"}
    clock.set(datetime(2026, 11, 28, 1, 30, tzinfo=UTC))  # Saturday 01:30: still Friday night's range
    assert shown() == {"late", "always"}
    clock.set(datetime(2026, 11, 28, 2, 0, tzinfo=UTC))  # its end is excluded
    assert shown() == {"always"}
    clock.set(datetime(2026, 11, 27, 1, 30, tzinfo=UTC))  # Friday 01:30 belongs to Thursday night
    assert shown() == {"help"}
    clock.set(datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC))
    assert shown() == {"always"}


def test_a_set_larger_than_the_supported_size_is_refused_saying_so() -> None:
    from nba.policy.policy_set import MAX_OFFERS

    offers = "".join(f"  - {{id: o{i}, name: O, channels: [web]}}\n" for i in range(MAX_OFFERS + 1))
    found = problems({"set.yaml": "channels: [web]\noffers:\n" + offers})
    assert found == [
        f"{MAX_OFFERS + 1} offers, more than the {MAX_OFFERS} a policy set may hold (validation, "
        "publish and Decide are measured up to that size; split the catalogue, or retire expired offers)"
    ]


def test_an_example_contact_of_a_huge_age_is_refused_naming_the_field(tmp_path: Path) -> None:
    from nba.evaluation.examples import load_examples

    (tmp_path / "a_test.yaml").write_text(
        textwrap.dedent("""\
        examples:
          - name: old history
            channel: web
            history: [{offer: alpha, days_ago: 1.0e+308}]
    """)
    )
    with pytest.raises(PolicySetError) as raised:
        load_examples(tmp_path)
    assert "days_ago" in raised.value.messages[0] and "less than or equal to 36500" in raised.value.messages[0]
