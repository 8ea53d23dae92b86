"""The simulator: a population of customers with known preferences, played against a running
service over gRPC, for learning curves, load and demonstrations (``nba simulate``).

    simulator  personas, the population, the simulator's clients and its outputs

May import: the kernel modules, ``nba.evaluation`` (the ground truth it shares with the
estimators) and the generated gRPC client (``nba.v1``): it is a client of the service, not a
part of it.
"""
