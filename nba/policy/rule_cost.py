"""How much a rule may cost: limits checked on a rule's source before CEL sees it.

Rules run inside Decide, in the process that answers every other call, through a CEL
library (``cel``, Rust) that has no cost limit, no cancellation and no depth limit of its own:
a rule of 80,000 parentheses makes its parser panic, a chain of 20,000 ``+`` overflows its
stack when evaluated (the process dies), and three nested comprehensions over a context list
keep a core busy for minutes. So a rule is refused at validation, before it is compiled, if

* its source is longer than ``MAX_RULE_LENGTH`` characters;
* its brackets (``(``, ``[``, ``{``) nest deeper than ``MAX_RULE_DEPTH``;
* its estimated cost (below) is more than ``RULE_BUDGET`` steps; and a policy set is
  refused if the rules one decision evaluates on a channel sum to more than ``CALL_BUDGET``.

The estimate is an upper bound in *steps*, one step being about one element compared or
copied by CEL (about 30 ns on the machine the budgets were measured on, see
``loadtests/bench_hostile.py``):

* every token of the rule is one step;
* a comprehension (``all``, ``exists``, ``exists_one``, ``map``, ``filter``) runs its body once
  per element of its range: the number of elements of a list literal or of the offer's list,
  else up to ``MAX_CONTEXT_LEAVES`` (a context holds no more leaves); each iteration costs
  ``ITERATION_STEPS`` plus its body;
* inside a comprehension body, a reference to a value other than a bound variable
  (``context.wishlist``) may be a list or a string as large as the context, and an operation
  on it (``in``, ``==``, ``+``, ``contains``) touches all of it: ``MAX_CONTEXT_LEAVES`` steps per
  iteration. When the comprehension ranges over another context list, the two share the
  context's leaves, and the whole comprehension reads at most a quarter of the square of
  ``MAX_CONTEXT_LEAVES`` (``context.cart.exists(p, p in context.wishlist)``: 500 x 500 at worst);
* nested comprehensions multiply;
* ``map`` and ``filter`` build their result by copying it once per element (measured:
  quadratic), so they add the square of their range times the size of each element.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nba.errors import InvalidArgument
from nba.inputs import MAX_CONTEXT_LEAVES

__all__ = [
    "CALL_BUDGET",
    "ITERATION_STEPS",
    "MAX_RULE_DEPTH",
    "MAX_RULE_LENGTH",
    "RULE_BUDGET",
    "RuleLimitError",
    "check_call",
    "check_rule",
    "estimate",
]

#: characters in one rule's source
MAX_RULE_LENGTH = 4096
#: brackets nested in one rule (the CEL parser itself gives up near 100 and panics far beyond)
MAX_RULE_DEPTH = 32
#: steps of one comprehension iteration besides its body (measured: an `all` over 1,000
#: elements with a trivial body takes about 0.36 ms, 12 steps of 30 ns per element)
ITERATION_STEPS = 12
#: the most steps one rule may cost per evaluation. Set from loadtests/bench_hostile.py (README,
#: Benchmarks): the costliest rules it accepts (a comprehension over one context list reading
#: another, 500 x 500 elements at worst) take 7-25 ms of CEL in Decide; the usual
#: ``context.cart.exists(p, p in context.wishlist)`` estimates 261,007 and is accepted; a
#: comprehension reading the list it ranges over, map/filter over a context list, and nested
#: comprehensions over context lists (a million steps or more: 30 ms to minutes) are refused.
RULE_BUDGET = 500_000
#: the most steps the rules one decision may evaluate on one channel may cost together
#: (per-offer rules count once per offer they apply to): three of the costliest accepted
#: rules, about 50 ms of CEL per decision at worst (measured by the same benchmark)
CALL_BUDGET = 1_000_000

_MACROS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter"})
_KEYWORDS = frozenset({"true", "false", "null", "in"})
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {")", "]", "}"}
_OPERATORS = ("||", "&&", "==", "!=", "<=", ">=")


class RuleLimitError(InvalidArgument, ValueError):
    """A rule beyond a limit; the message says which and what to change."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "name", "number", "string", "punct"
    text: str
    at: int  # 0-based offset in the source


