"""Customer profiles: profiles, their identifiers, their events and merges.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Four new tables (issue 13); nothing already stored changes. Downgrading drops them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("customer_id", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("merged_into", sa.String(length=256), nullable=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profiles_merged_into"), ["merged_into"], unique=False)

    op.create_table(
        "profile_identities",
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("customer_id", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("kind", "value", "customer_id"),
    )
    with op.batch_alter_table("profile_identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profile_identities_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "profile_events",
        sa.Column("id", ID, nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("customer_id", sa.String(length=256), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("identities", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("profile_events", schema=None) as batch_op:
        batch_op.create_index("ix_profile_events_customer", ["customer_id", "occurred_at", "event_id"], unique=False)

    op.create_table(
        "profile_merges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("survivor", sa.String(length=256), nullable=False),
        sa.Column("absorbed", sa.String(length=256), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cause", sa.String(length=256), nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("profile_merges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profile_merges_absorbed"), ["absorbed"], unique=False)
        batch_op.create_index(batch_op.f("ix_profile_merges_survivor"), ["survivor"], unique=False)


def downgrade() -> None:
    op.drop_table("profile_merges")
    op.drop_table("profile_events")
    op.drop_table("profile_identities")
    op.drop_table("profiles")
