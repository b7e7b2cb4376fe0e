"""Telemetry shapes at the API edge (documentation; the hot path parses raw bytes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class ReadingIn(BaseModel):
    """One reading. `asset_id` is the asset's UUID or its `external_id`."""

    asset_id: str = Field(examples=["6f1c0c3e-5b7e-4a9e-9a55-0f1e2d3c4b5a"])
    metric: str = Field(max_length=64, examples=["traffic_volume"])
    ts: datetime | float = Field(description="ISO 8601 with offset, or epoch seconds")
    value: float
    unit: str | None = Field(None, description="Informational; the asset's metric spec wins")
    quality: int | None = Field(None, ge=0, le=32767, description="Device quality code")


class TelemetryBatchIn(BaseModel):
    readings: list[ReadingIn]


class Rejection(BaseModel):
    index: int
    reason: str


class IngestResult(BaseModel):
    accepted: int = Field(description="Readings committed to the hypertable")
    rejected: list[Rejection]


class Aggregate(StrEnum):
    avg = "avg"
    min = "min"
    max = "max"
    count = "count"  # type: ignore[assignment]  # shadows str.count on purpose: the API word
    last = "last"
    sum = "sum"


class TelemetryPoint(BaseModel):
    ts: datetime
    value: float | None


class TelemetrySeries(BaseModel):
    asset_id: uuid.UUID
    metric: str
    bucket: str | None
    agg: Aggregate | None
    source: str = Field("raw", description="Where the points came from: `raw`, `rollup` "
                        "(hourly rollups) or `rollup+raw` (rollups, then raw rows after them)")
    points: list[TelemetryPoint]
