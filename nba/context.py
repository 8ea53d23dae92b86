"""The customer context: from the request's ``Struct`` to plain Python, within stated limits.

Limits protect the service from a single oversized request (all checked before any work):

    MAX_CONTEXT_BYTES   65,536 bytes serialised
    MAX_CONTEXT_DEPTH   8 levels of nesting (customer.flags.churn_risk is 3)
    MAX_CONTEXT_LEAVES  1,000 values in all
    keys                may not contain "." (dotted paths name nested fields in rules and logs)
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from nba.errors import InvalidArgument

__all__ = ["MAX_CONTEXT_BYTES", "MAX_CONTEXT_DEPTH", "MAX_CONTEXT_LEAVES", "context_from_struct", "features_from_struct"]

MAX_CONTEXT_BYTES = 64 * 1024
MAX_CONTEXT_DEPTH = 8
MAX_CONTEXT_LEAVES = 1000


def context_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Converts and checks a context; raises ``InvalidArgument`` naming the field at fault."""
    size = struct.ByteSize()
    if size > MAX_CONTEXT_BYTES:
        raise InvalidArgument(
            f"context: {size} bytes, more than the limit of {MAX_CONTEXT_BYTES}; "
            "send only the fields the policies and the learner use"
        )
    counter = [0]
    return _struct(struct, "context", 1, counter)


def features_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The context flattened to dotted keys (as ``bandit.flatten`` would give), checked, in one
    pass over the message: the request path needs only the flat form."""
    size = struct.ByteSize()
    if size > MAX_CONTEXT_BYTES:
        raise InvalidArgument(
            f"context: {size} bytes, more than the limit of {MAX_CONTEXT_BYTES}; "
            "send only the fields the policies and the learner use"
        )
    out: dict[str, Any] = {}
    counter = [0]
    stack: list[tuple[str, struct_pb2.Struct, int]] = [("", struct, 1)]
    while stack:
        prefix, node, depth = stack.pop()
        if depth > MAX_CONTEXT_DEPTH:
            raise InvalidArgument(f"context{'.' if prefix else ''}{prefix.rstrip('.')}: nested deeper than {MAX_CONTEXT_DEPTH} levels")
        fields = node.fields
        if not fields and prefix:
            out[prefix[:-1]] = {}
        for key in fields:  # faster than fields.items(), which is a Python-level view here
            value = fields[key]
            if "." in key:
                where = "context." + prefix[:-1] if prefix else "context"
                raise InvalidArgument(f"{where}: key {key!r} contains '.', which field names may not")
            kind = value.WhichOneof("kind")
            name = prefix + key
            if kind == "struct_value":
                stack.append((name + ".", value.struct_value, depth + 1))
                continue
            if kind == "number_value":
                number = value.number_value
                if number - number != 0.0:  # NaN or ±inf (cheaper than math.isfinite here)
                    raise InvalidArgument(f"context.{name}: {number} is not a finite number")
                out[name] = number
            elif kind == "string_value":
                out[name] = value.string_value
            elif kind == "bool_value":
                out[name] = value.bool_value
            else:
                out[name] = _value(value, f"context.{name}", depth, counter)
                continue
            counter[0] += 1
            if counter[0] > MAX_CONTEXT_LEAVES:
                raise InvalidArgument(f"context: more than {MAX_CONTEXT_LEAVES} values (at context.{name})")
    return dict(sorted(out.items()))


def _struct(struct: struct_pb2.Struct, path: str, depth: int, counter: list[int]) -> dict[str, Any]:
    if depth > MAX_CONTEXT_DEPTH:
        raise InvalidArgument(f"{path}: nested deeper than {MAX_CONTEXT_DEPTH} levels")
    out: dict[str, Any] = {}
    for key, value in struct.fields.items():
        if "." in key:
            raise InvalidArgument(f"{path}: key {key!r} contains '.', which field names may not")
        out[key] = _value(value, f"{path}.{key}", depth, counter)
    return out


def _value(value: struct_pb2.Value, path: str, depth: int, counter: list[int]) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _struct(value.struct_value, path, depth + 1, counter)
    if kind == "list_value":
        if depth + 1 > MAX_CONTEXT_DEPTH:
            raise InvalidArgument(f"{path}: nested deeper than {MAX_CONTEXT_DEPTH} levels")
        return [_value(v, f"{path}[{i}]", depth + 1, counter) for i, v in enumerate(value.list_value.values)]
    counter[0] += 1
    if counter[0] > MAX_CONTEXT_LEAVES:
        raise InvalidArgument(f"context: more than {MAX_CONTEXT_LEAVES} values (at {path})")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(f"{path}: {number} is not a finite number")
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None
