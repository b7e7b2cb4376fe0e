"""transit

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 18:13:31.756207+00:00
"""
from collections.abc import Sequence

import geoalchemy2
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('transit_feed',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), server_default='gtfs', nullable=False),
    sa.Column('active_version_id', sa.UUID(), nullable=True),
    sa.Column('realtime_urls', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('poll_interval_s', sa.Integer(), server_default='30', nullable=False),
    sa.Column('settings', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_transit_feed_tenant_id_tenant'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transit_feed')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_transit_feed_tenant_id_name'))
    )
    op.create_index(op.f('ix_transit_feed_tenant_id'), 'transit_feed', ['tenant_id'], unique=False)
    op.create_table('transit_trip_update',
    sa.Column('feed_id', sa.UUID(), nullable=False),
    sa.Column('trip_id', sa.String(length=255), nullable=False),
    sa.Column('start_date', sa.Date(), nullable=False),
    sa.Column('stop_sequence', sa.Integer(), nullable=False),
    sa.Column('feed_ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('route_id', sa.String(length=255), nullable=True),
    sa.Column('stop_id', sa.String(length=255), nullable=True),
    sa.Column('arrival_delay_s', sa.Integer(), nullable=True),
    sa.Column('departure_delay_s', sa.Integer(), nullable=True),
    sa.Column('predicted_arrival', sa.DateTime(timezone=True), nullable=True),
    sa.Column('scheduled_arrival', sa.DateTime(timezone=True), nullable=True),
    sa.Column('schedule_relationship', sa.String(length=32), nullable=True),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_transit_trip_update_tenant_id_tenant'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('feed_id', 'trip_id', 'start_date', 'stop_sequence', 'feed_ts', name=op.f('pk_transit_trip_update'))
    )
    op.create_index('ix_transit_trip_update_feed_id_feed_ts', 'transit_trip_update', ['feed_id', 'feed_ts'], unique=False)
    op.create_index(op.f('ix_transit_trip_update_tenant_id'), 'transit_trip_update', ['tenant_id'], unique=False)
    op.create_table('transit_vehicle_position',
    sa.Column('feed_id', sa.UUID(), nullable=False),
    sa.Column('vehicle_id', sa.String(length=255), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('trip_id', sa.String(length=255), nullable=True),
    sa.Column('route_id', sa.String(length=255), nullable=True),
    sa.Column('start_date', sa.Date(), nullable=True),
    sa.Column('lat', sa.Double(), nullable=True),
    sa.Column('lon', sa.Double(), nullable=True),
    sa.Column('bearing', sa.Double(), nullable=True),
    sa.Column('speed', sa.Double(), nullable=True),
    sa.Column('occupancy_status', sa.String(length=32), nullable=True),
    sa.Column('stop_id', sa.String(length=255), nullable=True),
    sa.Column('current_status', sa.String(length=32), nullable=True),
    sa.Column('zone_id', sa.UUID(), nullable=True),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_transit_vehicle_position_tenant_id_tenant'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('feed_id', 'vehicle_id', 'ts', name=op.f('pk_transit_vehicle_position'))
    )
    op.create_index(op.f('ix_transit_vehicle_position_tenant_id'), 'transit_vehicle_position', ['tenant_id'], unique=False)
    op.create_index('ix_transit_vehicle_position_tenant_id_ts', 'transit_vehicle_position', ['tenant_id', 'ts'], unique=False)
    op.create_table('transit_feed_version',
    sa.Column('feed_id', sa.UUID(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='importing', nullable=False),
    sa.Column('feed_start_date', sa.Date(), nullable=True),
    sa.Column('feed_end_date', sa.Date(), nullable=True),
    sa.Column('agency_timezone', sa.String(length=64), nullable=True),
    sa.Column('feed_version', sa.String(length=200), nullable=True),
    sa.Column('counts', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('errors', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.CheckConstraint("status in ('importing', 'ready', 'failed', 'retired')", name=op.f('ck_transit_feed_version_status')),
    sa.ForeignKeyConstraint(['feed_id'], ['transit_feed.id'], name=op.f('fk_transit_feed_version_feed_id_transit_feed'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_transit_feed_version_tenant_id_tenant'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transit_feed_version')),
    sa.UniqueConstraint('feed_id', 'version', name=op.f('uq_transit_feed_version_feed_id_version'))
    )
    op.create_index(op.f('ix_transit_feed_version_tenant_id'), 'transit_feed_version', ['tenant_id'], unique=False)
    op.create_table('gtfs_agency',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('version_id', sa.UUID(), nullable=False),
    sa.Column('agency_id', sa.String(length=255), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('timezone', sa.Text(), nullable=False),
    sa.Column('lang', sa.Text(), nullable=True),
    sa.Column('phone', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_gtfs_agency_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['transit_feed_version.id'], name=op.f('fk_gtfs_agency_version_id_transit_feed_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'agency_id', name=op.f('pk_gtfs_agency'))
    )
    op.create_table('gtfs_calendar',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('version_id', sa.UUID(), nullable=False),
    sa.Column('service_id', sa.String(length=255), nullable=False),
    sa.Column('monday', sa.Boolean(), nullable=False),
    sa.Column('tuesday', sa.Boolean(), nullable=False),
    sa.Column('wednesday', sa.Boolean(), nullable=False),
    sa.Column('thursday', sa.Boolean(), nullable=False),
    sa.Column('friday', sa.Boolean(), nullable=False),
    sa.Column('saturday', sa.Boolean(), nullable=False),
    sa.Column('sunday', sa.Boolean(), nullable=False),
    sa.Column('start_date', sa.Date(), nullable=False),
    sa.Column('end_date', sa.Date(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_gtfs_calendar_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['transit_feed_version.id'], name=op.f('fk_gtfs_calendar_version_id_transit_feed_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'service_id', name=op.f('pk_gtfs_calendar'))
    )
    op.create_table('gtfs_calendar_date',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('version_id', sa.UUID(), nullable=False),
    sa.Column('service_id', sa.String(length=255), nullable=False),
    sa.Column('date', sa.Date(), nullable=False),
    sa.Column('exception_type', sa.SmallInteger(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_gtfs_calendar_date_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['transit_feed_version.id'], name=op.f('fk_gtfs_calendar_date_version_id_transit_feed_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'service_id', 'date', name=op.f('pk_gtfs_calendar_date'))
    )
    op.create_table('gtfs_route',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('version_id', sa.UUID(), nullable=False),
    sa.Column('route_id', sa.String(length=255), nullable=False),
    sa.Column('agency_id', sa.String(length=255), nullable=True),
    sa.Column('short_name', sa.Text(), nullable=True),
    sa.Column('long_name', sa.Text(), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('route_type', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('color', sa.Text(), nullable=True),
    sa.Column('text_color', sa.Text(), nullable=True),
    sa.Column('sort_order', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_gtfs_route_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['transit_feed_version.id'], name=op.f('fk_gtfs_route_version_id_transit_feed_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'route_id', name=op.f('pk_gtfs_route'))
    )
    op.create_table('gtfs_shape',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('version_id', sa.UUID(), nullable=False),
    sa.Column('shape_id', sa.String(length=255), nullable=False),
    sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='LINESTRING', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT'), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_gtfs_shape_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['transit_feed_version.id'], name=op.f('fk_gtfs_shape_version_id_transit_feed_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'shape_id', name=op.f('pk_gtfs_shape'))
    )
    op.create_index('ix_gtfs_shape_geom', 'gtfs_shape', ['geom'], unique=False, postgresql_using='gist')
    op.create_table('gtfs_stop',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('version_id', sa.UUID(), nullable=False),
    sa.Column('stop_id', sa.String(length=255), nullable=False),
    sa.Column('code', sa.Text(), nullable=True),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='POINT', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT'), nullable=True),
    sa.Column('zone_id', sa.UUID(), nullable=True),
    sa.Column('fare_zone_id', sa.String(length=255), nullable=True),
    sa.Column('parent_station', sa.String(length=255), nullable=True),
    sa.Column('location_type', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('wheelchair_boarding', sa.SmallInteger(), nullable=True),
    sa.Column('platform_code', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_gtfs_stop_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['transit_feed_version.id'], name=op.f('fk_gtfs_stop_version_id_transit_feed_version'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['zone_id'], ['zone.id'], name=op.f('fk_gtfs_stop_zone_id_zone'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('version_id', 'stop_id', name=op.f('pk_gtfs_stop'))
    )
    op.create_index('ix_gtfs_stop_geom', 'gtfs_stop', ['geom'], unique=False, postgresql_using='gist')
    op.create_table('gtfs_stop_time',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('version_id', sa.UUID(), nullable=False),
    sa.Column('trip_id', sa.String(length=255), nullable=False),
    sa.Column('stop_sequence', sa.Integer(), nullable=False),
    sa.Column('stop_id', sa.String(length=255), nullable=False),
    sa.Column('arrival_s', sa.Integer(), nullable=True),
    sa.Column('departure_s', sa.Integer(), nullable=True),
    sa.Column('stop_headsign', sa.Text(), nullable=True),
    sa.Column('pickup_type', sa.SmallInteger(), nullable=True),
    sa.Column('drop_off_type', sa.SmallInteger(), nullable=True),
    sa.Column('shape_dist_traveled', sa.Double(), nullable=True),
    sa.Column('timepoint', sa.SmallInteger(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_gtfs_stop_time_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['transit_feed_version.id'], name=op.f('fk_gtfs_stop_time_version_id_transit_feed_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'trip_id', 'stop_sequence', name=op.f('pk_gtfs_stop_time'))
    )
    op.create_table('gtfs_trip',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('version_id', sa.UUID(), nullable=False),
    sa.Column('trip_id', sa.String(length=255), nullable=False),
    sa.Column('route_id', sa.String(length=255), nullable=False),
    sa.Column('service_id', sa.String(length=255), nullable=False),
    sa.Column('headsign', sa.Text(), nullable=True),
    sa.Column('trip_short_name', sa.Text(), nullable=True),
    sa.Column('direction_id', sa.SmallInteger(), nullable=True),
    sa.Column('block_id', sa.String(length=255), nullable=True),
    sa.Column('shape_id', sa.String(length=255), nullable=True),
    sa.Column('wheelchair_accessible', sa.SmallInteger(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_gtfs_trip_tenant_id_tenant'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['transit_feed_version.id'], name=op.f('fk_gtfs_trip_version_id_transit_feed_version'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'trip_id', name=op.f('pk_gtfs_trip'))
    )
    op.create_index('ix_gtfs_trip_version_id_route_id', 'gtfs_trip', ['version_id', 'route_id'], unique=False)
    _after_tables()


def downgrade() -> None:
    for table in TENANT_TABLES:
        op.execute(f"drop policy if exists tenant_isolation on {table}")
    op.drop_index('ix_gtfs_trip_version_id_route_id', table_name='gtfs_trip')
    op.drop_table('gtfs_trip')
    op.drop_table('gtfs_stop_time')
    op.drop_index('ix_gtfs_stop_geom', table_name='gtfs_stop', postgresql_using='gist')
    op.drop_table('gtfs_stop')
    op.drop_index('ix_gtfs_shape_geom', table_name='gtfs_shape', postgresql_using='gist')
    op.drop_table('gtfs_shape')
    op.drop_table('gtfs_route')
    op.drop_table('gtfs_calendar_date')
    op.drop_table('gtfs_calendar')
    op.drop_table('gtfs_agency')
    op.drop_index(op.f('ix_transit_feed_version_tenant_id'), table_name='transit_feed_version')
    op.drop_table('transit_feed_version')
    op.drop_index('ix_transit_vehicle_position_tenant_id_ts', table_name='transit_vehicle_position')
    op.drop_index(op.f('ix_transit_vehicle_position_tenant_id'), table_name='transit_vehicle_position')
    op.drop_table('transit_vehicle_position')
    op.drop_index(op.f('ix_transit_trip_update_tenant_id'), table_name='transit_trip_update')
    op.drop_index('ix_transit_trip_update_feed_id_feed_ts', table_name='transit_trip_update')
    op.drop_table('transit_trip_update')
    op.drop_index(op.f('ix_transit_feed_tenant_id'), table_name='transit_feed')
    op.drop_table('transit_feed')


TENANT_TABLES = [
    "transit_feed", "transit_feed_version", "gtfs_agency", "gtfs_route", "gtfs_stop",
    "gtfs_trip", "gtfs_stop_time", "gtfs_shape", "gtfs_calendar", "gtfs_calendar_date",
    "transit_vehicle_position", "transit_trip_update",
]


def _after_tables() -> None:
    # Realtime history: one-day chunks; the primary keys and the few indexes above serve
    # every query, and a default time index would only slow the ingest path.
    op.execute("select create_hypertable('transit_vehicle_position', by_range('ts', "
               "interval '1 day'), create_default_indexes => false)")
    op.execute("select create_hypertable('transit_trip_update', by_range('feed_ts', "
               "interval '1 day'), create_default_indexes => false)")
    for table in TENANT_TABLES:
        op.execute(f"alter table {table} enable row level security")
        op.execute(f"alter table {table} force row level security")
        op.execute(f"""
            create policy tenant_isolation on {table}
            using (tenant_id = civitas_current_tenant() or civitas_is_system())
            with check (tenant_id = civitas_current_tenant() or civitas_is_system())""")
