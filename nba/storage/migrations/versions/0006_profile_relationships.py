"""Relationships between customers (household, guarantor, referral), kept on both profiles.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

An event of a type the profile's ``relationships:`` section names links its customer to
another (issue 13). Each link is a row in each direction, so either customer's GetProfile lists
it; a merge moves the absorbed customer's rows to the survivor (keeping their ``origin``, so an
unmerge gives them back), and the other side's id is followed through merges when read.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_relationships",
        sa.Column("customer_id", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("other_id", sa.String(length=256), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("origin", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "kind", "other_id"),
    )


def downgrade() -> None:
    op.drop_table("profile_relationships")
