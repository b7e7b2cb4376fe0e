"""Assets of one tenant (sensors, meters, signal controllers, ...) at a point, each placed
in the zone that covers it; moving an asset moves it between zones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from geoalchemy2.shape import from_shape
from shapely.geometry import Point
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray import geo
from civitas_ray.assets.models import Asset
from civitas_ray.assets.schemas import AssetCreate, AssetRead, AssetUpdate, MetricRange
from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.errors import Conflict, NotFound
from civitas_ray.zones import service as zones
from civitas_ray.zones.models import Zone

SORTABLE = {"name": Asset.name, "kind": Asset.kind, "external_id": Asset.external_id,
            "created_at": Asset.created_at}

AssetHit = tuple[Asset, float | None]


def snapshot(asset: Asset) -> dict[str, Any]:
    return AssetRead.model_validate(asset).model_dump(mode="json", exclude={"distance_m"})


def _lon_lat(geometry: dict[str, Any]) -> tuple[float, float]:
    lon, lat = geometry["coordinates"][:2]
    return float(lon), float(lat)


async def _external_id_taken(session: AsyncSession, tenant_id: uuid.UUID, external_id: str,
                             exclude: uuid.UUID | None = None) -> bool:
    stmt = select(Asset.id).where(Asset.tenant_id == tenant_id,
                                  Asset.external_id == external_id, Asset.deleted_at.is_(None))
    if exclude is not None:
        stmt = stmt.where(Asset.id != exclude)
    return (await session.execute(stmt.limit(1))).first() is not None


async def create(*, session: AsyncSession, tenant_id: uuid.UUID, data: AssetCreate,
                 actor: Actor) -> Asset:
    """Create an asset; its zone is derived from its point."""
    await zones.lock_zone_map(session=session, tenant_id=tenant_id, exclusive=False)
    if data.external_id and await _external_id_taken(session, tenant_id, data.external_id):
        raise Conflict(f"An asset with external id '{data.external_id}' already exists")
    lon, lat = _lon_lat(data.geometry)
    asset = Asset(id=uuid.uuid4(), tenant_id=tenant_id, name=data.name, kind=str(data.kind),
                  external_id=data.external_id,
                  metrics=metric_specs(data.metrics),
                  properties=data.properties, geom=from_shape(Point(lon, lat), srid=geo.SRID),
                  zone_id=await zones.zone_at(session=session, tenant_id=tenant_id,
                                              lon=lon, lat=lat))
    session.add(asset)
    await session.flush()
    await session.refresh(asset)
    await audit.record(session=session, actor=actor, action="asset.create", tenant_id=tenant_id,
                       target_type="asset", target_id=asset.id, after=snapshot(asset))
    return asset


async def get(*, session: AsyncSession, tenant_id: uuid.UUID, asset_id: uuid.UUID,
              include_deleted: bool = False) -> Asset | None:
    stmt = select(Asset).where(Asset.id == asset_id, Asset.tenant_id == tenant_id)
    if not include_deleted:
        stmt = stmt.where(Asset.deleted_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()


async def require(*, session: AsyncSession, tenant_id: uuid.UUID, asset_id: uuid.UUID,
                  include_deleted: bool = False) -> Asset:
    """The asset, or NotFound; another tenant's asset is 'not found' too."""
    asset = await get(session=session, tenant_id=tenant_id, asset_id=asset_id,
                      include_deleted=include_deleted)
    if asset is None:
        raise NotFound(f"Asset {asset_id} not found")
    return asset


