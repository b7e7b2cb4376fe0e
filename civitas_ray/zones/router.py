"""/api/v1/zones: the tenant's zone polygons as JSON or GeoJSON, and each zone's assets."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from civitas_ray import geo
from civitas_ray.assets import service as assets
from civitas_ray.assets.schemas import AssetFilters, AssetPage, AssetRead
from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.errors import NotFound
from civitas_ray.runtime import live
from civitas_ray.schemas import page_of
from civitas_ray.zones import service
from civitas_ray.zones.schemas import (
    ZoneCreate,
    ZoneFeatureCollection,
    ZonePage,
    ZoneQuery,
    ZoneRead,
    ZoneSummary,
    ZoneUpdate,
)

router = APIRouter(prefix="/zones", tags=["zones"])

_FILTERS = (
    "Filters combine: `kind`, `q` (name or code), `include_deleted`, `bbox` "
    "(`minLon,minLat,maxLon,maxLat`: zones intersecting the box) and `near=lat,lon` with "
    "`radius` metres (zones within that distance, nearest first, each with `distance_m`; "
    "0 inside)."
)


async def _search(ctx: AuthContext, f: ZoneQuery) -> tuple[list[service.ZoneHit], int]:
    return await service.list_(
        session=ctx.session, tenant_id=ctx.principal.tenant_id, limit=f.limit, offset=f.offset,
        sort=f.sort, kind=f.kind, q=f.q, include_deleted=f.include_deleted, bbox=f.bbox,
        near=f.near_circle())


@router.get("", response_model=ZonePage, summary="List zones",
            description=f"A page of the tenant's zones with their GeoJSON geometry. {_FILTERS}",
            **needs(Perm.ZONES_READ))
async def list_zones(ctx: AuthDep, f: Annotated[ZoneQuery, Query()]) -> dict[str, object]:
    rows, total = await _search(ctx, f)
    return page_of([ZoneRead.of(z, d) for z, d in rows], total=total, limit=f.limit,
                   offset=f.offset)


@router.get(".geojson", response_model=ZoneFeatureCollection,
            response_class=geo.GeoJSONResponse, summary="List zones as GeoJSON",
            description=("The same list and filters as `GET /zones`, as an RFC 7946 "
                         "FeatureCollection (`application/geo+json`) for map clients: each "
                         "zone is a Feature whose properties are the zone's fields; paging "
                         f"fields are foreign members of the collection. {_FILTERS}"),
            **needs(Perm.ZONES_READ))
async def list_zones_geojson(ctx: AuthDep, f: Annotated[ZoneQuery, Query()]) -> dict[str, Any]:
    rows, total = await _search(ctx, f)
    return geo.feature_collection(
        [(z.id, geo.to_geojson(z.geom), ZoneSummary.of(z, d)) for z, d in rows],
        total=total, limit=f.limit, offset=f.offset)


@router.post("", response_model=ZoneRead, status_code=status.HTTP_201_CREATED,
             summary="Create a zone",
             description=("A Polygon is stored as a MultiPolygon. Assets the new zone covers "
                          "move into it when it is the smallest zone covering them. A code "
                          "already used by a live zone is a 409."),
             **needs(Perm.ZONES_WRITE))
async def create_zone(ctx: AuthDep, body: ZoneCreate) -> ZoneRead:
    zone = await service.create(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                data=body, actor=ctx.actor)
    return ZoneRead.of(zone)


@router.get("/{zone_id}", response_model=ZoneRead, summary="One zone", **needs(Perm.ZONES_READ))
async def get_zone(ctx: AuthDep, zone_id: uuid.UUID) -> ZoneRead:
    return ZoneRead.of(await service.require(session=ctx.session,
                                             tenant_id=ctx.principal.tenant_id, zone_id=zone_id))


@router.patch("/{zone_id}", response_model=ZoneRead, summary="Change a zone",
              description="A new geometry re-assigns the assets it used to or now covers.",
              **needs(Perm.ZONES_WRITE))
async def update_zone(ctx: AuthDep, zone_id: uuid.UUID, body: ZoneUpdate) -> ZoneRead:
    zone = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                 zone_id=zone_id)
    return ZoneRead.of(await service.update(session=ctx.session, zone=zone, data=body,
                                            actor=ctx.actor))


@router.delete("/{zone_id}", response_model=ZoneRead, summary="Soft-delete a zone",
               description="Its assets move to the next smallest zone covering them, or none.",
               **needs(Perm.ZONES_WRITE))
async def delete_zone(ctx: AuthDep, zone_id: uuid.UUID) -> ZoneRead:
    zone = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                 zone_id=zone_id)
    return ZoneRead.of(await service.set_deleted(session=ctx.session, zone=zone, deleted=True,
                                                 actor=ctx.actor))


@router.post("/{zone_id}/restore", response_model=ZoneRead, summary="Undo a zone's deletion",
             description="The assets it covers move back when it is their smallest zone.",
             **needs(Perm.ZONES_WRITE))
async def restore_zone(ctx: AuthDep, zone_id: uuid.UUID) -> ZoneRead:
    zone = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                 zone_id=zone_id, include_deleted=True)
    return ZoneRead.of(await service.set_deleted(session=ctx.session, zone=zone, deleted=False,
                                                 actor=ctx.actor))


@router.get("/{zone_id}/assets", response_model=AssetPage, summary="The assets of a zone",
            description=("Assets assigned to this zone (it is the smallest zone covering "
                         "them); `GET /assets?within=` lists every asset inside the polygon "
                         "instead. Same filters, sorting and paging as `GET /assets`."),
            **needs(Perm.ASSETS_READ))
async def list_zone_assets(ctx: AuthDep, zone_id: uuid.UUID,
                           f: Annotated[AssetFilters, Query()]) -> dict[str, object]:
    await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                          zone_id=zone_id)
    rows, total = await assets.list_(
        session=ctx.session, tenant_id=ctx.principal.tenant_id, limit=f.limit, offset=f.offset,
        sort=f.sort, kind=f.kind, q=f.q, include_deleted=f.include_deleted, zone_id=zone_id,
        bbox=f.bbox, near=f.near_circle())
    return page_of([AssetRead.of(a, d) for a, d in rows], total=total, limit=f.limit,
                   offset=f.offset)


@router.get("/{zone_id}/state", summary="Live state of a zone (actor memory)",
            description="Latest value of every member stream, rolling aggregates and KPIs "
                        "per metric, and the zone forecast over `horizon_s` (with "
                        "`forecast_source`: a trained zone model or the online forecaster), "
                        "answered by the ZoneShard hosting the zone; `members=false` leaves "
                        "the member list out (KPI tiles). 503 when the actors are not running.",
            responses={200: {"content": {"application/json": {}}}},
            **needs(Perm.ZONES_READ))
async def zone_state(ctx: AuthDep, zone_id: uuid.UUID,
                     horizon_s: Annotated[int, Query(ge=0, le=86_400)] = 3600,
                     members: bool = True) -> Response:
    await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                          zone_id=zone_id)
    state = await live.zone_state(tenant_id=ctx.principal.tenant_id, zone_id=zone_id,
                                  horizon_s=horizon_s, members=members)
    if state is None:
        raise NotFound(f"Zone {zone_id} not found")
    return Response(content=state, media_type="application/json")
