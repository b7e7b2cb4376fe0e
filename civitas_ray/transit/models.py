"""Transit ORM: feeds, versioned GTFS static tables and the GTFS-Realtime hypertables.

Every static row carries the `version_id` of the import that wrote it: a new import
fills a fresh version while readers keep using the active one, and activation is one
UPDATE of `transit_feed.active_version_id`.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from civitas_ray.db.base import Base, TenantOwned, Timestamps, UUIDPk

VERSION_STATUSES = ("importing", "ready", "failed", "retired")


class TransitFeed(UUIDPk, TenantOwned, Timestamps, Base):
    """One agency feed: its active static version and where its realtime parts are polled."""

    __tablename__ = "transit_feed"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="gtfs",
                                      server_default="gtfs")
    # No foreign key: the version table points here, and a cycle of FKs makes every
    # feed delete order-dependent; the import code owns this pointer.
    active_version_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    realtime_urls: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                           server_default="{}")
    poll_interval_s: Mapped[int] = mapped_column(Integer, nullable=False, default=30,
                                                 server_default="30")
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                      server_default="{}")


class TransitFeedVersion(UUIDPk, TenantOwned, Base):
    """One static import of a feed: its status, dates, row counts and validation errors."""

    __tablename__ = "transit_feed_version"
    __table_args__ = (
        UniqueConstraint("feed_id", "version"),
        CheckConstraint("status in ('importing', 'ready', 'failed', 'retired')",
                        name="status"),
    )

    feed_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("transit_feed.id", ondelete="CASCADE"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="importing",
                                        server_default="importing")
    feed_start_date: Mapped[date | None] = mapped_column(Date)
    feed_end_date: Mapped[date | None] = mapped_column(Date)
    agency_timezone: Mapped[str | None] = mapped_column(String(64))
    feed_version: Mapped[str | None] = mapped_column(String(200))
    counts: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                    server_default="{}")
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, default=list,
                                                          server_default="[]")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class _VersionRow(TenantOwned):
    """A static GTFS row keyed by (version_id, GTFS id): every read names a version, so
    the primary key leads with it and tenant_id needs no index of its own."""

    @declared_attr
    def tenant_id(cls) -> Mapped[uuid.UUID]:
        return mapped_column(UUID(as_uuid=True), ForeignKey("tenant.id", ondelete="CASCADE"),
                             nullable=False, sort_order=-2)

    @declared_attr
    def version_id(cls) -> Mapped[uuid.UUID]:
        return mapped_column(UUID(as_uuid=True),
                             ForeignKey("transit_feed_version.id", ondelete="CASCADE"),
                             primary_key=True, sort_order=-1)


class GtfsAgency(_VersionRow, Base):
    __tablename__ = "gtfs_agency"

    agency_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    url: Mapped[str | None] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text, nullable=False)
    lang: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)


class GtfsRoute(_VersionRow, Base):
    __tablename__ = "gtfs_route"

    route_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    agency_id: Mapped[str | None] = mapped_column(String(255))
    short_name: Mapped[str | None] = mapped_column(Text)
    long_name: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    route_type: Mapped[int] = mapped_column(Integer, nullable=False)
    url: Mapped[str | None] = mapped_column(Text)
    color: Mapped[str | None] = mapped_column(Text)
    text_color: Mapped[str | None] = mapped_column(Text)
    sort_order: Mapped[int | None] = mapped_column(Integer)


class GtfsStop(_VersionRow, Base):
    __tablename__ = "gtfs_stop"
    __table_args__ = (Index("ix_gtfs_stop_geom", "geom", postgresql_using="gist"),)

    stop_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    code: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    # Nodes and boarding areas (location_type 3, 4) may have no position.
    geom: Mapped[Any] = mapped_column(Geometry("POINT", srid=4326, spatial_index=False),
                                      nullable=True)
    # Our zone (spatial assignment); the GTFS fare zone is `fare_zone_id`.
    zone_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("zone.id", ondelete="SET NULL"))
    fare_zone_id: Mapped[str | None] = mapped_column(String(255))
    parent_station: Mapped[str | None] = mapped_column(String(255))
    location_type: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=0,
                                               server_default="0")
    wheelchair_boarding: Mapped[int | None] = mapped_column(SmallInteger)
    platform_code: Mapped[str | None] = mapped_column(Text)


class GtfsTrip(_VersionRow, Base):
    __tablename__ = "gtfs_trip"
    __table_args__ = (Index("ix_gtfs_trip_version_id_route_id", "version_id", "route_id"),)

    trip_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    route_id: Mapped[str] = mapped_column(String(255), nullable=False)
    service_id: Mapped[str] = mapped_column(String(255), nullable=False)
    headsign: Mapped[str | None] = mapped_column(Text)
    trip_short_name: Mapped[str | None] = mapped_column(Text)
    direction_id: Mapped[int | None] = mapped_column(SmallInteger)
    block_id: Mapped[str | None] = mapped_column(String(255))
    shape_id: Mapped[str | None] = mapped_column(String(255))
    wheelchair_accessible: Mapped[int | None] = mapped_column(SmallInteger)


class GtfsStopTime(_VersionRow, Base):
    """Times are seconds after the service day's "noon minus 12h"; they may pass 24:00:00."""

    __tablename__ = "gtfs_stop_time"

    trip_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    stop_sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    stop_id: Mapped[str] = mapped_column(String(255), nullable=False)
    arrival_s: Mapped[int | None] = mapped_column(Integer)
    departure_s: Mapped[int | None] = mapped_column(Integer)
    stop_headsign: Mapped[str | None] = mapped_column(Text)
    pickup_type: Mapped[int | None] = mapped_column(SmallInteger)
    drop_off_type: Mapped[int | None] = mapped_column(SmallInteger)
    shape_dist_traveled: Mapped[float | None] = mapped_column(Double)
    timepoint: Mapped[int | None] = mapped_column(SmallInteger)


