"""Profiles record the definition their computed state was built under, so a changed
definition's backfill finds the profiles it has left to do.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

``built_under`` is the profile definition's fingerprint (``ProfileDefinition.fingerprint``: its
attributes, computed attributes and activities). When a published policy set changes them, the
service rebuilds, in the background, every profile built under another fingerprint from its
stored events (issue 13). Profiles stored before this revision hold NULL: they are visited once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("built_under", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("built_under")
