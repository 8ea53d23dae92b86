"""The OpenAPI 3.1 document of the HTTP API (``GET /openapi.json``), made from the routes and
the messages' descriptors: every operation, its parameters, its body, its answer and exactly
the statuses it can give, each error a problem details object (RFC 9457)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nba.service.http.routes import CALLBACK_PATH, Route
from nba.service.http.schema import MessageSchemas, comments
from nba.v1.decision_service_pb2 import CallbackResponse

__all__ = ["openapi_document"]

_DESCRIPTIONS = {
    200: "The response message",
    400: "The request is malformed: the body is not JSON, not the message, or a field is wrong (`field` names it)",
    401: "No token, or an unknown one (send `Authorization: Bearer <token>`); for a callback, no valid signature",
    403: "The token's role may not make this call",
    404: "What the request names does not exist (a callback: no such source)",
    409: "An idempotency key or id was already used for something else (a callback: its signature was taken before)",
    412: "The state is not what the request expected (an expected version, an identifier several customers hold)",
    413: "The body is larger than 8 MiB, or the request asks more than the service gives",
    415: "The body is not `application/json`",
    503: "The service is stopping or its database is away: retry after `Retry-After` seconds",
    504: "The call ran out of time",
}

_PROBLEM = {
    "type": "object",
    "description": "Problem details (RFC 9457)",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what went wrong and what to fix, starting with the field"},
        "instance": {"type": "string"},
        "code": {"type": "string", "description": "the gRPC status name the same call over gRPC would give"},
        "field": {"type": "string", "description": "the field at fault (a dotted path)"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "detail": {"type": "string"}},
                "required": ["field", "detail"],
            },
        },
        "problems": {"type": "array", "items": {"type": "object"}},
    },
}


def openapi_document(routes: Iterable[Route], title: str = "nba", sources: Iterable[str] = ()) -> dict[str, Any]:
    """The document, as a JSON-ready dict; ``sources``: the declared callback sources."""
    schemas = MessageSchemas()
    said = comments()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": list(route.tags),
            "responses": {},
        }
        description = said.get(f"{route.rpc.containing_service.full_name}.{route.rpc.name}")
        if description:
            operation["description"] = description
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 256}}
            for name in route.path_fields
        ]
        if route.method == "GET":
            for field in route.request.fields:
                if field.name in route.path_fields or field.name in route.excluded_query or field.is_repeated:
                    continue
                if field.message_type is not None and field.message_type.full_name not in (
                    "google.protobuf.FieldMask",
                    "google.protobuf.Timestamp",
                ):
                    continue
                schema = schemas.field_schema(field)
                if field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64):
                    schema = {"type": "integer"}
                parameter: dict[str, Any] = {"name": field.name, "in": "query", "required": False, "schema": schema}
                if said.get(field.full_name):
                    parameter["description"] = said[field.full_name]
                parameters.append(parameter)
        else:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas.ref(route.request)}}}
        if route.idempotency is not None:
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": f"the same as `{route.idempotency}` in the body (one, or both the same)",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                }
            )
        if parameters:
            operation["parameters"] = parameters
        if route.role is not None:
            operation["security"] = [{"bearer": []}]
            operation["description"] = (
                operation.get("description", "") + f" Needs a token of role `{route.role}` or above."
            ).strip()
        for status in route.all_statuses():
            if status == 200:
                operation["responses"]["200"] = {
                    "description": _DESCRIPTIONS[200],
                    "content": {"application/json": {"schema": schemas.ref(route.response)}},
                }
                continue
            answer: dict[str, Any] = {
                "description": _DESCRIPTIONS[status],
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
            if status == 503:
                answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
            if status == 401:
                answer["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
            operation["responses"][str(status)] = answer
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths[CALLBACK_PATH] = {"post": _callback_operation(schemas, sorted(sources))}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "Next-best-action decisioning over HTTP/JSON: the gRPC API's messages in the proto3 JSON "
            "mapping (fields by their proto names, 64-bit integers as strings, enums by name, times in RFC 3339).",
        },
        "paths": paths,
        "components": {
            "schemas": {**schemas.schemas, "Problem": _PROBLEM},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _callback_operation(schemas: MessageSchemas, sources: list[str]) -> dict[str, Any]:
    problem = {"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    # (the declared sources are not listed: the document is public, and their names say whom nba hears)
    source: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 64}
    return {
        "operationId": "takeCallback",
        "summary": "A campaign tool's signed webhook: its own payload, mapped to feedback by the source's declaration",
        "description": "Sign `<nba-timestamp>.<raw body>` with HMAC-SHA256 under the source's secret; send "
        "`nba-signature: v1=<hex>` (several, comma-separated, while a secret is rotated). Each event is applied "
        "as Feedback would; a 503 means send the whole payload again (nothing is applied twice).",
        "tags": ["callbacks"],
        "parameters": [
            {"name": "source", "in": "path", "required": True, "schema": source},
            {
                "name": "nba-timestamp",
                "in": "header",
                "required": True,
                "description": "Unix seconds; within 5 minutes before now, 30 s after",
                "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
            },
            {
                "name": "nba-signature",
                "in": "header",
                "required": True,
                "description": "v1=<hex HMAC-SHA256 of '<timestamp>.<raw body>'>, comma-separated",
                "schema": {"type": "string", "minLength": 1},
            },
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}},
        "responses": {
            "200": {
                "description": "Each event's result, in the payload's order",
                "content": {"application/json": {"schema": schemas.ref(CallbackResponse.DESCRIPTOR)}},
            },
            **{str(status): {"description": _DESCRIPTIONS[status], **problem} for status in (400, 401, 404, 409, 413, 415)},
            "503": {
                "description": _DESCRIPTIONS[503],
                "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
                **problem,
            },
        },
    }
