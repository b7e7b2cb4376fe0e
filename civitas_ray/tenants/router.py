"""/api/v1/tenants: platform admins manage every tenant; others see their own."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from civitas_ray.auth.deps import AuthContext, AuthDep, needs, platform_scope
from civitas_ray.auth.permissions import Perm
from civitas_ray.errors import NotFound
from civitas_ray.schemas import Page, page_of
from civitas_ray.tenants import service
from civitas_ray.tenants.models import Tenant
from civitas_ray.tenants.schemas import TenantCreate, TenantRead, TenantUpdate

router = APIRouter(prefix="/tenants", tags=["tenants"])


async def _visible(ctx: AuthContext, tenant_id: uuid.UUID, *, deleted: bool = False) -> Tenant:
    if ctx.principal.is_platform_admin:
        await platform_scope(ctx)
    elif tenant_id != ctx.principal.tenant_id:
        raise NotFound(f"Tenant {tenant_id} not found")
    tenant = await service.get(session=ctx.session, tenant_id=tenant_id, include_deleted=deleted)
    if tenant is None:
        raise NotFound(f"Tenant {tenant_id} not found")
    return tenant


@router.get("", response_model=Page[TenantRead], summary="List every tenant",
            **needs(Perm.TENANTS_ADMIN))
async def list_tenants(ctx: AuthDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       offset: Annotated[int, Query(ge=0)] = 0,
                       include_deleted: bool = False) -> dict[str, object]:
    await platform_scope(ctx)
    rows, total = await service.list_(session=ctx.session, limit=limit, offset=offset,
                                      include_deleted=include_deleted)
    return page_of(rows, total=total, limit=limit, offset=offset)


@router.post("", response_model=TenantRead, status_code=status.HTTP_201_CREATED,
             summary="Create a tenant", **needs(Perm.TENANTS_ADMIN))
async def create_tenant(ctx: AuthDep, body: TenantCreate) -> Tenant:
    await platform_scope(ctx)
    return await service.create(session=ctx.session, data=body, actor=ctx.actor)


@router.get("/current", response_model=TenantRead, summary="The caller's own tenant",
            **needs(Perm.TENANT_READ))
async def current_tenant(ctx: AuthDep) -> Tenant:
    return await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id)


@router.get("/{tenant_id}", response_model=TenantRead, summary="One tenant",
            **needs(Perm.TENANT_READ))
async def get_tenant(ctx: AuthDep, tenant_id: uuid.UUID) -> Tenant:
    return await _visible(ctx, tenant_id)


@router.patch("/{tenant_id}", response_model=TenantRead, summary="Change a tenant",
              **needs(Perm.TENANT_WRITE))
async def update_tenant(ctx: AuthDep, tenant_id: uuid.UUID, body: TenantUpdate) -> Tenant:
    tenant = await _visible(ctx, tenant_id)
    return await service.update(session=ctx.session, tenant=tenant, data=body, actor=ctx.actor)


@router.delete("/{tenant_id}", response_model=TenantRead, summary="Soft-delete a tenant",
               **needs(Perm.TENANTS_ADMIN))
async def delete_tenant(ctx: AuthDep, tenant_id: uuid.UUID) -> Tenant:
    tenant = await _visible(ctx, tenant_id)
    return await service.set_deleted(session=ctx.session, tenant=tenant, deleted=True,
                                     actor=ctx.actor)


@router.post("/{tenant_id}/restore", response_model=TenantRead,
             summary="Undo a tenant's deletion", **needs(Perm.TENANTS_ADMIN))
async def restore_tenant(ctx: AuthDep, tenant_id: uuid.UUID) -> Tenant:
    tenant = await _visible(ctx, tenant_id, deleted=True)
    return await service.set_deleted(session=ctx.session, tenant=tenant, deleted=False,
                                     actor=ctx.actor)
