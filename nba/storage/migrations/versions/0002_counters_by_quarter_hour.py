"""Offer counters by quarter hour instead of by hour.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Daily budgets count the events of a local day in the policy set's timezone. Hourly buckets
(UTC) only add up to such a day where it begins on a whole hour: in Asia/Kolkata (+05:30),
Asia/Kathmandu (+05:45) or Pacific/Chatham (+12:45) a day began mid-bucket, and a budget spent
at 23:40 stayed spent all the next day. Every zone in use begins its days on a quarter hour,
so counters are now kept per quarter hour.

Rows already stored keep their meaning: an hour's count moves to the first quarter of that
hour (for a zone with whole-hour offsets, the same day as before; for others, the day the hour
began in), and the compacted totals stay in bucket 0. Downgrading adds the quarters of each
hour up again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("offer_counters", schema=None) as batch_op:
        batch_op.alter_column("hour", new_column_name="quarter", existing_type=sa.Integer(), existing_nullable=False)
    # Through negative values: no intermediate row collides with another's primary key.
    op.execute("UPDATE offer_counters SET quarter = -4 * quarter WHERE quarter > 0")
    op.execute("UPDATE offer_counters SET quarter = -quarter WHERE quarter < 0")


def downgrade() -> None:
    counters = sa.table("offer_counters", sa.column("offer_id", sa.String), sa.column("kind", sa.String),
                        sa.column("quarter", sa.Integer), sa.column("count", sa.Integer))
    connection = op.get_bind()
    hour = sa.case((counters.c.quarter > 0, counters.c.quarter // 4), else_=0)
    totals = connection.execute(
        sa.select(counters.c.offer_id, counters.c.kind, hour.label("hour"), sa.func.sum(counters.c["count"]))
        .group_by(counters.c.offer_id, counters.c.kind, hour)
    ).all()
    connection.execute(counters.delete())
    with op.batch_alter_table("offer_counters", schema=None) as batch_op:
        batch_op.alter_column("quarter", new_column_name="hour", existing_type=sa.Integer(), existing_nullable=False)
    rows = [{"offer_id": o, "kind": k, "hour": int(h), "count": int(n)} for o, k, h, n in totals]
    if rows:
        op.bulk_insert(sa.table("offer_counters", sa.column("offer_id", sa.String), sa.column("kind", sa.String),
                                sa.column("hour", sa.Integer), sa.column("count", sa.Integer)), rows)
