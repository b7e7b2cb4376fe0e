"""/api/v1/assets: the tenant's assets as JSON or GeoJSON, placed in zones by their point."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from civitas_ray import geo
from civitas_ray.assets import service
from civitas_ray.assets.schemas import (
    AssetCreate,
    AssetFeatureCollection,
    AssetPage,
    AssetQuery,
    AssetRead,
    AssetSummary,
    AssetUpdate,
)
from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.schemas import page_of

router = APIRouter(prefix="/assets", tags=["assets"])

_FILTERS = (
    "Filters combine: `kind`, `q` (name or external id), `zone_id` (assigned to that zone), "
    "`within` (inside that zone's polygon), `include_deleted`, `bbox` "
    "(`minLon,minLat,maxLon,maxLat`) and `near=lat,lon` with `radius` metres (nearest first, "
    "each item with `distance_m`)."
)


async def _search(ctx: AuthContext, f: AssetQuery) -> tuple[list[service.AssetHit], int]:
    return await service.list_(
        session=ctx.session, tenant_id=ctx.principal.tenant_id, limit=f.limit, offset=f.offset,
        sort=f.sort, kind=f.kind, q=f.q, include_deleted=f.include_deleted, zone_id=f.zone_id,
        within=f.within, bbox=f.bbox, near=f.near_circle())


@router.get("", response_model=AssetPage, summary="List assets",
            description=f"A page of the tenant's assets. {_FILTERS}", **needs(Perm.ASSETS_READ))
async def list_assets(ctx: AuthDep, f: Annotated[AssetQuery, Query()]) -> dict[str, object]:
    rows, total = await _search(ctx, f)
    return page_of([AssetRead.of(a, d) for a, d in rows], total=total, limit=f.limit,
                   offset=f.offset)


@router.get(".geojson", response_model=AssetFeatureCollection,
            response_class=geo.GeoJSONResponse, summary="List assets as GeoJSON",
            description=("The same list and filters as `GET /assets`, as an RFC 7946 "
                         "FeatureCollection (`application/geo+json`) of Point features whose "
                         "properties are the asset's fields; paging fields are foreign "
                         f"members of the collection. {_FILTERS}"),
            **needs(Perm.ASSETS_READ))
async def list_assets_geojson(ctx: AuthDep, f: Annotated[AssetQuery, Query()]) -> dict[str, Any]:
    rows, total = await _search(ctx, f)
    return geo.feature_collection(
        [(a.id, geo.to_geojson(a.geom), AssetSummary.of(a, d)) for a, d in rows],
        total=total, limit=f.limit, offset=f.offset)


@router.post("", response_model=AssetRead, status_code=status.HTTP_201_CREATED,
             summary="Create an asset",
             description=("`zone_id` is derived from the point (the smallest live zone that "
                          "covers it) and cannot be sent. An external id already used by a "
                          "live asset is a 409."),
             **needs(Perm.ASSETS_WRITE))
async def create_asset(ctx: AuthDep, body: AssetCreate) -> AssetRead:
    asset = await service.create(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                 data=body, actor=ctx.actor)
    return AssetRead.of(asset)


@router.get("/{asset_id}", response_model=AssetRead, summary="One asset",
            **needs(Perm.ASSETS_READ))
async def get_asset(ctx: AuthDep, asset_id: uuid.UUID) -> AssetRead:
    return AssetRead.of(await service.require(
        session=ctx.session, tenant_id=ctx.principal.tenant_id, asset_id=asset_id))


@router.patch("/{asset_id}", response_model=AssetRead, summary="Change or move an asset",
              description="A new geometry moves the asset and re-derives its zone.",
              **needs(Perm.ASSETS_WRITE))
async def update_asset(ctx: AuthDep, asset_id: uuid.UUID, body: AssetUpdate) -> AssetRead:
    asset = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                  asset_id=asset_id)
    return AssetRead.of(await service.update(session=ctx.session, asset=asset, data=body,
                                             actor=ctx.actor))


@router.delete("/{asset_id}", response_model=AssetRead, summary="Soft-delete an asset",
               **needs(Perm.ASSETS_WRITE))
async def delete_asset(ctx: AuthDep, asset_id: uuid.UUID) -> AssetRead:
    asset = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                  asset_id=asset_id)
    return AssetRead.of(await service.set_deleted(session=ctx.session, asset=asset,
                                                  deleted=True, actor=ctx.actor))


@router.post("/{asset_id}/restore", response_model=AssetRead,
             summary="Undo an asset's deletion", **needs(Perm.ASSETS_WRITE))
async def restore_asset(ctx: AuthDep, asset_id: uuid.UUID) -> AssetRead:
    asset = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                  asset_id=asset_id, include_deleted=True)
    return AssetRead.of(await service.set_deleted(session=ctx.session, asset=asset,
                                                  deleted=False, actor=ctx.actor))
