"""Campaign callbacks' accepted signatures, kept for the replay window.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30

A signed callback (``POST /v1/callbacks/{source}``, issue 15) is refused when its signature was
accepted before: every process checks the same table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callback_signatures",
        sa.Column("digest", sa.String(length=64), primary_key=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_callback_signatures_accepted_at", "callback_signatures", ["accepted_at"])


def downgrade() -> None:
    op.drop_index("ix_callback_signatures_accepted_at", table_name="callback_signatures")
    op.drop_table("callback_signatures")
