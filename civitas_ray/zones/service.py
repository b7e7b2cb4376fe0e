"""Zones of one tenant, and the rule that puts each asset in one: the smallest live zone
that covers it. Every zone change re-applies that rule to the assets it touches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from geoalchemy2.shape import from_shape
from shapely.geometry import shape
from sqlalchemy import ColumnElement, ScalarSelect, case, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from civitas_ray import geo
from civitas_ray.assets.models import Asset
from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.errors import Conflict, NotFound
from civitas_ray.zones.models import Zone
from civitas_ray.zones.schemas import ZoneCreate, ZoneSummary, ZoneUpdate

SORTABLE = {"name": Zone.name, "code": Zone.code, "kind": Zone.kind,
            "created_at": Zone.created_at}

ZoneHit = tuple[Zone, float | None]


def snapshot(zone: Zone) -> dict[str, Any]:
    """The audit form: every field, but only a digest of the (possibly huge) geometry."""
    out = ZoneSummary.model_validate(zone).model_dump(mode="json", exclude={"distance_m"})
    out["geometry"] = geo.summary(zone.geom)
    return out


def like_pattern(q: str) -> str:
    """A case-insensitive substring pattern in which `%` and `_` match themselves."""
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def lock_zone_map(*, session: AsyncSession, tenant_id: uuid.UUID,
                        exclusive: bool) -> None:
    """Zone writes re-assign assets and asset writes look zones up; without this lock a
    zone and an asset written at the same time could each miss the other's new row.
    Zone writes take it exclusively, asset writes shared; it ends with the transaction."""
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await session.execute(text(f"select {fn}(hashtextextended(:key, 7))"),
                          {"key": f"zones:{tenant_id}"})


def covering_zone_id(point: ColumnElement[Any], tenant_id: Any) -> ScalarSelect[uuid.UUID]:
    """The tenant's live zone that covers `point` (boundary included); when zones overlap,
    the smallest by true area wins (a neighbourhood inside its borough), then the lowest id,
    so the answer never depends on row order."""
    z = aliased(Zone)
    # The geodesic area of a large polygon costs milliseconds: only pay it to break a tie.
    area = case((func.count().over() > 1, func.ST_Area(func.geography(z.geom))))
    return (select(z.id)
            .where(z.tenant_id == tenant_id, z.deleted_at.is_(None),
                   func.ST_Covers(z.geom, point))
            .order_by(area, z.id)
            .limit(1).scalar_subquery())


async def zone_at(*, session: AsyncSession, tenant_id: uuid.UUID, lon: float,
                  lat: float) -> uuid.UUID | None:
    """The zone an asset at (lon, lat) belongs to, or None outside every zone."""
    stmt = select(covering_zone_id(geo.sql_point(lon, lat), tenant_id))
    return (await session.execute(stmt)).scalar_one_or_none()


# One set-based UPDATE re-deriving zone_id (the smallest covering live zone, then the lowest
# id, as in `covering_zone_id`) for the assets a zone held or now covers. Its shape is for
# speed with large polygons (a borough has ~30k vertices): areas are computed once per
# zone, not per asset, and each zone is tested against the assets under it in one run
# (`offset 0` keeps the planner from reordering), so PostGIS reuses its prepared polygon
# instead of re-reading it from TOAST for every asset. Assets in the same extent that
# this zone does not affect may be re-derived too; that is harmless, the rule is the same.
_REASSIGN = text("""
with changed as (select geom from zone where id = :zone_id),
affected as (
  select a.id, a.geom from asset a, changed
  where a.tenant_id = :tenant_id and (a.zone_id = :zone_id or ST_Covers(changed.geom, a.geom))
),
extent as (select ST_SetSRID(ST_Extent(geom)::geometry, 4326) as box from affected),
live as materialized (
  select z.id, z.geom, ST_Area(geography(z.geom)) as area from zone z, extent
  where z.tenant_id = :tenant_id and z.deleted_at is null and z.geom && extent.box
),
candidate as (
  select x.id, live.id as zone_id, live.area
  from live, extent, lateral (
    select a.id from asset a
    where a.tenant_id = :tenant_id and a.geom && extent.box and ST_Covers(live.geom, a.geom)
    offset 0) x
  union all
  select id, null, null from affected
),
best as (
  select id, (array_agg(zone_id order by area, zone_id))[1] as zone_id
  from candidate group by id
)
update asset set zone_id = best.zone_id, updated_at = now() from best
where asset.id = best.id and asset.zone_id is distinct from best.zone_id
returning asset.id, asset.zone_id, asset.updated_at
""")


async def reassign_assets(*, session: AsyncSession, zone: Zone) -> int:
    """Re-derive zone_id for every asset this zone held or now covers, in one UPDATE; call
    it once the zone's insert, new geometry, deletion or restoration is flushed. Returns
    how many assets changed zone. Soft-deleted assets follow too, so a restored asset is
    already in the right zone."""
    rows = (await session.execute(_REASSIGN, {"zone_id": zone.id,
                                              "tenant_id": zone.tenant_id})).all()
    # Assets already loaded in this session would otherwise show their old zone.
    for asset_id, zone_id, updated_at in rows:
        loaded = session.identity_map.get(identity_key(Asset, asset_id))
        if loaded is not None:
            set_committed_value(loaded, "zone_id", zone_id)
            set_committed_value(loaded, "updated_at", updated_at)
    return len(rows)


async def _code_taken(session: AsyncSession, tenant_id: uuid.UUID, code: str,
                      exclude: uuid.UUID | None = None) -> bool:
    stmt = select(Zone.id).where(Zone.tenant_id == tenant_id, Zone.code == code,
                                 Zone.deleted_at.is_(None))
    if exclude is not None:
        stmt = stmt.where(Zone.id != exclude)
    return (await session.execute(stmt.limit(1))).first() is not None


def _reassigned(count: int) -> str:
    return f"{count} asset(s) changed zone"


async def create(*, session: AsyncSession, tenant_id: uuid.UUID, data: ZoneCreate,
                 actor: Actor) -> Zone:
    await lock_zone_map(session=session, tenant_id=tenant_id, exclusive=True)
    if await _code_taken(session, tenant_id, data.code):
        raise Conflict(f"A zone with code '{data.code}' already exists")
    zone = Zone(id=uuid.uuid4(), tenant_id=tenant_id, name=data.name, code=data.code,
                kind=data.kind, properties=data.properties,
                geom=from_shape(shape(data.geometry), srid=geo.SRID))
    session.add(zone)
    await session.flush()
    moved = await reassign_assets(session=session, zone=zone)
    await session.refresh(zone)
    await audit.record(session=session, actor=actor, action="zone.create", tenant_id=tenant_id,
                       target_type="zone", target_id=zone.id, after=snapshot(zone),
                       detail=_reassigned(moved))
    return zone


async def get(*, session: AsyncSession, tenant_id: uuid.UUID, zone_id: uuid.UUID,
              include_deleted: bool = False) -> Zone | None:
    stmt = select(Zone).where(Zone.id == zone_id, Zone.tenant_id == tenant_id)
    if not include_deleted:
        stmt = stmt.where(Zone.deleted_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()


async def require(*, session: AsyncSession, tenant_id: uuid.UUID, zone_id: uuid.UUID,
                  include_deleted: bool = False) -> Zone:
    """The zone, or NotFound; another tenant's zone is 'not found' too."""
    zone = await get(session=session, tenant_id=tenant_id, zone_id=zone_id,
                     include_deleted=include_deleted)
    if zone is None:
        raise NotFound(f"Zone {zone_id} not found")
    return zone


