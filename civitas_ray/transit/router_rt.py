"""/api/v1/mobility (realtime): GTFS-RT push, live vehicles, trip delays, stop arrivals, health."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import text

from civitas_ray import geo
from civitas_ray.audit.service import Actor
from civitas_ray.auth.deps import AuthDep, PrincipalDep, needs, needs_principal
from civitas_ray.auth.permissions import Perm
from civitas_ray.db.session import tenant_session
from civitas_ray.errors import NotFound, ValidationFailed
from civitas_ray.transit import health, matching, realtime
from civitas_ray.transit.schemas_rt import (
    ArrivalRead,
    FeedHealthRead,
    GtfsRtIngestRead,
    StopArrivalsRead,
    StopDelayRead,
    TripDelaysRead,
)

router = APIRouter(prefix="/mobility", tags=["mobility"])

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf", "application/octet-stream",
                  "application/vnd.google.protobuf")
FeedName = Annotated[str, Query(min_length=1, max_length=100, description="The feed's name")]


def _dt(epoch: float | None) -> datetime | None:
    if epoch is None or not math.isfinite(epoch):
        return None
    return datetime.fromtimestamp(epoch, UTC)


def _with_protobuf_body(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The permission's route arguments plus the binary request body in OpenAPI."""
    extra = {**kwargs.get("openapi_extra", {}), "requestBody": {"required": True, "content": {
        "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}}}
    return {**kwargs, "openapi_extra": extra}


@router.post("/gtfs-rt", response_model=GtfsRtIngestRead, summary="Push a GTFS-RT FeedMessage",
             description="Body: one binary `FeedMessage` (`application/x-protobuf`): trip "
                         "updates, vehicle positions and/or alerts. Trips are matched against "
                         "the feed's active static version; the answer says what was matched, "
                         "which trip ids are unknown, whether the feed is stale or from "
                         "another version, and whether the live state was updated.",
             **_with_protobuf_body(needs_principal(Perm.TRANSIT_WRITE)))
async def push(request: Request, principal: PrincipalDep, feed: FeedName) -> GtfsRtIngestRead:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in PROTOBUF_TYPES:
        raise ValidationFailed(f"Content-Type must be application/x-protobuf, not '{ctype}'")
    payload = await request.body()
    actor = Actor(type=principal.kind, id=str(principal.id), label=principal.label)
    async with tenant_session(principal.tenant_id) as session:
        ref = await realtime.get_feed(session=session, tenant_id=principal.tenant_id, name=feed)
        result = await realtime.ingest(session=session, feed=ref, payload=payload, actor=actor)
    await realtime.after_commit(ref, result, source="push")
    return result.report


async def _feed_id(ctx: AuthDep, feed: str | None) -> uuid.UUID | None:
    if feed is None:
        return None
    ref = await realtime.get_feed(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                  name=feed)
    return ref.id


@router.get("/vehicles", response_class=geo.GeoJSONResponse,
            summary="Transit vehicles' latest positions (GeoJSON)",
            description="The newest fix of each vehicle seen within `max_age_s` of its feed's "
                        "newest fix, as a GeoJSON FeatureCollection; filter by feed and zone.",
            **needs(Perm.TRANSIT_READ))
async def vehicles(ctx: AuthDep, feed: str | None = None, zone_id: uuid.UUID | None = None,
                   max_age_s: Annotated[float, Query(gt=0, le=7 * 86400)] = 3600.0,
                   ) -> geo.GeoJSONResponse:
    feed_id = await _feed_id(ctx, feed)
    rows = (await ctx.session.execute(text(
        "with latest as (select feed_id, max(ts) as newest from transit_vehicle_position "
        " where (cast(:f as uuid) is null or feed_id = :f) group by feed_id) "
        "select distinct on (v.feed_id, v.vehicle_id) f.name, v.vehicle_id, v.ts, v.lat, "
        " v.lon, v.bearing, v.speed, v.occupancy_status, v.current_status, v.trip_id, "
        " v.route_id, v.stop_id, v.zone_id from transit_vehicle_position v "
        "join latest l on l.feed_id = v.feed_id join transit_feed f on f.id = v.feed_id "
        "where v.ts > l.newest - make_interval(secs => :age) "
        "and (cast(:z as uuid) is null or v.zone_id = :z) "
        "order by v.feed_id, v.vehicle_id, v.ts desc"),
        {"f": feed_id, "z": zone_id, "age": max_age_s})).all()
    features: list[dict[str, Any]] = []
    for r in rows:
        geometry = ({"type": "Point", "coordinates": [r[4], r[3]]}
                    if r[3] is not None and r[4] is not None else None)
        features.append({"type": "Feature", "id": f"{r[0]}:{r[1]}", "geometry": geometry,
                         "properties": {
                             "feed": r[0], "vehicle_id": r[1], "ts": r[2].isoformat(),
                             "bearing": r[5], "speed": r[6], "occupancy_status": r[7],
                             "current_status": r[8], "trip_id": r[9], "route_id": r[10],
                             "stop_id": r[11], "zone_id": str(r[12]) if r[12] else None}})
    return geo.GeoJSONResponse({"type": "FeatureCollection", "features": features})


async def _static_trip(ctx: AuthDep, ref: realtime.FeedRef,
                       trip_id: str) -> tuple[matching.StaticIndex | None, int]:
    if ref.active_version_id is None:
        return None, -1
    index = await matching.load_index(ctx.session, ref.active_version_id)
    if index is None:
        return None, -1
    m = matching.match_trips(index, [trip_id], [""], header_ts=None)
    return index, int(m.trip[0])


@router.get("/trips/{trip_id}/delays", response_model=TripDelaysRead,
            summary="A trip's delays at every stop, from its newest realtime update",
            description="Every stop of the static trip with its scheduled time and delay: "
                        "as the feed gave it (`update`), carried downstream per the GTFS-RT "
                        "spec (`propagated`), or unknown. The trip id may be the static one "
                        "or the realtime (short) one.",
            **needs(Perm.TRANSIT_READ))
async def trip_delays(ctx: AuthDep, trip_id: str, feed: FeedName) -> TripDelaysRead:
    ref = await realtime.get_feed(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                  name=feed)
    index, trip = await _static_trip(ctx, ref, trip_id)
    static_id = index.trip_ids[trip] if index is not None and trip >= 0 else trip_id
    rows = (await ctx.session.execute(text(
        "select feed_ts, start_date, route_id, stop_sequence, stop_id, arrival_delay_s, "
        "departure_delay_s, predicted_arrival, scheduled_arrival, schedule_relationship "
        "from transit_trip_update where feed_id = :f and trip_id = :t and feed_ts = "
        "(select max(feed_ts) from transit_trip_update where feed_id = :f and trip_id = :t) "
        "order by start_date desc, stop_sequence"), {"f": ref.id, "t": static_id})).all()
    if not rows:
        raise NotFound(f"No realtime update for trip '{trip_id}' in feed '{feed}'")
    day = rows[0][1]
    rows = [r for r in rows if r[1] == day]
    rel_codes = {v: k for k, v in realtime.STOP_RELATIONSHIP.items()}
    stops: list[StopDelayRead]
    if index is not None and trip >= 0:
        updates = [(r[3], None if r[5] is None else float(r[5]),
                    None if r[6] is None else float(r[6]), rel_codes.get(r[9], 0))
                   for r in rows]
        stops = [StopDelayRead(
            stop_sequence=p.stop_sequence, stop_id=p.stop_id,
            scheduled_arrival=_dt(p.scheduled_arrival),
            scheduled_departure=_dt(p.scheduled_departure),
            predicted_arrival=_dt(p.scheduled_arrival + p.arrival_delay)
            if p.arrival_delay is not None else None,
            arrival_delay_s=p.arrival_delay, departure_delay_s=p.departure_delay,
            source=p.source)
            for p in matching.propagate(index, trip, day, updates)]
    else:
        stops = [StopDelayRead(stop_sequence=r[3], stop_id=r[4] or "", scheduled_arrival=r[8],
                               scheduled_departure=None, predicted_arrival=r[7],
                               arrival_delay_s=r[5], departure_delay_s=r[6], source="update")
                 for r in rows]
    now = rows[0][0].timestamp()
    upcoming = [s.arrival_delay_s for s in stops if s.arrival_delay_s is not None
                and s.predicted_arrival is not None and s.predicted_arrival.timestamp() >= now]
    known = [s.arrival_delay_s for s in stops if s.arrival_delay_s is not None]
    return TripDelaysRead(
        trip_id=static_id, requested_trip_id=trip_id, feed=ref.name, feed_ts=rows[0][0],
        service_date=day.isoformat(), route_id=rows[0][2],
        delay_s=upcoming[0] if upcoming else (known[-1] if known else None), stops=stops)


@router.get("/stops/{stop_id}/arrivals", response_model=StopArrivalsRead,
            summary="Predicted arrivals at a stop",
            description="For each trip, its newest prediction at this stop, from the feed's "
                        "newest message on; soonest first.",
            **needs(Perm.TRANSIT_READ))
async def stop_arrivals(ctx: AuthDep, stop_id: str, feed: FeedName,
                        limit: Annotated[int, Query(ge=1, le=200)] = 20) -> StopArrivalsRead:
    ref = await realtime.get_feed(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                  name=feed)
    rows = (await ctx.session.execute(text(
        "with newest as (select max(feed_ts) as ts from transit_trip_update where feed_id = :f) "
        "select distinct on (u.trip_id, u.start_date) u.trip_id, u.route_id, u.stop_sequence, "
        "u.scheduled_arrival, u.predicted_arrival, u.arrival_delay_s, u.feed_ts "
        "from transit_trip_update u, newest n where u.feed_id = :f and u.stop_id = :s "
        "and u.feed_ts > n.ts - interval '1 hour' "
        "and (u.predicted_arrival is null or u.predicted_arrival >= n.ts - interval '1 minute') "
        "order by u.trip_id, u.start_date, u.feed_ts desc"),
        {"f": ref.id, "s": stop_id})).all()
    arrivals = sorted((ArrivalRead(
        trip_id=r[0], route_id=r[1], stop_sequence=r[2], scheduled_arrival=r[3],
        predicted_arrival=r[4], arrival_delay_s=r[5], feed=ref.name, feed_ts=r[6])
        for r in rows), key=lambda a: (a.predicted_arrival or a.feed_ts).timestamp())
    return StopArrivalsRead(stop_id=stop_id, arrivals=arrivals[:limit])


@router.get("/feeds/{feed_id}/health", response_model=FeedHealthRead,
            summary="A GTFS-RT feed's health: age, entities, errors, mismatch",
            **needs(Perm.TRANSIT_READ))
async def feed_health(ctx: AuthDep, feed_id: uuid.UUID) -> FeedHealthRead:
    row = (await ctx.session.execute(text(
        "select name from transit_feed where id = :f and tenant_id = :t"),
        {"f": feed_id, "t": ctx.principal.tenant_id})).first()
    if row is None:
        raise NotFound("No such transit feed")
    h = await health.feed_health(feed_id)
    poller = {k: h[k] for k in ("poll_interval_s", "last_error_at", "not_modified",
                                "backoff_s", "last_poll_at") if k in h} or None
    return FeedHealthRead(
        feed_id=feed_id, name=row[0], age_s=h.get("age_s"),
        since_receipt_s=h.get("since_receipt_s"), entities=h.get("entities"),
        matched=h.get("matched"), unmatched=h.get("unmatched"), stale=h.get("stale"),
        mismatched=h.get("mismatched"), ingests=h.get("ingests", 0), errors=h.get("errors", 0),
        last_error=h.get("last_error"), poller=poller)
