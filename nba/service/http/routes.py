"""The HTTP API's routes: each serves one gRPC method, its body (or query and path) the method's
request message in the proto3 JSON mapping, its answer the response message.

Paths follow Google's API design guide (AIP-136 custom methods: ``POST /v1/track:batch``); the
statuses each can answer are listed with it, and the OpenAPI document says exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, MethodDescriptor

from nba.service.auth import needed_role
from nba.v1 import admin_service_pb2, decision_service_pb2, profile_service_pb2  # noqa: F401 (their descriptors)

__all__ = ["CALLBACK_PATH", "ROUTES", "Route"]

#: campaign tools' signed webhooks (nba.service.http.callbacks): not a gRPC method
CALLBACK_PATH = "/v1/callbacks/{source}"

#: what any call can answer: a body that is not JSON or not the message (400), too large (413),
#: not JSON at all (415), the service stopping or its database away (503)
_BODY = (400, 413, 415, 503)
_QUERY = (400, 503)


@dataclass(frozen=True)
class Route:
    """One call of the HTTP API: its method and path, the gRPC method it serves, what it does,
    and the statuses it can answer besides 200."""

    method: str
    path: str
    #: the gRPC method served, by descriptor
    rpc: MethodDescriptor
    summary: str
    #: statuses besides 200 the call can answer (401 and 403 added for those that need a token)
    statuses: tuple[int, ...]
    #: path parameters, each a field of the request message
    path_fields: tuple[str, ...] = ()
    #: the request field an ``Idempotency-Key`` header fills (``request_id``, ``event_id``)
    idempotency: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    #: the OpenAPI operationId, when two routes serve one method (default: the method's name)
    name: str = ""
    #: fields of the request the query may not give (the path gives the customer, or an identifier does)
    excluded_query: tuple[str, ...] = ()

    @property
    def full_method(self) -> str:
        return f"/{self.rpc.containing_service.full_name}/{self.rpc.name}"

    @property
    def role(self) -> str | None:
        """The least role the call needs (the same as over gRPC), or None: no token."""
        return needed_role(self.full_method)

    @property
    def request(self) -> Descriptor:
        return self.rpc.input_type

    @property
    def response(self) -> Descriptor:
        return self.rpc.output_type

    @property
    def operation_id(self) -> str:
        return self.name or self.rpc.name[0].lower() + self.rpc.name[1:]

    def all_statuses(self) -> tuple[int, ...]:
        extra = (401, 403) if self.role is not None else ()
        return tuple(sorted({200, *self.statuses, *extra}))


def _method(full_name: str) -> MethodDescriptor:
    """A method of the API by its full name (``nba.v1.DecisionService.Decide``)."""
    return descriptor_pool.Default().FindMethodByName(full_name)


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/decide",
        _method("nba.v1.DecisionService.Decide"),
        "Rank the offers eligible for a customer on a channel",
        (*_BODY, 409),
        idempotency="request_id",
        tags=("decisions",),
    ),
    Route(
        "POST",
        "/v1/feedback",
        _method("nba.v1.DecisionService.Feedback"),
        "Report what the customer did with one offer of one decision",
        (*_BODY, 404, 409),
        idempotency="event_id",
        tags=("decisions",),
    ),
    Route(
        "POST",
        "/v1/feedback:batch",
        _method("nba.v1.DecisionService.FeedbackBatch"),
        "Report up to 1,000 outcomes at once, one result each",
        _BODY,
        tags=("decisions",),
    ),
    Route(
        "POST",
        "/v1/track",
        _method("nba.v1.ProfileService.Track"),
        "Record a touch-point event on the customer's profile",
        (*_BODY, 409, 412),
        idempotency="event_id",
        tags=("profiles",),
    ),
    Route(
        "POST",
        "/v1/track:batch",
        _method("nba.v1.ProfileService.TrackBatch"),
        "Record up to 1,000 touch-point events, one result each",
        _BODY,
        tags=("profiles",),
    ),
    Route(
        "GET",
        "/v1/profiles/{customer_id}",
        _method("nba.v1.ProfileService.GetProfile"),
        "A customer's profile: identity, attributes, segments, scores, timeline, decisions",
        (*_QUERY, 404),
        path_fields=("customer_id",),
        tags=("profiles",),
        excluded_query=("identifier_kind", "identifier_value"),
    ),
    Route(
        "GET",
        "/v1/profiles",
        _method("nba.v1.ProfileService.GetProfile"),
        "A customer's profile, found by one identifier (identifier_kind and identifier_value)",
        (*_QUERY, 404, 412),
        tags=("profiles",),
        name="getProfileByIdentifier",
        excluded_query=("customer_id",),
    ),
    Route(
        "POST",
        "/v1/admin/profiles:unmerge",
        _method("nba.v1.ProfileService.Unmerge"),
        "Undo a merge of two customers' profiles",
        (*_BODY, 404, 412),
        tags=("admin",),
    ),
    Route(
        "POST",
        "/v1/admin/profiles:forget",
        _method("nba.v1.ProfileService.ForgetCustomer"),
        "Forget a customer (the right to erasure): profile, events, identities erased, decisions pseudonymised",
        (*_BODY, 412),
        tags=("admin",),
    ),
    Route(
        "GET",
        "/v1/admin/policy-set",
        _method("nba.v1.AdminService.GetLivePolicySet"),
        "The live policy set, with its files",
        _QUERY,
        tags=("admin",),
    ),
    Route(
        "GET",
        "/v1/admin/policy-set/versions",
        _method("nba.v1.AdminService.ListPolicySetVersions"),
        "Published versions and activations, newest first",
        _QUERY,
        tags=("admin",),
    ),
    Route(
        "POST",
        "/v1/admin/policy-set:validate",
        _method("nba.v1.AdminService.ValidatePolicySet"),
        "Check a draft policy set; every problem located",
        (*_BODY, 412, 504),
        tags=("admin",),
    ),
    Route(
        "POST",
        "/v1/admin/policy-set:preview",
        _method("nba.v1.AdminService.PreviewPolicySet"),
        "What a draft would change: recent decisions replayed, value estimates with intervals",
        (*_BODY, 412, 504),
        tags=("admin",),
    ),
    Route(
        "POST",
        "/v1/admin/policy-set:publish",
        _method("nba.v1.AdminService.PublishPolicySet"),
        "Publish a draft as the next version (refused with the located problems if invalid)",
        (*_BODY, 412, 504),
        tags=("admin",),
    ),
    Route(
        "POST",
        "/v1/admin/policy-set:rollback",
        _method("nba.v1.AdminService.RollbackPolicySet"),
        "Make an earlier version live again",
        (*_BODY, 404, 412, 504),
        tags=("admin",),
    ),
    Route(
        "GET",
        "/v1/admin/overview",
        _method("nba.v1.AdminService.GetOverview"),
        "What works: decisions, outcomes, value and rates over a period, by channel, group and offer",
        _QUERY,
        tags=("admin",),
    ),
)
