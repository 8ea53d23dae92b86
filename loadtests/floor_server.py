"""The floor: a gRPC server that answers Decide with a ready-made response of the same size,
deciding nothing. What the framework itself costs per call, to measure the service against.

    python loadtests/floor_server.py PORT [--threads 16]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import timestamp_pb2

from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc

RESPONSE = pb.DecideResponse(
    decision_id="019ab2c4e1f05c0d3a9e4b1f27c8d6a0",
    offers=[
        pb.RankedOffer(
            offer_id=f"offer-{i:04d}",
            name=f"Offer {i}",
            score=1.5 + i,
            propensity=0.3 + i / 10,
            treatment=f"treatment-{i}",
            group="g1",
        )
        for i in range(3)
    ],
    policy_version="1-0123456789ab",
    model_version="linear-igw/123456",
    decided_at=timestamp_pb2.Timestamp(seconds=1795400000, nanos=123000000),
)


class Floor(pb_grpc.DecisionServiceServicer):
    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        return RESPONSE

    def Feedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext) -> pb.FeedbackResponse:
        return pb.FeedbackResponse(applied=True, reward=1.0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    server = grpc.server(ThreadPoolExecutor(max_workers=args.threads))
    pb_grpc.add_DecisionServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("serving", flush=True)
    done.wait()
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