def check_rule(source: str, offer: Mapping[str, Any] | None = None) -> int:
    """Checks ``source`` against the length, depth and cost limits; returns its estimated cost
    in steps. ``offer``: the offer (``Offer.as_cel()``) a rule naming ``offer`` is bound to, whose
    lists are as long as the policy file makes them; without it, each ``offer`` value counts
    as one element (the real cost is checked again for each offer the rule is bound to).
    Raises ``RuleLimitError`` (a ``ValueError``) naming the limit and what to change."""
    if len(source) > MAX_RULE_LENGTH:
        raise RuleLimitError(
            f"the rule is {len(source)} characters long, more than the limit of {MAX_RULE_LENGTH}: split it into several rules"
        )
    tokens = _tokens(source)
    _check_depth(tokens)
    cost = estimate(tokens, offer or {})
    if cost > RULE_BUDGET:
        raise RuleLimitError(
            f"the rule may cost about {cost:,} steps per decision, more than the limit of {RULE_BUDGET:,}: "
            f"a comprehension (all, exists, exists_one, map, filter) runs once per element (up to "
            f"{MAX_CONTEXT_LEAVES:,}), nested comprehensions multiply, and a context list named inside one is "
            "read once per element; do not nest comprehensions over context lists, do not read inside one "
            "the list it ranges over, and keep map/filter for short lists"
        )
    return cost


def estimate(source: str | list[_Token], offer: Mapping[str, Any] | None = None) -> int:
    """The rule's estimated cost in steps (module docstring); ``source`` is assumed within the
    length and depth limits (checked by ``check_rule``); ``offer`` as for ``check_rule``."""
    tokens = _tokens(source) if isinstance(source, str) else source
    cost, fixed, _ = _cost(tokens, 0, len(tokens), frozenset(), False, offer or {})
    return cost + fixed


#: variables bound to small values: the offer's contact counts, the channel, the id, the time
_SMALL = {"contacts": 10, "group_contacts": 10, "channel": 1, "customer_id": 1, "now": 1}


def _size(tokens: list[_Token], k: int, offer: Mapping[str, Any], end: int | None = None) -> int:
    """Elements (or characters) the value named at tokens[k] (a variable, maybe followed by
    ``.field``s) may hold: for ``offer``, what the offer holds; else the context's limit."""
    root = tokens[k].text
    if root in _SMALL:
        return _SMALL[root]
    if root != "offer":
        return MAX_CONTEXT_LEAVES
    value: Any = offer
    k += 1
    end = len(tokens) if end is None else end
    while k + 1 < end and tokens[k].text == "." and tokens[k + 1].kind == "name":
        if not isinstance(value, Mapping) or tokens[k + 1].text not in value:
            return 1 if value is offer else MAX_CONTEXT_LEAVES  # the template, unbound: checked per offer
        value = value[tokens[k + 1].text]
        k += 2
    if k < end and tokens[k].text == "[":
        return MAX_CONTEXT_LEAVES
    return max(1, len(value)) if isinstance(value, (list, tuple, str, Mapping)) else 1


# Scanning -------------------------------------------------------------------------------


def _tokens(source: str) -> list[_Token]:
    """CEL's lexical structure, as far as costs need it: strings (with their escapes, raw and
    triple-quoted, bytes), numbers, names, comments and punctuation."""
    tokens: list[_Token] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c.isspace():
            i += 1
        elif source.startswith("//", i):
            end = source.find("\n", i)
            i = n if end < 0 else end + 1
        elif c in "\"'" or (c in "rRbB" and _string_prefix(source, i)):
            start = i
            raw = False
            while source[i] in "rRbB":
                raw = raw or source[i] in "rR"
                i += 1
            quote = source[i] * 3 if source.startswith(source[i] * 3, i) else source[i]
            i += len(quote)
            while True:
                if i >= n:
                    raise RuleLimitError(f"column {start + 1}: the string is not closed")
                if not raw and source[i] == "\\":
                    i += 2
                    continue
                if source.startswith(quote, i):
                    i += len(quote)
                    break
                if len(quote) == 1 and source[i] == "\n":
                    raise RuleLimitError(f"column {start + 1}: the string is not closed on its line")
                i += 1
            tokens.append(_Token("string", source[start:i], start))
        elif c.isalpha() or c == "_":
            start = i
            while i < n and (source[i].isalnum() or source[i] == "_"):
                i += 1
            tokens.append(_Token("name", source[start:i], start))
        elif c.isdigit() or (c == "." and i + 1 < n and source[i + 1].isdigit()):
            start = i
            while i < n and (source[i].isalnum() or source[i] in "._" or (source[i] in "+-" and source[i - 1] in "eE")):
                i += 1
            tokens.append(_Token("number", source[start:i], start))
        else:
            two = source[i : i + 2]
            text = two if two in _OPERATORS else c
            tokens.append(_Token("punct", text, i))
            i += len(text)
    return tokens


