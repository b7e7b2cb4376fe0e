"""GeoJSON at the API edge: strict validation in, valid RFC 7946 out, spatial query params.

Validation walks the raw JSON before shapely sees it, so each problem is reported
against the exact coordinate that causes it (`loc`), the way Pydantic reports fields;
only then does shapely judge the geometry as a whole (self-intersections and the like).
Nothing here touches the database: SQL helpers only build expressions.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

import shapely
from geoalchemy2.elements import WKBElement
from geoalchemy2.shape import to_shape
from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError
from shapely.geometry import MultiPolygon, Point, Polygon, mapping
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity
from sqlalchemy import ColumnElement, Float, and_, func
from sqlalchemy.orm import InstrumentedAttribute
from starlette.responses import JSONResponse

from civitas_ray.config import get_settings
from civitas_ray.errors import ValidationFailed

SRID = 4326
GEOJSON_MEDIA_TYPE = "application/geo+json"
POLYGONAL = ("Polygon", "MultiPolygon")
POINT = ("Point",)
MAX_REPORTED_ERRORS = 20
# One degree of latitude is at least this long on the WGS84 ellipsoid (at the equator).
_MIN_METRES_PER_DEGREE = 110_574.0

Loc = tuple[str | int, ...]
GeomColumn = ColumnElement[Any] | InstrumentedAttribute[Any]


class _TooManyErrors(Exception):
    """Stops the walk once enough problems are known; the client gets the first ones."""


class _Collector:
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def add(self, loc: Loc, msg: str, type_: str) -> None:
        self.errors.append({"loc": list(loc), "msg": msg, "type": type_})
        if len(self.errors) >= MAX_REPORTED_ERRORS:
            raise _TooManyErrors

    def fail(self, detail: str) -> ValidationFailed:
        first = self.errors[0]["msg"] if self.errors else detail
        return ValidationFailed(f"{detail}: {first}", errors=self.errors)


def _is_number(value: Any) -> bool:
    # bool is an int in Python but never a coordinate.
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Walker:
    """Checks GeoJSON coordinate arrays and counts vertices against the limit."""

    def __init__(self, errors: _Collector, max_vertices: int, root: Loc) -> None:
        self.errors = errors
        self.max_vertices = max_vertices
        self.root = root
        self.vertices = 0

    def position(self, value: Any, loc: Loc) -> tuple[float, float] | None:
        self.vertices += 1
        if self.vertices > self.max_vertices:
            self.errors.errors.append({
                "loc": list(self.root), "type": "geometry_too_large",
                "msg": f"more than {self.max_vertices} vertices (the configured maximum)"})
            raise _TooManyErrors
        if not isinstance(value, list | tuple) or len(value) not in (2, 3):
            self.errors.add(loc, "a position must be [longitude, latitude] or "
                                 "[longitude, latitude, altitude]", "position_shape")
            return None
        ok = True
        for i, (name, bound) in enumerate((("longitude", 180.0), ("latitude", 90.0))):
            x = value[i]
            if not _is_number(x):
                self.errors.add((*loc, i), f"{name} must be a number", "coordinate_type")
                ok = False
            elif not math.isfinite(x):
                self.errors.add((*loc, i), f"{name} must be a finite number, not {x}",
                                "coordinate_not_finite")
                ok = False
            elif not -bound <= x <= bound:
                self.errors.add((*loc, i), f"{name} {x} is outside [-{bound:g}, {bound:g}]",
                                "coordinate_out_of_range")
                ok = False
        if len(value) == 3 and not (_is_number(value[2]) and math.isfinite(value[2])):
            self.errors.add((*loc, 2), "altitude must be a finite number",
                            "coordinate_not_finite")
            ok = False
        return (float(value[0]), float(value[1])) if ok else None

    def ring(self, value: Any, loc: Loc) -> list[tuple[float, float]] | None:
        if not isinstance(value, list | tuple):
            self.errors.add(loc, "a linear ring must be an array of positions", "ring_shape")
            return None
        positions = [self.position(p, (*loc, i)) for i, p in enumerate(value)]
        if len(value) < 4:
            self.errors.add(loc, f"a linear ring needs at least 4 positions, got {len(value)}",
                            "ring_too_short")
            return None
        if any(p is None for p in positions):
            return None
        points = [p for p in positions if p is not None]
        if points[0] != points[-1]:
            self.errors.add(loc, "the linear ring is not closed: its first and last positions "
                                 "differ", "ring_not_closed")
            return None
        return points

    def polygon(self, value: Any, loc: Loc) -> Polygon | None:
        if not isinstance(value, list | tuple):
            self.errors.add(loc, "a polygon must be an array of linear rings", "polygon_shape")
            return None
        if not value:
            self.errors.add(loc, "the polygon is empty: it has no rings", "geometry_empty")
            return None
        rings = [self.ring(r, (*loc, i)) for i, r in enumerate(value)]
        if any(r is None for r in rings):
            return None
        shell, *holes = (r for r in rings if r is not None)
        return Polygon(shell, holes)


def parse_geometry(value: Any, *, allowed: Collection[str], loc: Loc = ("geometry",),
                   max_vertices: int | None = None) -> BaseGeometry:
    """A checked shapely geometry from a GeoJSON geometry object, or ValidationFailed.

    Altitudes are accepted and dropped: zones and assets are stored in 2D.
    """
    limit = max_vertices if max_vertices is not None else get_settings().max_geometry_vertices
    errors = _Collector()
    walker = _Walker(errors, limit, loc)
    geom: BaseGeometry | None = None
    with contextlib.suppress(_TooManyErrors):
        geom = _walk(value, allowed=allowed, loc=loc, walker=walker, errors=errors)
    if errors.errors or geom is None:
        raise errors.fail("The geometry is not valid GeoJSON")
    if geom.is_empty:
        errors.add(loc, "the geometry is empty", "geometry_empty")
        raise errors.fail("The geometry is not valid GeoJSON")
    if not geom.is_valid:
        errors.add(loc, f"invalid geometry: {explain_validity(geom)}", "geometry_invalid")
        raise errors.fail("The geometry is not valid")
    return geom


def _walk(value: Any, *, allowed: Collection[str], loc: Loc, walker: _Walker,
          errors: _Collector) -> BaseGeometry | None:
    expected = " or ".join(allowed)
    if not isinstance(value, dict):
        errors.add(loc, f"must be a GeoJSON geometry object ({expected})", "geometry_type")
        return None
    kind = value.get("type")
    if kind in ("Feature", "FeatureCollection"):
        errors.add((*loc, "type"), f"expected a geometry object ({expected}), not a {kind}: "
                                    "send the feature's 'geometry' member", "geometry_type")
        return None
    if kind not in allowed:
        errors.add((*loc, "type"), f"must be {expected}, got {kind!r}", "geometry_type")
        return None
    coords = value.get("coordinates")
    cloc = (*loc, "coordinates")
    if not isinstance(coords, list | tuple):
        errors.add(cloc, "coordinates must be an array", "coordinates_missing")
        return None
    if kind == "Point":
        if not coords:
            errors.add(cloc, "the point is empty", "geometry_empty")
            return None
        xy = walker.position(coords, cloc)
        return Point(xy) if xy else None
    if kind == "Polygon":
        return walker.polygon(coords, cloc)
    if not coords:
        errors.add(cloc, "the multipolygon is empty: it has no polygons", "geometry_empty")
        return None
    parts = [walker.polygon(p, (*cloc, i)) for i, p in enumerate(coords)]
    if any(p is None for p in parts):
        return None
    return MultiPolygon([p for p in parts if p is not None])


def as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """Zones are stored as MultiPolygon whatever they came in as, exteriors anticlockwise."""
    if isinstance(geom, Polygon):
        geom = MultiPolygon([geom])
    if not isinstance(geom, MultiPolygon):
        raise TypeError(f"expected a polygonal geometry, got {geom.geom_type}")
    return shapely.orient_polygons(geom)


def _listify(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_listify(v) for v in value]
    return value


def to_geojson(value: WKBElement | BaseGeometry | dict[str, Any]) -> dict[str, Any]:
    """An RFC 7946 geometry object: plain lists, right-hand-rule rings, full precision."""
    if isinstance(value, dict):
        return value
    geom = to_shape(value) if isinstance(value, WKBElement) else value
    if isinstance(geom, Polygon | MultiPolygon):
        geom = shapely.orient_polygons(geom)
    return {key: _listify(member) for key, member in mapping(geom).items()}


def summary(value: WKBElement | BaseGeometry) -> dict[str, Any]:
    """What the audit trail keeps of a large geometry: its type, size, extent and digest."""
    geom = to_shape(value) if isinstance(value, WKBElement) else value
    return {"type": geom.geom_type, "vertices": int(shapely.get_num_coordinates(geom)),
            "bbox": [round(c, 7) for c in geom.bounds],
            "wkb_sha256": hashlib.sha256(shapely.to_wkb(geom)).hexdigest()}


# ---- pydantic field types: validate at the edge, keep plain GeoJSON in the model ----

def _loc(info: ValidationInfo) -> Loc:
    # These types sit on request bodies; "body" matches FastAPI's own error locations.
    return ("body", info.field_name or "geometry")


def _polygonal(value: Any, info: ValidationInfo) -> dict[str, Any]:
    return to_geojson(as_multipolygon(parse_geometry(value, allowed=POLYGONAL, loc=_loc(info))))


def _point(value: Any, info: ValidationInfo) -> dict[str, Any]:
    return to_geojson(parse_geometry(value, allowed=POINT, loc=_loc(info)))


def _schema(kinds: Sequence[str], example: dict[str, Any], description: str) -> WithJsonSchema:
    return WithJsonSchema({
        "type": "object", "title": " or ".join(kinds), "description": description,
        "required": ["type", "coordinates"],
        "properties": {"type": {"type": "string", "enum": list(kinds)},
                       "coordinates": {"type": "array", "items": {}}},
        "examples": [example],
    })


_POLYGON_EXAMPLE = {"type": "Polygon", "coordinates": [[
    [-73.9876, 40.7570], [-73.9836, 40.7570], [-73.9836, 40.7600], [-73.9876, 40.7600],
    [-73.9876, 40.7570]]]}
_POINT_EXAMPLE = {"type": "Point", "coordinates": [-73.9855, 40.7580]}

PolygonalIn = Annotated[dict[str, Any], BeforeValidator(_polygonal), _schema(
    POLYGONAL, _POLYGON_EXAMPLE,
    "GeoJSON Polygon or MultiPolygon in WGS84 (longitude, latitude). Rings must be closed, "
    "have at least 4 positions and not self-intersect; the vertex count is capped by "
    "`max_geometry_vertices`. Stored (and returned) as a MultiPolygon.")]
PointIn = Annotated[dict[str, Any], BeforeValidator(_point), _schema(
    POINT, _POINT_EXAMPLE, "GeoJSON Point in WGS84: [longitude, latitude] (an altitude is "
                           "accepted and dropped).")]
GeometryOut = Annotated[dict[str, Any], BeforeValidator(to_geojson), WithJsonSchema({
    "type": "object", "description": "GeoJSON geometry object (RFC 7946), WGS84",
    "required": ["type", "coordinates"],
    "properties": {"type": {"type": "string"}, "coordinates": {"type": "array", "items": {}}},
    "examples": [_POINT_EXAMPLE]})]


# ---- spatial list filters: ?bbox=, ?near= & radius= ----

@dataclass(frozen=True, slots=True)
class BBox:
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float


@dataclass(frozen=True, slots=True)
class LonLat:
    # A dataclass, not a tuple: FastAPI reads tuple-typed query fields as repeated params.
    lon: float
    lat: float


@dataclass(frozen=True, slots=True)
class Near:
    """A circle on the ellipsoid: rows within `radius_m` metres of (lon, lat)."""

    lon: float
    lat: float
    radius_m: float

    def envelope(self) -> BBox | None:
        """A box in degrees that surely holds the circle (lets the GiST index prefilter);
        None near the poles or the antimeridian, where a box would not be simple."""
        dlat = self.radius_m / _MIN_METRES_PER_DEGREE * 1.01
        top = abs(self.lat) + dlat
        if top >= 89.0:
            return None
        dlon = dlat / math.cos(math.radians(top))
        if abs(self.lon) + dlon >= 180.0:
            return None
        return BBox(self.lon - dlon, self.lat - dlat, self.lon + dlon, self.lat + dlat)


def _numbers(raw: str, count: int, what: str) -> list[float]:
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) != count:
        raise ValueError(f"{what}: expected {count} comma-separated numbers, got {len(parts)}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what}: every part must be a number") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what}: numbers must be finite")
    return values


def _check_lon_lat(lon: float, lat: float, what: str) -> None:
    if not -180.0 <= lon <= 180.0:
        raise ValueError(f"{what}: longitude {lon} is outside [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise ValueError(f"{what}: latitude {lat} is outside [-90, 90]")


def parse_bbox(raw: str) -> BBox:
    """`minLon,minLat,maxLon,maxLat`; boxes across the antimeridian are not supported."""
    min_lon, min_lat, max_lon, max_lat = _numbers(raw, 4, "bbox")
    _check_lon_lat(min_lon, min_lat, "bbox")
    _check_lon_lat(max_lon, max_lat, "bbox")
    if min_lon > max_lon or min_lat > max_lat:
        raise ValueError("bbox: the minimum must not exceed the maximum "
                         "(order: minLon,minLat,maxLon,maxLat)")
    return BBox(min_lon, min_lat, max_lon, max_lat)


def parse_lat_lon(raw: str) -> LonLat:
    """`lat,lon`: latitude first, as people and map apps write a place."""
    lat, lon = _numbers(raw, 2, "near")
    _check_lon_lat(lon, lat, "near")
    return LonLat(lon, lat)


def _query_param(parse: Any, type_: str) -> BeforeValidator:
    def run(value: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value
        try:
            return parse(value)
        except ValueError as exc:
            raise PydanticCustomError(type_, str(exc)) from None

    return BeforeValidator(run)


BBoxQuery = Annotated[BBox | None, _query_param(parse_bbox, "bbox_invalid"), WithJsonSchema({
    "type": "string", "pattern": r"^[^,]+,[^,]+,[^,]+,[^,]+$",
    "examples": ["-74.02,40.70,-73.93,40.80"]})]
LatLonQuery = Annotated[LonLat | None, _query_param(parse_lat_lon, "near_invalid"),
                        WithJsonSchema({"type": "string", "pattern": r"^[^,]+,[^,]+$",
                                        "examples": ["40.7580,-73.9855"]})]


class SpatialQuery(BaseModel):
    """The spatial filters every geographic list shares (query parameters)."""

    bbox: BBoxQuery = Field(None, description=(
        "Only rows whose geometry intersects this box: `minLon,minLat,maxLon,maxLat` (WGS84)"))
    near: LatLonQuery = Field(None, description=(
        "Only rows within `radius` metres of this point, **latitude first**: `lat,lon`. "
        "Results are then sorted by distance (the `sort` key breaks ties) and each item "
        "carries `distance_m`."))
    radius: float = Field(1000.0, gt=0, le=100_000, description="Metres, with `near`")

    def near_circle(self) -> Near | None:
        return Near(self.near.lon, self.near.lat, self.radius) if self.near else None


# ---- the same filters as SQL expressions (PostGIS) ----

def sql_point(lon: float, lat: float) -> ColumnElement[Any]:
    return func.ST_SetSRID(func.ST_MakePoint(float(lon), float(lat)), SRID)


def sql_envelope(box: BBox) -> ColumnElement[Any]:
    return func.ST_MakeEnvelope(float(box.min_lon), float(box.min_lat), float(box.max_lon),
                                float(box.max_lat), SRID)


def intersects_bbox(column: GeomColumn, box: BBox) -> ColumnElement[bool]:
    return func.ST_Intersects(column, sql_envelope(box))


def within_circle(column: GeomColumn, near: Near) -> ColumnElement[bool]:
    """Exact on the ellipsoid (geography); the degree box in front lets the index work."""
    exact = func.ST_DWithin(func.geography(column), func.geography(sql_point(near.lon, near.lat)),
                            near.radius_m)
    box = near.envelope()
    return exact if box is None else and_(column.op("&&")(sql_envelope(box)), exact)


def distance_m(column: GeomColumn, near: Near) -> ColumnElement[float]:
    return func.ST_Distance(func.geography(column),
                            func.geography(sql_point(near.lon, near.lat)), type_=Float)


# ---- GeoJSON FeatureCollection output ----

class GeoJSONResponse(JSONResponse):
    media_type = GEOJSON_MEDIA_TYPE


P = TypeVar("P", bound=BaseModel)


class Feature(BaseModel, Generic[P]):
    type: Literal["Feature"] = "Feature"
    id: uuid.UUID
    geometry: dict[str, Any]
    properties: P


class FeatureCollection(BaseModel, Generic[P]):
    """A page of a list as RFC 7946 GeoJSON; paging fields are foreign members."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature[P]]
    total: int
    limit: int
    offset: int
    next_offset: int | None = None


def feature_collection(items: Sequence[tuple[uuid.UUID, dict[str, Any], BaseModel]], *,
                       total: int, limit: int, offset: int) -> dict[str, Any]:
    """Each item is (id, GeoJSON geometry, properties)."""
    nxt = offset + limit if offset + limit < total else None
    return {"type": "FeatureCollection",
            "features": [{"type": "Feature", "id": id_, "geometry": geometry,
                          "properties": props} for id_, geometry, props in items],
            "total": total, "limit": limit, "offset": offset, "next_offset": nxt}
