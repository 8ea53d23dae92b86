"""ProfileService: touch-point events in, customer profiles out (protobuf in, nba.profiles
calls, protobuf out)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from nba.errors import InvalidArgument, NbaError, NotFound, field_of
from nba.inputs import timestamp
from nba.profiles.tracking import Tracker, TrackInput, TrackResult
from nba.service.context import properties_from_struct
from nba.v1 import profile_service_pb2 as ppb
from nba.v1 import profile_service_pb2_grpc as ppb_grpc

__all__ = ["MAX_BATCH", "ProfileServicer"]

#: events in one TrackBatch call, at most
MAX_BATCH = 10_000


class ProfileServicer(ppb_grpc.ProfileServiceServicer):
    def __init__(self, tracker: Tracker, clock: Any) -> None:
        self._tracker = tracker
        self._clock = clock

    def Track(self, request: ppb.TrackRequest, context: grpc.ServicerContext) -> ppb.TrackResponse:
        return self._track(request)

    def TrackBatch(self, request: ppb.TrackBatchRequest, context: grpc.ServicerContext) -> ppb.TrackBatchResponse:
        if len(request.events) > MAX_BATCH:
            raise InvalidArgument(f"events: {len(request.events)} events, more than {MAX_BATCH} a call; split the batch")
        inputs: list[TrackInput | NbaError] = []
        for event in request.events:
            try:
                inputs.append(self._input(event))
            except NbaError as exc:
                inputs.append(exc)
        taken = iter(self._tracker.track_many([i for i in inputs if isinstance(i, TrackInput)]))
        results = []
        for n, item in enumerate(inputs):
            outcome = item if isinstance(item, NbaError) else next(taken)
            if isinstance(outcome, NbaError):
                field = field_of(outcome)
                results.append(
                    ppb.TrackResult(
                        error_code=outcome.code,
                        error_message=f"events[{n}]: {outcome}",
                        error_field=f"events[{n}].{field}" if field else "",
                    )
                )
            else:
                results.append(ppb.TrackResult(tracked=_response(outcome)))
        return ppb.TrackBatchResponse(results=results)

    def GetProfile(self, request: ppb.GetProfileRequest, context: grpc.ServicerContext) -> ppb.Profile:
        if bool(request.identifier_kind) != bool(request.identifier_value):
            raise InvalidArgument(
                "identifier_value: give identifier_kind and identifier_value together", field="identifier_value"
            )
        found = self._tracker.lookup(request.customer_id, request.identifier_kind, request.identifier_value)
        if found is None:
            raise NotFound("customer_id: no profile for this customer (no event has named it)")
        profile, identities = found
        view = profile.view(self._clock.now().timestamp())
        attributes, computed = struct_pb2.Struct(), struct_pb2.Struct()
        attributes.update({k: v for k, v in view.items() if k in profile.attributes})
        computed.update({k: v for k, v in view.items() if k in profile.computed})
        created = timestamp_pb2.Timestamp()
        created.FromSeconds(int(profile.created_at))
        return ppb.Profile(
            customer_id=profile.customer_id,
            version=profile.version,
            created_at=created,
            identities=[ppb.Identifier(kind=k, value=v) for k, values in sorted(identities.items()) for v in values],
            attributes=attributes,
            computed=computed,
        )

    def _track(self, request: ppb.TrackRequest) -> ppb.TrackResponse:
        return _response(self._tracker.track(self._input(request)))

    @staticmethod
    def _input(request: ppb.TrackRequest) -> TrackInput:
        occurred = timestamp("occurred_at", request.occurred_at) if request.HasField("occurred_at") else None
        return TrackInput(
            event_id=request.event_id,
            type=request.type,
            customer_id=request.customer_id,
            identities=dict(request.identities),
            source=request.source,
            occurred_at=occurred,
            properties=properties_from_struct(request.properties),
        )


def _response(result: TrackResult) -> ppb.TrackResponse:
    return ppb.TrackResponse(
        duplicate=result.duplicate, customer_id=result.customer_id, merged=list(result.merged), version=result.version
    )
