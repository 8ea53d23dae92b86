"""The decision log's tables, as SQLModel classes: what ``nba.storage.store`` reads and writes and what
the Alembic migrations (``nba.storage.migrations``) bring every database to. Declaring a class here
registers its table in ``SQLModel.metadata``. Imports nothing of nba.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, LargeBinary, Table
from sqlmodel import Field, SQLModel

__all__ = [
    "CONTACT_EVENTS",
    "DECISIONS",
    "DECISION_ROLLUPS",
    "DECISION_ROLLUPS_DAILY",
    "EVALUATIONS",
    "FEEDBACK",
    "OFFER_COUNTERS",
    "POLICY_ACTIVATIONS",
    "POLICY_SETS",
    "PROFILES",
    "PROFILE_EVENTS",
    "PROFILE_IDENTITIES",
    "PROFILE_MERGES",
    "PROFILE_RELATIONSHIPS",
    "SNAPSHOTS",
    "ContactEventRow",
    "DecisionRollupRow",
    "DecisionRollupDayRow",
    "DecisionRow",
    "EvaluationRow",
    "FeedbackRow",
    "OfferCounterRow",
    "PolicyActivationRow",
    "PolicySetRow",
    "ProfileEventRow",
    "ProfileIdentityRow",
    "ProfileMergeRow",
    "ProfileRelationshipRow",
    "ProfileRow",
    "SnapshotRow",
]

#: 64-bit event ids on PostgreSQL; SQLite's INTEGER PRIMARY KEY is 64-bit and must stay the rowid
ID = BigInteger().with_variant(Integer(), "sqlite")


class PolicySetRow(SQLModel, table=True):
    __tablename__ = "policy_sets"

    version: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    created_by: str = Field(default="", max_length=128)
    comment: str = ""
    files: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))


class PolicyActivationRow(SQLModel, table=True):
    """What was live when: the newest row is the live set."""

    __tablename__ = "policy_activations"

    id: int | None = Field(default=None, primary_key=True)
    version: int = Field(index=True)
    activated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str = Field(default="", max_length=128)
    #: file, api or rollback
    source: str = Field(max_length=16)
    comment: str = ""


class ContactEventRow(SQLModel, table=True):
    """Every offer returned (decided) and every outcome, per customer: contact history."""

    __tablename__ = "contact_events"
    __table_args__ = (Index("ix_contact_events_customer_at", "customer_id", "at"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True))
    customer_id: str = Field(max_length=256)
    #: seconds since the epoch
    at: float = Field(index=True)
    #: the process that wrote it: the others learn of it by reading the table
    origin: str = Field(default="", max_length=64)
    kind: str = Field(max_length=16)
    offer_id: str = Field(max_length=128)
    group: str = Field(default="", max_length=128)
    channel: str = Field(max_length=128)


class OfferCounterRow(SQLModel, table=True):
    """Events per offer and kind per quarter hour (UTC quarter hours since the epoch, the
    buckets every local day of every zone is made of: ``nba.days``); quarter 0 holds the
    compacted total of quarters older than two days."""

    __tablename__ = "offer_counters"

    offer_id: str = Field(primary_key=True, max_length=128)
    kind: str = Field(primary_key=True, max_length=16)
    quarter: int = Field(primary_key=True)
    count: int


class DecisionRow(SQLModel, table=True):
    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_open", "closed", "created_at"),)

    decision_id: str = Field(primary_key=True, max_length=64)
    request_id: str | None = Field(default=None, index=True, max_length=256)
    customer_id: str = Field(index=True, max_length=256)
    channel: str = Field(max_length=128)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    policy_version: str = Field(max_length=64)
    model_version: str = Field(max_length=128)
    features: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    candidates: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    offers: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    #: its reward windows have closed: offers without feedback got the default reward
    closed: bool = Field(default=False)
    #: the version of the stored customer profile the decision read (NULL: none)
    profile_version: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class FeedbackRow(SQLModel, table=True):
    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_pair", "decision_id", "offer_id"),)

    #: the order events were made durable, and so the order the learner applied them
    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True))
    event_id: str = Field(unique=True, max_length=256)
    decision_id: str = Field(max_length=64)
    offer_id: str = Field(max_length=128)
    outcome: str = Field(max_length=16)
    #: this event's reward
    reward: float
    stage: int
    #: whether the event changed what the learner holds for the pair
    applied: bool
    #: the pair's reward after this event, and before it (None: the pair's first event)
    pair_reward: float
    previous_reward: float | None = None
    #: arrived after its outcome's reward window: stored, not learned
    late: bool = Field(default=False)
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class SnapshotRow(SQLModel, table=True):
    __tablename__ = "model_snapshots"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    signature: str
    model_version: str = Field(max_length=128)
    last_feedback_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ProfileRow(SQLModel, table=True):
    """A customer's profile: its kept and computed attributes (``nba.profiles.profile``'s JSON),
    or, for an id merged into another customer, that customer's id."""

    __tablename__ = "profiles"

    customer_id: str = Field(primary_key=True, max_length=256)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: events applied: the profile version a decision records
    version: int = Field(default=0)
    #: set once merged into another customer: follow it to the survivor
    merged_into: str | None = Field(default=None, index=True, max_length=256)
    state: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    #: the fingerprint of the profile definition the state was built under (NULL: before 0007);
    #: a profile built under another is rebuilt from its events (nba.profiles.backfill)
    built_under: str | None = Field(default=None, max_length=32)
    #: the next moment the profile has work with no event: a segment's membership changing as a
    #: window passes (the segment clock records it then: nba.profiles.segment_clock); NULL: none
    due_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True, index=True))


