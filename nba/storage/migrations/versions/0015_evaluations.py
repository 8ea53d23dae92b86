"""Offline evaluations started from the console, with their progress and reports.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30

The console's evaluation page (issue 16) runs ``nba evaluate``'s estimators in a child process
that writes its progress and report here, so that any worker or replica shows them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(length=200), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(length=1000), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("evaluations")
