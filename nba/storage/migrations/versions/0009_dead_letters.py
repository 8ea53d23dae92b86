"""Dead letters: touch-point events the profile definition refused, kept whole with the reason.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

An event of a type the profile section does not declare, or with a property of another type
than declared, is refused (INVALID_ARGUMENT, as before) and now also kept here, one row an
``event_id``, so that it is never lost: once the definition is fixed, ``nba profiles
dead-letters --replay`` applies it (issue 14, data quality).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "profile_dead_letters",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=256), nullable=False),
        sa.Column("identities", sa.JSON(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("field", sa.String(length=256), nullable=False),
        sa.UniqueConstraint("event_id"),
    )


def downgrade() -> None:
    op.drop_table("profile_dead_letters")
