"""Problems of a policy file told the way a marketer can act on them: pydantic's validation
errors and YAML's duplicate keys turned into ``Problem``s that name the file, the offer or
policy, the field, and what to write instead."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from nba.errors import Problem
from nba.yaml_loader import DuplicateKeyError


def describe_validation_error(file: str, raw: Mapping[str, Any], error: Mapping[str, Any]) -> Problem:
    """Turns a pydantic error location into a located ``Problem``."""
    loc = [part for part in error["loc"] if not (isinstance(part, str) and _UNION_TAG.match(part))]
    message = error["msg"].removeprefix("Value error, ") + _yaml_hint(error)
    if error["type"] == "extra_forbidden":
        message = "unknown field (misspelt?)"
    if len(loc) >= 2 and loc[0] in ("offers", "policies") and isinstance(loc[1], int):
        entries = raw.get(loc[0]) or []
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        entry_id = entry.get("id") if isinstance(entry, Mapping) else None
        rest = loc[2:]
        if loc[0] == "policies" and rest and isinstance(entry, Mapping) and rest[0] == entry.get("type"):
            rest = rest[1:]  # the discriminated union adds the type as a location step
        field_name = ".".join(str(part) for part in rest)
        if loc[0] == "policies" and error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field_name = "type"
        key = "offer" if loc[0] == "offers" else "policy"
        if entry_id:
            if key == "offer":
                return Problem(message, file=file, field=field_name, offer=str(entry_id))
            return Problem(message, file=file, field=field_name, policy=str(entry_id))
        return Problem(message, file=file, field=f"{loc[0]}[{loc[1]}]" + (f".{field_name}" if field_name else ""))
    return Problem(message, file=file, field=".".join(str(part) for part in loc))


def duplicate_key_problem(file: str, exc: DuplicateKeyError) -> Problem:
    """A key given twice, located by offer or policy and field where it is inside one."""
    mark = exc.problem_mark
    message = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}" if mark else str(exc.problem)
    path = list(exc.path)
    offer = policy = ""
    if len(path) >= 2 and path[0] in ("offers", "policies") and isinstance(path[1], int) and exc.entry_id:
        if path[0] == "offers":
            offer = exc.entry_id
        else:
            policy = exc.entry_id
        path = path[2:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return Problem(message, file=file, field=field, offer=offer, policy=policy)


#: how pydantic names the member of a union in an error's location (a schema field is a type
#: name or a FieldSpec mapping)
_UNION_TAG = re.compile(r"^(?:literal|function-(?:after|before|wrap|plain))\[")


def other_branch(error: Mapping[str, Any]) -> bool:
    """Whether the error comes from the member of a union the value plainly was not written
    for: the type name's, when a mapping was given; the mapping's, when anything else was."""
    tags = [p for p in error["loc"] if isinstance(p, str) and _UNION_TAG.match(p)]
    if not tags:
        return False
    if tags[-1].startswith("literal["):
        return isinstance(error.get("input"), Mapping)
    return error["type"] in ("model_type", "dict_type")


def _yaml_hint(error: Mapping[str, Any]) -> str:
    """Why YAML gave a value that is not text where text is expected, and what to write."""
    if error["type"] != "string_type":
        return ""
    value = error.get("input")
    if isinstance(value, bool):
        return (
            f" (YAML read it as the boolean {str(value).lower()}: unquoted yes, no, on, off, true and false "
            "are booleans; quote the text, as in 'no')"
        )
    if isinstance(value, (date, datetime)):
        return f" (YAML read it as a date: quote it, as in '{value.isoformat()}')"
    if isinstance(value, (int, float)):
        return f" (YAML read it as the number {value!r}: quote it, as in '{value}')"
    if value is None:
        return " (the value is empty)"
    return ""
