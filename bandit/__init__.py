"""Contextual bandits: learners that rank arms for a context and learn from rewards.

A library on its own: it knows nothing of gRPC, SQL or policies. Every learner follows one
interface (``bandit.base.Learner``): ``pull(arm_ids, context, k, weights)`` draws ``k`` arms
with exact propensities, ``update(arm_id, context, reward)`` learns, the same ``seed`` gives
the same choices, and learners pickle. ``export_state``/``import_state`` give a learner's state
as data, and ``bandit.state.dumps``/``loads`` turn it into bytes that can be loaded without
running code (NumPy arrays and JSON, not a pickle).
"""

from bandit import blas
from bandit.base import Draw, Learner
from bandit.exploration import EpsilonGreedy, Exploration, InverseGapWeighting, draw_slots, load_kernels
from bandit.features import Featurizer, flatten, unflatten
from bandit.linear import LinearBandit
from bandit.ridge import RidgeArms
from bandit.state import LearnerState
from bandit.uniform import UniformRandom

__all__ = [
    "Draw",
    "EpsilonGreedy",
    "Exploration",
    "Featurizer",
    "InverseGapWeighting",
    "Learner",
    "LearnerState",
    "LinearBandit",
    "RidgeArms",
    "UniformRandom",
    "draw_slots",
    "load_kernels",
    "flatten",
    "limit_blas_threads",
    "unflatten",
]

#: every learner the library offers; the conformance suite runs on each
LEARNERS: tuple[type[Learner], ...] = (LinearBandit, UniformRandom)


def limit_blas_threads(threads: int = 1) -> None:
    """Runs the BLAS libraries numpy and scipy load on ``threads`` threads, for the whole
    process.

    Not needed for the learners: they take one thread around their own calls
    (``bandit.blas.single_thread``), which with one thread for the whole process then cost
    nothing. For a program whose other small matrix work suffers from OpenBLAS waking its
    threads (a benchmark timing its own bookkeeping, say), or that needs every learner's exact
    solves on one thread whichever thread calls (the service: replicas hold bit-identical
    models). Call it before the threads that use the learners start.
    """
    import numpy  # noqa: F401  (its BLAS must be loaded to be limited)
    import scipy.linalg.blas  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    blas.pin(threads)
