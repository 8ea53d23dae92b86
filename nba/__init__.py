"""nba: a next-best-action decisioning service.

Channel systems call ``Decide`` over gRPC and get ranked offers; campaigns report outcomes
with ``Feedback`` and a contextual bandit (``bandit``) learns from each at once; every
decision is logged with its propensities for offline evaluation.
"""

__version__ = "0.1.0"
