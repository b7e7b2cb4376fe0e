"""Request dependencies: who is calling, in which tenant, with which session.

`AuthDep` authenticates (bearer JWT or device `X-API-Key`), opens one transaction
bound to the principal's tenant (row-level security) and commits it when the route
returns, before the response is sent. `needs(Perm.X)` declares and enforces the one
permission a route requires; the declaration shows in OpenAPI as `x-permission`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit.service import Actor
from civitas_ray.auth.models import ApiKey, AppUser
from civitas_ray.auth.permissions import API_KEY_PERMISSIONS, ROLE_PERMISSIONS, Perm, RoleName
from civitas_ray.auth.security import decode_access_token, sha256_hex
from civitas_ray.config import get_settings
from civitas_ray.db.session import get_sessionmaker, set_context
from civitas_ray.errors import Forbidden, Unauthorized
from civitas_ray.logging import request_id_var

log = logging.getLogger(__name__)
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Device API key (ingest only)")


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "user" or "api_key"
    id: uuid.UUID
    tenant_id: uuid.UUID
    label: str
    role: str | None
    permissions: frozenset[Perm]
    asset_ids: frozenset[uuid.UUID] | None = None

    @property
    def is_platform_admin(self) -> bool:
        return self.role == RoleName.PLATFORM_ADMIN

    def can(self, perm: Perm) -> bool:
        return perm in self.permissions


@dataclass(slots=True)
class AuthContext:
    principal: Principal
    session: AsyncSession
    actor: Actor
    post_commit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def after_commit(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` once the request's transaction has committed (events, cache drops)."""
        self.post_commit.append(fn)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def principal_from_token(session: AsyncSession, token: str) -> Principal:
    """The user behind an access token, re-checked against the database (HTTP and WS)."""
    claims = decode_access_token(token, settings=get_settings().auth)
    await set_context(session, tenant_id=claims.tenant_id)
    user = (await session.execute(
        select(AppUser).where(AppUser.id == claims.user_id, AppUser.deleted_at.is_(None))
    )).scalar_one_or_none()
    if user is None or not user.is_active:
        raise Unauthorized("The account no longer exists or is disabled")
    # A password change (or a forced logout) invalidates tokens issued before it.
    if int(user.password_changed_at.timestamp()) > int(claims.issued_at.timestamp()):
        raise Unauthorized("The token predates a password change; sign in again")
    return Principal(kind="user", id=user.id, tenant_id=user.tenant_id, label=user.email,
                     role=user.role, permissions=ROLE_PERMISSIONS.get(user.role, frozenset()))


async def _principal_from_api_key(session: AsyncSession, key: str) -> Principal:
    # The key names no tenant, so its lookup is the one cross-tenant read here.
    await set_context(session, tenant_id=None, system=True)
    now = datetime.now(UTC)
    row = (await session.execute(
        select(ApiKey).where(ApiKey.key_hash == sha256_hex(key)))).scalar_one_or_none()
    if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
        raise Unauthorized("Invalid, revoked or expired API key",
                           headers={"WWW-Authenticate": "ApiKey"})
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    await set_context(session, tenant_id=row.tenant_id)
    perms = frozenset(Perm(s) for s in row.scopes if s in Perm.__members__.values())
    return Principal(kind="api_key", id=row.id, tenant_id=row.tenant_id, label=row.name,
                     role=None, permissions=perms & API_KEY_PERMISSIONS,
                     asset_ids=frozenset(row.asset_ids) if row.asset_ids else None)


async def _auth_context(
    request: Request,
    token: Annotated[str | None, Security(oauth2_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> AsyncIterator[AuthContext]:
    async with get_sessionmaker()() as session, session.begin():
        if token:
            principal = await principal_from_token(session, token)
        elif api_key:
            principal = await _principal_from_api_key(session, api_key)
        else:
            raise Unauthorized("Authentication required: a bearer token or an X-API-Key")
        request.state.principal = principal
        actor = Actor(type=principal.kind, id=str(principal.id), label=principal.label,
                      request_id=request_id_var.get(), address=client_address(request))
        ctx = AuthContext(principal=principal, session=session, actor=actor)
        yield ctx
    for fn in ctx.post_commit:
        try:
            await fn()
        except Exception:
            log.exception("post-commit action failed")


AuthDep = Annotated[AuthContext, Depends(_auth_context, scope="function")]

# Device keys seen recently, by hash: the ingest hot path then needs no database round
# trip to authenticate. A revocation is immediate in the process that revoked the key
# and takes effect elsewhere within the TTL.
API_KEY_CACHE_TTL_S = 10.0
_api_key_cache: dict[str, tuple[float, Principal]] = {}


def forget_api_key(key_hash: str | None = None) -> None:
    if key_hash is None:
        _api_key_cache.clear()
    else:
        _api_key_cache.pop(key_hash, None)


async def _principal_only(
    request: Request,
    token: Annotated[str | None, Security(oauth2_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    """Authenticate without holding a session for the request (hot paths)."""
    if api_key and not token:
        key_hash = sha256_hex(api_key)
        hit = _api_key_cache.get(key_hash)
        if hit is not None and time.monotonic() - hit[0] < API_KEY_CACHE_TTL_S:
            request.state.principal = hit[1]
            return hit[1]
    async with get_sessionmaker()() as session, session.begin():
        if token:
            principal = await principal_from_token(session, token)
        elif api_key:
            principal = await _principal_from_api_key(session, api_key)
            _api_key_cache[sha256_hex(api_key)] = (time.monotonic(), principal)
        else:
            raise Unauthorized("Authentication required: a bearer token or an X-API-Key")
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(_principal_only)]


def needs_principal(perm: Perm) -> dict[str, Any]:
    """Like `needs`, for routes that take a `PrincipalDep` and no request transaction."""

    async def check(principal: PrincipalDep) -> None:
        if not principal.can(perm):
            raise Forbidden(f"This action needs the '{perm}' permission")

    return {"dependencies": [Depends(check)], "openapi_extra": {"x-permission": str(perm)}}


def needs(perm: Perm) -> dict[str, Any]:
    """Route keyword arguments that declare and enforce one permission."""

    async def check(ctx: AuthDep) -> None:
        if not ctx.principal.can(perm):
            raise Forbidden(f"This action needs the '{perm}' permission")

    return {"dependencies": [Depends(check)], "openapi_extra": {"x-permission": str(perm)}}


async def platform_scope(ctx: AuthContext) -> None:
    """Widen the transaction to every tenant; only platform admins ever get here."""
    if not ctx.principal.is_platform_admin:
        raise Forbidden("Only platform admins act across tenants")
    await set_context(ctx.session, tenant_id=ctx.principal.tenant_id, system=True)
