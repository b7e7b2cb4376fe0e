"""Tenants: created by platform admins (or the CLI), soft-deleted, restorable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.errors import Conflict, NotFound
from civitas_ray.tenants.models import Tenant
from civitas_ray.tenants.schemas import TenantCreate, TenantRead, TenantUpdate


def snapshot(t: Tenant) -> dict[str, object]:
    return TenantRead.model_validate(t).model_dump(mode="json")


async def get(*, session: AsyncSession, tenant_id: uuid.UUID,
              include_deleted: bool = False) -> Tenant | None:
    q = select(Tenant).where(Tenant.id == tenant_id)
    if not include_deleted:
        q = q.where(Tenant.deleted_at.is_(None))
    return (await session.execute(q)).scalar_one_or_none()


async def get_by_slug(*, session: AsyncSession, slug: str) -> Tenant | None:
    q = select(Tenant).where(Tenant.slug == slug, Tenant.deleted_at.is_(None))
    return (await session.execute(q)).scalar_one_or_none()


async def require(*, session: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    tenant = await get(session=session, tenant_id=tenant_id)
    if tenant is None:
        raise NotFound(f"Tenant {tenant_id} not found")
    return tenant


async def create(*, session: AsyncSession, data: TenantCreate, actor: Actor) -> Tenant:
    """Needs a system-scoped session: the new tenant is outside the caller's own."""
    existing = (await session.execute(select(Tenant).where(Tenant.slug == data.slug))).scalar()
    if existing is not None:
        raise Conflict(f"A tenant with slug '{data.slug}' already exists")
    tenant = Tenant(id=uuid.uuid4(), slug=data.slug, name=data.name, settings=data.settings)
    session.add(tenant)
    await session.flush()
    await session.refresh(tenant)
    await audit.record(session=session, actor=actor, action="tenant.create", tenant_id=None,
                       target_type="tenant", target_id=tenant.id, after=snapshot(tenant))
    return tenant


async def list_(*, session: AsyncSession, limit: int, offset: int,
                include_deleted: bool = False) -> tuple[list[Tenant], int]:
    q = select(Tenant)
    if not include_deleted:
        q = q.where(Tenant.deleted_at.is_(None))
    total = (await session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = (await session.execute(q.order_by(Tenant.slug).limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def update(*, session: AsyncSession, tenant: Tenant, data: TenantUpdate,
                 actor: Actor) -> Tenant:
    before = snapshot(tenant)
    for key, value in data.model_dump(exclude_unset=True).items():
        setattr(tenant, key, value)
    await session.flush()
    await session.refresh(tenant)
    await audit.record(session=session, actor=actor, action="tenant.update",
                       tenant_id=tenant.id, target_type="tenant", target_id=tenant.id,
                       before=before, after=snapshot(tenant))
    return tenant


async def set_deleted(*, session: AsyncSession, tenant: Tenant, deleted: bool,
                      actor: Actor) -> Tenant:
    before = snapshot(tenant)
    tenant.deleted_at = datetime.now(UTC) if deleted else None
    await session.flush()
    await session.refresh(tenant)
    await audit.record(session=session, actor=actor,
                       action="tenant.delete" if deleted else "tenant.restore",
                       tenant_id=None, target_type="tenant", target_id=tenant.id,
                       before=before, after=snapshot(tenant))
    return tenant
