"""Offline evaluation: what would another policy have earned, from the decisions already logged.

    logs          the logged-data contract: one validator (pydantic, strict types)
    sources       where decisions come from: the decision log, JSON Lines, offer catalogues
    targets       the policies to evaluate: learners, draft policy sets, baselines, and policies
                  given from outside as per-decision probabilities (``ExternalPolicy``)
    reward_model  DM and DR's q(x, a): a cross-fitted logistic regression within the rewards' range
    estimators    IPS, self-normalised IPS, direct method, doubly robust, position-wise IPS;
                  bootstrap intervals (DM's with the reward model refit) and effective sample sizes
    truth         a simulation's ground truth, to check estimates against (``--truth``)
    report        the terminal table and the HTML page
    preview       what a draft policy set would have decided on the recent log
    examples      a set's examples (``<name>_test.yaml``) checked against its screening

May import: the kernel modules, ``bandit``, ``nba.policy``, ``nba.learning`` and
``nba.decision``. Nothing of storage or service: a store is passed in (``from_store``).
"""

from nba.evaluation.estimators import Estimate, evaluate
from nba.evaluation.logs import LoggedDecision
from nba.evaluation.reward_model import RewardModel
from nba.evaluation.sources import from_jsonl, from_store, read_offers
from nba.evaluation.targets import ExternalPolicy, TargetPolicy, parse_target

__all__ = [
    "Estimate",
    "ExternalPolicy",
    "LoggedDecision",
    "RewardModel",
    "TargetPolicy",
    "evaluate",
    "from_jsonl",
    "from_store",
    "parse_target",
    "read_offers",
]
