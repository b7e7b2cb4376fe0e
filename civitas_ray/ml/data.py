"""Series for training and forecasting, read from the database in a tenant's context.

A model's subject is a stream (`asset_id`, `metric`: the stream's mean per step) or a
zone (`zone_id`, `metric`: the sum over the zone's assets of their mean per step, e.g.
a district's load; metric `incidents`: incidents opened per step, for the incident
model). Covariates (weather) are other streams, one column per metric, averaged per step.
Gaps stay NaN: the models and backtests know how to skip them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import text

from civitas_ray.db.session import tenant_session
from civitas_ray.errors import NotFound, ValidationFailed
from civitas_ray.ml.series import step_of

INCIDENTS = "incidents"


@dataclass(frozen=True, slots=True)
class Subject:
    asset_id: uuid.UUID | None
    zone_id: uuid.UUID | None
    metric: str

    @property
    def key(self) -> str:
        if self.asset_id is not None:
            return f"asset:{self.asset_id}:{self.metric}"
        return f"zone:{self.zone_id}:{self.metric}"

    def as_dict(self) -> dict[str, Any]:
        return {"asset_id": str(self.asset_id) if self.asset_id else None,
                "zone_id": str(self.zone_id) if self.zone_id else None, "metric": self.metric}

    @classmethod
    def of(cls, *, asset_id: uuid.UUID | None, zone_id: uuid.UUID | None,
           metric: str) -> Subject:
        if (asset_id is None) == (zone_id is None):
            raise ValidationFailed("give exactly one of asset_id and zone_id")
        if metric == INCIDENTS and asset_id is not None:
            raise ValidationFailed("incident counts are per zone: give zone_id")
        return cls(asset_id, zone_id, metric)


def _series(rows: list[Any], freq: str, start: datetime, end: datetime) -> pd.Series:
    index = pd.date_range(pd.Timestamp(start).floor(freq), pd.Timestamp(end).ceil(freq),
                          freq=freq, inclusive="left", tz="UTC")
    stamps = pd.to_datetime([r[0] for r in rows], utc=True)  # empty too: a UTC index
    s = pd.Series([float(r[1]) for r in rows], index=stamps, dtype="float64")
    return s.reindex(index)


async def load_target(tenant_id: uuid.UUID, subject: Subject, *, start: datetime,
                      end: datetime, freq: str = "1h") -> pd.Series:
    """The subject's series on the `freq` grid over [start, end) (NaN where no data)."""
    step = step_of(freq).to_pytimedelta()
    params = {"s": start, "e": end, "b": step, "m": subject.metric,
              "a": subject.asset_id, "z": subject.zone_id}
    async with tenant_session(tenant_id) as s:
        if subject.asset_id is not None:
            if await s.scalar(text("select 1 from asset where id = :a and deleted_at is null"),
                              params) is None:
                raise NotFound("asset not found")
            sql = ("select time_bucket(:b, ts), avg(value) from telemetry where asset_id = :a "
                   "and metric = :m and ts >= :s and ts < :e group by 1 order by 1")
        else:
            if await s.scalar(text("select 1 from zone where id = :z and deleted_at is null"),
                              params) is None:
                raise NotFound("zone not found")
            if subject.metric == INCIDENTS:
                sql = ("select time_bucket(:b, opened_at), count(*)::float8 from incident "
                       "where zone_id = :z and opened_at >= :s and opened_at < :e "
                       "group by 1 order by 1")
            else:
                sql = ("select b, sum(v) from (select t.asset_id, time_bucket(:b, t.ts) b, "
                       "avg(t.value) v from telemetry t join asset a on a.id = t.asset_id "
                       "where a.zone_id = :z and a.deleted_at is null and t.metric = :m "
                       "and t.ts >= :s and t.ts < :e group by 1, 2) x group by 1 order by 1")
        rows = (await s.execute(text(sql), params)).all()
    series = _series(list(rows), freq, start, end)
    if subject.metric == INCIDENTS:
        series = series.fillna(0.0)  # no incident in an hour is a zero, not a gap
    return series


async def load_covariates(tenant_id: uuid.UUID, streams: list[tuple[uuid.UUID, str]], *,
                          start: datetime, end: datetime, freq: str = "1h",
                          ) -> pd.DataFrame | None:
    """One column per covariate stream (named by its metric), on the same grid."""
    if not streams:
        return None
    cols: dict[str, pd.Series] = {}
    for asset_id, metric in streams:
        s = await load_target(tenant_id, Subject(asset_id, None, metric), start=start,
                              end=end, freq=freq)
        cols[metric if metric not in cols else f"{metric}_{asset_id.hex[:6]}"] = s
    return pd.DataFrame(cols)


async def data_range(tenant_id: uuid.UUID, subject: Subject) -> tuple[datetime, datetime] | None:
    """First and last time the subject has data (None when it has none)."""
    params = {"a": subject.asset_id, "z": subject.zone_id, "m": subject.metric}
    async with tenant_session(tenant_id) as s:
        if subject.asset_id is not None:
            sql = ("select min(ts), max(ts) from telemetry where asset_id = :a and metric = :m")
        elif subject.metric == INCIDENTS:
            sql = "select min(opened_at), max(opened_at) from incident where zone_id = :z"
        else:
            sql = ("select min(t.ts), max(t.ts) from telemetry t join asset a on a.id = "
                   "t.asset_id where a.zone_id = :z and t.metric = :m")
        row = (await s.execute(text(sql), params)).first()
    if row is None or row[0] is None:
        return None
    return row[0], row[1] + timedelta(microseconds=1)
