"""The customer context: from the request's ``Struct`` to plain Python, within stated limits.

Limits protect the service from a single oversized request (all checked before any work):

    MAX_CONTEXT_BYTES   65,536 bytes serialised
    MAX_CONTEXT_DEPTH   8 levels (below)
    MAX_CONTEXT_LEAVES  1,000 leaf values: scalars (list members included), {} and []
    keys                names: 1 to 256 characters, no "." (dotted paths name nested fields in
                        rules and logs) and no control character (``nba.inputs``)
    numbers             finite (no NaN or infinity), within ±2^53 (``nba.inputs.MAX_CONTEXT_NUMBER``)

Depth is one rule for every kind of value. A value's level is the number of keys on its path
(``customer.flags.churn_risk`` is at level 3), plus one for each list it sits in when it is
itself a struct or a list (``customer.orders[0].total`` is at level 4: customer, orders, the
order, total). Scalars in a list are part of the list, at its level (a ``list<string>`` is one
value, as the schema says). Any value, whatever its kind (a number, a string, a list, ``{}``),
may be at level 8; nothing may be at level 9. The message names the first value too deep.

Protobuf itself stops decoding a message nested about 33 levels deep; such a request never
reaches this module and is refused as undecodable (``nba.service.server``), also ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import importlib
from typing import Any

from google.protobuf import struct_pb2

from nba.errors import InvalidArgument
from nba.inputs import (
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_DEPTH,
    MAX_CONTEXT_LEAVES,
    MAX_CONTEXT_NUMBER,
    MAX_ID_LENGTH,
    control_character,
)

__all__ = ["MAX_CONTEXT_BYTES", "MAX_CONTEXT_DEPTH", "MAX_CONTEXT_LEAVES", "features_from_struct"]


#: keys already found valid: channel systems send the same few hundred keys again and again
_KNOWN_KEYS: set[str] = set()
_KNOWN_KEYS_LIMIT = 20_000


def features_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The context flattened to dotted keys (as ``bandit.flatten`` would give), checked, in one
    pass over the message's bytes (compiled, ``nba.service.wire``) or, for what that pass leaves,
    over the message: the request path needs only the flat form. Raises ``InvalidArgument``
    naming the field at fault."""
    data = struct.SerializeToString()
    if len(data) > MAX_CONTEXT_BYTES:
        raise InvalidArgument(
            f"context: {len(data)} bytes, more than the limit of {MAX_CONTEXT_BYTES}; "
            "send only the fields the policies and the learner use"
        )
    # The compiled pass over the bytes answers the contexts it can check completely; the walk
    # below answers the rest, and names the field at fault.
    found = (_wire or load_wire()).flat_context(data)
    return found if found is not None else walk_struct(struct)


#: ``nba.service.wire``, once loaded: numba's import and the kernel's loading cost about 0.8 s
#: of CPU a process, which processes that never read a request's context (the CLI) must not pay
_wire: Any = None


def load_wire() -> Any:
    """Loads the compiled context pass (``nba.service.wire``) now, if not yet, and returns it:
    the service calls it as it starts, so that no request pays the loading."""
    global _wire
    if _wire is None:
        # by name, at run time: deferred on purpose (see _wire)
        _wire = importlib.import_module("nba.service.wire")
    return _wire


def walk_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """``features_from_struct`` in Python, over the message's objects: every context, and the
    reference the compiled pass (``nba.service.wire``) is held to."""
    out: dict[str, Any] = {}
    counter = [0]
    # (dotted prefix, struct, the level of its fields)
    stack: list[tuple[str, struct_pb2.Struct, int]] = [("", struct, 1)]
    while stack:
        prefix, node, level = stack.pop()
        fields = node.fields
        for key in fields:  # faster than fields.items(), which is a Python-level view here
            if key not in _KNOWN_KEYS:
                _check_key(key, "context." + prefix[:-1] if prefix else "context")
            value = fields[key]
            kind = value.WhichOneof("kind")
            name = prefix + key
            if level > MAX_CONTEXT_DEPTH:
                _too_deep(f"context.{name}", level)
            if kind == "struct_value":
                inner = value.struct_value
                if inner.fields:
                    stack.append((name + ".", inner, level + 1))
                    continue
                out[name] = {}
            elif kind == "number_value":
                number = value.number_value
                if not -MAX_CONTEXT_NUMBER <= number <= MAX_CONTEXT_NUMBER:  # NaN fails it too
                    raise _bad_number(f"context.{name}", number)
                out[name] = number
            elif kind == "string_value":
                out[name] = value.string_value
            elif kind == "bool_value":
                out[name] = value.bool_value
            elif kind == "list_value":
                out[name] = _list(value.list_value, f"context.{name}", level, counter)
                continue
            else:
                out[name] = None
            _count(counter, f"context.{name}")
    return dict(sorted(out.items()))


