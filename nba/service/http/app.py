"""The HTTP/JSON API: a Starlette application over the same servicers gRPC calls, so every
check, limit, idempotency key and error is the same; only the framing differs.

A request's JSON (the body of a POST; the query and path of a GET) is read into the route's
request message by ``google.protobuf.json_format`` and handed to the gRPC servicer method in a
worker thread (the domain code blocks: database reads, waiting for a durable write). Errors are
problem details (RFC 9457, ``application/problem+json``) with the HTTP status matching the gRPC
code, the field at fault in ``field`` and each violation in ``errors``; the framework's own
error shapes never reach a client.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import anyio
import anyio.to_thread
import jsonschema_rs
import orjson
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route as StarletteRoute

from nba import metrics
from nba.errors import InvalidArgument, NbaError, NotFound, PolicySetError, Unavailable, field_of, field_violations
from nba.inputs import value_kind
from nba.service.auth import Tokens, acting_as
from nba.service.http.callbacks import Callbacks
from nba.service.http.openapi import openapi_document
from nba.service.http.routes import CALLBACK_PATH, ROUTES, Route
from nba.service.http.schema import MessageSchemas

__all__ = ["HTTP_STATUS", "MAX_BODY_BYTES", "MAX_JSON_DEPTH", "create_app"]

log = logging.getLogger(__name__)

#: a gRPC code's HTTP status, as Google's HTTP mapping (google/rpc/code.proto) but for two:
#: FAILED_PRECONDITION is 412, "the state is not what the request expected", not 400; and
#: RESOURCE_EXHAUSTED is 413, since nba raises it for a body or a draft too large, never for a
#: rate limit (Google's 429)
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "FAILED_PRECONDITION": 412,
    "RESOURCE_EXHAUSTED": 413,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
#: the largest body read, as gRPC's largest message (nba.service.server.MAX_MESSAGE_BYTES)
MAX_BODY_BYTES = 8 * 1024 * 1024
#: JSON nested deeper than this is refused before it is read into a message: the deepest
#: message (a TrackBatch's event's properties) holds a context 8 levels deep in 4 of its own
MAX_JSON_DEPTH = 24
#: how long a client is told to wait before retrying a 503
RETRY_AFTER_SECONDS = 1
_PROBLEM = "application/problem+json"
_JSON = "application/json"


def create_app(
    methods: Mapping[str, Callable[[Any, Any], Message]],
    tokens: Tokens,
    ready: Callable[[], bool] = lambda: True,
    cors_origins: tuple[str, ...] = (),
    threads: int = 16,
    title: str = "nba",
    callbacks: Callbacks | None = None,
    console: Sequence[BaseRoute] = (),
) -> Starlette:
    """The API over ``methods`` (full gRPC method name to the servicer's bound method);
    ``tokens`` authenticate the calls that need a role; ``ready()`` is False while the
    service cannot take calls (stopping). ``threads``: the domain calls at once.
    ``callbacks``: the campaign tools' signed webhooks (``POST /v1/callbacks/{source}``).
    ``console``: the web console's routes (``nba.service.console``), served beside the API."""
    limiter: list[anyio.CapacityLimiter] = []  # made in the event loop, at the first call
    document = orjson.dumps(openapi_document(ROUTES, title, callbacks.names if callbacks is not None else ()))
    by_path: dict[str, list[Route]] = {}
    for route in ROUTES:
        by_path.setdefault(route.path, []).append(route)

    async def in_thread(run: Callable[[], Message]) -> Message:
        """The domain call on a worker thread (it blocks: database reads, durable writes)."""
        if not limiter:
            limiter.append(anyio.CapacityLimiter(threads))
        return await anyio.to_thread.run_sync(run, limiter=limiter[0])

    def answering(
        label: str, work: Callable[[Request], Awaitable[tuple[Message, dict[str, str]]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A route's handler: ``work`` gives the answer and its headers; every error becomes a
        problem with its status; each request is counted and timed under ``label``."""
        histogram = metrics.HTTP_DURATION.labels(label)

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if not ready():
                    raise Unavailable("the service is stopping; retry on another instance")
                answer, headers = await work(request)
                body = json_format.MessageToDict(
                    answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
                response = Response(orjson.dumps(body), 200, headers, media_type=_JSON)
            except NbaError as exc:
                response = problem(exc, request.url.path)
            except ClientDisconnect:
                response = Response(status_code=499)
            except Exception:
                log.exception("unexpected error", extra={"route": label})
                response = _problem_response(500, "internal error; the service log has the details", request.url.path)
            metrics.HTTP_REQUESTS.labels(label, str(response.status_code)).inc()
            histogram.observe(time.perf_counter() - started)
            return response

        return handle

    def endpoint(route: Route) -> Callable[[Request], Awaitable[Response]]:
        call = methods[route.full_method]
        message_class = GetMessageClass(route.request)

        async def work(request: Request) -> tuple[Message, dict[str, str]]:
            caller = None
            if route.role is not None:  # before the body is read: a stranger's body costs nothing
                caller = tokens.authorize(request.headers.getlist("authorization"), route.full_method, route.role, "the header")
            message = await _message(request, route, message_class)
            context = CallContext()

            def run() -> Message:
                if caller is None:
                    return call(message, context)
                with acting_as(caller):
                    return call(message, context)

            answer = await in_thread(run)
            return answer, context.trailers

        return answering(f"{route.method} {route.path}", work)

    async def openapi(request: Request) -> Response:
        return Response(document, 200, media_type=_JSON)

    async def callback_work(request: Request) -> tuple[Message, dict[str, str]]:
        if callbacks is None:
            raise NotFound("source: no callback sources are declared (--callback-sources)")
        _check_json(request)
        raw = await _raw(request)
        name = request.path_params["source"]
        timestamp, signature = request.headers.get("nba-timestamp"), request.headers.get("nba-signature")
        answer = await in_thread(lambda: callbacks.take(name, timestamp, signature, raw, parse_json))
        return answer, {}

    callback = answering(f"POST {CALLBACK_PATH}", callback_work)

    starlette_routes: list[BaseRoute] = [
        *console,
        StarletteRoute("/openapi.json", openapi, methods=["GET"]),
        StarletteRoute(CALLBACK_PATH, callback, methods=["POST"]),
    ]
    for path, routes in by_path.items():
        handlers = {route.method: endpoint(route) for route in routes}

        async def dispatch(
            request: Request, handlers: dict[str, Callable[[Request], Awaitable[Response]]] = handlers
        ) -> Response:
            # Starlette serves HEAD wherever GET is: the same answer, its body left unsent
            return await handlers["GET" if request.method == "HEAD" else request.method](request)

        starlette_routes.append(StarletteRoute(path, dispatch, methods=list(handlers)))

    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "idempotency-key"],
                expose_headers=["retry-after", "www-authenticate", "nba-worker"],
                max_age=600,
            )
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (no such path, a method the path does not serve) as problems."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            detail = f"path: no route {request.url.path[:200]!r}; the API is described at /openapi.json"
        elif status == 405:
            detail = f"method: {request.method} is not served at {request.url.path[:200]!r}"
        else:
            detail = str(getattr(exc, "detail", "")) or _TITLES.get(status, "error")
        headers = dict(getattr(exc, "headers", None) or {})
        response = _problem_response(status, detail, request.url.path, headers=headers)
        metrics.HTTP_REQUESTS.labels("unrouted", str(status)).inc()
        return response

    return Starlette(routes=starlette_routes, middleware=middleware, exception_handlers={HTTPException: http_error})


class CallContext:
    """What the servicers ask of a gRPC context, for a call that came over HTTP: no deadline
    (a client that leaves is not seen while the call runs), trailers become headers."""

    def __init__(self) -> None:
        self.trailers: dict[str, str] = {}

    def time_remaining(self) -> float | None:
        return None

    def is_active(self) -> bool:
        return True

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailers.update(metadata)


async def _message(request: Request, route: Route, message_class: type[Message]) -> Message:
    """The request message from the body (POST) or the query (GET), and the path's fields."""
    if route.method == "POST":
        _check_json(request)
        data = await _body(request)
        if not isinstance(data, dict):
            raise InvalidArgument(
                f"body: must be a JSON object (the {route.request.name} message), got {value_kind(data)}", "body"
            )
    else:
        data = _query(request, route)
    for name in route.path_fields:
        value = request.path_params[name]
        if name in data and data[name] != value:
            raise InvalidArgument(f"{name}: given in the path and differently in the query; give it once", name)
        data[name] = value
    if route.idempotency is not None:
        key = request.headers.get("idempotency-key")
        if key is not None:
            if not key.strip():
                raise InvalidArgument("idempotency-key: empty; send a key, or no header", "idempotency-key")
            sent = data.get(route.idempotency)
            if sent not in (None, "", key):
                raise InvalidArgument(
                    f"{route.idempotency}: the body says {str(sent)[:80]!r} and the Idempotency-Key header "
                    f"{key[:80]!r}; send one, or both the same",
                    route.idempotency,
                )
            data[route.idempotency] = key
    return _parsed(data, message_class)


def _check_json(request: Request) -> None:
    kind = request.headers.get("content-type", "")
    media = kind.split(";", 1)[0].strip().lower()
    if media != _JSON and not (media.startswith("application/") and media.endswith("+json")):
        raise _UnsupportedMedia(f"content-type: send 'application/json', not {kind[:100]!r}")


async def _body(request: Request) -> Any:
    return parse_json(await _raw(request))


async def bounded_body(request: Request) -> bytes:
    """A request's body, at most ``MAX_BODY_BYTES`` (``ResourceExhausted`` beyond, before it is all read)."""
    return await _raw(request)


async def _raw(request: Request) -> bytes:
    """The body's bytes, at most ``MAX_BODY_BYTES`` (413 beyond, before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge(f"body: {int(declared):,} bytes, more than {MAX_BODY_BYTES:,}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge(f"body: more than {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """A body's JSON; ``InvalidArgument`` saying where it is not JSON, or nested too deep."""
    if not raw.strip():
        raise InvalidArgument("body: empty; send a JSON object ({} for a request with no fields)", "body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = exc.msg if hasattr(exc, "msg") else str(exc)
        raise InvalidArgument(
            f"body: not JSON at line {exc.lineno}, column {exc.colno} (byte {exc.pos}): {reason}", "body"
        ) from None
    depth = _depth(data)
    if depth > MAX_JSON_DEPTH:
        raise InvalidArgument(f"body: nested {depth} levels deep, more than {MAX_JSON_DEPTH}", "body")
    return data


def _query(request: Request, route: Route) -> dict[str, Any]:
    """The query's parameters as the message's fields (each once; numbers and booleans read)."""
    fields = route.request.fields_by_name
    data: dict[str, Any] = {}
    for name in request.query_params:
        values = request.query_params.getlist(name)
        field = fields.get(name)
        if field is None or not _query_field(field) or name in route.excluded_query:
            known = ", ".join(
                sorted(f.name for f in route.request.fields if _query_field(f) and f.name not in route.excluded_query)
            )
            raise InvalidArgument(f"{name[:64]}: not a query parameter of this call (it takes: {known or 'none'})", name[:64])
        if len(values) > 1:
            raise InvalidArgument(f"{name}: given {len(values)} times; give it once", name)
        value = values[0]
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
            data[name] = value  # RFC 3339, as the JSON mapping writes a Timestamp
        elif field.message_type is not None:  # a field mask: proto3 JSON spells its paths in lowerCamelCase
            data[name] = ",".join(_camel(path.strip()) for path in value.split(",") if path.strip())
        elif field.type == field.TYPE_BOOL:
            if value not in ("true", "false"):
                raise InvalidArgument(f"{name}: must be true or false, got {value[:40]!r}", name)
            data[name] = value == "true"
        elif field.cpp_type in (field.CPPTYPE_INT32, field.CPPTYPE_UINT32):
            try:
                data[name] = int(value)
            except ValueError:
                raise InvalidArgument(f"{name}: must be a whole number, got {value[:40]!r}", name) from None
        else:
            data[name] = value
    return data


def _camel(path: str) -> str:
    return ".".join(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part) for part in path.split("."))


def _query_field(field: Any) -> bool:
    """A field a query parameter can give: a scalar, a time (RFC 3339), or a field mask
    (comma-separated paths)."""
    if field.is_repeated:
        return False
    return field.message_type is None or field.message_type.full_name in (
        "google.protobuf.FieldMask",
        "google.protobuf.Timestamp",
    )


def _parsed(data: dict[str, Any], message_class: type[Message]) -> Message:
    found = _schema_problem(data, message_class)
    if found is not None:
        raise InvalidArgument(*found)
    message = message_class()
    try:
        json_format.ParseDict(data, message, max_recursion_depth=MAX_JSON_DEPTH + 8)
    except json_format.ParseError as exc:
        raise InvalidArgument(*_parse_problem(str(exc), message_class)) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(f"body: not a {message_class.DESCRIPTOR.name} ({type(exc).__name__})", "body") from None
    return message


@cache
def _validator(full_name: str) -> Any:
    schemas = MessageSchemas()
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    return jsonschema_rs.validator_for(
        {**schemas.ref(descriptor), "components": {"schemas": schemas.schemas}}, validate_formats=True
    )


def _schema_problem(data: dict[str, Any], message_class: type[Message]) -> tuple[str, str] | None:
    """What the message's JSON Schema (the OpenAPI document's) says is wrong, as ``field: what
    to fix``, or None. Every request is held to it, so that what the document refuses is
    refused (json_format alone takes a boolean for a number, an enum's number for its name).
    jsonschema-rs (compiled, wheels) checks a Decide body in about a microsecond."""
    validator = _validator(message_class.DESCRIPTOR.full_name)
    if validator.is_valid(data):
        return None
    error = min(validator.iter_errors(data), key=lambda e: len(e.instance_path))
    path = list(error.instance_path)
    kind = error.kind
    if kind.name == "additionalProperties":
        field = _path([*path, kind.unexpected[0]])
        return (f"{field}: no such field", field)
    field = _path(path) or "body"
    if kind.name == "type":
        reason = f"must be {_expected(list(kind.types))}, got {value_kind(error.instance)}"
    elif kind.name == "enum":
        reason = f"must be one of {', '.join(str(o) for o in kind.options if o is not None)}"
    elif kind.name == "format" and kind.format == "date-time":
        reason = "must be an RFC 3339 time with a UTC offset, as 2026-11-30T09:00:00Z"
    elif kind.name == "pattern":
        reason = "must be a whole number (digits, as a JSON number or text)"
    else:
        reason = error.message[:200]
    return (f"{field}: {reason}", field)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _expected(kind: Any) -> str:
    names = {
        "string": "a text",
        "integer": "a whole number",
        "number": "a number",
        "boolean": "true or false",
        "object": "a JSON object",
        "array": "a list",
        "null": "null",
    }
    kinds = kind if isinstance(kind, list) else [kind]
    return " or ".join(names.get(str(k), str(k)) for k in kinds if k != "null" or len(kinds) == 1)


def _parse_problem(text: str, message_class: type[Message]) -> tuple[str, str]:
    """json_format's complaint as ``field: what to fix``. It ends with where it was
    (``at "DecideRequest.limit"``): that path, less the message's own name, is the field."""
    head = text.split("\n", 1)[0]
    field = "body"
    found = re.search(r' at "?([A-Za-z0-9_.\[\]]+?)"?\.?$', head)
    if found:
        head = head[: found.start()]
        _, _, rest = found.group(1).partition(".")
        field = rest or "body"
        head = head.replace(f"{field} field: ", "", 1)
    if "has no field named" in head:
        name = head.split('has no field named "', 1)[-1].split('"', 1)[0]
        field = f"{field}.{name}" if field != "body" else name
        known = ", ".join(f.name for f in message_class.DESCRIPTOR.fields) if field == name else ""
        return (f"{field}: no such field" + (f" (the fields: {known})" if known else ""), field)
    head = head.removeprefix("Failed to parse ").strip()
    return (f"{field}: {head[:300]}", field)


def _depth(value: Any) -> int:
    """How deeply JSON nests (a scalar: 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest


class _UnsupportedMedia(NbaError):
    code = "UNSUPPORTED_MEDIA"


class _TooLarge(NbaError):
    code = "RESOURCE_EXHAUSTED"


def problem(exc: NbaError, instance: str) -> Response:
    """The problem details (RFC 9457) of a domain error, with its HTTP status."""
    status = 415 if isinstance(exc, _UnsupportedMedia) else HTTP_STATUS.get(exc.code, 500)
    extra: dict[str, Any] = {"code": exc.code if status != 415 else "INVALID_ARGUMENT"}
    field = field_of(exc)
    if field:
        extra["field"] = field
    violations = field_violations(exc)
    if violations:
        extra["errors"] = [{"field": f, "detail": d} for f, d in violations]
    if isinstance(exc, PolicySetError):
        extra["problems"] = [
            {
                k: v
                for k, v in {
                    "message": p.message,
                    "file": p.file,
                    "offer": p.offer,
                    "policy": p.policy,
                    "field": p.field,
                    "severity": p.severity,
                    "line": p.line,
                }.items()
                if v
            }
            for p in exc.problems
        ]
    headers = {"retry-after": str(RETRY_AFTER_SECONDS)} if status == 503 else {}
    return _problem_response(status, str(exc), instance, extra, headers)


def _problem_response(
    status: int, detail: str, instance: str, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": instance[:300],
        **(extra or {}),
    }
    if status == 401:  # RFC 9110 §11.6.1: a 401 names the scheme to use
        signed = detail.startswith(("nba-signature", "nba-timestamp"))
        scheme = 'NBA-Signature realm="callbacks"' if signed else 'Bearer realm="nba"'
        headers = {**(headers or {}), "www-authenticate": scheme}
    return Response(orjson.dumps(body), status, headers, media_type=_PROBLEM)
