"""Contextual bandits: learners that rank arms for a context and learn from rewards.

A library on its own: it knows nothing of gRPC, SQL or policies. Every learner follows one
interface (``bandit.base.Learner``): ``pull(arm_ids, context, k, weights)`` draws ``k`` arms
with exact propensities, ``update(arm_id, context, reward)`` learns, the same ``seed`` gives
the same choices, and learners pickle.
"""

from bandit.base import Draw, Learner
from bandit.exploration import EpsilonGreedy, Exploration, InverseGapWeighting, draw_slots
from bandit.features import Featurizer, flatten
from bandit.linear import LinearBandit
from bandit.ridge import RidgeArms
from bandit.uniform import UniformRandom

__all__ = [
    "Draw",
    "EpsilonGreedy",
    "Exploration",
    "Featurizer",
    "InverseGapWeighting",
    "Learner",
    "LinearBandit",
    "RidgeArms",
    "UniformRandom",
    "draw_slots",
    "flatten",
]

#: every learner the library offers; the conformance suite runs on each
LEARNERS: tuple[type[Learner], ...] = (LinearBandit, UniformRandom)
