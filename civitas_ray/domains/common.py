"""Shared pieces of the domain APIs: time windows, buckets and GeoJSON feature collections."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi.responses import Response

from civitas_ray.errors import ValidationFailed

GEOJSON = "application/geo+json"
_BUCKET_RE = re.compile(r"^(\d{1,4})(m|h|d)$")
_UNIT = {"m": 60, "h": 3600, "d": 86400}
MAX_WINDOW = timedelta(days=400)


def window(start: datetime | None, end: datetime | None, *,
           default: timedelta) -> tuple[datetime, datetime]:
    """A checked [start, end) range; the end defaults to now, the start to end - default."""
    end = end or datetime.now(UTC)
    start = start or end - default
    if start.tzinfo is None or end.tzinfo is None:
        raise ValidationFailed("start and end need a UTC offset")
    if start >= end:
        raise ValidationFailed("start must be before end")
    if end - start > MAX_WINDOW:
        raise ValidationFailed(f"the range may span at most {MAX_WINDOW.days} days")
    return start, end


def bucket(raw: str) -> timedelta:
    m = _BUCKET_RE.match(raw)
    if not m or int(m.group(1)) == 0:
        raise ValidationFailed("bucket must look like 15m, 1h or 1d", errors=[
            {"loc": ["query", "bucket"], "msg": "invalid bucket", "type": "value_error"}])
    return timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


def feature(geometry: str | dict[str, Any] | None, properties: dict[str, Any],
            fid: Any = None) -> dict[str, Any]:
    geom = orjson.loads(geometry) if isinstance(geometry, str) else geometry
    out: dict[str, Any] = {"type": "Feature", "geometry": geom, "properties": properties}
    if fid is not None:
        out["id"] = str(fid)
    return out


def feature_collection(features: list[dict[str, Any]], **meta: Any) -> Response:
    """An RFC 7946 FeatureCollection; `meta` goes beside `features` (foreign members)."""
    body = {"type": "FeatureCollection", "features": features, **meta}
    return Response(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), media_type=GEOJSON)


FC_SCHEMA: dict[str, Any] = {"responses": {"200": {"content": {GEOJSON: {"schema": {
    "type": "object", "required": ["type", "features"],
    "properties": {"type": {"const": "FeatureCollection"},
                   "features": {"type": "array", "items": {"type": "object"}}}}}}}}}