def properties_from_struct(struct: struct_pb2.Struct, field: str = "properties") -> dict[str, Any]:
    """An event's properties, nested as sent, checked as a context is (size, depth, leaves,
    keys, finite numbers within range). Raises ``InvalidArgument`` naming the field."""
    size = struct.ByteSize()
    if size > MAX_CONTEXT_BYTES:
        raise InvalidArgument(f"{field}: {size} bytes, more than the limit of {MAX_CONTEXT_BYTES}", field=field)
    return _struct(struct, field, 0, [0]) if struct.fields else {}


def _list(values: struct_pb2.ListValue, path: str, level: int, counter: list[int]) -> list[Any]:
    """A list at ``level``: scalar members at its level, structs and lists one deeper."""
    items = values.values
    if not items:
        _count(counter, path)
        return []
    out: list[Any] = []
    for i, value in enumerate(items):
        kind = value.WhichOneof("kind")
        if kind == "struct_value" or kind == "list_value":
            where = f"{path}[{i}]"
            if level + 1 > MAX_CONTEXT_DEPTH:
                _too_deep(where, level + 1)
            if kind == "list_value":
                out.append(_list(value.list_value, where, level + 1, counter))
            else:
                out.append(_struct(value.struct_value, where, level + 1, counter))
            continue
        out.append(_scalar(value, kind, f"{path}[{i}]"))
        _count(counter, f"{path}[{i}]")
    return out


def _struct(struct: struct_pb2.Struct, path: str, level: int, counter: list[int]) -> dict[str, Any]:
    """A struct inside a list, at ``level``: kept nested (lists are not flattened)."""
    fields = struct.fields
    if not fields:
        _count(counter, path)
        return {}
    out: dict[str, Any] = {}
    for key in fields:
        if key not in _KNOWN_KEYS:
            _check_key(key, path)
        value = fields[key]
        kind = value.WhichOneof("kind")
        where = f"{path}.{key}"
        if level + 1 > MAX_CONTEXT_DEPTH:
            _too_deep(where, level + 1)
        if kind == "struct_value":
            out[key] = _struct(value.struct_value, where, level + 1, counter)
        elif kind == "list_value":
            out[key] = _list(value.list_value, where, level + 1, counter)
        else:
            out[key] = _scalar(value, kind, where)
            _count(counter, where)
    return out


def _scalar(value: struct_pb2.Value, kind: str | None, path: str) -> Any:
    if kind == "number_value":
        number = value.number_value
        if not -MAX_CONTEXT_NUMBER <= number <= MAX_CONTEXT_NUMBER:  # NaN fails it too
            raise _bad_number(path, number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _bad_number(path: str, number: float) -> InvalidArgument:
    if number - number != 0.0:  # NaN or ±inf
        return InvalidArgument(f"{path}: {number} is not a finite number")
    return InvalidArgument(
        f"{path}: {number:g} is beyond ±2^53 ({MAX_CONTEXT_NUMBER:.0f}), the largest magnitude a context "
        "number may have; send an identifier as a string"
    )


def _count(counter: list[int], path: str) -> None:
    counter[0] += 1
    if counter[0] > MAX_CONTEXT_LEAVES:
        raise InvalidArgument(f"context: more than {MAX_CONTEXT_LEAVES} values (at {path})")


def _too_deep(path: str, level: int) -> None:
    raise InvalidArgument(
        f"{path}: at level {level}, nested deeper than {MAX_CONTEXT_DEPTH} levels (each key is a level, and each "
        "struct or list inside a list)"
    )


def _check_key(key: str, where: str) -> None:
    """A key is a name: 1 to 256 characters, no "." and no control character."""
    if not key:
        raise InvalidArgument(f"{where}: an empty key; keys are names of 1 to {MAX_ID_LENGTH} characters")
    if "." in key:
        raise InvalidArgument(f"{where}: key {key!r} contains '.', which field names may not")
    if len(key) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{where}: a key of {len(key)} characters, longer than {MAX_ID_LENGTH}")
    bad = control_character(key)
    if bad is not None:
        raise InvalidArgument(f"{where}: key {key!r} contains {bad}; use printable characters only")
    if len(_KNOWN_KEYS) < _KNOWN_KEYS_LIMIT:
        _KNOWN_KEYS.add(key)
