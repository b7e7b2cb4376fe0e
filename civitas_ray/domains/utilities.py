"""/api/v1/utilities: energy, water and waste consumption per zone and meter, and anomalies.

Consumption is the derived `<register>_consumption` stream that the meter adapter
(`civitas_ray.feeds.meters`) writes beside each cumulative register at ingest, so it is
never negative. A meter's utility is `properties.utility` (`energy`, `water`, `waste`)
or, failing that, guessed from the register's unit (kWh -> energy, m3/L -> water, kg/t ->
waste).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import text

from civitas_ray.auth.deps import AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.domains.common import FC_SCHEMA, bucket, feature, feature_collection, window
from civitas_ray.errors import ValidationFailed
from civitas_ray.feeds.meters import CONSUMPTION_SUFFIX

router = APIRouter(prefix="/utilities", tags=["utilities"])


class UtilityKind(StrEnum):
    ENERGY = "energy"
    WATER = "water"
    WASTE = "waste"


_UNITS = {UtilityKind.ENERGY: ("wh", "kwh", "mwh", "gwh", "j", "kj", "mj"),
          UtilityKind.WATER: ("m3", "m³", "l", "litre", "liter", "gal", "kl"),
          UtilityKind.WASTE: ("kg", "t", "tonne", "ton")}


def utility_of(properties: dict[str, Any], unit: str | None) -> UtilityKind | None:
    declared = properties.get("utility")
    if isinstance(declared, str) and declared in UtilityKind.__members__.values():
        return UtilityKind(declared)
    u = (unit or "").strip().lower()
    for kind, units in _UNITS.items():
        if u in units:
            return kind
    return None


class ConsumptionPoint(BaseModel):
    ts: datetime
    value: float = Field(ge=0)


class MeterConsumption(BaseModel):
    meter_id: uuid.UUID
    name: str
    external_id: str | None
    zone_id: uuid.UUID | None
    metric: str
    unit: str | None
    total: float = Field(ge=0)
    points: list[ConsumptionPoint]


class ZoneTotal(BaseModel):
    zone_id: uuid.UUID | None
    total: float = Field(ge=0)
    meters: int


class ConsumptionOut(BaseModel):
    kind: UtilityKind
    start: datetime
    end: datetime
    bucket: str
    total: float = Field(ge=0)
    zones: list[ZoneTotal]
    meters: list[MeterConsumption]


async def _meters(ctx: AuthDep, *, kind: UtilityKind | None, zone_id: uuid.UUID | None,
                  meter_id: uuid.UUID | None) -> list[dict[str, Any]]:
    """The tenant's cumulative registers (one row per meter and metric) of the utility."""
    rows = (await ctx.session.execute(text(
        "select a.id, a.name, a.external_id, a.zone_id, a.properties, m.key as metric, "
        "m.value->>'unit' as unit, st_asgeojson(a.geom) as geom from asset a, "
        "jsonb_each(a.metrics) m where a.tenant_id = :t and a.deleted_at is null "
        "and a.kind = 'meter' and coalesce((m.value->>'cumulative')::boolean, false) "
        "and (cast(:z as uuid) is null or a.zone_id = :z) "
        "and (cast(:a as uuid) is null or a.id = :a) order by a.name, m.key"),
        {"t": ctx.principal.tenant_id, "z": zone_id, "a": meter_id})).mappings().all()
    return [dict(r) for r in rows
            if kind is None or utility_of(r["properties"] or {}, r["unit"]) == kind]


@router.get("/consumption", response_model=ConsumptionOut,
            summary="Consumption per meter and zone over a range, in time buckets",
            description="Sums the derived `<register>_consumption` stream of the tenant's "
                        "meters of `kind` (optionally one zone or one meter) per `bucket` "
                        "(`15m`, `1h`, `1d`). Consumption is never negative: register "
                        "resets, rollovers and glitches are handled at ingest (docs/feeds.md). "
                        "The range defaults to the last 7 days.",
            **needs(Perm.TELEMETRY_READ))
