"""/api/v1/mobility (static): feeds, GTFS zip imports and their versions, stops, routes, trips."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Response, UploadFile, status
from sqlalchemy import text

from civitas_ray import geo
from civitas_ray.audit import service as audit
from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.errors import Conflict, NotFound, ValidationFailed
from civitas_ray.transit import static_import as gtfs
from civitas_ray.transit.models import TransitFeedVersion
from civitas_ray.transit.schemas_static import (
    FeedCreate,
    FeedPage,
    FeedRead,
    RouteRead,
    StopQuery,
    StopTimeRead,
    TripRead,
    VersionPage,
    VersionRead,
)

router = APIRouter(prefix="/mobility", tags=["mobility"])

# Imports outlive the request that started them when they take longer than `wait_s`.
_imports: dict[uuid.UUID, asyncio.Task[gtfs.ImportOutcome]] = {}


def _version_read(v: TransitFeedVersion, active_id: uuid.UUID | None) -> VersionRead:
    out = VersionRead.model_validate(v)
    out.active = v.id == active_id
    return out


@router.post("/feeds", response_model=FeedRead, status_code=status.HTTP_201_CREATED,
             summary="Create a transit feed",
             description="A named GTFS feed of the tenant; its static schedule is uploaded to "
                         "`POST /mobility/feeds/{id}/static`, its realtime endpoints are "
                         "polled at `poll_interval_s`. A name in use is a 409.",
             **needs(Perm.TRANSIT_WRITE))
async def create_feed(ctx: AuthDep, body: FeedCreate) -> FeedRead:
    feed = await gtfs.create_feed(
        session=ctx.session, tenant_id=ctx.principal.tenant_id, name=body.name,
        realtime_urls=body.realtime_urls.model_dump(mode="json", exclude_none=True),
        poll_interval_s=body.poll_interval_s, settings=body.settings)
    read = FeedRead.model_validate(feed)
    await audit.record(session=ctx.session, actor=ctx.actor, action="transit_feed.create",
                       tenant_id=ctx.principal.tenant_id, target_type="transit_feed",
                       target_id=feed.id, after=read.model_dump(mode="json"))
    return read


@router.get("/feeds", response_model=FeedPage, summary="List transit feeds",
            **needs(Perm.TRANSIT_READ))
async def list_feeds(ctx: AuthDep) -> FeedPage:
    feeds = await gtfs.list_feeds(session=ctx.session, tenant_id=ctx.principal.tenant_id)
    return FeedPage(items=[FeedRead.model_validate(f) for f in feeds], total=len(feeds))


async def _read_upload(file: UploadFile) -> bytes:
    parts, seen = [], 0
    while chunk := await file.read(1 << 20):
        seen += len(chunk)
        if seen > gtfs.MAX_UPLOAD_BYTES:
            raise ValidationFailed(f"The feed is larger than {gtfs.MAX_UPLOAD_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


@router.post("/feeds/{feed_id}/static", response_model=VersionRead,
             status_code=status.HTTP_201_CREATED, summary="Import a GTFS static zip",
             description="Multipart upload (`file`: the GTFS zip). The zip becomes the feed's "
                         "next version, imported beside the active one and activated in one "
                         "transaction (readers never see a half-loaded schedule). Bad rows are "
                         "skipped and listed in `errors` with file, row (CSV record, header = "
                         "1) and field. A feed that cannot be imported at all (not a zip, a "
                         "required file or column missing, a required file without one valid "
                         "row) is a 422 listing why; the active version stays. The answer "
                         "waits up to `wait_s` seconds: 201 with the finished version, else "
                         "202 with the version still `importing` (poll its Location).",
             **needs(Perm.TRANSIT_WRITE))
async def import_static(
    ctx: AuthDep, feed_id: uuid.UUID, response: Response,
    file: Annotated[UploadFile, File(description="The GTFS zip")],
    wait_s: Annotated[float, Query(ge=0, le=300)] = 60.0,
) -> VersionRead:
    tenant_id = ctx.principal.tenant_id
    await gtfs.get_feed(session=ctx.session, tenant_id=tenant_id, feed_id=feed_id)
    data = await _read_upload(file)
    sha = await asyncio.to_thread(gtfs.sha256_of, data)
    version = await gtfs.create_version(tenant_id=tenant_id, feed_id=feed_id, sha256=sha)
    await audit.record(session=ctx.session, actor=ctx.actor, action="transit_feed.import",
                       tenant_id=tenant_id, target_type="transit_feed", target_id=feed_id,
                       after={"version_id": str(version[0]), "version": version[1],
                              "sha256": sha, "bytes": len(data)})
    task = asyncio.create_task(gtfs.import_feed(tenant_id=tenant_id, feed_id=feed_id,
                                                source=data, version=version))
    _imports[version[0]] = task
    task.add_done_callback(lambda _t: _imports.pop(version[0], None))
    done, _ = await asyncio.wait({task}, timeout=wait_s)
    if task in done:
        task.result()  # FeedRefused / Conflict become the problem answer
        response.status_code = status.HTTP_201_CREATED
    else:
        response.status_code = status.HTTP_202_ACCEPTED
    response.headers["Location"] = f"/api/v1/mobility/feeds/{feed_id}/versions/{version[0]}"
    return await _version(ctx, feed_id, version[0])


async def _version(ctx: AuthContext, feed_id: uuid.UUID, version_id: uuid.UUID) -> VersionRead:
    # Read committed: each statement sees what the import's own transactions committed.
    # The version first, the feed after: a version read as ready was activated in the
    # same commit, so the feed read later shows it active (never ready-but-inactive).
    v = await gtfs.get_version(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                               version_id=version_id)
    await ctx.session.refresh(v)
    if v.feed_id != feed_id:
        raise NotFound(f"Feed version {version_id} not found")
    feed = await gtfs.get_feed(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                               feed_id=feed_id)
    await ctx.session.refresh(feed)
    return _version_read(v, feed.active_version_id)


@router.get("/feeds/{feed_id}/versions", response_model=VersionPage,
            summary="A feed's static versions, newest first",
            description="Every import of the feed with its status (`importing`, `ready`, "
                        "`failed`, `retired`), counts and listed validation errors; `active` "
                        "marks the version readers use.",
            **needs(Perm.TRANSIT_READ))
async def list_versions(ctx: AuthDep, feed_id: uuid.UUID) -> VersionPage:
    feed = await gtfs.get_feed(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                               feed_id=feed_id)
    versions = await gtfs.list_versions(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                        feed_id=feed_id)
    return VersionPage(items=[_version_read(v, feed.active_version_id) for v in versions],
                       total=len(versions))


@router.get("/feeds/{feed_id}/versions/{version_id}", response_model=VersionRead,
            summary="One static version (the import's job record)",
            **needs(Perm.TRANSIT_READ))
async def get_version(ctx: AuthDep, feed_id: uuid.UUID, version_id: uuid.UUID) -> VersionRead:
    return await _version(ctx, feed_id, version_id)


async def _active_versions(ctx: AuthContext, feed: str | None) -> dict[uuid.UUID, str]:
    """Active version id -> feed name, of one named feed or of every feed."""
    rows = (await ctx.session.execute(text(
        "select active_version_id, name from transit_feed where tenant_id = :t "
        "and active_version_id is not null and (cast(:n as text) is null or name = :n)"),
        {"t": ctx.principal.tenant_id, "n": feed})).all()
    if feed is not None and not rows:
        known = await gtfs.feed_by_name(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                        name=feed)
        if known is None:
            raise NotFound(f"Transit feed '{feed}' not found")
    return {r[0]: r[1] for r in rows}


@router.get("/stops", response_class=geo.GeoJSONResponse,
            summary="Stops of the active static versions (GeoJSON)",
            description="A FeatureCollection of stops (Point geometry) with their assigned "
                        "zone; filter by `feed`, `zone_id`, `bbox` and `location_type`.",
            **needs(Perm.TRANSIT_READ))
async def list_stops(ctx: AuthDep, q: Annotated[StopQuery, Query()]) -> geo.GeoJSONResponse:
    versions = await _active_versions(ctx, q.feed)
    box = q.bbox
    params: dict[str, Any] = {
        "vs": list(versions), "z": q.zone_id, "lt": q.location_type, "lim": q.limit,
        "off": q.offset, "x0": box.min_lon if box else None, "y0": box.min_lat if box else None,
        "x1": box.max_lon if box else None, "y1": box.max_lat if box else None}
    where = ("s.version_id = any(:vs) and (cast(:z as uuid) is null or s.zone_id = :z) "
             "and (cast(:lt as int) is null or s.location_type = :lt) "
             "and (cast(:x0 as float8) is null or s.geom && st_makeenvelope(:x0, :y0, :x1, "
             ":y1, 4326))")
    total = (await ctx.session.execute(text(
        f"select count(*) from gtfs_stop s where {where}"), params)).scalar_one()
    rows = (await ctx.session.execute(text(
        "select s.version_id, s.stop_id, s.code, s.name, s.location_type, s.parent_station, "
        "s.platform_code, s.zone_id, st_asgeojson(s.geom, 7) from gtfs_stop s "
        f"where {where} order by s.version_id, s.stop_id limit :lim offset :off"),
        params)).all()
    features = [{
        "type": "Feature", "id": f"{versions[r[0]]}:{r[1]}",
        "geometry": json.loads(r[8]) if r[8] else None,
        "properties": {"feed": versions[r[0]], "stop_id": r[1], "code": r[2], "name": r[3],
                       "location_type": r[4], "parent_station": r[5], "platform_code": r[6],
                       "zone_id": str(r[7]) if r[7] else None}} for r in rows]
    nxt = q.offset + q.limit if q.offset + q.limit < total else None
    return geo.GeoJSONResponse({"type": "FeatureCollection", "features": features,
                                "total": total, "limit": q.limit, "offset": q.offset,
                                "next_offset": nxt})


@router.get("/routes", response_model=list[RouteRead],
            summary="Routes of the active static versions", **needs(Perm.TRANSIT_READ))
async def list_routes(ctx: AuthDep, feed: str | None = None) -> list[RouteRead]:
    versions = await _active_versions(ctx, feed)
    rows = (await ctx.session.execute(text(
        "select r.version_id, r.route_id, r.agency_id, r.short_name, r.long_name, "
        "r.route_type, r.color, r.text_color, (select count(*) from gtfs_trip t "
        "where t.version_id = r.version_id and t.route_id = r.route_id) from gtfs_route r "
        "where r.version_id = any(:vs) order by r.version_id, r.route_id"),
        {"vs": list(versions)})).all()
    return [RouteRead(feed=versions[r[0]], route_id=r[1], agency_id=r[2], short_name=r[3],
                      long_name=r[4], route_type=r[5], color=r[6], text_color=r[7], trips=r[8])
            for r in rows]


def _hms(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@router.get("/trips/{trip_id}", response_model=TripRead,
            summary="A scheduled trip with its stop times",
            description="The trip in the active static version of `feed` (required when "
                        "several feeds have a trip with this id).",
            **needs(Perm.TRANSIT_READ))
async def get_trip(ctx: AuthDep, trip_id: str, feed: str | None = None) -> TripRead:
    versions = await _active_versions(ctx, feed)
    trips = (await ctx.session.execute(text(
        "select version_id, trip_id, route_id, service_id, headsign, trip_short_name, "
        "direction_id, block_id, shape_id from gtfs_trip where version_id = any(:vs) "
        "and trip_id = :id"), {"vs": list(versions), "id": trip_id})).all()
    if not trips:
        raise NotFound(f"Trip '{trip_id}' not found in the active schedule")
    if len(trips) > 1:
        raise Conflict(f"Trip '{trip_id}' is in several feeds: name one with `feed`")
    t = trips[0]
    stop_times = (await ctx.session.execute(text(
        "select st.stop_sequence, st.stop_id, s.name, st.arrival_s, st.departure_s, s.zone_id "
        "from gtfs_stop_time st left join gtfs_stop s on s.version_id = st.version_id "
        "and s.stop_id = st.stop_id where st.version_id = :v and st.trip_id = :id "
        "order by st.stop_sequence"), {"v": t[0], "id": trip_id})).all()
    return TripRead(
        feed=versions[t[0]], version_id=t[0], trip_id=t[1], route_id=t[2], service_id=t[3],
        headsign=t[4], trip_short_name=t[5], direction_id=t[6], block_id=t[7], shape_id=t[8],
        stop_times=[StopTimeRead(stop_sequence=r[0], stop_id=r[1], stop_name=r[2],
                                 arrival_s=r[3], departure_s=r[4], arrival_time=_hms(r[3]),
                                 departure_time=_hms(r[4]), zone_id=r[5])
                    for r in stop_times])
