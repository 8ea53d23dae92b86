"""Channel traffic against a running service, for locust (`make loadtest`, or by hand).

Each simulated channel system asks ``Decide`` for a customer drawn from the simulator's
personas (loadtests and the simulator share nba/simulation/population.py's population, which fits the
sample catalogue in policies/), reports the impression of what it shows for a share of
decisions, and the acceptance or rejection with the persona's ground-truth probability: the
mix a campaign's callbacks produce. Every RPC is reported to locust as a request named after
the method, so locust's tables, charts and CSV files split Decide from Feedback.

    make serve                                   # in one terminal
    .venv/bin/locust -f loadtests/locustfile.py --host 127.0.0.1:50051   # web UI on :8089
    make loadtest                                # headless, CSV under loadtests/results/

Settings (environment): ``NBA_LOAD_FEEDBACK`` share of decisions whose offers are reported
(default 0.5); ``NBA_LOAD_EXPLAIN`` 1 to ask for explanations (slower, bigger answers);
``NBA_LOAD_CUSTOMERS`` distinct customer ids (default 100,000: contact history grows with
them); ``NBA_LOAD_POPULATION`` a population file like the simulator's ``--population``.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

# locust runs users as gevent greenlets: grpc must cooperate with gevent, before any channel.
import grpc
import grpc.experimental.gevent as grpc_gevent
from google.protobuf import struct_pb2
from locust import User, between, events, task

from nba.simulation.population import Population, generate
from nba.v1 import decision_service_pb2 as pb
from nba.v1 import decision_service_pb2_grpc as pb_grpc

grpc_gevent.init_gevent()

FEEDBACK_SHARE = float(os.environ.get("NBA_LOAD_FEEDBACK", "0.5"))
EXPLAIN = os.environ.get("NBA_LOAD_EXPLAIN", "0") == "1"
CUSTOMERS = int(os.environ.get("NBA_LOAD_CUSTOMERS", "100000"))
POPULATION = Population.load(os.environ.get("NBA_LOAD_POPULATION") or None)


def target(host: str | None) -> str:
    """``--host`` as locust users write it: ``127.0.0.1:50051``, with or without a scheme."""
    if not host:
        raise ValueError("give the service's address: --host 127.0.0.1:50051")
    return host.split("://", 1)[-1].rstrip("/")


class ChannelUser(User):
    """One channel system: a customer arrives, the channel decides and reports what happened."""

    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(target(self.host))
        # the service may still be starting (make loadtest starts both at once)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.rng = random.Random()
        self.channels = list(POPULATION.channels)
        self.channel_weights = list(POPULATION.channels.values())
        self.personas = POPULATION.personas
        self.shares = [p.share for p in self.personas]

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, name: str, rpc: Any, request: Any) -> Any:
        """Calls ``rpc`` and reports it to locust: time, answer size, and the gRPC status on failure."""
        started = time.perf_counter()
        response, error = None, None
        try:
            response = rpc(request, timeout=5)
        except grpc.RpcError as exc:
            error = exc
        events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=response.ByteSize() if response is not None else 0,
            exception=error and RuntimeError(f"{error.code().name}: {error.details()}"),
            context={},
        )
        return response

    @task
    def arrive(self) -> None:
        persona = self.rng.choices(self.personas, self.shares)[0]
        context = struct_pb2.Struct()
        context.update({"customer": generate(persona.customer, self.rng)})
        decision = self.call(
            "Decide",
            self.stub.Decide,
            pb.DecideRequest(
                customer_id=f"load-{self.rng.randrange(CUSTOMERS):07d}",
                channel=self.rng.choices(self.channels, self.channel_weights)[0],
                context=context,
                limit=3,
                explain=EXPLAIN,
            ),
        )
        if decision is None or not decision.offers or self.rng.random() >= FEEDBACK_SHARE:
            return
        shown = decision.offers[0]
        self.call(
            "Feedback",
            self.stub.Feedback,
            pb.FeedbackRequest(
                event_id=str(uuid.uuid4()),
                decision_id=decision.decision_id,
                offer_id=shown.offer_id,
                outcome=pb.OUTCOME_IMPRESSED,
            ),
        )
        accepted = self.rng.random() < POPULATION.probability(persona.name, shown.offer_id, drifted=False)
        self.call(
            "Feedback",
            self.stub.Feedback,
            pb.FeedbackRequest(
                event_id=str(uuid.uuid4()),
                decision_id=decision.decision_id,
                offer_id=shown.offer_id,
                outcome=pb.OUTCOME_ACCEPTED if accepted else pb.OUTCOME_REJECTED,
            ),
        )