async def consumption(
    ctx: AuthDep, kind: UtilityKind, zone_id: uuid.UUID | None = None,
    meter_id: uuid.UUID | None = None, start: datetime | None = None,
    end: datetime | None = None,
    bucket_: Annotated[str, Query(alias="bucket", max_length=8)] = "1h",
) -> ConsumptionOut:
    start, end = window(start, end, default=timedelta(days=7))
    step = bucket(bucket_)
    if (end - start) / step > 20_000:
        raise ValidationFailed("too many buckets: use a larger bucket or a shorter range")
    meters = await _meters(ctx, kind=kind, zone_id=zone_id, meter_id=meter_id)
    series: dict[tuple[uuid.UUID, str], list[ConsumptionPoint]] = defaultdict(list)
    if meters:
        rows = (await ctx.session.execute(text(
            "select asset_id, metric, time_bucket(:b, ts) as ts, "
            "sum(greatest(value, 0)) as value from telemetry "
            "where asset_id = any(:ids) and metric = any(:ms) and ts >= :s and ts < :e "
            "group by 1, 2, 3 order by 1, 2, 3"),
            {"b": step, "ids": list({m["id"] for m in meters}),
             "ms": list({m["metric"] + CONSUMPTION_SUFFIX for m in meters}),
             "s": start, "e": end})).all()
        for r in rows:
            series[(r[0], r[1])].append(ConsumptionPoint(ts=r[2], value=float(r[3])))
    out: list[MeterConsumption] = []
    zones: dict[uuid.UUID | None, list[float]] = defaultdict(list)
    for m in meters:
        pts = series.get((m["id"], m["metric"] + CONSUMPTION_SUFFIX), [])
        total = float(sum(p.value for p in pts))
        zones[m["zone_id"]].append(total)
        out.append(MeterConsumption(
            meter_id=m["id"], name=m["name"], external_id=m["external_id"],
            zone_id=m["zone_id"], metric=m["metric"] + CONSUMPTION_SUFFIX, unit=m["unit"],
            total=total, points=pts))
    return ConsumptionOut(
        kind=kind, start=start, end=end, bucket=bucket_, total=sum(m.total for m in out),
        zones=[ZoneTotal(zone_id=z, total=sum(v), meters=len(v)) for z, v in zones.items()],
        meters=out)


@router.get("/anomalies", summary="Recent anomalies of meters (GeoJSON points)",
            description="Alerts raised on the tenant's meters (threshold, anomaly score, "
                        "data quality such as counter resets) in the range (default: the "
                        "last 7 days), newest first, as a GeoJSON FeatureCollection of the "
                        "meters' locations. Filter by `kind`, `zone_id`, `meter_id`.",
            openapi_extra={**needs(Perm.TELEMETRY_READ)["openapi_extra"], **FC_SCHEMA},
            dependencies=needs(Perm.TELEMETRY_READ)["dependencies"])
async def anomalies(
    ctx: AuthDep, kind: UtilityKind | None = None, zone_id: uuid.UUID | None = None,
    meter_id: uuid.UUID | None = None, start: datetime | None = None,
    end: datetime | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Response:
    start, end = window(start, end, default=timedelta(days=7))
    meters = {m["id"]: m for m in await _meters(ctx, kind=kind, zone_id=zone_id,
                                                meter_id=meter_id)}
    features: list[dict[str, Any]] = []
    if meters:
        rows = (await ctx.session.execute(text(
            "select id, asset_id, zone_id, metric, severity, status, message, value, "
            "threshold, fired_at, resolved_at, incident_id from alert "
            "where tenant_id = :t and asset_id = any(:ids) and fired_at >= :s "
            "and fired_at < :e order by fired_at desc limit :n"),
            {"t": ctx.principal.tenant_id, "ids": list(meters), "s": start, "e": end,
             "n": limit})).mappings().all()
        for r in rows:
            m = meters[r["asset_id"]]
            features.append(feature(m["geom"], {
                "alert_id": str(r["id"]), "meter_id": str(r["asset_id"]),
                "meter_name": m["name"],
                "zone_id": str(r["zone_id"] or m["zone_id"]) if (r["zone_id"] or
                                                                 m["zone_id"]) else None,
                "utility": utility_of(m["properties"] or {}, m["unit"]),
                "metric": r["metric"], "severity": r["severity"], "status": r["status"],
                "message": r["message"], "value": r["value"], "threshold": r["threshold"],
                "fired_at": r["fired_at"].isoformat(),
                "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None,
                "incident_id": str(r["incident_id"]) if r["incident_id"] else None},
                r["id"]))
    return feature_collection(features, start=start.isoformat(), end=end.isoformat())