class GtfsShape(_VersionRow, Base):
    __tablename__ = "gtfs_shape"
    __table_args__ = (Index("ix_gtfs_shape_geom", "geom", postgresql_using="gist"),)

    shape_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    geom: Mapped[Any] = mapped_column(Geometry("LINESTRING", srid=4326, spatial_index=False),
                                      nullable=False)
    points: Mapped[int] = mapped_column(Integer, nullable=False)


class GtfsCalendar(_VersionRow, Base):
    __tablename__ = "gtfs_calendar"

    service_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    monday: Mapped[bool] = mapped_column(Boolean, nullable=False)
    tuesday: Mapped[bool] = mapped_column(Boolean, nullable=False)
    wednesday: Mapped[bool] = mapped_column(Boolean, nullable=False)
    thursday: Mapped[bool] = mapped_column(Boolean, nullable=False)
    friday: Mapped[bool] = mapped_column(Boolean, nullable=False)
    saturday: Mapped[bool] = mapped_column(Boolean, nullable=False)
    sunday: Mapped[bool] = mapped_column(Boolean, nullable=False)
    start_date: Mapped[date] = mapped_column(Date, nullable=False)
    end_date: Mapped[date] = mapped_column(Date, nullable=False)


class GtfsCalendarDate(_VersionRow, Base):
    __tablename__ = "gtfs_calendar_date"

    service_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    date: Mapped[date] = mapped_column(Date, primary_key=True)
    exception_type: Mapped[int] = mapped_column(SmallInteger, nullable=False)


class TransitVehiclePosition(TenantOwned, Base):
    """Hypertable (1-day chunks): one row per vehicle report."""

    __tablename__ = "transit_vehicle_position"
    __table_args__ = (Index("ix_transit_vehicle_position_tenant_id_ts", "tenant_id", "ts"),)

    feed_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    vehicle_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    trip_id: Mapped[str | None] = mapped_column(String(255))
    route_id: Mapped[str | None] = mapped_column(String(255))
    start_date: Mapped[date | None] = mapped_column(Date)
    lat: Mapped[float | None] = mapped_column(Double)
    lon: Mapped[float | None] = mapped_column(Double)
    bearing: Mapped[float | None] = mapped_column(Double)
    speed: Mapped[float | None] = mapped_column(Double)
    occupancy_status: Mapped[str | None] = mapped_column(String(32))
    stop_id: Mapped[str | None] = mapped_column(String(255))
    current_status: Mapped[str | None] = mapped_column(String(32))
    zone_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class TransitTripUpdate(TenantOwned, Base):
    """Hypertable on the feed header time (1-day chunks): one row per stop prediction."""

    __tablename__ = "transit_trip_update"
    __table_args__ = (
        Index("ix_transit_trip_update_feed_id_feed_ts", "feed_id", "feed_ts"),
    )

    feed_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    trip_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    start_date: Mapped[date] = mapped_column(Date, primary_key=True)
    stop_sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    route_id: Mapped[str | None] = mapped_column(String(255))
    stop_id: Mapped[str | None] = mapped_column(String(255))
    arrival_delay_s: Mapped[int | None] = mapped_column(Integer)
    departure_delay_s: Mapped[int | None] = mapped_column(Integer)
    predicted_arrival: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scheduled_arrival: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    schedule_relationship: Mapped[str | None] = mapped_column(String(32))

