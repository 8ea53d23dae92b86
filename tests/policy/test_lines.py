"""Problems located at their line (nba.policy.lines): what an editor jumps to, for each way a
problem is located (an offer's or a policy's field, a list position, a key of the whole file, a
YAML syntax error, a duplicate key), and through the admin API's ValidatePolicySet."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import POLICIES, Running

from nba.errors import PolicySetError, Problem
from nba.policy.lines import locate, problem_line
from nba.policy.loading import parse_policy_set
from nba.v1 import admin_service_pb2 as apb

FILE = """\
# a comment
channels: [web]
offers:
  - id: first
    name: First
    channels: [web]
  - id: second
    name: Second
    channels:
      - web
      - app
    treatment: {web: banner}
policies:
  - id: cap
    type: contact_cap
    max: 3
"""


@pytest.mark.parametrize(
    ("problem", "line"),
    [
        (Problem("bad", offer="second", field="name"), 8),
        (Problem("bad", offer="second", field="channels[1]"), 11),
        (Problem("bad", offer="second", field="channels.1"), 11),  # pydantic writes list positions as steps
        (Problem("bad", offer="second", field="treatment.web"), 12),
        (Problem("missing", offer="second", field="value"), 7),  # a field not there: its entry
        (Problem("bad", policy="cap", field="max"), 16),
        (Problem("bad", field="channels"), 2),
        (Problem("bad", field="offers[1].name"), 8),
        (Problem("line 9, column 3: duplicate key"), 9),  # messages that say their line keep it
        (Problem("line 9, column 3: found duplicate key 'name'", offer="second", field="name"), 9),
        # a rule's problem says where in its expression: the file's line is its field's
        (Problem("line 1, column 31: field 'customer.x' is not in the context schema", offer="second", field="name"), 8),
        (Problem("bad", offer="third", field="name"), 0),  # an entry that is not in the file
        (Problem("the whole set"), 0),
    ],
)
def test_a_problem_is_located_at_its_line(problem: Problem, line: int) -> None:
    assert problem_line(FILE, problem) == line


def test_a_yaml_syntax_error_is_located_at_its_line() -> None:
    broken = FILE.replace("    name: Second\n", "    name: [Second\n")
    assert problem_line(broken, Problem("not valid YAML")) == 9


def test_the_loaders_problems_are_located_in_their_files() -> None:
    files = {p.name: p.read_text() for p in POLICIES.glob("*.yaml") if not p.name.endswith("_test.yaml")}
    text = files["cross_sell.yaml"]
    broken = {
        **files,
        "cross_sell.yaml": text.replace("    value: 120.0", "    value: lots", 1).replace(
            "    tags: [travel-insurance]", "    tagz: [travel-insurance]", 1
        ),
    }
    with pytest.raises(PolicySetError) as refused:
        parse_policy_set(broken, datetime.now(UTC))
    lines = broken["cross_sell.yaml"].splitlines()
    located = {p.field: p.line for p in locate(broken, refused.value.problems)}
    assert located == {"value": lines.index("    value: lots") + 1, "tagz": lines.index("    tagz: [travel-insurance]") + 1}


def test_validate_answers_each_problems_line(server: Running) -> None:
    live = server.admin.GetLivePolicySet(apb.GetLivePolicySetRequest(), metadata=server.auth())
    files = dict(live.files)
    files["policies.yaml"] += "\n  - id: broken\n    type: cap\n"
    answer = server.admin.ValidatePolicySet(
        apb.ValidatePolicySetRequest(draft=apb.PolicySetDraft(files=files)), metadata=server.auth()
    )
    assert not answer.valid
    [problem] = [p for p in answer.problems if p.severity == "error"]
    assert (problem.file, problem.policy, problem.line) == ("policies.yaml", "broken", len(files["policies.yaml"].splitlines()))
