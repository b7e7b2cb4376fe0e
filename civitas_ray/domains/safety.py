"""/api/v1/safety: public-safety incidents per zone (GeoJSON) and the risk of the next hours.

Risk per zone is the incident model's forecast when the zone has one in production
(`source: "model"`; expected incidents per hour lambda read as P(at least one) =
1 - exp(-lambda)), else the zone's historical base rate over the look-back window
(`source: "base_rate"`), else nothing known (`source: "none"`).
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import text

from civitas_ray.auth.deps import AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.domains.common import FC_SCHEMA, feature, feature_collection, window
from civitas_ray.errors import CivitasError
from civitas_ray.incidents.schemas import IncidentDomain, IncidentStatus

router = APIRouter(prefix="/safety", tags=["safety"])
log = logging.getLogger(__name__)

_FC = {"openapi_extra": {**needs(Perm.INCIDENTS_READ)["openapi_extra"], **FC_SCHEMA},
       "dependencies": needs(Perm.INCIDENTS_READ)["dependencies"]}


@router.get("/incidents", summary="Public-safety incidents (GeoJSON)",
            description="Incidents of `domain` (default `safety`) opened in the range "
                        "(default: the last 30 days), newest first, located at their asset, "
                        "else at a point on their zone (null geometry when neither). Filter "
                        "by `zone_id` and `status`.", **_FC)
async def incidents(
    ctx: AuthDep, zone_id: uuid.UUID | None = None,
    domain: IncidentDomain = IncidentDomain.SAFETY, status: IncidentStatus | None = None,
    start: datetime | None = None, end: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> Response:
    start, end = window(start, end, default=timedelta(days=30))
    rows = (await ctx.session.execute(text(
        "select i.id, i.number, i.title, i.severity, i.status, i.source, i.zone_id, "
        "i.asset_id, i.opened_at, i.resolved_at, coalesce(st_asgeojson(a.geom), "
        "st_asgeojson(st_pointonsurface(z.geom))) as geom from incident i "
        "left join asset a on a.id = i.asset_id left join zone z on z.id = i.zone_id "
        "where i.tenant_id = :t and i.deleted_at is null and i.domain = :d "
        "and i.opened_at >= :s and i.opened_at < :e "
        "and (cast(:z as uuid) is null or i.zone_id = :z) "
        "and (cast(:st as text) is null or i.status = :st) "
        "order by i.opened_at desc limit :n"),
        {"t": ctx.principal.tenant_id, "d": domain.value, "s": start, "e": end, "z": zone_id,
         "st": status.value if status else None, "n": limit})).mappings().all()
    return feature_collection([feature(r["geom"], {
        "incident_id": str(r["id"]), "number": r["number"], "title": r["title"],
        "severity": r["severity"], "status": r["status"], "source": r["source"],
        "zone_id": str(r["zone_id"]) if r["zone_id"] else None,
        "asset_id": str(r["asset_id"]) if r["asset_id"] else None,
        "opened_at": r["opened_at"].isoformat(),
        "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None},
        r["id"]) for r in rows], start=start.isoformat(), end=end.isoformat(),
        domain=domain.value)


def p_at_least_one(rate_per_hour: float) -> float:
    """Poisson: the chance of one incident or more in an hour at this rate."""
    return 1.0 - math.exp(-max(rate_per_hour, 0.0))


async def _model_risk(ctx: AuthDep, zone_id: uuid.UUID, hours: int) -> dict[str, Any] | None:
    from civitas_ray.ml import data, forecasts

    try:
        fc = await forecasts.forecast(ctx.session, ctx.principal.tenant_id,
                                      data.Subject(asset_id=None, zone_id=zone_id,
                                                   metric=data.INCIDENTS),
                                      horizon=timedelta(hours=hours))
    except CivitasError:
        return None  # no production model, or no data to forecast from
    points = [{"ts": p["ts"].isoformat(), "p_incident": p_at_least_one(p["value"])}
              for p in fc["points"]]
    return {"source": "model", "model": fc["model"], "version": fc["version"],
            "p_incident": max((p["p_incident"] for p in points), default=0.0),
            "hours": points}


@router.get("/risk", summary="Incident risk per zone for the next hours (GeoJSON)",
            description="Per zone: `p_incident`, the highest hourly probability of at least "
                        "one incident over the next `hours`, with its `source`: `model` (the "
                        "zone's production incident model, hourly points included), "
                        "`base_rate` (incidents of `domain` per hour over the last "
                        "`lookback_days`) or `none`.", **_FC)
async def risk(
    ctx: AuthDep, zone_id: uuid.UUID | None = None,
    hours: Annotated[int, Query(ge=1, le=168)] = 24,
    lookback_days: Annotated[int, Query(ge=1, le=730)] = 90,
    domain: IncidentDomain = IncidentDomain.SAFETY,
) -> Response:
    now = datetime.now(UTC)
    since = now - timedelta(days=lookback_days)
    zones = (await ctx.session.execute(text(
        "select z.id, z.name, z.code, st_asgeojson(z.geom) as geom, "
        "(select count(*) from incident i where i.zone_id = z.id and i.tenant_id = :t "
        "and i.deleted_at is null and i.domain = :d and i.opened_at >= :s) as n "
        "from zone z where z.tenant_id = :t and z.deleted_at is null "
        "and (cast(:z as uuid) is null or z.id = :z) order by z.name limit 1000"),
        {"t": ctx.principal.tenant_id, "d": domain.value, "s": since,
         "z": zone_id})).mappings().all()
    features = []
    for z in zones:
        props: dict[str, Any] = {"zone_id": str(z["id"]), "name": z["name"], "code": z["code"]}
        model = await _model_risk(ctx, z["id"], hours)
        if model is not None:
            props |= model
        elif z["n"]:
            rate = z["n"] / (lookback_days * 24.0)
            props |= {"source": "base_rate", "incidents": z["n"], "rate_per_hour": rate,
                      "p_incident": p_at_least_one(rate)}
        else:
            props |= {"source": "none", "incidents": 0, "p_incident": None}
        features.append(feature(z["geom"], props, z["id"]))
    return feature_collection(features, generated_at=now.isoformat(), hours=hours,
                              domain=domain.value)
