"""Erasures: who forgot which customer (by pseudonym), when and why; and the keys nba makes itself.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30

``ForgetCustomer`` (issue 14, governance) erases a customer's profile, events and identifiers
and pseudonymises their rows in the decision log with a keyed pseudonym (HMAC-SHA256). Each is
recorded in ``erasures``, naming the customer only by that pseudonym. ``secrets`` holds the
pseudonym key when none is configured (``NBA_PSEUDONYM_KEY``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
    )
    op.create_index("ix_erasures_pseudonym", "erasures", ["pseudonym"])
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("value", sa.String(length=256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("secrets")
    op.drop_index("ix_erasures_pseudonym", table_name="erasures")
    op.drop_table("erasures")