class ProfileIdentityRow(SQLModel, table=True):
    """Which customers hold an identifier (normalised): one for a kind that merges, possibly
    several for one that does not (a shared device)."""

    __tablename__ = "profile_identities"

    kind: str = Field(primary_key=True, max_length=64)
    value: str = Field(primary_key=True, max_length=256)
    customer_id: str = Field(primary_key=True, index=True, max_length=256)
    #: the customer it was first attached to (kept through merges: an unmerge gives it back);
    #: NULL for identifiers stored before migration 0005
    origin: str | None = Field(default=None, max_length=256)


class ProfileEventRow(SQLModel, table=True):
    """Every touch-point event accepted, once (by ``event_id``), with the customer it resolved to."""

    __tablename__ = "profile_events"
    __table_args__ = (Index("ix_profile_events_customer", "customer_id", "occurred_at", "event_id"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True))
    event_id: str = Field(unique=True, max_length=256)
    customer_id: str = Field(max_length=256)
    type: str = Field(max_length=64)
    source: str = Field(default="", max_length=128)
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    properties: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    identities: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    #: sha-256 of what the event says: its event_id reused for anything else is refused
    content_hash: str = Field(max_length=64)
    #: the customer it was first resolved to (kept through merges: an unmerge gives it back);
    #: NULL for events stored before migration 0005. Not indexed: an unmerge reads a customer's
    #: events by customer_id, and every tracked event would pay for the index.
    origin: str | None = Field(default=None, max_length=256)


class ProfileRelationshipRow(SQLModel, table=True):
    """A link between two customers (household, guarantor, referral), one row each way."""

    __tablename__ = "profile_relationships"

    customer_id: str = Field(primary_key=True, max_length=256)
    kind: str = Field(primary_key=True, max_length=64)
    #: the other customer as the event named it (followed through merges when read)
    other_id: str = Field(primary_key=True, max_length=256)
    #: the event that linked them (the earliest, when several did)
    event_id: str = Field(max_length=256)
    since: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: the customer the row was first kept for (an unmerge gives it back)
    origin: str = Field(max_length=256)


class ProfileSegmentRow(SQLModel, table=True):
    """A customer's stay in a segment: entered, and left (NULL while in it)."""

    __tablename__ = "profile_segments"
    __table_args__ = (
        Index("ix_profile_segments_customer", "customer_id", "segment"),
        Index("ix_profile_segments_members", "segment", "exited_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True))
    customer_id: str = Field(max_length=256)
    segment: str = Field(max_length=64)
    entered_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    exited_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class SegmentCountRow(SQLModel, table=True):
    """Entries into and exits from a segment an hour (UTC): its size over time is their running sum."""

    __tablename__ = "segment_counts"

    segment: str = Field(primary_key=True, max_length=64)
    #: hours since the epoch
    hour: int = Field(primary_key=True)
    entered: int = Field(default=0)
    exited: int = Field(default=0)


class ProfileDeadLetterRow(SQLModel, table=True):
    """A touch-point event the profile definition refused, kept whole with the reason until a
    fixed definition applies it (nba.storage.dead_letters)."""

    __tablename__ = "profile_dead_letters"

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True))
    event_id: str = Field(unique=True, max_length=256)
    type: str = Field(max_length=64)
    source: str = Field(default="", max_length=128)
    customer_id: str = Field(default="", max_length=256)
    identities: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    #: as sent; NULL: sent without one (it happened when received)
    occurred_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    properties: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    attempts: int = Field(default=1)
    reason: str = Field(max_length=1000)
    #: the field at fault (type, properties.NAME)
    field: str = Field(default="", max_length=256)


class ProfileEventKeyRow(SQLModel, table=True):
    """The first event of a type that declares ``dedupe_by`` with each value of it: a later one
    with the same value is a near-duplicate (the same order from two touch points)."""

    __tablename__ = "profile_event_keys"

    type: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=256)
    event_id: str = Field(max_length=256)


class ErasureRow(SQLModel, table=True):
    """A customer forgotten (ForgetCustomer): by whom, when, why, and what was erased. The
    customer is named only by their keyed pseudonym, the one their decisions now carry."""

    __tablename__ = "erasures"

    id: int | None = Field(default=None, primary_key=True)
    pseudonym: str = Field(index=True, max_length=64)
    requested_by: str = Field(max_length=128)
    reason: str = Field(default="", max_length=500)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: what was erased and pseudonymised, by table
    counts: dict[str, int] = Field(sa_column=Column(JSON, nullable=False))


