"""Storage: the decision log and everything kept in the database or shared between replicas.

    engine        opening the database, the write transaction; outages translated to
                  ``DatabaseUnavailable`` at this boundary
    store         one object over the repositories, one module per table family:
    policy_sets     versions and activations
    decisions       decisions, and the JSON Lines export
    feedback        feedback events, reward windows, replay for the learner, retention
    contacts        contact events and offer counters
    snapshots       the learner's snapshots
    profiles        customer profiles, identifiers, touch-point events, merges, relationships
    decision_log  write-behind decisions, group-committed feedback, degraded mode
    recent        the decisions held in memory (pending, and recently written)
    replication   every process learns every process's events, in commit order
    bus           the replication bus over Redis Streams
    tables        the tables (SQLModel declarations and typed Core tables)
    migrations    Alembic migrations of the schema, and the check made at start

May import: the kernel modules only (``nba.records`` holds what it stores). It calls no
decision or learning logic: what it commits reaches the service through the decision log's
listener (``decision_log.LogListener``).
"""
