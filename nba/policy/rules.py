"""Rules: CEL expressions a marketer writes, compiled once and evaluated per request.

All rules of one request are evaluated against one activation (building a CEL context costs
far more than evaluating a rule against it). A rule that names the offer (``offer.group``) or
the customer's history with it (``contacts.impressed``) is compiled once per offer it applies
to, with those names bound to that offer, so it needs nothing per offer at run time.

A rule that cannot be evaluated for a context (a missing field, a type mismatch) is not an
error for the caller: it yields False with the reason, which the decision log keeps.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import cel

from bandit import unflatten
from nba.errors import InvalidArgument
from nba.policy.rule_cost import RuleLimitError, check_rule
from nba.policy.schema import prune

__all__ = [
    "CONTACT_FIELDS",
    "RuleBatch",
    "RuleError",
    "OFFER_VARIABLES",
    "REQUEST_VARIABLES",
    "RULE_VARIABLES",
    "Rule",
    "RuleSyntaxError",
    "activation",
    "cel_literal",
]

#: variables every rule may use; ``profile`` is the customer's stored profile (``nba.profiles``)
#: under the request's own ``context.profile`` fields, which win
REQUEST_VARIABLES = ("context", "customer", "profile", "channel", "customer_id", "now")
#: variables bound per offer
OFFER_VARIABLES = ("offer", "contacts", "group_contacts")
RULE_VARIABLES = REQUEST_VARIABLES + OFFER_VARIABLES
#: what `contacts` and `group_contacts` hold; days_since_* is 36500 when it never happened
CONTACT_FIELDS = tuple(
    [f"{k}" for k in ("decided", "impressed", "clicked", "accepted", "rejected")]
    + [f"days_since_{k}" for k in ("decided", "impressed", "clicked", "accepted", "rejected")]
)
NEVER_DAYS = 36500.0

_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")
# Comprehension macros bind their own variable: `products.exists(p, p == "x")`.
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_STRING = re.compile(r"""(?:[rR]?(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'))""")


class RuleSyntaxError(InvalidArgument, ValueError):
    """A rule that does not compile; ``column`` is 1-based within the expression."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.line, self.column = line, column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}")


class Rule:
    """A compiled CEL expression.

    >>> rule = Rule("customer.age >= 18")
    >>> rule.evaluate(activation({"customer.age": 30.0}, "web", "c-1"))
    (True, None)
    >>> rule.evaluate(activation({"customer.name": "x"}, "web", "c-1"))
    (False, "missing field 'age'")
    """

    __slots__ = ("cost", "program", "source", "uses")

    def __init__(self, source: str, variables: Iterable[str] = RULE_VARIABLES, *, _bound: bool = False) -> None:
        self.source = source
        #: estimated steps per evaluation (``nba.policy.rule_cost``); a bound rule has its template's
        self.cost = 0
        if not _bound:  # a bound rule is its (checked) template with literals put in
            try:
                self.cost = check_rule(source)
            except RuleLimitError as exc:
                raise RuleSyntaxError(str(exc)) from None
        self.program = _compile(source)
        names = set(self.program.variables())
        if not _bound:
            allowed = set(variables) | set(_MACRO_BINDING.findall(source))
            for name in sorted(names):
                if name not in allowed:
                    column = _first_use(source, name)
                    raise RuleSyntaxError(
                        f"unknown variable '{name}' (rules may use {', '.join(variables)})",
                        1 if column else None,
                        column,
                    )
        self.uses = frozenset(names & set(RULE_VARIABLES))

    @property
    def per_offer(self) -> bool:
        return bool(self.uses & set(OFFER_VARIABLES))

    @property
    def uses_contacts(self) -> bool:
        return bool(self.uses & {"contacts", "group_contacts"})

    def bind(self, offer: Mapping[str, Any]) -> Rule:
        """This rule with ``offer``, ``contacts`` and ``group_contacts`` bound to one offer."""
        if not self.per_offer:
            return self
        replacements = {
            "offer": cel_literal(offer),
            "contacts": f"({cel_literal(offer['id'])} in _contacts ? _contacts[{cel_literal(offer['id'])}] : _no_contacts)",
            "group_contacts": (
                f"({cel_literal(offer['group'])} in _group_contacts ? "
                f"_group_contacts[{cel_literal(offer['group'])}] : _no_contacts)"
            ),
        }
        try:  # the template counted the offer's lists as one element each; this offer's are known
            cost = check_rule(self.source, offer)
        except RuleLimitError as exc:
            raise RuleSyntaxError(str(exc)) from None
        bound = Rule(_substitute(self.source, replacements), _bound=True)
        bound.uses = self.uses  # what the rule names, not what it was rewritten into
        bound.cost = cost
        return bound

    def evaluate(self, context: cel.Context) -> tuple[bool, str | None]:
        """Returns (result, why it could not be evaluated, or None)."""
        result, error = self._run(context)
        if error is not None:
            return False, error
        if isinstance(result, bool):
            return result, None
        return False, f"returned {shown(result)}, not a boolean"

    def evaluate_number(self, context: cel.Context) -> tuple[float | None, str | None]:
        result, error = self._run(context)
        if error is not None:
            return None, error
        if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
            return None, f"returned {shown(result)}, not a finite number"
        return float(result), None

    def _run(self, context: cel.Context) -> tuple[Any, str | None]:
        try:
            return self.program.execute(context), None
        except KeyError as exc:
            return None, f"missing field {exc}"
        except TypeError as exc:
            return None, f"type mismatch: {str(exc).split('.')[0]}"
        except (RuntimeError, ValueError) as exc:
            return None, str(exc).split(". ")[0]
        except BaseException as exc:  # IndexError, OverflowError, a panic in CEL (BaseException): never the caller's
            if isinstance(exc, _FATAL):
                raise
            return None, f"{type(exc).__name__}: {exc}"


class RuleBatch:
    """Many rules evaluated in as few CEL calls as possible.

    A request screens every offer on its channel, each with its own rules: one CEL call per
    rule would cost more in crossing from Python to CEL than in evaluating. The rules are
    compiled into list expressions of ``CHUNK`` rules each, evaluated in one call per chunk.
    CEL propagates an error out of a list, so a chunk that fails (a rule could not be
    evaluated for this context) is evaluated again rule by rule: the others keep their
    results, and the failing one its reason.
    """

    CHUNK = 24

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.chunks: list[tuple[Any, int, int]] = []
        for start in range(0, len(rules), self.CHUNK):
            part = rules[start : start + self.CHUNK]
            try:
                program = cel.compile("[" + ", ".join(f"({r.source})" for r in part) + "]")
            except BaseException as exc:  # each rule compiled alone: evaluate them one by one
                if isinstance(exc, _FATAL):
                    raise
                program = None
            self.chunks.append((program, start, start + len(part)))

    def evaluate(self, context: cel.Context) -> list[Any]:
        """Each rule's result (True, False, or any other value), or an error message string
        wrapped in a ``RuleError`` when it could not be evaluated."""
        results: list[Any] = [None] * len(self.rules)
        for program, start, end in self.chunks:
            try:
                if program is None:
                    raise LookupError("no chunk program")
                results[start:end] = program.execute(context)
            except BaseException as exc:  # a panic inside CEL is a BaseException too
                if isinstance(exc, _FATAL):
                    raise
                for i in range(start, end):
                    ok, error = self.rules[i].evaluate(context)
                    results[i] = RuleError(error) if error is not None else ok
        return results


class RuleError(str):
    """Why a rule could not be evaluated (a result that is not a boolean)."""


def activation(
    features: Mapping[str, Any],
    channel: str,
    customer_id: str,
    now: datetime | None = None,
    contacts: Mapping[str, Any] | None = None,
    group_contacts: Mapping[str, Any] | None = None,
    paths: frozenset[str] | None = None,
    uses: frozenset[str] | None = None,
    private: Mapping[str, Any] | None = None,
) -> cel.Context:
    """Builds the variables the rules of one request see, from the request's flattened
    ``features``. Converting a value into CEL costs about a microsecond, so only what the
    rules can read is converted: the variables they use (``uses``; all when None) and, of the
    context, the ``paths`` they name (all when None).

    ``profile`` is the features' ``profile.*`` fields (the stored profile's learnable fields,
    under any the request sent) with ``private`` (its personal fields, never logged or learned
    from) beneath them."""
    context = prune(features, paths) if paths is not None else unflatten(features)
    variables: dict[str, Any] = {}
    if uses is None or "customer" in uses:
        customer = context.get("customer")
        variables["customer"] = customer if isinstance(customer, Mapping) else {}
    if uses is None or "profile" in uses:
        profile = context.get("profile")
        profile = profile if isinstance(profile, Mapping) else {}
        variables["profile"] = {**private, **profile} if private else profile
    if uses is None or "context" in uses:
        variables["context"] = context
    if uses is None or "channel" in uses:
        variables["channel"] = channel
    if uses is None or "customer_id" in uses:
        variables["customer_id"] = customer_id
    if uses is None or "now" in uses:
        variables["now"] = now or datetime.now().astimezone()
    if (contacts is not None or group_contacts is not None) and (uses is None or uses & {"contacts", "group_contacts"}):
        variables["_contacts"] = contacts or {}
        variables["_group_contacts"] = group_contacts or {}
        variables["_no_contacts"] = NO_CONTACTS
    return cel.Context(variables)


NO_CONTACTS: dict[str, float] = {name: (NEVER_DAYS if name.startswith("days_since_") else 0.0) for name in CONTACT_FIELDS}


def shown(value: Any) -> str:
    """A rule's result as a reason may show it: numbers and booleans as they are, anything
    else by its kind only. A reason goes into the decision log, exports and ``explain``, and a
    text, list or map may be a personal field (``profile.email``).

    >>> shown(40.0), shown("ada@example.com"), shown(["a"]), shown(None)
    ('40.0', 'a text', 'a list', 'null')
    """
    if isinstance(value, bool | int | float):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def cel_literal(value: Any) -> str:
    """A Python value as CEL source (maps, lists, strings, numbers as doubles, booleans).

    >>> cel_literal({"id": "x", "value": 2, "tags": ["a"], "on": True})
    '{"id": "x", "value": 2.0, "tags": ["a"], "on": true}'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {cel_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cel_literal(v) for v in value) + "]"
    if value is None:
        return "null"
    raise TypeError(f"no CEL literal for {type(value).__name__}")


#: what a rule's failure must not swallow (a panic in CEL, pyo3's PanicException, is a
#: BaseException, so catching Exception is not enough)
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _compile(source: str) -> Any:
    try:
        return cel.compile(source)
    except BaseException as exc:
        if isinstance(exc, _FATAL):
            raise
        if not isinstance(exc, ValueError):  # CEL's parser panicked: its message is of no use to a marketer
            raise RuleSyntaxError(f"CEL could not parse it ({type(exc).__name__}); write it simpler") from None
        match = _POSITION.search(str(exc))
        if match:
            raise RuleSyntaxError(
                "syntax error: " + match.group(3).removeprefix("Syntax error: "),
                int(match.group(1)),
                int(match.group(2)),
            ) from None
        raise RuleSyntaxError(str(exc)) from None


def _identifiers(source: str, name: str) -> list[int]:
    """Where ``name`` stands as a variable: not inside a string, not after a dot."""
    blanked = _STRING.sub(lambda m: " " * len(m.group(0)), source)
    return [
        m.start()
        for m in re.finditer(rf"(?<![\w.]){re.escape(name)}(?!\w)", blanked)
        if not re.match(r"\s*:", blanked[m.end() :])  # a map key: {offer: 1}
    ]


def _substitute(source: str, replacements: Mapping[str, str]) -> str:
    edits = sorted(((i, name) for name in replacements for i in _identifiers(source, name)), reverse=True)
    for start, name in edits:
        source = source[:start] + replacements[name] + source[start + len(name) :]
    return source


def _first_use(source: str, name: str) -> int | None:
    positions = _identifiers(source, name)
    return positions[0] + 1 if positions else None
