"""Near-duplicate keys: the first event of a type with each value of its ``dedupe_by`` property.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

An event type may name a property that identifies what the event is about (``order: {dedupe_by:
order_id}``): the same order reported by the web shop and by the store, under two event ids, is
one order, counted once (issue 14, data quality). This table holds the first event of each
(type, value); a later one is answered as a duplicate of it and not applied.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_event_keys",
        sa.Column("type", sa.String(length=64), primary_key=True),
        sa.Column("key", sa.String(length=256), primary_key=True),
        sa.Column("event_id", sa.String(length=256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("profile_event_keys")
