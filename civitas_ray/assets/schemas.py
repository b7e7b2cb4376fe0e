"""Asset shapes at the API edge: a GeoJSON Point in and out, metric ranges, list queries."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from civitas_ray import geo
from civitas_ray.schemas import Page

METRIC_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
ZONE_ID_DERIVED = (
    "`zone_id` is derived, never sent: it is the smallest live zone whose polygon covers the "
    "asset's point (boundary included), recomputed whenever the asset moves or a zone is "
    "created, reshaped, deleted or restored; null outside every zone."
)

AssetSort = Literal["name", "-name", "kind", "-kind", "external_id", "-external_id",
                    "created_at", "-created_at"]


class AssetKind(StrEnum):
    SENSOR = "sensor"
    METER = "meter"
    SIGNAL_CONTROLLER = "signal_controller"
    WEATHER_STATION = "weather_station"
    CAMERA = "camera"
    VEHICLE = "vehicle"
    OTHER = "other"


class MetricRange(BaseModel):
    """A metric's spec: physical range (readings outside it are flagged by data quality),
    and for meters whether the value is a cumulative register (and where it wraps)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    unit: str = Field(max_length=32, examples=["km/h", "°C", "kWh"])
    min: float | None = None
    max: float | None = None
    cumulative: bool = Field(False, description="A register that only grows (meters); "
                             "consumption is derived, resets are flagged, never negative")
    rollover: float | None = Field(None, gt=0, description="Modulus of a wrapping register")

    @model_validator(mode="after")
    def _ordered(self) -> MetricRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


MetricName = Annotated[str, StringConstraints(pattern=METRIC_PATTERN)]
Metrics = dict[MetricName, MetricRange]

_EXAMPLE: dict[str, Any] = {
    "name": "Times Sq loop detector 1", "kind": "sensor", "external_id": "NYC-LD-0001",
    "metrics": {"vehicle_count": {"unit": "veh/5min", "min": 0, "max": 400},
                "speed": {"unit": "km/h", "min": 0, "max": 160}},
    "properties": {"lane": 2},
    "geometry": {"type": "Point", "coordinates": [-73.9855, 40.7580]},
}


class _AssetWrite(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _refuse_zone_id(cls, data: Any) -> Any:
        # Said plainly rather than as a generic "extra field" error: clients do try this.
        if isinstance(data, dict) and "zone_id" in data:
            raise ValueError(ZONE_ID_DERIVED.replace("`", ""))
        return data


class AssetCreate(_AssetWrite):
    """A new asset at a point. `zone_id` is not accepted: it is derived from the point
    (the smallest live zone covering it)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    name: str = Field(min_length=1, max_length=200)
    kind: AssetKind
    external_id: str | None = Field(None, min_length=1, max_length=128, description=(
        "The device's own id (as it reports telemetry), unique among the tenant's live assets"))
    metrics: Metrics = Field(default_factory=dict, description=(
        "Metric name -> physical range, e.g. `{\"speed\": {\"unit\": \"km/h\", \"min\": 0}}`"))
    properties: dict[str, Any] = Field(default_factory=dict)
    geometry: geo.PointIn


class AssetUpdate(_AssetWrite):
    """Only the fields sent change; a new geometry moves the asset (and re-derives its
    zone); `external_id: null` clears the external id. `zone_id` is not accepted."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"geometry": {"type": "Point", "coordinates": [-73.9690, 40.6602]}},
        {"external_id": None}]})

    name: str | None = Field(None, min_length=1, max_length=200)
    kind: AssetKind | None = None
    external_id: str | None = Field(None, min_length=1, max_length=128)
    metrics: Metrics | None = None
    properties: dict[str, Any] | None = None
    geometry: geo.PointIn | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> AssetUpdate:
        nulls = sorted(k for k in self.model_fields_set
                       if getattr(self, k) is None and k != "external_id")
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null; leave a field out to keep it")
        return self


class AssetSummary(BaseModel):
    """An asset without its geometry: GeoJSON feature properties, audit snapshots."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    kind: str
    external_id: str | None = None
    zone_id: uuid.UUID | None = Field(None, description=ZONE_ID_DERIVED)
    metrics: dict[str, dict[str, Any]]
    properties: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    distance_m: float | None = Field(
        None, description="Metres from the `near` point; only in `near` searches")

    @classmethod
    def of(cls, asset: Any, distance_m: float | None = None) -> Self:
        """From the ORM row, with the distance a `near` search computed."""
        read = cls.model_validate(asset)
        read.distance_m = distance_m
        return read


class AssetRead(AssetSummary):
    geometry: geo.GeometryOut = Field(validation_alias=AliasChoices("geom", "geometry"),
                                      description="GeoJSON Point (RFC 7946, WGS84)")


AssetPage = Page[AssetRead]
AssetFeatureCollection = geo.FeatureCollection[AssetSummary]


class AssetFilters(geo.SpatialQuery):
    """Query parameters of every asset list, a zone's included."""

    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0)
    sort: AssetSort = Field("name", description="Field to sort by; `-` for descending")
    kind: AssetKind | None = None
    q: str | None = Field(None, max_length=200, description="Search name and external id")
    include_deleted: bool = Field(False, description="Include soft-deleted assets")


class AssetQuery(AssetFilters):
    """Query parameters of /assets and /assets.geojson."""

    zone_id: uuid.UUID | None = Field(None, description="Only assets assigned to this zone")
    within: uuid.UUID | None = Field(None, description=(
        "Only assets inside this zone's polygon (boundary included), whichever zone they "
        "are assigned to"))
