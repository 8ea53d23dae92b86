"""The compiled pass over a context's wire bytes (nba.service.wire) gives the features the
Python walk over the message gives, value for value and type for type, or leaves the context to
the walk (which then answers, or names the field at fault): generated contexts of every shape
the limits allow and many they do not."""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf import struct_pb2

from nba.errors import InvalidArgument
from nba.service.context import features_from_struct, walk_struct
from nba.service.wire import flat_context

KEYS = ["age", "segment", "flags", "a-b", "x_1", "Ünï", "with.dot", "", "tab\there", "k" * 256, "k" * 257, "z", "a"]
STRINGS = ["", "gold", "ünïcode ✓", "nul\x00inside", "line\nbreak", "x" * 300]


def value(rng: random.Random, depth: int) -> Any:
    choice = rng.randrange(12)
    if choice < 3:
        return rng.choice([0.0, -1.5, 30.0, 2.0**53, -(2.0**53), 2.0**53 + 2, 1e300, float("nan"), float("inf")])
    if choice < 5:
        return rng.choice(STRINGS)
    if choice == 5:
        return rng.random() < 0.5
    if choice == 6:
        return None
    if choice < 10 and depth < 10:
        return {
            rng.choice(KEYS[:6] + KEYS[9:10]) + str(rng.randrange(3)): value(rng, depth + 1) for _ in range(rng.randint(0, 4))
        }
    items: list[Any] = [rng.choice([1.0, "a", True, None, 2.0**60]) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.2:
        items.append({"nested": 1.0} if rng.random() < 0.5 else [1.0])
    return items


def clean(rng: random.Random, depth: int) -> Any:
    """A value of the shapes channel systems send: finite numbers, text, booleans, lists of
    scalars, nested maps."""
    choice = rng.randrange(8)
    if choice < 2:
        return rng.choice([0.0, -1.5, 30.0, 1234.5678, 2.0**53])
    if choice < 4:
        return rng.choice(STRINGS[:3] + STRINGS[4:])
    if choice == 4:
        return rng.random() < 0.5
    if choice == 5 and depth < 7:
        return {rng.choice(KEYS[:5]) + str(rng.randrange(3)): clean(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if choice == 6:
        return None
    return [rng.choice([1.0, "a", True, None]) for _ in range(rng.randint(0, 3))]


def context(rng: random.Random) -> struct_pb2.Struct:
    if rng.random() < 0.5:
        root = {rng.choice(KEYS[:5]) + str(rng.randrange(6)): clean(rng, 1) for _ in range(rng.randint(0, 12))}
    else:
        root = {rng.choice(KEYS) + str(rng.randrange(4)): value(rng, 1) for _ in range(rng.randint(0, 8))}
    if rng.random() < 0.05:  # many leaves
        root["many"] = {f"f{i}": float(i) for i in range(rng.choice([500, 999, 1000, 1001]))}
    message = struct_pb2.Struct()
    message.update(root)
    return message


def outcome(fn: Any, message: struct_pb2.Struct) -> Any:
    try:
        found = fn(message)
    except InvalidArgument as exc:
        return ("refused", str(exc))
    return [(k, type(v).__name__, repr(v)) for k, v in found.items()]


@pytest.mark.parametrize("seed", range(4))
def test_the_compiled_pass_gives_the_walks_features_or_leaves_them_to_it(seed: int) -> None:
    rng = random.Random(seed)
    answered = 0
    for _ in range(1500):
        message = context(rng)
        expected = outcome(walk_struct, message)
        fast = flat_context(message.SerializeToString())
        if fast is not None:
            answered += 1
            assert expected != "refused" and not isinstance(expected, tuple), (message, expected)
            assert [(k, type(v).__name__, repr(v)) for k, v in fast.items()] == expected
        assert outcome(features_from_struct, message) == expected
    assert answered > 750  # the compiled pass answers at least the clean half: the comparison is not empty


def test_a_plain_context_is_answered_by_the_compiled_pass() -> None:
    message = struct_pb2.Struct()
    message.update({"customer": {"age": 41.0, "products": ["loan", "savings"], "flags": {"vip": True}, "notes": {}}, "z": None})
    assert flat_context(message.SerializeToString()) == {
        "customer.age": 41.0,
        "customer.flags.vip": True,
        "customer.notes": {},
        "customer.products": ["loan", "savings"],
        "z": None,
    }
    assert flat_context(b"") == {}


@pytest.mark.parametrize(
    "root",
    [
        {"with.dot": 1.0},
        {"Ünï": 1.0},
        {"a": float("nan")},
        {"a": 2.0**54},
        {"a": [{"nested": 1.0}]},
        {"a": "nul\x00inside"},
        {"k" * 257: 1.0},
    ],
)
def test_what_the_compiled_pass_cannot_check_is_left_to_the_walk(root: dict[str, Any]) -> None:
    message = struct_pb2.Struct()
    message.update(root)
    assert flat_context(message.SerializeToString()) is None


def test_bytes_that_are_not_a_struct_are_left_to_the_walk() -> None:
    assert flat_context(b"\x0a\x05\x0a\x01a") is None  # an entry that ends past its length
    assert flat_context(b"\x12\x00") is None  # not field 1
    assert flat_context(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01") is None  # a varint past 64 bits
