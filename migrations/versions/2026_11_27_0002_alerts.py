"""Alerts: one row per firing of a rule for a subject, with row-level security.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:57:24.765683+00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alert',
    sa.Column('rule_id', sa.UUID(), nullable=True),
    sa.Column('incident_id', sa.UUID(), nullable=True),
    sa.Column('dedup_key', sa.String(length=200), nullable=False),
    sa.Column('asset_id', sa.UUID(), nullable=True),
    sa.Column('zone_id', sa.UUID(), nullable=True),
    sa.Column('metric', sa.String(length=64), nullable=True),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.Column('threshold', sa.Double(), nullable=True),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('fired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['asset_id'], ['asset.id'], name=op.f('fk_alert_asset_id_asset'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['incident_id'], ['incident.id'], name=op.f('fk_alert_incident_id_incident'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['rule_id'], ['alert_rule.id'], name=op.f('fk_alert_rule_id_alert_rule'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_alert_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['zone_id'], ['zone.id'], name=op.f('fk_alert_zone_id_zone'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert'))
    )
    op.create_index(op.f('ix_alert_rule_id'), 'alert', ['rule_id'], unique=False)
    op.create_index(op.f('ix_alert_tenant_id'), 'alert', ['tenant_id'], unique=False)
    op.create_index('ix_alert_tenant_id_status_fired_at', 'alert', ['tenant_id', 'status', 'fired_at'], unique=False)
    op.create_index('uq_alert_tenant_id_dedup_key_firing', 'alert', ['tenant_id', 'dedup_key'], unique=True, postgresql_where=sa.text("status = 'firing'"))
    op.execute("alter table alert enable row level security")
    op.execute("alter table alert force row level security")
    op.execute("""
        create policy tenant_isolation on alert
        using (tenant_id = civitas_current_tenant() or civitas_is_system())
        with check (tenant_id = civitas_current_tenant() or civitas_is_system())""")


def downgrade() -> None:
    op.execute("drop policy if exists tenant_isolation on alert")
    op.drop_index('uq_alert_tenant_id_dedup_key_firing', table_name='alert', postgresql_where=sa.text("status = 'firing'"))
    op.drop_index('ix_alert_tenant_id_status_fired_at', table_name='alert')
    op.drop_index(op.f('ix_alert_tenant_id'), table_name='alert')
    op.drop_index(op.f('ix_alert_rule_id'), table_name='alert')
    op.drop_table('alert')
