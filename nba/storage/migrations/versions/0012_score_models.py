"""Predictive scores' models: one row a score, its model and progressive quality.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

A score (``profile: scores:``) predicts an event within a horizon, learned online from the
profiles' matured labels (issue 14). Every process learns into the same stored model, a write
transaction at a time, and reads it again when ``version`` moves on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "score_models",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("source", sa.String(length=1000), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("score_models")
