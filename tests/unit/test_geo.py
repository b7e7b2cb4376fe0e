"""GeoJSON validation and the spatial query parameters, without a database."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from shapely.geometry import MultiPolygon, Point, shape

from civitas_ray import geo
from civitas_ray.errors import ValidationFailed

pytestmark = pytest.mark.unit

SQUARE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
HOLE = [[0.25, 0.25], [0.25, 0.75], [0.75, 0.75], [0.75, 0.25], [0.25, 0.25]]


def polygon(*rings: list[list[Any]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def errors_of(value: Any, allowed: tuple[str, ...] = geo.POLYGONAL,
              **kw: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationFailed) as caught:
        geo.parse_geometry(value, allowed=allowed, **kw)
    assert caught.value.status == 422
    assert caught.value.errors, "every failure names its reasons"
    return caught.value.errors


def test_valid_polygon_with_hole_becomes_an_oriented_multipolygon() -> None:
    geom = geo.parse_geometry(polygon(SQUARE, HOLE), allowed=geo.POLYGONAL)
    multi = geo.as_multipolygon(geom)
    assert isinstance(multi, MultiPolygon) and math.isclose(multi.area, 0.75)
    out = geo.to_geojson(multi)
    json.dumps(out, allow_nan=False)  # plain lists and finite numbers only
    assert out["type"] == "MultiPolygon"
    ring = out["coordinates"][0][0]
    # RFC 7946: exterior rings anticlockwise (positive signed area), holes clockwise.
    signed = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring))
    assert signed > 0
    assert shape(out).equals(shape(polygon(SQUARE, HOLE)))


def test_valid_multipolygon_and_point() -> None:
    far = [[[5.0, 5.0], [6.0, 5.0], [6.0, 6.0], [5.0, 5.0]]]
    multi = geo.parse_geometry({"type": "MultiPolygon", "coordinates": [[SQUARE], far]},
                               allowed=geo.POLYGONAL)
    assert isinstance(multi, MultiPolygon) and len(multi.geoms) == 2
    point = geo.parse_geometry({"type": "Point", "coordinates": [-73.9855, 40.758, 12.0]},
                               allowed=geo.POINT)
    assert isinstance(point, Point) and not point.has_z  # the altitude is dropped
    assert geo.to_geojson(point) == {"type": "Point", "coordinates": [-73.9855, 40.758]}


def test_wrong_type_and_not_an_object() -> None:
    [err] = errors_of({"type": "LineString", "coordinates": [[0, 0], [1, 1]]})
    assert err["loc"] == ["geometry", "type"] and err["type"] == "geometry_type"
    assert "Polygon or MultiPolygon" in err["msg"] and "LineString" in err["msg"]
    [err] = errors_of({"type": "Polygon", "coordinates": [SQUARE]}, allowed=geo.POINT)
    assert err["type"] == "geometry_type"
    [err] = errors_of({"type": "Feature", "geometry": polygon(SQUARE), "properties": {}})
    assert "'geometry' member" in err["msg"]
    [err] = errors_of("POLYGON((0 0, 1 0, 1 1, 0 0))")
    assert err["loc"] == ["geometry"]
    [err] = errors_of({"type": "Polygon"})
    assert err["loc"] == ["geometry", "coordinates"]


def test_unclosed_ring() -> None:
    [err] = errors_of(polygon([*SQUARE[:-1], [0.0, 0.5]]))
    assert err["type"] == "ring_not_closed"
    assert err["loc"] == ["geometry", "coordinates", 0]


def test_ring_with_too_few_positions() -> None:
    [err] = errors_of(polygon([[0, 0], [1, 0], [0, 0]]))
    assert err["type"] == "ring_too_short" and "at least 4" in err["msg"]


def test_bow_tie_self_intersection_is_explained() -> None:
    bow_tie = [[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]
    [err] = errors_of(polygon(bow_tie), loc=("body", "geometry"))
    assert err["type"] == "geometry_invalid"
    assert err["loc"] == ["body", "geometry"]
    assert "Self-intersection" in err["msg"]


def test_out_of_range_coordinates_point_at_the_culprit() -> None:
    ring = [[0, 0], [181, 0], [1, 95], [0, 0]]
    errs = errors_of(polygon(ring))
    assert {(tuple(e["loc"]), e["type"]) for e in errs} == {
        (("geometry", "coordinates", 0, 1, 0), "coordinate_out_of_range"),
        (("geometry", "coordinates", 0, 2, 1), "coordinate_out_of_range"),
    }
    assert any("longitude 181" in e["msg"] for e in errs)
    [err] = errors_of({"type": "Point", "coordinates": [10, -90.5]}, allowed=geo.POINT)
    assert err["loc"] == ["geometry", "coordinates", 1] and "latitude" in err["msg"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers(bad: float) -> None:
    [err] = errors_of({"type": "Point", "coordinates": [bad, 1.0]}, allowed=geo.POINT)
    assert err["type"] == "coordinate_not_finite"
    assert err["loc"] == ["geometry", "coordinates", 0]


def test_non_numbers_and_bad_positions() -> None:
    [err] = errors_of({"type": "Point", "coordinates": ["1", 2]}, allowed=geo.POINT)
    assert err["type"] == "coordinate_type"
    [err] = errors_of({"type": "Point", "coordinates": [True, 2]}, allowed=geo.POINT)
    assert err["type"] == "coordinate_type"
    [err] = errors_of({"type": "Point", "coordinates": [1]}, allowed=geo.POINT)
    assert err["type"] == "position_shape"


def test_too_many_vertices() -> None:
    [err] = errors_of(polygon(SQUARE), max_vertices=4)
    assert err["type"] == "geometry_too_large" and "4 vertices" in err["msg"]
    geo.parse_geometry(polygon(SQUARE), allowed=geo.POLYGONAL, max_vertices=5)


def test_empty_geometries() -> None:
    for value, allowed in (({"type": "Polygon", "coordinates": []}, geo.POLYGONAL),
                           ({"type": "MultiPolygon", "coordinates": []}, geo.POLYGONAL),
                           ({"type": "Point", "coordinates": []}, geo.POINT)):
        [err] = errors_of(value, allowed)
        assert err["type"] == "geometry_empty"


def test_errors_are_capped() -> None:
    ring = [[500, 500]] * 100
    errs = errors_of(polygon(ring))
    assert len(errs) == geo.MAX_REPORTED_ERRORS


def test_bbox_and_near_parsing() -> None:
    assert geo.parse_bbox("-74.1, 40.5,-73.7,40.9") == geo.BBox(-74.1, 40.5, -73.7, 40.9)
    for bad in ("1,2,3", "a,b,c,d", "0,0,200,1", "1,1,0,0", "nan,0,1,1"):
        with pytest.raises(ValueError, match="bbox"):
            geo.parse_bbox(bad)
    assert geo.parse_lat_lon("40.758,-73.9855") == geo.LonLat(-73.9855, 40.758)
    with pytest.raises(ValueError, match="latitude"):
        geo.parse_lat_lon("-122.4194,37.7749")  # longitude first: a latitude out of range


def test_near_envelope_holds_the_circle() -> None:
    near = geo.Near(lon=-73.9855, lat=40.758, radius_m=5000)
    box = near.envelope()
    assert box is not None
    # 5 km is about 0.045 degrees of latitude and 0.059 of longitude at 40.76 N.
    assert box.max_lat - near.lat > 0.045 and near.lon - box.min_lon > 0.059
    assert geo.Near(lon=179.99, lat=0, radius_m=5000).envelope() is None
    assert geo.Near(lon=0, lat=89.5, radius_m=5000).envelope() is None