async def list_(*, session: AsyncSession, tenant_id: uuid.UUID, limit: int, offset: int,
                sort: str = "name", kind: str | None = None, q: str | None = None,
                include_deleted: bool = False, bbox: geo.BBox | None = None,
                near: geo.Near | None = None) -> tuple[list[ZoneHit], int]:
    """A page of zones, each with its distance in metres from `near` (None without it).

    With `near`, rows come nearest first and `sort` only breaks ties.
    """
    where: list[ColumnElement[bool]] = [Zone.tenant_id == tenant_id]
    if not include_deleted:
        where.append(Zone.deleted_at.is_(None))
    if kind:
        where.append(Zone.kind == kind)
    if q:
        pattern = like_pattern(q)
        where.append(or_(func.lower(Zone.name).like(pattern, escape="\\"),
                         func.lower(Zone.code).like(pattern, escape="\\")))
    if bbox is not None:
        where.append(geo.intersects_bbox(Zone.geom, bbox))
    if near is not None:
        where.append(geo.within_circle(Zone.geom, near))
    total = (await session.execute(
        select(func.count()).select_from(Zone).where(*where))).scalar_one()
    col = SORTABLE[sort.lstrip("-")]
    order = [col.desc() if sort.startswith("-") else col.asc(), Zone.id]
    if near is not None:
        distance = geo.distance_m(Zone.geom, near)
        rows = (await session.execute(select(Zone, distance).where(*where)
                                      .order_by(distance, *order).limit(limit).offset(offset)))
        return [(zone, float(d)) for zone, d in rows.all()], int(total)
    zones = (await session.execute(select(Zone).where(*where).order_by(*order)
                                   .limit(limit).offset(offset))).scalars()
    return [(zone, None) for zone in zones], int(total)


async def update(*, session: AsyncSession, zone: Zone, data: ZoneUpdate, actor: Actor) -> Zone:
    changes = data.model_dump(exclude_unset=True)
    geometry = changes.pop("geometry", None)
    if geometry is not None:
        await lock_zone_map(session=session, tenant_id=zone.tenant_id, exclusive=True)
    before = snapshot(zone)
    code = changes.get("code")
    if code and code != zone.code and await _code_taken(session, zone.tenant_id, code,
                                                          exclude=zone.id):
        raise Conflict(f"A zone with code '{code}' already exists")
    for key, value in changes.items():
        setattr(zone, key, value)
    if geometry is not None:
        zone.geom = from_shape(shape(geometry), srid=geo.SRID)
    await session.flush()
    moved = await reassign_assets(session=session, zone=zone) if geometry is not None else 0
    await session.refresh(zone)
    await audit.record(session=session, actor=actor, action="zone.update",
                       tenant_id=zone.tenant_id, target_type="zone", target_id=zone.id,
                       before=before, after=snapshot(zone),
                       detail=_reassigned(moved) if geometry is not None else None)
    return zone


async def set_deleted(*, session: AsyncSession, zone: Zone, deleted: bool,
                      actor: Actor) -> Zone:
    """Soft-delete or restore; either way the affected assets change zone at once."""
    await lock_zone_map(session=session, tenant_id=zone.tenant_id, exclusive=True)
    if not deleted and zone.deleted_at is not None and await _code_taken(
            session, zone.tenant_id, zone.code, exclude=zone.id):
        raise Conflict(f"Another live zone has code '{zone.code}'; change or delete it "
                       "before restoring this one")
    before = snapshot(zone)
    zone.deleted_at = datetime.now(UTC) if deleted else None
    await session.flush()
    moved = await reassign_assets(session=session, zone=zone)
    await session.refresh(zone)
    await audit.record(session=session, actor=actor,
                       action="zone.delete" if deleted else "zone.restore",
                       tenant_id=zone.tenant_id, target_type="zone", target_id=zone.id,
                       before=before, after=snapshot(zone), detail=_reassigned(moved))
    return zone