async def list_(*, session: AsyncSession, tenant_id: uuid.UUID, limit: int, offset: int,
                sort: str = "name", kind: str | None = None, q: str | None = None,
                include_deleted: bool = False, zone_id: uuid.UUID | None = None,
                within: uuid.UUID | None = None, bbox: geo.BBox | None = None,
                near: geo.Near | None = None) -> tuple[list[AssetHit], int]:
    """A page of assets, each with its distance in metres from `near` (None without it).

    `zone_id` keeps the assets assigned to a zone; `within` those inside a zone's polygon
    whichever zone they are assigned to (NotFound if that zone is not the tenant's).
    With `near`, rows come nearest first and `sort` only breaks ties.
    """
    where: list[ColumnElement[bool]] = [Asset.tenant_id == tenant_id]
    if not include_deleted:
        where.append(Asset.deleted_at.is_(None))
    if kind:
        where.append(Asset.kind == str(kind))
    if q:
        pattern = zones.like_pattern(q)
        where.append(or_(func.lower(Asset.name).like(pattern, escape="\\"),
                         func.lower(Asset.external_id).like(pattern, escape="\\")))
    if zone_id is not None:
        where.append(Asset.zone_id == zone_id)
    if within is not None:
        await zones.require(session=session, tenant_id=tenant_id, zone_id=within)
        polygon = select(Zone.geom).where(Zone.id == within).scalar_subquery()
        where.append(func.ST_Covers(polygon, Asset.geom))
    if bbox is not None:
        where.append(geo.intersects_bbox(Asset.geom, bbox))
    if near is not None:
        where.append(geo.within_circle(Asset.geom, near))
    total = (await session.execute(
        select(func.count()).select_from(Asset).where(*where))).scalar_one()
    col = SORTABLE[sort.lstrip("-")]
    order = [col.desc() if sort.startswith("-") else col.asc(), Asset.id]
    if near is not None:
        distance = geo.distance_m(Asset.geom, near)
        rows = (await session.execute(select(Asset, distance).where(*where)
                                      .order_by(distance, *order).limit(limit).offset(offset)))
        return [(asset, float(d)) for asset, d in rows.all()], int(total)
    assets = (await session.execute(select(Asset).where(*where).order_by(*order)
                                    .limit(limit).offset(offset))).scalars()
    return [(asset, None) for asset in assets], int(total)


def metric_specs(metrics: dict[str, MetricRange]) -> dict[str, dict[str, object]]:
    """Stored form of metric specs: only what was said (no null ranges, no default flags)."""
    return {name: m.model_dump(exclude_defaults=True) | {"unit": m.unit}
            for name, m in metrics.items()}


async def update(*, session: AsyncSession, asset: Asset, data: AssetUpdate,
                 actor: Actor) -> Asset:
    """Change an asset; a new geometry moves it and re-derives its zone."""
    changes = data.model_dump(exclude_unset=True)
    if data.metrics is not None:
        changes["metrics"] = metric_specs(data.metrics)
    geometry = changes.pop("geometry", None)
    if geometry is not None:
        await zones.lock_zone_map(session=session, tenant_id=asset.tenant_id, exclusive=False)
    before = snapshot(asset)
    external_id = changes.get("external_id")
    if external_id and external_id != asset.external_id and await _external_id_taken(
            session, asset.tenant_id, external_id, exclude=asset.id):
        raise Conflict(f"An asset with external id '{external_id}' already exists")
    for key, value in changes.items():
        setattr(asset, key, str(value) if key == "kind" else value)
    if geometry is not None:
        lon, lat = _lon_lat(geometry)
        asset.geom = from_shape(Point(lon, lat), srid=geo.SRID)
        asset.zone_id = await zones.zone_at(session=session, tenant_id=asset.tenant_id,
                                            lon=lon, lat=lat)
    await session.flush()
    await session.refresh(asset)
    await audit.record(session=session, actor=actor, action="asset.update",
                       tenant_id=asset.tenant_id, target_type="asset", target_id=asset.id,
                       before=before, after=snapshot(asset),
                       detail="moved" if geometry is not None else None)
    return asset


async def set_deleted(*, session: AsyncSession, asset: Asset, deleted: bool,
                      actor: Actor) -> Asset:
    """Soft-delete or restore; a restored asset is already in the right zone (zone
    changes re-assign deleted assets too)."""
    if not deleted and asset.deleted_at is not None and asset.external_id and (
            await _external_id_taken(session, asset.tenant_id, asset.external_id,
                                     exclude=asset.id)):
        raise Conflict(f"Another live asset has external id '{asset.external_id}'; change or "
                       "delete it before restoring this one")
    before = snapshot(asset)
    asset.deleted_at = datetime.now(UTC) if deleted else None
    await session.flush()
    await session.refresh(asset)
    await audit.record(session=session, actor=actor,
                       action="asset.delete" if deleted else "asset.restore",
                       tenant_id=asset.tenant_id, target_type="asset", target_id=asset.id,
                       before=before, after=snapshot(asset))
    return asset
