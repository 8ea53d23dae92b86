"""Events and identifiers remember the customer they first belonged to, so a merge can be undone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

A merge moves the absorbed customer's events and identifiers to the survivor (issue 13).
Undoing it (ProfileService.Unmerge) gives back to the absorbed customer what was theirs: the
events whose ``origin`` is that customer (or a customer merged into it before), and the
identifiers first attached to them. Rows stored before this revision hold NULL (their origin
is not known): an unmerge leaves them with the survivor.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profile_events") as batch:
        batch.add_column(sa.Column("origin", sa.String(length=256), nullable=True))
    with op.batch_alter_table("profile_identities") as batch:
        batch.add_column(sa.Column("origin", sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profile_identities") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("profile_events") as batch:
        batch.drop_column("origin")
