"""Initial schema: jobs, their events and media, users, workers, the queue control row.

Revision ID: 0001
Revises: 
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_media',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('rel_path', sa.String(length=200), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_media')),
    sa.UniqueConstraint('job_id', 'role', name=op.f('uq_job_media_job_id_role'))
    )
    with op.batch_alter_table('job_media', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_media_job_id'), ['job_id'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('owner_key', sa.String(length=80), nullable=False),
    sa.Column('platform', sa.String(length=16), nullable=False),
    sa.Column('chat_id', sa.String(length=64), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('spec_version', sa.Integer(), nullable=False),
    sa.Column('spec_json', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('fair_round', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('run_after', sa.Double(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('shutdown_requeues', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=True),
    sa.Column('progress', sa.Double(), server_default=sa.text('0'), nullable=False),
    sa.Column('progress_detail', sa.String(length=64), nullable=True),
    sa.Column('lease_owner', sa.String(length=120), nullable=True),
    sa.Column('lease_token', sa.String(length=36), nullable=True),
    sa.Column('lease_expires_at', sa.Double(), nullable=True),
    sa.Column('deadline_at', sa.Double(), nullable=True),
    sa.Column('heartbeat_at', sa.Double(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('started_at', sa.Double(), nullable=True),
    sa.Column('finished_at', sa.Double(), nullable=True),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.Column('error_user', sa.Text(), nullable=True),
    sa.Column('error_admin', sa.Text(), nullable=True),
    sa.Column('result_json', sa.Text(), nullable=True),
    sa.Column('status_message_id', sa.String(length=64), nullable=True),
    sa.Column('delivery_state', sa.String(length=16), server_default=sa.text("'none'"), nullable=False),
    sa.Column('delivery_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('delivery_token', sa.String(length=36), nullable=True),
    sa.Column('delivery_expires_at', sa.Double(), nullable=True),
    sa.Column('delivered_message_id', sa.String(length=64), nullable=True),
    sa.Column('delivered_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_jobs_idempotency_key'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(
            'ix_jobs_claim_order', ['state', sa.text('priority DESC'), 'fair_round', 'created_at', 'id'], unique=False
        )
        batch_op.create_index('ix_jobs_delivery', ['platform', 'delivery_state'], unique=False)
        batch_op.create_index('ix_jobs_owner_state', ['owner_key', 'state'], unique=False)
        batch_op.create_index('ix_jobs_state_lease', ['state', 'lease_expires_at'], unique=False)

    op.create_table('queue_control',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('intake_paused', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('claims_paused', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_queue_control'))
    )
    op.create_table('users',
    sa.Column('owner_key', sa.String(length=80), nullable=False),
    sa.Column('blocked', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('max_active', sa.Integer(), nullable=True),
    sa.Column('consent_at', sa.Double(), nullable=True),
    sa.Column('last_submit_at', sa.Double(), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('note', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('owner_key', name=op.f('pk_users'))
    )
    op.create_table('workers',
    sa.Column('id', sa.String(length=120), nullable=False),
    sa.Column('host', sa.String(length=120), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('world_size', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('current_job_id', sa.String(length=36), nullable=True),
    sa.Column('drain_requested', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('started_at', sa.Double(), nullable=False),
    sa.Column('heartbeat_at', sa.Double(), nullable=False),
    sa.Column('info_json', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers'))
    )
    op.create_table('job_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('at', sa.Double(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=120), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_events_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_events'))
    )
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_events_job_id'), ['job_id'], unique=False)

    control = sa.table(
        "queue_control",
        sa.column("id", sa.Integer),
        sa.column("intake_paused", sa.Boolean),
        sa.column("claims_paused", sa.Boolean),
        sa.column("updated_at", sa.Double),
    )
    op.bulk_insert(control, [{"id": 1, "intake_paused": False, "claims_paused": False, "updated_at": 0.0}])


def downgrade() -> None:
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_events_job_id'))

    op.drop_table('job_events')
    op.drop_table('workers')
    op.drop_table('users')
    op.drop_table('queue_control')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_lease')
        batch_op.drop_index('ix_jobs_owner_state')
        batch_op.drop_index('ix_jobs_delivery')
        batch_op.drop_index('ix_jobs_claim_order')

    op.drop_table('jobs')
    with op.batch_alter_table('job_media', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_media_job_id'))

    op.drop_table('job_media')
