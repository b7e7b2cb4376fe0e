"""API shapes of GTFS-Realtime: what a push did, vehicles, trip delays, stop arrivals, health."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class MatchCounts(BaseModel):
    exact: int = 0
    short: int = Field(0, description="Matched by the static id's short form (NYCT)")
    direction: int = Field(0, description="Matched by origin time, route and direction")
    ambiguous: int = Field(0, description="Matches that had several running candidates")


class IncidentCounts(BaseModel):
    opened: int = 0
    updated: int = 0
    resolved: int = 0
    unchanged: int = 0


class GtfsRtIngestRead(BaseModel):
    """What one FeedMessage did."""

    feed: str
    feed_id: uuid.UUID
    version_id: uuid.UUID | None = Field(description="The active static version matched against")
    feed_ts: datetime | None = Field(description="The header timestamp")
    age_s: float | None = Field(description="Receipt time minus the header timestamp")
    stale: bool = Field(description="Older than the feed's `stale_after_s` (default 300 s), "
                                    "or older than data already applied")
    incrementality: str
    entities: int
    trip_updates: int
    stop_time_updates: int
    vehicles: int
    alerts: int
    matched: int = Field(description="Trip updates whose trip is in the static version")
    duplicate_trip_updates: int = Field(description="Trip updates repeating an earlier one's "
                                                    "trip and date (the first is kept)")
    unmatched: list[str] = Field(description="Unknown realtime trip ids (first 200)")
    unmatched_count: int
    match: MatchCounts
    mismatched: bool = Field(description="Mostly unknown trips or dates outside the calendar: "
                                         "nothing was matched against the schedule")
    mismatch_reason: str | None
    vehicles_matched: int
    vehicles_in_zones: int
    rows: dict[str, int] = Field(description="Rows written (duplicates of an earlier push "
                                             "are skipped)")
    incidents: IncidentCounts
    state_updated: bool = Field(description="Whether the live vehicle/zone actors were updated "
                                            "(false without Ray: stored only)")
    state_detail: str | None = None
    duration_ms: float = Field(description="Receipt to response, before the commit")
    timings_ms: dict[str, float] = Field(default_factory=dict,
                                         description="decode_match, store, alerts")


class StopDelayRead(BaseModel):
    stop_sequence: int
    stop_id: str
    scheduled_arrival: datetime | None
    scheduled_departure: datetime | None
    predicted_arrival: datetime | None
    arrival_delay_s: float | None
    departure_delay_s: float | None
    source: Literal["update", "propagated", "none", "skipped", "no_data"]


class TripDelaysRead(BaseModel):
    trip_id: str = Field(description="The static trip id")
    requested_trip_id: str
    feed: str
    feed_ts: datetime | None
    service_date: str | None
    route_id: str | None
    delay_s: float | None = Field(description="The delay at the next stop with a prediction")
    stops: list[StopDelayRead]


class ArrivalRead(BaseModel):
    trip_id: str
    route_id: str | None
    stop_sequence: int
    scheduled_arrival: datetime | None
    predicted_arrival: datetime | None
    arrival_delay_s: float | None
    feed: str
    feed_ts: datetime


class StopArrivalsRead(BaseModel):
    stop_id: str
    arrivals: list[ArrivalRead]


class FeedHealthRead(BaseModel):
    feed_id: uuid.UUID
    name: str
    age_s: float | None = Field(description="Seconds since the newest header timestamp")
    since_receipt_s: float | None
    entities: int | None = None
    matched: int | None = None
    unmatched: int | None = None
    stale: bool | None = None
    mismatched: bool | None = None
    ingests: int = 0
    errors: int = 0
    last_error: str | None = None
    poller: dict[str, Any] | None = None
