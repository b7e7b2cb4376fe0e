"""Zone shapes at the API edge: GeoJSON geometry in and out, list query parameters."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from civitas_ray import geo
from civitas_ray.schemas import Page

CODE_PATTERN = r"^\w[\w.:-]{0,63}$"
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

ZoneSort = Literal["name", "-name", "code", "-code", "kind", "-kind", "created_at",
                   "-created_at"]

_EXAMPLE: dict[str, Any] = {
    "name": "Midtown", "code": "MN-MIDTOWN", "kind": "district",
    "properties": {"borough": "Manhattan"},
    "geometry": {"type": "Polygon", "coordinates": [[
        [-73.9876, 40.7570], [-73.9836, 40.7570], [-73.9836, 40.7600], [-73.9876, 40.7600],
        [-73.9876, 40.7570]]]},
}


class ZoneCreate(BaseModel):
    """A new zone. A bad geometry raises `ValidationFailed` (422, one error per offending
    coordinate or ring) while the model is built, not a pydantic ValidationError."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    name: str = Field(min_length=1, max_length=200)
    code: str = Field(pattern=CODE_PATTERN, description=(
        "Short identifier, unique among the tenant's live zones: letters, digits, `_ . : -`"))
    kind: str = Field("district", pattern=KIND_PATTERN,
                      description="Free classification, e.g. `district`, `borough`, `ward`")
    properties: dict[str, Any] = Field(default_factory=dict)
    geometry: geo.PolygonalIn


class ZoneUpdate(BaseModel):
    """Only the fields sent change; a new geometry re-assigns the assets it affects."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "Midtown Manhattan"}, {"geometry": _EXAMPLE["geometry"]}]})

    name: str | None = Field(None, min_length=1, max_length=200)
    code: str | None = Field(None, pattern=CODE_PATTERN)
    kind: str | None = Field(None, pattern=KIND_PATTERN)
    properties: dict[str, Any] | None = None
    geometry: geo.PolygonalIn | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> ZoneUpdate:
        # Every zone field is required: null cannot mean "clear" here.
        nulls = sorted(k for k in self.model_fields_set if getattr(self, k) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null; leave a field out to keep it")
        return self


class ZoneSummary(BaseModel):
    """A zone without its geometry: GeoJSON feature properties, audit snapshots."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    code: str
    kind: str
    properties: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    distance_m: float | None = Field(
        None, description="Metres from the `near` point (0 inside); only in `near` searches")

    @classmethod
    def of(cls, zone: Any, distance_m: float | None = None) -> Self:
        """From the ORM row, with the distance a `near` search computed."""
        read = cls.model_validate(zone)
        read.distance_m = distance_m
        return read


class ZoneRead(ZoneSummary):
    geometry: geo.GeometryOut = Field(validation_alias=AliasChoices("geom", "geometry"),
                                      description="GeoJSON MultiPolygon (RFC 7946, WGS84)")


ZonePage = Page[ZoneRead]
ZoneFeatureCollection = geo.FeatureCollection[ZoneSummary]


class ZoneQuery(geo.SpatialQuery):
    """Query parameters of the zone lists (JSON and GeoJSON)."""

    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0)
    sort: ZoneSort = Field("name", description="Field to sort by; `-` for descending")
    kind: str | None = Field(None, max_length=32, description="Exact kind")
    q: str | None = Field(None, max_length=200, description="Search name and code")
    include_deleted: bool = Field(False, description="Include soft-deleted zones")
