"""Decide, then report what the customer did: the README's Python example, run by the tests."""

import os
import uuid

import grpc
from google.protobuf import struct_pb2

from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc

channel = grpc.insecure_channel(os.environ.get("NBA_ADDRESS", "localhost:50051"))
nba = pb_grpc.DecisionServiceStub(channel)

context = struct_pb2.Struct()
context.update(
    {
        "customer": {
            "age": 34,
            "demographics": {"household": "family", "income_band": "mid"},
            "history": {"tenure_months": 20, "products": ["current-account"], "channels_used": ["web"]},
            "value": {"segment": "silver", "monthly_spend": 260},
            "flags": {"churn_risk": False, "fraud_risk": False, "vulnerable": False},
            "consent": {"email": True, "marketing": True},
        }
    }
)
decision = nba.Decide(
    pb.DecideRequest(
        request_id=str(uuid.uuid4()),  # retrying with the same id returns the same decision
        customer_id="c-1001",
        channel="web",
        context=context,
        limit=3,
    ),
    timeout=1.0,
)
for offer in decision.offers:
    print(f"{offer.offer_id:20} {offer.treatment:18} score={offer.score:.3f} p={offer.propensity:.3f}")

# Later, when the customer accepts the first offer:
reply = nba.Feedback(
    pb.FeedbackRequest(
        event_id=str(uuid.uuid4()),  # retrying with the same id is safe: reported as duplicate
        decision_id=decision.decision_id,
        offer_id=decision.offers[0].offer_id,
        outcome=pb.OUTCOME_ACCEPTED,
    ),
    timeout=5.0,
)
print("applied" if reply.applied else "duplicate" if reply.duplicate else "stored", reply.reward)
