"""gRPC servicers: translate messages to domain calls and back; no decisions are made here."""

from __future__ import annotations

from datetime import UTC

import grpc
from google.protobuf import timestamp_pb2

from nba.context import context_from_struct
from nba.decisions import DecideInput, Decider, DecisionRecord
from nba.feedback import FeedbackIntake
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc

__all__ = ["DecisionServicer"]


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(self, decider: Decider, intake: FeedbackIntake) -> None:
        self._decider = decider
        self._intake = intake

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        record, replayed = self._decider.decide(
            DecideInput(
                customer_id=request.customer_id,
                channel=request.channel,
                context=context_from_struct(request.context),
                limit=request.limit,
                request_id=request.request_id,
            )
        )
        return decide_response(record, replayed)

    def Feedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext) -> pb.FeedbackResponse:
        try:
            outcome = pb.Outcome.Name(request.outcome).removeprefix("OUTCOME_").lower()
        except ValueError:
            outcome = f"unknown value {request.outcome}"
        result = self._intake.receive(
            event_id=request.event_id,
            decision_id=request.decision_id,
            offer_id=request.offer_id,
            outcome=outcome,
            reward=request.reward if request.HasField("reward") else None,
            occurred_at=request.occurred_at.ToDatetime(UTC) if request.HasField("occurred_at") else None,
        )
        return pb.FeedbackResponse(duplicate=result.duplicate, applied=result.applied, reward=result.reward)


def decide_response(record: DecisionRecord, replayed: bool) -> pb.DecideResponse:
    decided_at = timestamp_pb2.Timestamp()
    decided_at.FromDatetime(record.created_at)
    return pb.DecideResponse(
        decision_id=record.decision_id,
        offers=[
            pb.RankedOffer(
                offer_id=o["offer_id"],
                name=o["name"],
                score=o["score"],
                propensity=o["propensity"],
                treatment=o["treatment"],
                fallback=o["fallback"],
                group=o["group"],
            )
            for o in record.offers
        ],
        policy_version=record.policy_version,
        model_version=record.model_version,
        replayed=replayed,
        decided_at=decided_at,
    )
