"""Where in its file a policy-set problem is: the line an editor should jump to.

Problems are located by file, offer or policy id and field (``nba.policy.problems``), which is
what a marketer reads; an editor needs the line. The file is composed again (YAML nodes keep
their positions) and the path walked to the deepest node that exists, so a missing field
points at the entry that lacks it and a misspelt one at the key itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace

import yaml

from nba.errors import Problem

__all__ = ["locate", "problem_line"]

#: problems whose message begins with their position (YAML syntax, duplicate keys, bad bytes)
_LEADING_LINE = re.compile(r"^(?:not valid YAML at )?line (\d+), column \d+")
#: a field path's steps: names, and list positions written [3] or .3
_STEP = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


#: problems located in one call: a draft with thousands of faults gets its first ones placed
MAX_LOCATED = 200
#: libyaml's composer where the wheel has it (ten times PyYAML's pure-Python one)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def problem_line(text: str | yaml.Node | yaml.YAMLError | None, problem: Problem) -> int:
    """The 1-based line of ``text`` (the problem's file, or its composed node, or the error
    composing it gave) that ``problem`` is about, or 0 when nothing in the text locates it (a
    problem of the whole set, a file that is not YAML)."""
    found = _LEADING_LINE.match(problem.message)
    # A position that begins the message is the file's for YAML's own problems (syntax, a key
    # given twice, bytes that are not UTF-8); a rule's problem gives one inside its expression.
    if found and (not (problem.offer or problem.policy or problem.field) or "duplicate key" in problem.message):
        return int(found.group(1))
    node = _compose(text) if isinstance(text, str) else text
    if isinstance(node, yaml.YAMLError):
        mark = getattr(node, "problem_mark", None)
        return mark.line + 1 if mark is not None else 0
    if node is None:
        return 0
    line = 0
    entry = problem.offer or problem.policy
    if entry:
        section = _value(node, "offers" if problem.offer else "policies")
        if not isinstance(section, yaml.SequenceNode):
            return 0
        found_entry = next((item for item in section.value if _scalar(_value(item, "id")) == entry), None)
        if found_entry is None:
            return 0
        node, line = found_entry, found_entry.start_mark.line + 1
    for name, index in _steps(problem.field):
        if isinstance(node, yaml.MappingNode) and name is not None:
            pair = next(((k, v) for k, v in node.value if _scalar(k) == name), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and index is not None and index < len(node.value):
            node = node.value[index]
            line = node.start_mark.line + 1
        else:
            break
    if not line and isinstance(node, yaml.Node) and problem.field:
        line = node.start_mark.line + 1
    return line


def locate(files: Mapping[str, str], problems: Iterable[Problem]) -> list[Problem]:
    """``problems`` with ``line`` set where their file is in ``files`` and a line locates them
    (the first ``MAX_LOCATED``; each file composed once)."""
    composed: dict[str, yaml.Node | yaml.YAMLError | None] = {}
    located: list[Problem] = []
    for problem in problems:
        text = files.get(problem.file) if problem.file else None
        if text is not None and not problem.line and len(located) < MAX_LOCATED:
            if problem.file not in composed:
                composed[problem.file] = _compose(text)
            problem = replace(problem, line=problem_line(composed[problem.file], problem))
        located.append(problem)
    return located


def _compose(text: str) -> yaml.Node | yaml.YAMLError | None:
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        return exc


def _steps(field: str) -> list[tuple[str | None, int | None]]:
    steps: list[tuple[str | None, int | None]] = []
    for index, name in _STEP.findall(field):
        if index:
            steps.append((None, int(index)))
        elif name.isdigit():  # pydantic's locations write a list position as a plain step
            steps.append((name, int(name)))
        else:
            steps.append((name, None))
    return steps


def _value(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if _scalar(k) == key), None)


def _scalar(node: yaml.Node | None) -> str | None:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else None
