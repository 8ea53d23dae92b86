"""The context schema: which fields channel systems send, with their types.

Declared once in the policy set, it lets validation refuse a rule that names a field nobody
sends (``customer.flgas.churn_risk``) or compares a field with the wrong type
(``customer.age > "18"``), instead of that rule quietly filtering every customer at run time::

    schema:
      customer.age: {type: number, min: 0, max: 120}
      customer.value.segment: {type: string, values: [bronze, silver, gold, platinum]}
      customer.flags.churn_risk: bool
      customer.history.products: list<string>

Types: ``number``, ``string``, ``bool``, ``list`` (of anything), ``list<string>``,
``list<number>``, ``list<bool>``, and ``map`` (free-form: any field below it is accepted).

CEL here has no type checker we can call, so checking is done in two ways: the field paths a
rule names are read from its text (string literals blanked out) and looked up; and the rule is
evaluated against contexts sampled from the schema, where a type mismatch shows as an error.
The same samples let the static checks warn about rules that are false for every context.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from bandit import unflatten

__all__ = ["ContextSchema", "FieldSpec", "field_paths"]

FieldType = Literal["number", "string", "bool", "list", "list<string>", "list<number>", "list<bool>", "map"]

#: the largest magnitude of a number field's bounds and values in the schema
MAX_NUMBER = 1e15
_STRING = re.compile(r"""(?:[rR]?(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'))""")
_CHAIN = re.compile(r"(?<![\w.])(customer|context|profile)((?:\s*\.\s*[A-Za-z_]\w*)*)(\s*\()?")


class FieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FieldType
    #: the values a string (or list of strings) may take, when they are a known set
    values: list[str | float | bool] | None = None
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _bounds(self) -> FieldSpec:
        for name, number in (
            ("min", self.min),
            ("max", self.max),
            *(("values", v) for v in self.values or () if isinstance(v, float)),
        ):
            if number is not None and not (math.isfinite(number) and abs(number) <= MAX_NUMBER):
                raise ValueError(f"{name}: {number!r} is outside -{MAX_NUMBER:g} to {MAX_NUMBER:g}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if (self.min is not None or self.max is not None) and self.type != "number":
            raise ValueError("min and max apply to numbers only")
        # YAML reads unquoted yes/no/on/off as booleans and 2 as a number: the values of a
        # string field would then never equal the text a channel sends.
        kind = self.type.removeprefix("list<").removesuffix(">")
        wanted = {"string": (str,), "number": (int, float), "bool": (bool,)}.get(kind)
        for value in self.values or ():
            if wanted is not None and (not isinstance(value, wanted) or (kind == "number" and isinstance(value, bool))):
                hint = (
                    " (YAML reads unquoted yes, no, on, off, true and false as booleans: quote the text)"
                    if (isinstance(value, bool) and kind == "string")
                    else " (quote it)"
                    if kind == "string"
                    else ""
                )
                noun = {"string": "text", "number": "numbers", "bool": "booleans"}[kind]
                raise ValueError(f"values of a {self.type} field must be {noun}: {value!r} is not{hint}")
        return self


def field_paths(source: str) -> list[tuple[str, int]]:
    """The context paths an expression names, relative to the context, with 1-based columns.

    >>> field_paths('customer.age > 18 && "x" in context.customer.tags && customer.tags.exists(t, t == "a")')
    [('customer.age', 1), ('customer.tags', 29), ('customer.tags', 54)]
    """
    blanked = _STRING.sub(lambda m: " " * len(m.group(0)), source)
    found: list[tuple[str, int]] = []
    for match in _CHAIN.finditer(blanked):
        root, rest, call = match.group(1), match.group(2), match.group(3)
        segments = [s.strip() for s in rest.split(".") if s.strip()]
        if call and segments:
            segments = segments[:-1]  # a method or macro: customer.tags.exists(...)
        path = [root, *segments]
        if root == "context":
            path = path[1:]
        if path:
            found.append((".".join(path), match.start() + 1))
    return found


def needed_paths(sources: Iterable[str]) -> frozenset[str] | None:
    """The context paths a set of rules can read, or None when a rule may read anything (it
    indexes ``customer[...]``, or passes ``customer`` or ``context`` whole to a function).

    Screening builds the CEL activation from just these: converting a context costs per
    field, and rules rarely read more than a few of the fields a channel sends.

    >>> sorted(needed_paths(['customer.age > 3 && "x" in customer.tags', 'channel == "web"']))
    ['customer.age', 'customer.tags']
    >>> needed_paths(['size(customer) > 2']) is None
    True
    """
    paths: set[str] = set()
    for source in sources:
        blanked = _STRING.sub(lambda m: " " * len(m.group(0)), source)
        for match in _CHAIN.finditer(blanked):
            root, rest, call = match.group(1), match.group(2), match.group(3)
            segments = [s.strip() for s in rest.split(".") if s.strip()]
            if call and segments:
                segments = segments[:-1]
            after = blanked[match.end() :].lstrip()
            if (
                (not call and after.startswith("["))
                or (root == "context" and len(segments) < 1)
                or (root in ("customer", "profile") and not segments)
            ):
                return None
            path = [root, *segments] if root != "context" else segments
            paths.add(".".join(path))
    return frozenset(paths)


def prune(features: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """The nested context of flattened ``features``, holding only ``paths`` (those present,
    with everything below them), sharing their values.

    >>> prune({"customer.age": 3, "customer.name": "x", "customer.flags.vip": True, "customer.flags.new": False},
    ...       ["customer.age", "customer.flags", "customer.nope.x"])
    {'customer': {'age': 3, 'flags': {'vip': True, 'new': False}}}
    """
    kept: dict[str, Any] = {}
    for path in paths:
        if path in features:
            kept[path] = features[path]
        else:
            prefix = path + "."
            for key, value in features.items():
                if key.startswith(prefix):
                    kept[key] = value
    return unflatten(kept)


@dataclass(frozen=True)
class ContextSchema:
    fields: dict[str, FieldSpec]

    def __bool__(self) -> bool:
        return bool(self.fields)

    def unknown_paths(self, source: str) -> list[tuple[str, int]]:
        """Paths the expression names that the schema does not declare (``profile.*`` paths
        are the profile section's to check)."""
        if not self.fields:
            return []
        return [(p, col) for p, col in field_paths(source) if not self.knows(p) and p.split(".")[0] != "profile"]

    def knows(self, path: str) -> bool:
        if path in self.fields:
            return True
        prefix = path + "."
        if any(f.startswith(prefix) for f in self.fields):
            return True  # an object holding declared fields
        parts = path.split(".")
        for i in range(1, len(parts)):
            spec = self.fields.get(".".join(parts[:i]))
            if spec is not None:
                return spec.type == "map"
        return False

    def samples(self, count: int = 200, seed: int = 0) -> list[dict[str, Any]]:
        """Contexts with every declared field present: the corners first, then random ones."""
        rng = random.Random(seed)
        choices = {path: _candidates(spec) for path, spec in self.fields.items()}
        flat: list[dict[str, Any]] = []
        for corner in range(max(len(c) for c in choices.values()) if choices else 0):
            flat.append({p: c[min(corner, len(c) - 1)] for p, c in choices.items()})
        while len(flat) < count:
            flat.append({p: rng.choice(c) for p, c in choices.items()})
        return [_nest(f) for f in flat]


def _candidates(spec: FieldSpec) -> list[Any]:
    if spec.type == "bool":
        return [True, False]
    if spec.type == "number":
        low = spec.min if spec.min is not None else (0.0 if spec.max is None or spec.max >= 0 else spec.max - 100)
        high = spec.max if spec.max is not None else low + 100.0
        values = [low, high, (low + high) / 2, low + (high - low) / 4, low + 3 * (high - low) / 4]
        if spec.min is None:
            values.append(-1.0)
        values.extend(float(v) for v in spec.values or () if isinstance(v, (int, float)))
        return [float(v) for v in values]
    if spec.type == "string":
        return [str(v) for v in spec.values] if spec.values else ["", "x", "sample"]
    if spec.type.startswith("list"):
        inner = spec.type[5:-1] if spec.type != "list" else "string"
        defaults: dict[str, list[Any]] = {"string": ["x", "y"], "number": [1.0, 2.0], "bool": [True]}
        pool: list[Any] = list(spec.values) if spec.values else defaults[inner]
        subsets = [[], pool, *([v] for v in pool)]
        subsets.extend(list(c) for c in itertools.combinations(pool, 2) if len(pool) > 2)
        return subsets
    return [{}]


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in flat.items():
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return root
