"""/api/v1/mobility/traffic: flow and congestion per road sensor or zone, as GeoJSON.

Flow is vehicles per hour: the sum of `vehicle_count` (or `volume`) readings over the
window divided by its hours. Congestion is `1 - speed / free-flow speed` when the road
reports `speed` (free flow: `properties.free_flow_speed`, else the metric's `max`, else
the 85th percentile of the window), otherwise the mean `occupancy` as a share (percent
values are divided by 100). Levels: free < 0.3 <= moderate < 0.6 <= heavy < 0.8 <= severe.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import text

from civitas_ray.auth.deps import AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.domains.common import FC_SCHEMA, feature, feature_collection, window

router = APIRouter(prefix="/mobility", tags=["mobility"])

FLOW_METRICS = ("vehicle_count", "volume")
TRAFFIC_METRICS = (*FLOW_METRICS, "speed", "occupancy")


class Grouping(StrEnum):
    SEGMENT = "segment"
    ZONE = "zone"


def level(congestion: float | None) -> str | None:
    if congestion is None:
        return None
    return ("free" if congestion < 0.3 else "moderate" if congestion < 0.6
            else "heavy" if congestion < 0.8 else "severe")


def congestion_of(*, speed: float | None, free_flow: float | None,
                  occupancy: float | None) -> float | None:
    """A 0..1 congestion index from speed against free flow, else occupancy."""
    if speed is not None and free_flow and free_flow > 0:
        return min(1.0, max(0.0, 1.0 - speed / free_flow))
    if occupancy is not None:
        share = occupancy / 100.0 if occupancy > 1.0 else occupancy
        return min(1.0, max(0.0, share))
    return None


@router.get("/traffic", summary="Traffic flow and congestion (GeoJSON)",
            description="Per road sensor (`group=segment`, points) or per zone "
                        "(`group=zone`, zone polygons) over the window (default: the last "
                        "hour): `flow_vph` (vehicles per hour from `vehicle_count`/`volume`), "
                        "`mean_speed`, `free_flow_speed`, `occupancy`, `congestion` (0..1) "
                        "and `level`. See docs/feeds.md for the rules.",
            openapi_extra={**needs(Perm.TELEMETRY_READ)["openapi_extra"], **FC_SCHEMA},
            dependencies=needs(Perm.TELEMETRY_READ)["dependencies"])
async def traffic(
    ctx: AuthDep, zone_id: uuid.UUID | None = None, start: datetime | None = None,
    end: datetime | None = None, group: Grouping = Grouping.SEGMENT,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Response:
    start, end = window(start, end, default=timedelta(hours=1))
    hours = (end - start).total_seconds() / 3600.0
    rows = (await ctx.session.execute(text(
        "with roads as (select a.id, a.name, a.external_id, a.zone_id, a.properties, "
        "a.metrics, st_asgeojson(a.geom) as geom from asset a where a.tenant_id = :t "
        "and a.deleted_at is null and a.metrics ?| cast(:tm as text[]) "
        "and (cast(:z as uuid) is null or a.zone_id = :z) order by a.name limit :n) "
        "select r.id, r.name, r.external_id, r.zone_id, r.properties, r.metrics, r.geom, "
        "s.metric, s.total, s.mean, s.p85, s.n from roads r left join lateral ("
        "select metric, sum(value) as total, avg(value) as mean, "
        "percentile_cont(0.85) within group (order by value) as p85, count(*) as n "
        "from telemetry where asset_id = r.id and metric = any(:tm) and ts >= :s "
        "and ts < :e group by metric) s on true"),
        {"t": ctx.principal.tenant_id, "tm": list(TRAFFIC_METRICS), "z": zone_id,
         "s": start, "e": end, "n": limit})).mappings().all()
    roads: dict[uuid.UUID, dict[str, Any]] = {}
    for r in rows:
        road = roads.setdefault(r["id"], {"row": r, "stats": {}})
        if r["metric"] is not None:
            road["stats"][r["metric"]] = r
    segments: list[dict[str, Any]] = []
    for rid, road in roads.items():
        r, st = road["row"], road["stats"]
        flow_m = next((m for m in FLOW_METRICS if m in st), None)
        flow = float(st[flow_m]["total"]) / hours if flow_m else None
        speed = float(st["speed"]["mean"]) if "speed" in st else None
        props, spec = r["properties"] or {}, (r["metrics"] or {}).get("speed") or {}
        free_flow = props.get("free_flow_speed") or spec.get("max") or (
            float(st["speed"]["p85"]) if "speed" in st else None)
        occ = float(st["occupancy"]["mean"]) if "occupancy" in st else None
        cong = congestion_of(speed=speed, free_flow=free_flow, occupancy=occ)
        segments.append({"id": rid, "geom": r["geom"], "zone_id": r["zone_id"], "props": {
            "asset_id": str(rid), "name": r["name"], "external_id": r["external_id"],
            "zone_id": str(r["zone_id"]) if r["zone_id"] else None,
            "flow_vph": flow, "mean_speed": speed,
            "free_flow_speed": float(free_flow) if free_flow else None, "occupancy": occ,
            "congestion": cong, "level": level(cong),
            "readings": int(sum(int(s["n"]) for s in st.values()))}})
    meta = {"start": start.isoformat(), "end": end.isoformat(), "group": group.value}
    if group == Grouping.SEGMENT:
        return feature_collection([feature(s["geom"], s["props"], s["id"]) for s in segments],
                                  **meta)
    by_zone: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for s in segments:
        if s["zone_id"] is not None:
            by_zone[s["zone_id"]].append(s["props"])
    zones = (await ctx.session.execute(text(
        "select id, name, code, st_asgeojson(geom) as geom from zone where tenant_id = :t "
        "and id = any(:ids) and deleted_at is null order by name"),
        {"t": ctx.principal.tenant_id, "ids": list(by_zone)})).mappings().all()
    features = []
    for z in zones:
        members = by_zone[z["id"]]
        flows = [p["flow_vph"] for p in members if p["flow_vph"] is not None]
        congs = [p["congestion"] for p in members if p["congestion"] is not None]
        cong = sum(congs) / len(congs) if congs else None
        features.append(feature(z["geom"], {
            "zone_id": str(z["id"]), "name": z["name"], "code": z["code"],
            "segments": len(members), "flow_vph": sum(flows) if flows else None,
            "congestion": cong, "level": level(cong)}, z["id"]))
    return feature_collection(features, **meta)