def _string_prefix(source: str, i: int) -> bool:
    """Whether a string literal starts at ``i`` with a prefix (r, b, rb, br in any case)."""
    j = i
    while j < len(source) and j - i < 2 and source[j] in "rRbB":
        j += 1
    return j < len(source) and source[j] in "\"'" and (i == 0 or not (source[i - 1].isalnum() or source[i - 1] == "_"))


def _check_depth(tokens: list[_Token]) -> None:
    depth = 0
    for token in tokens:
        if token.kind != "punct":
            continue
        if token.text in _OPEN:
            depth += 1
            if depth > MAX_RULE_DEPTH:
                raise RuleLimitError(
                    f"column {token.at + 1}: brackets nested more than {MAX_RULE_DEPTH} deep: "
                    "write the rule flatter (or split it into several rules)"
                )
        elif token.text in _CLOSE:
            depth -= 1


def _closing(tokens: list[_Token], start: int, end: int) -> int:
    """The index of the bracket closing the one at ``start`` (``end`` if unbalanced: CEL's
    parser reports that)."""
    depth = 0
    for k in range(start, end):
        token = tokens[k]
        if token.kind == "punct":
            if token.text in _OPEN:
                depth += 1
            elif token.text in _CLOSE:
                depth -= 1
                if depth == 0:
                    return k
    return end


def _range_size(tokens: list[_Token], dot: int, offer: Mapping[str, Any]) -> int:
    """Elements a comprehension's range may hold: those of a list literal right before the dot,
    or of a value of the offer, else as many as a context may hold."""
    if dot > 0 and tokens[dot - 1].kind == "name":
        k = dot - 1
        while k >= 2 and tokens[k - 1].text == "." and tokens[k - 2].kind == "name":
            k -= 2
        if k == 0 or tokens[k - 1].text != ".":
            return _size(tokens, k, offer, dot)
        return MAX_CONTEXT_LEAVES
    if dot == 0 or tokens[dot - 1].text != "]":
        return MAX_CONTEXT_LEAVES
    depth, k = 0, dot - 1
    elements = 1
    while k >= 0:
        text = tokens[k].text if tokens[k].kind == "punct" else ""
        if text in _CLOSE:
            depth += 1
        elif text in _OPEN:
            depth -= 1
            if depth == 0:
                break
        elif text == "," and depth == 1:
            elements += 1
        k -= 1
    if k < 0:
        return MAX_CONTEXT_LEAVES
    before = tokens[k - 1] if k > 0 else None
    if before is not None and (before.kind in ("name", "string", "number") or before.text in (")", "]", "}")):
        return MAX_CONTEXT_LEAVES  # an index, x[...], not a list literal
    return 0 if k == dot - 2 else elements


def _path(tokens: list[_Token], k: int, end: int) -> str:
    """The dotted name starting at tokens[k] (``context.cart``), ``customer`` spelled as the
    part of the context it is."""
    parts = [tokens[k].text]
    k += 1
    while (
        k + 1 < end and tokens[k].text == "." and tokens[k + 1].kind == "name" and not (k + 2 < end and tokens[k + 2].text == "(")
    ):
        parts.append(tokens[k + 1].text)
        k += 2
    if parts[0] == "customer":
        parts.insert(0, "context")
    return ".".join(parts)


def _range_path(tokens: list[_Token], dot: int) -> str | None:
    """The context path a comprehension ranges over (``context.cart`` in
    ``context.cart.exists(...)``), or None if its range is anything else."""
    k = dot - 1
    if k < 0 or tokens[k].kind != "name":
        return None
    while k >= 2 and tokens[k - 1].text == "." and tokens[k - 2].kind == "name":
        k -= 2
    if k > 0 and tokens[k - 1].text == ".":
        return None
    path = _path(tokens, k, dot)
    return path if path.startswith("context.") else None


def _apart(one: str | None, other: str) -> bool:
    """Whether two context paths hold separate leaves (neither contains the other)."""
    return (
        one is not None
        and other.startswith("context.")
        and one != other
        and not other.startswith(one + ".")
        and not one.startswith(other + ".")
    )


