"""Offline evaluation: what would another policy have earned, from the decisions already logged.

    logs        the logged-data contract, read from the decision log or JSON Lines
    targets     the policies to evaluate: learners, draft policy sets, baselines
    estimators  IPS, self-normalised IPS, direct method, doubly robust, position-wise IPS;
                bootstrap intervals and effective sample sizes
    report      the terminal table and the HTML page
"""

from nba.evaluation.estimators import Estimate, evaluate
from nba.evaluation.logs import LoggedDecision, from_jsonl, from_store
from nba.evaluation.targets import TargetPolicy, parse_target

__all__ = ["Estimate", "LoggedDecision", "TargetPolicy", "evaluate", "from_jsonl", "from_store", "parse_target"]
