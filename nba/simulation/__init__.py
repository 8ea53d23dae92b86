"""The simulator: a population of customers with known preferences, played against a running
service over gRPC, for learning curves, load and demonstrations (``nba simulate``).

    population  personas, their profile generators and ground-truth preferences (and drift)
    simulator   the simulator's clients, its learning curve and its outputs

May import: the kernel modules, ``nba.evaluation`` (the ground truth it shares with the
estimators) and the generated gRPC client (``nba.v1``): it is a client of the service, not a
part of it.
"""
