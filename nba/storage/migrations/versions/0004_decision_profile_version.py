"""Decisions record the version of the stored customer profile they read.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

A decision whose policy set defines a profile reads the customer's stored profile (issue 13);
its learnable fields go into the decision's features, and the profile's version (the number of
events applied to it) into this column, so that offline evaluation and preview know what the
decision was made on. Decisions stored before, and decisions that read no profile, hold NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("profile_version", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("profile_version")
