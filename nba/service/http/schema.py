"""JSON Schemas of the API's messages, made from the protobuf descriptors: the HTTP API speaks
the proto3 JSON mapping of the same messages gRPC does (https://protobuf.dev/programming-guides/json/),
so one contract (``proto/``) describes both and the OpenAPI document cannot drift from it.

The mapping, as ``google.protobuf.json_format`` reads and writes it: fields by their proto
names (``customer_id``: the schemas allow no other, so not the lowerCamelCase JSON names), 64-bit
integers as decimal strings (read from numbers too), enums by name, ``Timestamp`` as RFC 3339
text, ``Struct`` as any JSON object, maps as objects, a ``FieldMask`` as comma-separated names. Field descriptions come from the ``.proto``
comments when ``make proto`` kept them (``nba/v1/*.binpb``, a descriptor set with source info).

We write this rather than use a generator: the ones that exist are protoc plug-ins in Go or
Node.js, which a ``pip`` install cannot run, and the mapping is small and fixed by the spec.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

__all__ = ["MessageSchemas", "comments"]

_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
_FLOAT = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
#: the well-known types, as the proto3 JSON mapping writes them
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object", "description": "any JSON object"},
    "google.protobuf.Value": {"description": "any JSON value"},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339, with a time zone (2026-11-30T09:00:00Z)",
    },
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "field names, comma-separated (customer_id,version,attributes)",
        "pattern": r"^[A-Za-z0-9_.,]*$",
    },
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"]},
}
#: a 64-bit integer as proto3 JSON writes it (a string: JSON numbers lose precision past 2^53)
_INT64_TEXT = r"^-?[0-9]{1,19}$"
_V1 = Path(__file__).resolve().parents[2] / "v1"


@cache
def comments() -> dict[str, str]:
    """The ``.proto`` comments by element (``nba.v1.DecideRequest``, ``nba.v1.DecideRequest.limit``,
    ``nba.v1.DecisionService.Decide``), from the descriptor sets ``make proto`` writes; empty
    when they are not there (the schemas are then bare, and still true)."""
    found: dict[str, str] = {}
    for path in sorted(_V1.glob("*.binpb")):
        files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
        for file in files.file:
            names = _element_names(file)
            for location in file.source_code_info.location:
                text = location.leading_comments.strip() or location.trailing_comments.strip()
                name = names.get(tuple(location.path))
                if text and name:
                    found[name] = " ".join(line.strip() for line in text.splitlines())
    return found


def _element_names(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Source-info paths to the full names of messages, fields, enums and methods
    (descriptor.proto numbers: message_type 4, field 2, nested_type 3, enum_type 5, service 6, method 2)."""
    names: dict[tuple[int, ...], str] = {}

    def message(path: tuple[int, ...], proto: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        full = f"{prefix}.{proto.name}"
        names[path] = full
        for n, field in enumerate(proto.field):
            names[(*path, 2, n)] = f"{full}.{field.name}"
        for n, nested in enumerate(proto.nested_type):
            message((*path, 3, n), nested, full)
        for n, enum in enumerate(proto.enum_type):
            names[(*path, 4, n)] = f"{full}.{enum.name}"

    for n, proto in enumerate(file.message_type):
        message((4, n), proto, file.package)
    for n, enum in enumerate(file.enum_type):
        names[(5, n)] = f"{file.package}.{enum.name}"
    for n, service in enumerate(file.service):
        names[(6, n)] = f"{file.package}.{service.name}"
        for m, method in enumerate(service.method):
            names[(6, n, 2, m)] = f"{file.package}.{service.name}.{method.name}"
    return names


class MessageSchemas:
    """JSON Schemas (OpenAPI 3.1's dialect) of messages and everything they hold, collected by
    full name for ``components.schemas``; ``ref(descriptor)`` gives the reference to use."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.schemas:
            self.schemas[name] = {}  # (a message that holds itself refers to itself)
            self.schemas[name] = self._message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, descriptor: Descriptor) -> dict[str, Any]:
        said = comments()
        properties: dict[str, Any] = {}
        for field in descriptor.fields:
            schema = _nullable(self.field_schema(field))
            text = said.get(field.full_name)
            if text:
                schema = {**schema, "description": text}
            properties[field.name] = schema
        out: dict[str, Any] = {"type": ["object", "null"], "properties": properties, "additionalProperties": False}
        if said.get(descriptor.full_name):
            out["description"] = said[descriptor.full_name]
        return out

    def field_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value)}
        single = self._single(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def _single(self, field: FieldDescriptor) -> dict[str, Any]:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE or kind == FieldDescriptor.TYPE_GROUP:
            return self.ref(field.message_type)
        if kind == FieldDescriptor.TYPE_ENUM:
            return _enum(field.enum_type)
        if kind == FieldDescriptor.TYPE_STRING:
            return {"type": "string"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind in _INT32:
            return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
        if kind in _UINT32:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
        if kind in _INT64:  # written as text; read from text or a number
            return {
                "type": ["string", "integer"],
                "pattern": _INT64_TEXT,
                "minimum": -(2**63),
                "maximum": 2**63 - 1,
                "format": "int64",
            }
        if kind in _FLOAT:
            return {"type": "number", "format": "double"}
        raise ValueError(f"{field.full_name}: no JSON mapping for field type {kind}")  # pragma: no cover


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's schema with null allowed: proto3 JSON reads null as the field left out."""
    if "$ref" in schema or "type" not in schema:
        return schema  # a message's own schema allows null (a field of it, not anyOf: errors keep their path)
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    out = {**schema, "type": [*kinds, "null"] if "null" not in kinds else kinds}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _enum(descriptor: EnumDescriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "enum": [value.name for value in descriptor.values]}
    text = comments().get(descriptor.full_name)
    if text:
        out["description"] = text
    return out
