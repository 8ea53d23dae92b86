"""The decision log's rollups by hour and by day, channel, offer and measure, for the overview.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30

The console's overview and AdminService.GetOverview (issue 16) read these instead of scanning
the log; the writer keeps them in the same transactions as the decisions and feedback they
count. Decisions logged before this revision are counted by ``nba db rollups``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, grain in (("decision_rollups", "hour"), ("decision_rollups_daily", "day")):
        op.create_table(
            table,
            sa.Column(grain, sa.Integer(), primary_key=True),
            sa.Column("channel", sa.String(length=128), primary_key=True),
            sa.Column("offer_id", sa.String(length=128), primary_key=True),
            sa.Column("measure", sa.String(length=64), primary_key=True),
            sa.Column("value", sa.Float(), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("decision_rollups_daily")
    op.drop_table("decision_rollups")
