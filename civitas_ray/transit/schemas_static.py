"""Pydantic shapes of the GTFS static API: feeds, versions (import jobs), stops, routes, trips."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from civitas_ray.geo import BBoxQuery

FEED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._\-]{0,99}$"


class RealtimeUrls(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trip_updates: AnyHttpUrl | None = None
    vehicle_positions: AnyHttpUrl | None = None
    alerts: AnyHttpUrl | None = None


class FeedCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FEED_NAME_PATTERN, description="Unique within the tenant")
    realtime_urls: RealtimeUrls = Field(default_factory=RealtimeUrls,
                                        description="GTFS-RT endpoints polled for this feed")
    poll_interval_s: int = Field(30, ge=5, le=3600)
    settings: dict[str, Any] = Field(default_factory=dict)


class ImportIssue(BaseModel):
    """One validation problem: where (file, CSV record number with header = 1, field), what."""

    file: str | None
    row: int | None
    field: str | None
    message: str


class VersionRead(BaseModel):
    """A static version: also the job record of its import (`status` says how far it got)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    feed_id: uuid.UUID
    version: int
    sha256: str
    status: Literal["importing", "ready", "failed", "retired"]
    active: bool = False
    feed_start_date: date | None = None
    feed_end_date: date | None = None
    agency_timezone: str | None = None
    feed_version: str | None = None
    counts: dict[str, Any] = Field(default_factory=dict)
    errors: list[ImportIssue] = Field(default_factory=list)
    created_at: datetime
    activated_at: datetime | None = None


class FeedRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: str
    active_version_id: uuid.UUID | None
    realtime_urls: dict[str, Any]
    poll_interval_s: int
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class FeedPage(BaseModel):
    items: list[FeedRead]
    total: int


class VersionPage(BaseModel):
    items: list[VersionRead]
    total: int


class StopQuery(BaseModel):
    feed: str | None = Field(None, description="Only this feed (default: every feed)")
    zone_id: uuid.UUID | None = Field(None, description="Only stops assigned to this zone")
    bbox: BBoxQuery = Field(None, description="`minLon,minLat,maxLon,maxLat` (WGS84)")
    location_type: int | None = Field(None, ge=0, le=4)
    limit: int = Field(1000, ge=1, le=10_000)
    offset: int = Field(0, ge=0)


class StopProperties(BaseModel):
    feed: str
    stop_id: str
    code: str | None
    name: str | None
    location_type: int
    parent_station: str | None
    platform_code: str | None
    zone_id: uuid.UUID | None


class RouteRead(BaseModel):
    feed: str
    route_id: str
    agency_id: str | None
    short_name: str | None
    long_name: str | None
    route_type: int
    color: str | None
    text_color: str | None
    trips: int


class StopTimeRead(BaseModel):
    stop_sequence: int
    stop_id: str
    stop_name: str | None
    arrival_s: int | None = Field(description="Seconds after the service day's start")
    departure_s: int | None
    arrival_time: str | None = Field(description="HH:MM:SS as in GTFS (may pass 24:00:00)")
    departure_time: str | None
    zone_id: uuid.UUID | None


class TripRead(BaseModel):
    feed: str
    version_id: uuid.UUID
    trip_id: str
    route_id: str
    service_id: str
    headsign: str | None
    trip_short_name: str | None
    direction_id: int | None
    block_id: str | None
    shape_id: str | None
    stop_times: list[StopTimeRead]
