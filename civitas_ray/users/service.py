"""Users and device API keys of one tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.auth.deps import forget_api_key
from civitas_ray.auth.models import ApiKey, AppUser
from civitas_ray.auth.permissions import API_KEY_PERMISSIONS
from civitas_ray.auth.security import check_password_policy, hash_password, new_api_key
from civitas_ray.config import get_settings
from civitas_ray.errors import Conflict, NotFound
from civitas_ray.users.schemas import ApiKeyCreate, ApiKeyRead, UserCreate, UserRead, UserUpdate

SORTABLE = {"email": AppUser.email, "created_at": AppUser.created_at, "role": AppUser.role,
            "full_name": AppUser.full_name}


def snapshot(user: AppUser) -> dict[str, object]:
    return UserRead.model_validate(user).model_dump(mode="json")


async def email_taken(*, session: AsyncSession, email: str) -> bool:
    """Checked in the system scope: e-mail addresses are unique across tenants."""
    q = select(func.count()).select_from(AppUser).where(
        func.lower(AppUser.email) == email.lower(), AppUser.deleted_at.is_(None))
    return bool((await session.execute(q)).scalar_one())


async def create(*, session: AsyncSession, tenant_id: uuid.UUID, data: UserCreate,
                 actor: Actor) -> AppUser:
    check_password_policy(data.password, email=data.email,
                          min_length=get_settings().auth.password_min_length)
    existing = (await session.execute(select(AppUser.id).where(
        func.lower(AppUser.email) == data.email.lower(), AppUser.deleted_at.is_(None)))).first()
    if existing is not None:
        raise Conflict(f"A user with e-mail {data.email} already exists")
    user = AppUser(id=uuid.uuid4(), tenant_id=tenant_id, email=data.email.lower(),
                   full_name=data.full_name, password_hash=hash_password(data.password),
                   role=str(data.role), is_active=True)
    session.add(user)
    await session.flush()
    await session.refresh(user)
    await audit.record(session=session, actor=actor, action="user.create", tenant_id=tenant_id,
                       target_type="user", target_id=user.id, after=snapshot(user))
    return user


async def get(*, session: AsyncSession, user_id: uuid.UUID,
              include_deleted: bool = False) -> AppUser | None:
    q = select(AppUser).where(AppUser.id == user_id)
    if not include_deleted:
        q = q.where(AppUser.deleted_at.is_(None))
    return (await session.execute(q)).scalar_one_or_none()


async def require(*, session: AsyncSession, user_id: uuid.UUID,
                  include_deleted: bool = False) -> AppUser:
    user = await get(session=session, user_id=user_id, include_deleted=include_deleted)
    if user is None:
        raise NotFound(f"User {user_id} not found")
    return user


async def list_(*, session: AsyncSession, limit: int, offset: int, role: str | None = None,
                q: str | None = None, sort: str = "email",
                include_deleted: bool = False) -> tuple[list[AppUser], int]:
    stmt = select(AppUser)
    if not include_deleted:
        stmt = stmt.where(AppUser.deleted_at.is_(None))
    if role:
        stmt = stmt.where(AppUser.role == role)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(func.lower(AppUser.email).like(like)
                          | func.lower(AppUser.full_name).like(like))
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    desc = sort.startswith("-")
    col = SORTABLE[sort.lstrip("-")]
    stmt = stmt.order_by(col.desc() if desc else col.asc(), AppUser.id)
    rows = (await session.execute(stmt.limit(limit).offset(offset))).scalars().all()
    return list(rows), int(total)


async def update(*, session: AsyncSession, user: AppUser, data: UserUpdate,
                 actor: Actor) -> AppUser:
    before = snapshot(user)
    changes = data.model_dump(exclude_unset=True)
    if "password" in changes:
        password = changes.pop("password")
        check_password_policy(password, email=user.email,
                              min_length=get_settings().auth.password_min_length)
        user.password_hash = hash_password(password)
        user.password_changed_at = datetime.now(UTC)
    for key, value in changes.items():
        setattr(user, key, str(value) if key == "role" else value)
    if changes.get("is_active") is False or "role" in changes:
        # Tokens issued before the change stop working at once.
        user.password_changed_at = datetime.now(UTC)
    await session.flush()
    await session.refresh(user)
    await audit.record(session=session, actor=actor, action="user.update",
                       tenant_id=user.tenant_id, target_type="user", target_id=user.id,
                       before=before, after=snapshot(user),
                       detail="password changed" if data.password else None)
    return user


async def set_deleted(*, session: AsyncSession, user: AppUser, deleted: bool,
                      actor: Actor) -> AppUser:
    before = snapshot(user)
    user.deleted_at = datetime.now(UTC) if deleted else None
    if deleted:
        user.password_changed_at = datetime.now(UTC)
    await session.flush()
    await session.refresh(user)
    await audit.record(session=session, actor=actor,
                       action="user.delete" if deleted else "user.restore",
                       tenant_id=user.tenant_id, target_type="user", target_id=user.id,
                       before=before, after=snapshot(user))
    return user


async def create_api_key(*, session: AsyncSession, tenant_id: uuid.UUID, data: ApiKeyCreate,
                         actor: Actor, created_by: uuid.UUID | None) -> tuple[ApiKey, str]:
    key, prefix, key_hash = new_api_key()
    row = ApiKey(id=uuid.uuid4(), tenant_id=tenant_id, name=data.name, prefix=prefix,
                 key_hash=key_hash, scopes=sorted(str(p) for p in API_KEY_PERMISSIONS),
                 asset_ids=data.asset_ids, expires_at=data.expires_at, created_by=created_by)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    await audit.record(session=session, actor=actor, action="api_key.create",
                       tenant_id=tenant_id, target_type="api_key", target_id=row.id,
                       after=ApiKeyRead.model_validate(row).model_dump(mode="json"))
    return row, key


async def list_api_keys(*, session: AsyncSession, limit: int, offset: int,
                        include_revoked: bool = False) -> tuple[list[ApiKey], int]:
    stmt = select(ApiKey)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    rows = (await session.execute(
        stmt.order_by(ApiKey.created_at.desc(), ApiKey.id).limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def revoke_api_key(*, session: AsyncSession, key_id: uuid.UUID, actor: Actor) -> ApiKey:
    row = (await session.execute(select(ApiKey).where(ApiKey.id == key_id))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    if row.revoked_at is None:
        before = ApiKeyRead.model_validate(row).model_dump(mode="json")
        row.revoked_at = datetime.now(UTC)
        forget_api_key(row.key_hash)
        await session.flush()
        await session.refresh(row)
        await audit.record(session=session, actor=actor, action="api_key.revoke",
                           tenant_id=row.tenant_id, target_type="api_key", target_id=row.id,
                           before=before,
                           after=ApiKeyRead.model_validate(row).model_dump(mode="json"))
    return row
