"""ML: training/backtest jobs with progress; model versions per subject, one in production.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 17:07:00.160328+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ml_job',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='queued', nullable=False),
    sa.Column('progress', sa.Double(), server_default='0', nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('request', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('model_version_id', sa.UUID(), nullable=True),
    sa.Column('created_by', sa.UUID(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['app_user.id'], name=op.f('fk_ml_job_created_by_app_user'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_ml_job_model_version_id_model_version'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_ml_job_tenant_id_tenant'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ml_job'))
    )
    op.create_index(op.f('ix_ml_job_tenant_id'), 'ml_job', ['tenant_id'], unique=False)
    op.create_index('ix_ml_job_tenant_id_created_at', 'ml_job', ['tenant_id', 'created_at'], unique=False)
    op.add_column('model_version', sa.Column('kind', sa.String(length=32), server_default='traffic', nullable=False))
    op.add_column('model_version', sa.Column('subject_key', sa.String(length=160), server_default='', nullable=False))
    op.add_column('model_version', sa.Column('subject', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False))
    op.add_column('model_version', sa.Column('freq', sa.String(length=16), server_default='1h', nullable=False))
    op.drop_constraint(op.f('uq_model_version_tenant_id_name_version'), 'model_version', type_='unique')
    op.create_index('uq_model_version_production', 'model_version', ['tenant_id', 'name', 'subject_key'], unique=True, postgresql_where=sa.text("stage = 'production'"))
    op.create_index('uq_model_version_shadow', 'model_version', ['tenant_id', 'name', 'subject_key'], unique=True, postgresql_where=sa.text("stage = 'shadow'"))
    op.create_unique_constraint(op.f('uq_model_version_tenant_id_name_subject_key_version'), 'model_version', ['tenant_id', 'name', 'subject_key', 'version'])
    op.create_check_constraint('stage', 'model_version',
                               "stage in ('candidate', 'shadow', 'production', 'archived')")
    op.create_check_constraint('kind', 'ml_job', "kind in ('train', 'backtest')")
    op.create_check_constraint('status', 'ml_job',
                               "status in ('queued', 'running', 'succeeded', 'failed')")
    # The importer rolls up what it imported on its own (ingest) connection: an upsert.
    op.execute("grant update on telemetry_rollup to civitas_ingest")
    op.execute("alter table ml_job enable row level security")
    op.execute("alter table ml_job force row level security")
    op.execute("""
        create policy tenant_isolation on ml_job
        using (tenant_id = civitas_current_tenant() or civitas_is_system())
        with check (tenant_id = civitas_current_tenant() or civitas_is_system())""")


def downgrade() -> None:
    op.execute("drop policy if exists tenant_isolation on ml_job")
    op.execute("revoke update on telemetry_rollup from civitas_ingest")
    op.drop_constraint(op.f('ck_model_version_stage'), 'model_version', type_='check')
    op.drop_constraint(op.f('uq_model_version_tenant_id_name_subject_key_version'), 'model_version', type_='unique')
    op.drop_index('uq_model_version_shadow', table_name='model_version', postgresql_where=sa.text("stage = 'shadow'"))
    op.drop_index('uq_model_version_production', table_name='model_version', postgresql_where=sa.text("stage = 'production'"))
    op.create_unique_constraint(op.f('uq_model_version_tenant_id_name_version'), 'model_version', ['tenant_id', 'name', 'version'], postgresql_nulls_not_distinct=False)
    op.drop_column('model_version', 'freq')
    op.drop_column('model_version', 'subject')
    op.drop_column('model_version', 'subject_key')
    op.drop_column('model_version', 'kind')
    op.drop_index('ix_ml_job_tenant_id_created_at', table_name='ml_job')
    op.drop_index(op.f('ix_ml_job_tenant_id'), table_name='ml_job')
    op.drop_table('ml_job')
