"""Agent runs: inputs, output, citations and the model of every agent run (RLS).

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-30 17:30:00+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('agent_run',
    sa.Column('agent', sa.String(length=64), nullable=False),
    sa.Column('trigger', sa.String(length=32), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='running', nullable=False),
    sa.Column('subject_type', sa.String(length=32), nullable=True),
    sa.Column('subject_id', sa.String(length=200), nullable=True),
    sa.Column('inputs', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('output', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('cited', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('backend', sa.String(length=64), nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('latency_s', sa.Double(), nullable=True),
    sa.Column('created_by', sa.UUID(), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status in ('running', 'succeeded', 'failed')", name=op.f('ck_agent_run_status')),
    sa.ForeignKeyConstraint(['created_by'], ['app_user.id'], name=op.f('fk_agent_run_created_by_app_user'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_agent_run_tenant_id_tenant'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agent_run'))
    )
    op.create_index('ix_agent_run_tenant_id_agent_created_at', 'agent_run', ['tenant_id', 'agent', 'created_at'], unique=False)
    op.create_index(op.f('ix_agent_run_tenant_id'), 'agent_run', ['tenant_id'], unique=False)
    op.create_index('uq_agent_run_tenant_id_idempotency_key', 'agent_run', ['tenant_id', 'idempotency_key'], unique=True, postgresql_where=sa.text('idempotency_key is not null'))
    op.execute("alter table agent_run enable row level security")
    op.execute("alter table agent_run force row level security")
    op.execute("""
        create policy tenant_isolation on agent_run
        using (tenant_id = civitas_current_tenant() or civitas_is_system())
        with check (tenant_id = civitas_current_tenant() or civitas_is_system())""")


def downgrade() -> None:
    op.execute("drop policy if exists tenant_isolation on agent_run")
    op.drop_index('uq_agent_run_tenant_id_idempotency_key', table_name='agent_run', postgresql_where=sa.text('idempotency_key is not null'))
    op.drop_index(op.f('ix_agent_run_tenant_id'), table_name='agent_run')
    op.drop_index('ix_agent_run_tenant_id_agent_created_at', table_name='agent_run')
    op.drop_table('agent_run')
