"""Segments: each customer's stays in each segment, entries and exits counted by the hour, and
the moment each profile's membership next changes with no event.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

A segment is a condition over the profile in the policy set's ``profile:`` section (issue 14).
``profile_segments`` keeps when a customer entered and left each one (a row a stay; NULL
``exited_at`` while in it), ``segment_counts`` the entries and exits of each hour (a segment's
size over time is their running sum), and ``profiles.due_at`` when the segment clock is to look at
a profile again: a windowed computed attribute a segment reads changes then.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_profiles_due_at", ["due_at"])
    op.create_table(
        "profile_segments",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(length=256), nullable=False),
        sa.Column("segment", sa.String(length=64), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exited_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_profile_segments_customer", "profile_segments", ["customer_id", "segment"])
    op.create_index("ix_profile_segments_members", "profile_segments", ["segment", "exited_at"])
    op.create_table(
        "segment_counts",
        sa.Column("segment", sa.String(length=64), primary_key=True),
        sa.Column("hour", sa.Integer(), primary_key=True),
        sa.Column("entered", sa.Integer(), nullable=False),
        sa.Column("exited", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("segment_counts")
    op.drop_index("ix_profile_segments_members", table_name="profile_segments")
    op.drop_index("ix_profile_segments_customer", table_name="profile_segments")
    op.drop_table("profile_segments")
    with op.batch_alter_table("profiles") as batch:
        batch.drop_index("ix_profiles_due_at")
        batch.drop_column("due_at")
