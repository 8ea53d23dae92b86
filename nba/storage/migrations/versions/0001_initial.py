"""The decision log's tables as the first release made them.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Event ids are 64-bit on PostgreSQL (millions of events a day outgrow 32 bits within years);
SQLite's INTEGER PRIMARY KEY is 64-bit already and must stay INTEGER to be the rowid.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('contact_events',
    sa.Column('id', ID, nullable=False),
    sa.Column('customer_id', sa.String(length=256), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('origin', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('group', sa.String(length=128), nullable=False),
    sa.Column('channel', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('contact_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_contact_events_at'), ['at'], unique=False)
        batch_op.create_index('ix_contact_events_customer_at', ['customer_id', 'at'], unique=False)

    op.create_table('decisions',
    sa.Column('decision_id', sa.String(length=64), nullable=False),
    sa.Column('request_id', sa.String(length=256), nullable=True),
    sa.Column('customer_id', sa.String(length=256), nullable=False),
    sa.Column('channel', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('policy_version', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('candidates', sa.JSON(), nullable=False),
    sa.Column('offers', sa.JSON(), nullable=False),
    sa.Column('closed', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('decision_id')
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_decisions_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_decisions_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index('ix_decisions_open', ['closed', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_decisions_request_id'), ['request_id'], unique=False)

    op.create_table('feedback',
    sa.Column('id', ID, nullable=False),
    sa.Column('event_id', sa.String(length=256), nullable=False),
    sa.Column('decision_id', sa.String(length=64), nullable=False),
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('reward', sa.Float(), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('applied', sa.Boolean(), nullable=False),
    sa.Column('pair_reward', sa.Float(), nullable=False),
    sa.Column('previous_reward', sa.Float(), nullable=True),
    sa.Column('late', sa.Boolean(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index('ix_feedback_pair', ['decision_id', 'offer_id'], unique=False)

    op.create_table('model_snapshots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signature', sa.String(), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('last_feedback_id', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('offer_counters',
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('hour', sa.Integer(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('offer_id', 'kind', 'hour')
    )
    op.create_table('policy_activations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('comment', sa.String(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('policy_activations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_policy_activations_version'), ['version'], unique=False)

    op.create_table('policy_sets',
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('comment', sa.String(), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('version'),
    sa.UniqueConstraint('content_hash')
    )


def downgrade() -> None:
    op.drop_table('policy_sets')
    with op.batch_alter_table('policy_activations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_policy_activations_version'))

    op.drop_table('policy_activations')
    op.drop_table('offer_counters')
    op.drop_table('model_snapshots')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index('ix_feedback_pair')

    op.drop_table('feedback')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_decisions_request_id'))
        batch_op.drop_index('ix_decisions_open')
        batch_op.drop_index(batch_op.f('ix_decisions_customer_id'))
        batch_op.drop_index(batch_op.f('ix_decisions_created_at'))

    op.drop_table('decisions')
    with op.batch_alter_table('contact_events', schema=None) as batch_op:
        batch_op.drop_index('ix_contact_events_customer_at')
        batch_op.drop_index(batch_op.f('ix_contact_events_at'))

    op.drop_table('contact_events')
