"""/api/v1/users and /api/v1/api-keys of the caller's tenant."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.models import ApiKey, AppUser
from civitas_ray.auth.permissions import Perm, RoleName
from civitas_ray.errors import Forbidden
from civitas_ray.schemas import Page, page_of
from civitas_ray.users import service
from civitas_ray.users.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    UserCreate,
    UserRead,
    UserUpdate,
)

users_router = APIRouter(prefix="/users", tags=["users"])
api_keys_router = APIRouter(prefix="/api-keys", tags=["api-keys"])

UserSort = Literal["email", "-email", "created_at", "-created_at", "role", "-role",
                   "full_name", "-full_name"]


def _guard_role_grant(ctx: AuthContext, role: RoleName | None) -> None:
    if role == RoleName.PLATFORM_ADMIN and not ctx.principal.is_platform_admin:
        raise Forbidden("Only a platform admin can grant the platform_admin role")


@users_router.get("", response_model=Page[UserRead], summary="List users",
                  **needs(Perm.USERS_READ))
async def list_users(
    ctx: AuthDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0, role: RoleName | None = None,
    q: Annotated[str | None, Query(max_length=200, description="Search e-mail and name")] = None,
    sort: UserSort = "email", include_deleted: bool = False,
) -> dict[str, object]:
    rows, total = await service.list_(session=ctx.session, limit=limit, offset=offset,
                                      role=role, q=q, sort=sort, include_deleted=include_deleted)
    return page_of(rows, total=total, limit=limit, offset=offset)


@users_router.post("", response_model=UserRead, status_code=status.HTTP_201_CREATED,
                   summary="Create a user", **needs(Perm.USERS_WRITE))
async def create_user(ctx: AuthDep, body: UserCreate) -> AppUser:
    _guard_role_grant(ctx, body.role)
    return await service.create(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                data=body, actor=ctx.actor)


@users_router.get("/{user_id}", response_model=UserRead, summary="One user",
                  **needs(Perm.USERS_READ))
async def get_user(ctx: AuthDep, user_id: uuid.UUID) -> AppUser:
    return await service.require(session=ctx.session, user_id=user_id)


@users_router.patch("/{user_id}", response_model=UserRead, summary="Change a user",
                    **needs(Perm.USERS_WRITE))
async def update_user(ctx: AuthDep, user_id: uuid.UUID, body: UserUpdate) -> AppUser:
    _guard_role_grant(ctx, body.role)
    user = await service.require(session=ctx.session, user_id=user_id)
    if user.role == RoleName.PLATFORM_ADMIN and not ctx.principal.is_platform_admin:
        raise Forbidden("Only a platform admin can change a platform admin")
    return await service.update(session=ctx.session, user=user, data=body, actor=ctx.actor)


@users_router.delete("/{user_id}", response_model=UserRead, summary="Soft-delete a user",
                     **needs(Perm.USERS_WRITE))
async def delete_user(ctx: AuthDep, user_id: uuid.UUID) -> AppUser:
    user = await service.require(session=ctx.session, user_id=user_id)
    if user.id == ctx.principal.id:
        raise Forbidden("You cannot delete your own account")
    if user.role == RoleName.PLATFORM_ADMIN and not ctx.principal.is_platform_admin:
        raise Forbidden("Only a platform admin can delete a platform admin")
    return await service.set_deleted(session=ctx.session, user=user, deleted=True,
                                     actor=ctx.actor)


@users_router.post("/{user_id}/restore", response_model=UserRead,
                   summary="Undo a user's deletion", **needs(Perm.USERS_WRITE))
async def restore_user(ctx: AuthDep, user_id: uuid.UUID) -> AppUser:
    user = await service.require(session=ctx.session, user_id=user_id, include_deleted=True)
    return await service.set_deleted(session=ctx.session, user=user, deleted=False,
                                     actor=ctx.actor)


@api_keys_router.get("", response_model=Page[ApiKeyRead], summary="List device API keys",
                     **needs(Perm.API_KEYS_READ))
async def list_api_keys(ctx: AuthDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        offset: Annotated[int, Query(ge=0)] = 0,
                        include_revoked: bool = False) -> dict[str, object]:
    rows, total = await service.list_api_keys(session=ctx.session, limit=limit, offset=offset,
                                              include_revoked=include_revoked)
    return page_of(rows, total=total, limit=limit, offset=offset)


@api_keys_router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED,
                      summary="Create a device API key (ingest only); the key is shown once",
                      **needs(Perm.API_KEYS_WRITE))
async def create_api_key(ctx: AuthDep, body: ApiKeyCreate) -> dict[str, object]:
    row, key = await service.create_api_key(
        session=ctx.session, tenant_id=ctx.principal.tenant_id, data=body, actor=ctx.actor,
        created_by=ctx.principal.id if ctx.principal.kind == "user" else None)
    return {**ApiKeyRead.model_validate(row).model_dump(), "key": key}


@api_keys_router.delete("/{key_id}", response_model=ApiKeyRead, summary="Revoke an API key",
                        **needs(Perm.API_KEYS_WRITE))
async def revoke_api_key(ctx: AuthDep, key_id: uuid.UUID) -> ApiKey:
    return await service.revoke_api_key(session=ctx.session, key_id=key_id, actor=ctx.actor)
