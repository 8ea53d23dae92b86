"""The store: synchronous access to every table of the decision log, one repository per
table family, composed into the one object the service and the tools open.

SQLModel over SQLite is the embedded default (``sqlite:///var/nba.db``); any SQLAlchemy URL
with the same schema works (PostgreSQL is tested). The repositories:

    policy_sets  versions and activations
    decisions    the decisions, and the JSON Lines export
    feedback     feedback events, reward windows, replay for the learner, retention
    contacts     contact events and offer counters
    snapshots    the learner's snapshots
    profiles     customer profiles, identifiers, touch-point events, merges, relationships, segments
    dead_letters touch-point events the profile definition refused, kept until applied
    erasure      customers forgotten everywhere (profiles and decisions), and the audit of it
    scores       the predictive scores' models
    callbacks    campaign callbacks' accepted signatures, for the replay window

Keeping SQL off the request path is the decision log's work (``nba.storage.decision_log``).
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from nba.records import RewardWindows
from nba.storage.callbacks import CallbackSignatures
from nba.storage.contacts import Contacts
from nba.storage.dead_letters import DeadLetters
from nba.storage.decisions import Decisions
from nba.storage.erasure import Erasures
from nba.storage.evaluations import Evaluations
from nba.storage.feedback import Feedback
from nba.storage.policy_sets import PolicySets
from nba.storage.rollups import Rollups
from nba.storage.scores import ScoreModelRows
from nba.storage.snapshots import Snapshots

__all__ = ["Store"]


class Store(
    PolicySets,
    Decisions,
    Feedback,
    Contacts,
    Snapshots,
    Erasures,
    DeadLetters,
    ScoreModelRows,
    CallbackSignatures,
    Rollups,
    Evaluations,
):
    """Synchronous access to the decision log's tables. Outages raise ``DatabaseUnavailable``.

    ``windows``: the reward windows feedback is judged by (None: they never close, for tools
    that only read); ``origin`` names this process in the rows others must learn of."""

    def __init__(self, engine: Engine, windows: RewardWindows | None = None, origin: str = "") -> None:
        self.engine = engine
        self.windows = windows
        self.origin = origin
