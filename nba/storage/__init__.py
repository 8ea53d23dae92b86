"""Storage: the decision log and everything kept in the database or shared between replicas.

    tables      the tables (SQLModel declarations and typed Core tables)
    store       the engine, the queries by table family, the write-behind decision log,
                and replication between replicas on one database
    bus         the replication bus over Redis Streams
    migrations  Alembic migrations of the schema, and the check made at start

May import: the kernel modules and the records of the domain (decision records, feedback
events, learning and contact events). It calls no learning or decision logic of its own:
what it stores is handed back to the service as results and events.
"""
