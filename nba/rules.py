"""Rules: CEL expressions a marketer writes, compiled once and evaluated per request.

A rule is evaluated against one activation built per request and shared by every offer
(building the CEL context costs more than evaluating a rule against it). A rule that cannot
be evaluated for a context (a missing field, a type mismatch) is not an error for the caller:
it yields ``False`` with the reason, which the decision log keeps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import cel

__all__ = ["RULE_VARIABLES", "Rule", "RuleSyntaxError", "activation"]

#: the variables a rule may use
RULE_VARIABLES = ("context", "customer", "channel", "customer_id", "now")

_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")
# Comprehension macros bind their own variable: `products.exists(p, p == "x")`.
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


class RuleSyntaxError(ValueError):
    """A rule that does not compile; ``column`` is 1-based within the expression."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.line, self.column = line, column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}")


class Rule:
    """A compiled boolean CEL expression.

    >>> rule = Rule("customer.age >= 18")
    >>> rule.evaluate(activation({"customer": {"age": 30.0}}, "web", "c-1"))
    (True, None)
    >>> rule.evaluate(activation({"customer": {}}, "web", "c-1"))
    (False, "missing field 'age'")
    """

    __slots__ = ("program", "source")

    def __init__(self, source: str, variables: Iterable[str] = RULE_VARIABLES) -> None:
        self.source = source
        try:
            self.program = cel.compile(source)
        except ValueError as exc:
            match = _POSITION.search(str(exc))
            if match:
                raise RuleSyntaxError(
                    "syntax error: " + match.group(3).removeprefix("Syntax error: "),
                    int(match.group(1)),
                    int(match.group(2)),
                ) from None
            raise RuleSyntaxError(str(exc)) from None
        allowed = set(variables) | set(_MACRO_BINDING.findall(source))
        for name in self.program.variables():
            if name not in allowed:
                column = _first_use(source, name)
                raise RuleSyntaxError(
                    f"unknown variable '{name}' (rules may use {', '.join(RULE_VARIABLES)})",
                    1 if column else None,
                    column,
                )

    def evaluate(self, context: cel.Context) -> tuple[bool, str | None]:
        """Returns (result, why it could not be evaluated, or None)."""
        try:
            result = self.program.execute(context)
        except KeyError as exc:
            return False, f"missing field {exc}"
        except TypeError as exc:
            return False, f"type mismatch: {str(exc).split('.')[0]}"
        except (RuntimeError, ValueError) as exc:
            return False, str(exc).split(". ")[0]
        if isinstance(result, bool):
            return result, None
        return False, f"returned {result!r}, not a boolean"


def activation(
    context: Mapping[str, Any], channel: str, customer_id: str, now: datetime | None = None
) -> cel.Context:
    """Builds the variables every rule of one request sees."""
    customer = context.get("customer")
    return cel.Context(
        {
            "context": context,
            "customer": customer if isinstance(customer, Mapping) else {},
            "channel": channel,
            "customer_id": customer_id,
            "now": now or datetime.now().astimezone(),
        }
    )


def _first_use(source: str, name: str) -> int | None:
    for match in re.finditer(rf"\b{re.escape(name)}\b", source):
        if match.start() == 0 or source[match.start() - 1] != ".":
            return match.start() + 1
    return None
