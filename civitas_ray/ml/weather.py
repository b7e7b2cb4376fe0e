"""Weather stations as forecast covariates: the stations that cover a zone or a point.

`weather_covariates` answers the `covariates=[{asset_id, metric}]` a training request
(`TrainIn`) accepts, and `weather_frame` the hourly means of those streams, for
analysis and for features built outside the registry.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import text

from civitas_ray.db.session import tenant_session

STATION_KIND = "weather_station"


async def weather_covariates(tenant_id: uuid.UUID, *, zone_id: uuid.UUID | None = None,
                             lon: float | None = None, lat: float | None = None,
                             max_stations: int = 1) -> list[dict[str, Any]]:
    """`[{asset_id, metric}]` of the stations in the zone, else the nearest to the point
    (or to the zone), every metric they declare; empty when the tenant has no station."""
    async with tenant_session(tenant_id) as s:
        rows = (await s.execute(text(
            "with target as (select coalesce("
            "  case when cast(:lon as float8) is not null then "
            "    st_setsrid(st_makepoint(:lon, :lat), 4326) end, "
            "  (select st_pointonsurface(geom) from zone where id = :z and tenant_id = :t)) "
            "  as g) "
            "select a.id, a.metrics from asset a, target where a.tenant_id = :t "
            "and a.kind = :k and a.deleted_at is null "
            "order by (cast(:z as uuid) is not null and a.zone_id = :z) desc, "
            "a.geom <-> target.g nulls last, a.name limit :n"),
            {"t": tenant_id, "z": zone_id, "lon": lon, "lat": lat, "k": STATION_KIND,
             "n": max_stations})).all()
    return [{"asset_id": r[0], "metric": m} for r in rows for m in sorted(r[1] or {})]


async def weather_frame(tenant_id: uuid.UUID, covariates: list[dict[str, Any]], *,
                        start: datetime, end: datetime, freq: str = "1h") -> pd.DataFrame:
    """Hourly (or `freq`) means of the covariate streams, one column per metric (stations
    averaged), on a regular UTC index from start to end; gaps stay NaN."""
    index = pd.date_range(start, end, freq=freq, inclusive="left", tz="UTC")
    if not covariates:
        return pd.DataFrame(index=index)
    async with tenant_session(tenant_id) as s:
        rows = (await s.execute(text(
            "select time_bucket(cast(:b as interval), ts) as ts, metric, avg(value) "
            "from telemetry where asset_id = any(:ids) and metric = any(:ms) "
            "and ts >= :s and ts < :e group by 1, 2"),
            {"b": pd.Timedelta(freq).to_pytimedelta(),
             "ids": list({c["asset_id"] for c in covariates}),
             "ms": list({c["metric"] for c in covariates}), "s": start, "e": end})).all()
    if not rows:
        return pd.DataFrame(index=index)
    frame = pd.DataFrame(rows, columns=["ts", "metric", "value"])
    wide = frame.pivot_table(index="ts", columns="metric", values="value", aggfunc="mean")
    wide.index = pd.to_datetime(wide.index, utc=True)
    return wide.reindex(index)
