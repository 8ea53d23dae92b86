"""Every Prometheus metric the service exports: the single source of their names.

Served over HTTP on ``--metrics-port`` (default 9464) at ``/metrics``. With ``--workers N``
every worker writes its values to files (prometheus-client's multiprocess mode) and the
supervisor serves them added up on that port: counters and histograms are summed over the
workers (a dead worker's counts stay, so totals never go down), and each gauge says below how
it combines (``multiprocess_mode``; the ``live`` modes leave out workers that have exited).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

RPC_DURATION = Histogram("nba_rpc_duration_seconds", "Time to answer a call, by method", ["method"], buckets=_LATENCY_BUCKETS)
RPC_ERRORS = Counter("nba_rpc_errors_total", "Calls answered with an error, by method and status", ["method", "code"])
HTTP_REQUESTS = Counter(
    "nba_http_requests_total", "HTTP API requests, by route (METHOD /path, or unrouted) and status", ["route", "status"]
)
HTTP_DURATION = Histogram(
    "nba_http_request_duration_seconds", "Time to answer an HTTP API request, by route", ["route"], buckets=_LATENCY_BUCKETS
)
DECISIONS = Counter("nba_decisions_total", "Decisions made, by channel", ["channel"])
DECISIONS_REPLAYED = Counter("nba_decisions_replayed_total", "Repeated request_ids answered with the stored decision")
FALLBACKS = Counter("nba_fallback_total", "Decisions answered with the channel's fallback", ["channel"])
EMPTY = Counter("nba_empty_decisions_total", "Decisions with no eligible offer and no fallback", ["channel"])
EXPLORED = Counter("nba_explored_decisions_total", "Decisions whose first slot was not the learner's best offer")
FILTERED = Counter("nba_offers_filtered_total", "Offers filtered out of a decision, by reason", ["reason"])
FEEDBACK = Counter(
    "nba_feedback_total", "Feedback events, by outcome and result (applied, stored, duplicate)", ["outcome", "result"]
)
LEARNING_UPDATES = Counter("nba_learning_updates_total", "Feedback events applied to the learner")
LEARNING_LAG = Histogram(
    "nba_learning_lag_seconds",
    "From a feedback event's arrival to the learner applying it",
    buckets=_LATENCY_BUCKETS,
)
LEARNING_SKIPPED = Counter(
    "nba_learning_events_skipped_total",
    "Feedback events not learned: a reward outside the configured range or not finite (a log an older version "
    "wrote), or an update the learner refused",
)
NONFINITE_SCORES = Counter(
    "nba_nonfinite_scores_total",
    "Decisions whose learner estimates were not all finite: ranked uniformly at random, answered with score 0",
)
PROFILE_READ_FAILURES = Counter(
    "nba_profile_read_failures_total",
    "Decisions made without the customer's stored profile because it could not be read (the database was down)",
)
PROFILE_CACHE = Counter(
    "nba_profile_cache_total", "Stored profiles read by decisions and GetProfile, by where they came from", ["result"]
)
SNAPSHOTS = Counter("nba_model_snapshots_total", "Model snapshots written")
PROFILE_BACKFILL_REMAINING = Gauge(
    "nba_profile_backfill_remaining",
    "Profiles still to rebuild under the live profile definition, as this process's backfill counts them",
    multiprocess_mode="livemax",  # every worker walks the same profiles: the furthest behind says how much is left
)
PROFILE_BACKFILLED = Counter("nba_profile_backfilled_total", "Profiles rebuilt from their events under a changed definition")
PROFILE_EVENTS = Counter(
    "nba_profile_events_total",
    "Touch-point events by source (the first 100 sources seen, then 'other') and outcome: taken, duplicate, near_duplicate, "
    "dead_letter (refused by the profile definition, kept), refused (malformed or conflicting, not kept)",
    ["source", "outcome"],
)
ATTRIBUTE_COMPLETENESS = Gauge(
    "nba_profile_attribute_completeness",
    "Share of customers (0 to 1) whose profile holds a value of each attribute, counted every 10 minutes",
    ["attribute"],
    multiprocess_mode="livemostrecent",
)
SCORE_AUC = Gauge(
    "nba_score_auc", "Each predictive score's progressive ROC AUC over its matured labels", ["score"], multiprocess_mode="livemax"
)
SCORE_EXAMPLES = Gauge("nba_score_examples", "Matured labels each score has learned from", ["score"], multiprocess_mode="livemax")
SCORE_CALIBRATION = Gauge(
    "nba_score_calibration_error",
    "Each score's expected calibration error (10 bins) over its matured labels",
    ["score"],
    multiprocess_mode="livemostrecent",
)
SCORE_FLAGGED = Gauge(
    "nba_score_flagged",
    "1 while a score is flagged: too few labels, or an AUC below its min_auc",
    ["score"],
    multiprocess_mode="livemin",
)
SEGMENT_MEMBERS = Gauge(
    "nba_segment_members",
    "Customers in each segment, as the database holds it (refreshed by the segment clock)",
    ["segment"],
    multiprocess_mode="livemostrecent",  # every worker counts the same table: the latest count is the size
)
SEGMENT_CLOCK_CHANGES = Counter(
    "nba_segment_clock_profiles_total", "Profiles whose segments the segment clock evaluated at a due time-driven change"
)
LOG_QUEUE = Gauge(
    "nba_decision_log_queue",
    "Decisions waiting to be written to the decision log (all workers)",
    multiprocess_mode="livesum",  # each worker queues its own decisions: the service's queue is their sum
)
LOG_WRITTEN = Counter("nba_decision_log_written_total", "Decisions written to the decision log")
LOG_DROPPED = Counter("nba_decision_log_dropped_total", "Decisions not logged because the queue was full or the write failed")
LOG_FLUSH = Histogram("nba_decision_log_flush_seconds", "Time of one decision-log transaction", buckets=_LATENCY_BUCKETS)
POLICY_VERSION = Gauge(
    "nba_policy_set_version",
    "The live policy set's version number (with workers: the oldest any of them serves)",
    multiprocess_mode="livemin",  # a worker still on an older set shows, instead of hiding behind the newest
)
POLICY_RELOAD_FAILURES = Counter(
    "nba_policy_reload_failures_total", "Changes of the policies folder refused as invalid (the live set stayed)"
)
CONTACT_CUSTOMERS = Gauge(
    "nba_contact_history_customers",
    "Customers whose contact history is held in memory (with workers: by the fullest)",
    multiprocess_mode="livemax",  # each worker holds its own copy: memory per process is what to size
)
WINDOWS_CLOSED = Counter("nba_reward_windows_closed_total", "Decisions whose reward windows closed")
NO_RESPONSE = Counter(
    "nba_no_response_total", "Offers that got the default reward because no feedback came before their windows closed"
)

DECISIONS_PURGED = Counter(
    "nba_decisions_purged_total", "Decisions deleted by retention (decision_retention_days), with their feedback"
)
RESERVATIONS = Counter(
    "nba_reservations_total",
    "Decisions that reserved units of caps and budgets counting decisions, by result: taken, refused "
    "(an offer was taken out and the rest ranked again), unavailable (the shared store was down: "
    "screening alone decided)",
    ["result"],
)
STORE_UP = Gauge(
    "nba_store_up",
    "1 while the database answers; 0 while Decide answers from memory and Feedback is refused "
    "(with workers: 0 if any worker has lost it)",
    multiprocess_mode="livemin",
)
CONTACT_HISTORY_UNAVAILABLE = Counter(
    "nba_contact_history_unavailable_total",
    "Decisions made without the customer's contact history: not in memory, and the database was down",
)
BUS_UP = Gauge(
    "nba_bus_up",
    "1 while the Redis bus works; 0 while replicas learn from the database alone (with workers: 0 if any worker has lost it)",
    multiprocess_mode="livemin",
)
BUS_PUBLISHED = Counter("nba_bus_published_total", "Entries (one per write transaction) added to the bus")
BUS_RECEIVED = Counter("nba_bus_received_total", "Other replicas' entries read from the bus")
BUS_ERRORS = Counter("nba_bus_errors_total", "Failed bus operations", ["operation"])
BUS_GAP_FILLS = Counter(
    "nba_bus_gap_fills_total", "Times events were read from the database because the bus had not (yet) carried them"
)


_filtered_children: dict[str, Counter] = {}


def filtered(reason: str) -> Counter:
    """``FILTERED.labels(reason)``, looked up once per reason (labels() is a slow path)."""
    child = _filtered_children.get(reason)
    if child is None:
        child = _filtered_children[reason] = FILTERED.labels(reason)
    return child