def _cost(
    tokens: list[_Token],
    start: int,
    end: int,
    bound: frozenset[str],
    in_body: bool,
    offer: Mapping[str, Any],
    ranging: str | None = None,
) -> tuple[int, int, bool]:
    """The cost of tokens[start:end] in steps: what it costs each time it is evaluated, plus
    what it costs in all over the iterations of the comprehension whose body it is (a context
    list read in the body of a comprehension over another: ``ranging`` is that one's path);
    and whether it reads anything besides bound variables and literals (a value possibly as
    large as the context)."""
    cost, fixed, reads = 0, 0, False
    apart: list[str] = []  # context paths read, apart from the one iterated over
    k = start
    while k < end:
        token = tokens[k]
        if (
            token.kind == "name"
            and token.text in _MACROS
            and k > start
            and tokens[k - 1].text == "."
            and k + 3 < end
            and tokens[k + 1].text == "("
            and tokens[k + 2].kind == "name"
            and tokens[k + 3].text == ","
        ):
            close = _closing(tokens, k + 1, end)
            variable = tokens[k + 2].text
            size = _range_size(tokens, k - 1, offer)
            body, body_fixed, body_reads = _cost(
                tokens,
                k + 4,
                close,
                bound | {variable},
                True,
                offer,
                _range_path(tokens, k - 1) if size == MAX_CONTEXT_LEAVES else None,
            )
            cost += 3 + size * (ITERATION_STEPS + body) + body_fixed
            if token.text in ("map", "filter"):
                # the result is copied once per element it gains: the square of its length
                # (measured: about 2 steps per element copied), times each element's size (a
                # whole context's worth if the body reads one)
                element = MAX_CONTEXT_LEAVES if token.text == "map" and body_reads else 1
                cost += size * size * element
            reads = reads or body_reads or size == MAX_CONTEXT_LEAVES
            k = close + 1
            continue
        if token.kind == "name" and token.text not in _KEYWORDS and not (k > start and tokens[k - 1].text == "."):
            called = k + 1 < end and tokens[k + 1].text == "("
            if not called and token.text not in bound:
                size = _size(tokens, k, offer)
                reads = reads or size == MAX_CONTEXT_LEAVES
                if not in_body:
                    cost += 1
                elif size == MAX_CONTEXT_LEAVES and _apart(ranging, _path(tokens, k, end)):
                    apart.append(_path(tokens, k, end))
                else:
                    cost += size
                k += 1
                continue
        cost += 1
        k += 1
    if apart:
        # n iterations over one context list, each reading others of m elements in all: the
        # context holds n + m <= MAX_CONTEXT_LEAVES leaves, so n * m <= MAX_CONTEXT_LEAVES^2 / 4,
        # times the most reads of any one leaf per iteration (a path read twice, or within another)
        overlap = max(sum(1 for q in apart if not _apart(p, q)) for p in apart)
        fixed += overlap * (MAX_CONTEXT_LEAVES * MAX_CONTEXT_LEAVES // 4)
    return cost, fixed, reads


def check_call(offers: Iterable[Any]) -> tuple[str, str] | None:
    """Checks what one decision may evaluate against ``CALL_BUDGET``: on each channel, every
    distinct rule of the offers on it (a rule that names the offer is one rule per offer) and
    their weights. ``offers`` are ``nba.policy.policy_set.CompiledOffer``. Returns None, or the policy
    id costing most on the worst channel and a message naming the channel and the rules to
    simplify."""
    per_channel: dict[str, dict[int, tuple[int, str]]] = {}
    for compiled in offers:
        for bound in (*compiled.rules, *compiled.weights):
            for channel in compiled.offer.channels:
                if bound.channels and channel not in bound.channels:
                    continue
                per_channel.setdefault(channel, {})[id(bound.rule)] = (bound.rule.cost, bound.policy)
    worst = max(per_channel.items(), key=lambda item: sum(c for c, _ in item[1].values()), default=None)
    if worst is None:
        return None
    channel, rules = worst
    total = sum(c for c, _ in rules.values())
    if total <= CALL_BUDGET:
        return None
    by_policy: dict[str, int] = {}
    for cost, policy in rules.values():
        by_policy[policy] = by_policy.get(policy, 0) + cost
    top = sorted(by_policy.items(), key=lambda item: -item[1])[:3]
    named = ", ".join(f"{policy} (about {cost:,})" for policy, cost in top)
    return top[0][0], (
        f"the rules one decision on channel '{channel}' evaluates may cost about {total:,} steps together, "
        f"more than the limit of {CALL_BUDGET:,}; the costliest: {named}: simplify them (fewer comprehensions "
        "over context lists), or make a rule that names the offer into one that does not (it is then "
        "evaluated once, not once per offer)"
    )