class SecretRow(SQLModel, table=True):
    """Keys nba makes for itself when none is configured (the pseudonym key)."""

    __tablename__ = "secrets"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)


class CallbackSignatureRow(SQLModel, table=True):
    """A campaign callback's signature once accepted, kept for the replay window: the same
    signed request sent again is refused (nba.service.http.callbacks)."""

    __tablename__ = "callback_signatures"

    #: sha-256 of the source and the signature (the signature itself is not kept)
    digest: str = Field(primary_key=True, max_length=64)
    source: str = Field(max_length=64)
    accepted_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


class DecisionRollupRow(SQLModel, table=True):
    """The decision log's figures by UTC hour, channel, offer and measure, kept up to date by
    the writer (nba.storage.rollups): what the overview reads."""

    __tablename__ = "decision_rollups"

    #: hours since the epoch
    hour: int = Field(primary_key=True)
    channel: str = Field(primary_key=True, max_length=128)
    #: empty for a measure of the decision as a whole
    offer_id: str = Field(primary_key=True, max_length=128)
    measure: str = Field(primary_key=True, max_length=64)
    value: float = Field(default=0.0)


class DecisionRollupDayRow(SQLModel, table=True):
    """The same as ``decision_rollups``, by UTC day: what the overview reads for whole days."""

    __tablename__ = "decision_rollups_daily"

    #: days since the epoch
    day: int = Field(primary_key=True)
    channel: str = Field(primary_key=True, max_length=128)
    offer_id: str = Field(primary_key=True, max_length=128)
    measure: str = Field(primary_key=True, max_length=64)
    value: float = Field(default=0.0)


class EvaluationRow(SQLModel, table=True):
    """An offline evaluation started from the console: what was asked, its progress, its report
    (nba.service.evaluations runs it; nba.storage.evaluations keeps it)."""

    __tablename__ = "evaluations"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: its process's last word: a running evaluation that stops writing has stalled
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    created_by: str = Field(max_length=128)
    #: waiting, running, done or failed
    status: str = Field(max_length=16)
    progress: float = Field(default=0.0)
    stage: str = Field(default="", max_length=200)
    #: the targets and the period
    request: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    #: the estimates, when done
    report: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str = Field(default="", max_length=1000)


class ScoreModelRow(SQLModel, table=True):
    """A predictive score's model and progressive quality (nba.profiles.scores), pickled."""

    __tablename__ = "score_models"

    name: str = Field(primary_key=True, max_length=64)
    #: the score's definition the model was learned under
    source: str = Field(max_length=1000)
    #: moves on with every transaction that learns: processes read the model again then
    version: int = Field(default=0)
    state: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ProfileMergeRow(SQLModel, table=True):
    """Each merge of two customers, and its undoing (the pair is then kept apart)."""

    __tablename__ = "profile_merges"

    id: int | None = Field(default=None, primary_key=True)
    survivor: str = Field(index=True, max_length=256)
    absorbed: str = Field(index=True, max_length=256)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: the event that linked them, or the admin who merged them by hand
    cause: str = Field(default="", max_length=256)
    undone_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    undone_by: str = Field(default="", max_length=128)


def table(model: type[SQLModel]) -> Table:
    """A model's Core table, which the store queries (SQLModel sets ``__table__`` on a table
    model when the class is made, so a type checker cannot see it)."""
    return model.__table__  # type: ignore[attr-defined]


POLICY_SETS = table(PolicySetRow)
POLICY_ACTIVATIONS = table(PolicyActivationRow)
CONTACT_EVENTS = table(ContactEventRow)
OFFER_COUNTERS = table(OfferCounterRow)
DECISIONS = table(DecisionRow)
FEEDBACK = table(FeedbackRow)
SNAPSHOTS = table(SnapshotRow)
PROFILES = table(ProfileRow)
PROFILE_IDENTITIES = table(ProfileIdentityRow)
PROFILE_EVENTS = table(ProfileEventRow)
PROFILE_RELATIONSHIPS = table(ProfileRelationshipRow)
PROFILE_MERGES = table(ProfileMergeRow)
PROFILE_SEGMENTS = table(ProfileSegmentRow)
PROFILE_DEAD_LETTERS = table(ProfileDeadLetterRow)
PROFILE_EVENT_KEYS = table(ProfileEventKeyRow)
ERASURES = table(ErasureRow)
SECRETS = table(SecretRow)
SCORE_MODELS = table(ScoreModelRow)
CALLBACK_SIGNATURES = table(CallbackSignatureRow)
SEGMENT_COUNTS = table(SegmentCountRow)
DECISION_ROLLUPS = table(DecisionRollupRow)
DECISION_ROLLUPS_DAILY = table(DecisionRollupDayRow)
EVALUATIONS = table(EvaluationRow)
