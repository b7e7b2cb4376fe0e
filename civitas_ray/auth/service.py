"""Sign-in, refresh-token rotation with reuse detection, logout, login rate limits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.auth.models import AppUser, RefreshToken
from civitas_ray.auth.security import (
    burn_verify_time,
    check_password_policy,
    create_access_token,
    hash_password,
    new_refresh_token,
    sha256_hex,
    verify_password,
)
from civitas_ray.cache import get_redis
from civitas_ray.config import get_settings
from civitas_ray.db.session import set_context, tenant_session
from civitas_ray.errors import TooManyRequests, Unauthorized


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    access_expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user_id: uuid.UUID
    tenant_id: uuid.UUID


def _fail_keys(email: str, address: str | None) -> list[str]:
    keys = [f"civitas:login:fail:acct:{email.lower()}"]
    if address:
        keys.append(f"civitas:login:fail:addr:{address}")
    return keys


async def check_login_rate(email: str, address: str | None) -> None:
    """Refuse a sign-in while its account or its address has failed too often."""
    s = get_settings().auth
    redis = get_redis()
    limits = [s.login_max_failures, s.login_max_failures_per_address]
    keys = _fail_keys(email, address)
    values = await redis.mget(keys)
    for key, value, limit in zip(keys, values, limits, strict=False):
        if value is not None and int(value) >= limit:
            ttl = max(int(await redis.ttl(key)), 1)
            scope = "account" if ":acct:" in key else "address"
            raise TooManyRequests(
                f"Too many failed sign-ins for this {scope}; retry in {ttl} s",
                headers={"Retry-After": str(ttl)})


async def note_login_failure(email: str, address: str | None) -> None:
    window = get_settings().auth.login_window_s
    async with get_redis().pipeline(transaction=True) as pipe:
        for key in _fail_keys(email, address):
            pipe.incr(key)
            pipe.expire(key, window, nx=True)
        await pipe.execute()


async def clear_login_failures(email: str) -> None:
    await get_redis().delete(_fail_keys(email, None)[0])


async def _issue(session: AsyncSession, user: AppUser, *, family_id: uuid.UUID,
                 user_agent: str | None, address: str | None) -> IssuedTokens:
    s = get_settings().auth
    access, _ = create_access_token(settings=s, user_id=user.id, tenant_id=user.tenant_id,
                                    role=user.role)
    token, token_hash = new_refresh_token()
    session.add(RefreshToken(
        id=uuid.uuid4(), tenant_id=user.tenant_id, user_id=user.id, family_id=family_id,
        token_hash=token_hash, expires_at=datetime.now(UTC) + timedelta(
            seconds=s.refresh_token_ttl_s), user_agent=(user_agent or "")[:300] or None,
        address=address))
    await session.flush()
    return IssuedTokens(access, s.access_token_ttl_s, token, s.refresh_token_ttl_s,
                        user.id, user.tenant_id)


async def login(*, email: str, password: str, actor: Actor,
                user_agent: str | None) -> IssuedTokens:
    await check_login_rate(email, actor.address)
    async with tenant_session(None, system=True) as session:
        user = (await session.execute(select(AppUser).where(
            func.lower(AppUser.email) == email.lower(), AppUser.deleted_at.is_(None)))
        ).scalar_one_or_none()
        if user is None:
            burn_verify_time(password)
        ok = user is not None and user.is_active and verify_password(password, user.password_hash)
        if not ok:
            # Audited in its own committed transaction: the request itself fails.
            await audit.record(
                session=session, actor=Actor(type="anonymous", label=email[:320],
                                             request_id=actor.request_id, address=actor.address),
                action="auth.login_failed", tenant_id=user.tenant_id if user else None,
                target_type="user", target_id=user.id if user else None,
                detail="disabled account" if user and not user.is_active else "bad credentials")
        else:
            assert user is not None
            user.last_login_at = datetime.now(UTC)
            tokens = await _issue(session, user, family_id=uuid.uuid4(), user_agent=user_agent,
                                  address=actor.address)
            await audit.record(session=session, actor=Actor(
                type="user", id=str(user.id), label=user.email, request_id=actor.request_id,
                address=actor.address), action="auth.login", tenant_id=user.tenant_id,
                target_type="user", target_id=user.id)
    if not ok:
        await note_login_failure(email, actor.address)
        raise Unauthorized("Incorrect e-mail or password")
    await clear_login_failures(email)
    return tokens


async def refresh(*, token: str, actor: Actor, user_agent: str | None) -> IssuedTokens:
    """Rotate a refresh token; presenting an already-rotated one revokes its whole family."""
    now = datetime.now(UTC)
    reused = False
    async with tenant_session(None, system=True) as session:
        row = (await session.execute(
            select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(token))
            .with_for_update())).scalar_one_or_none()
        if row is None:
            raise Unauthorized("Unknown refresh token")
        user = (await session.execute(select(AppUser).where(AppUser.id == row.user_id))
                ).scalar_one_or_none()
        who = Actor(type="user", id=str(row.user_id), label=user.email if user else None,
                    request_id=actor.request_id, address=actor.address)
        if row.used_at is not None or row.revoked_at is not None:
            reused = row.used_at is not None
            await session.execute(update(RefreshToken).where(
                RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None)
            ).values(revoked_at=now))
            await audit.record(session=session, actor=who,
                               action="auth.refresh_reuse" if reused else "auth.refresh_revoked",
                               tenant_id=row.tenant_id, target_type="user",
                               target_id=row.user_id,
                               detail="an already-rotated refresh token was presented; "
                                      "its session family is revoked" if reused else
                                      "a revoked refresh token was presented")
        elif row.expires_at <= now or user is None or not user.is_active \
                or user.deleted_at is not None:
            raise Unauthorized("The refresh token has expired or the account is disabled")
        else:
            row.used_at = now
            tokens = await _issue(session, user, family_id=row.family_id,
                                  user_agent=user_agent, address=actor.address)
            await audit.record(session=session, actor=who, action="auth.refresh",
                               tenant_id=row.tenant_id, target_type="user",
                               target_id=row.user_id)
            return tokens
    raise Unauthorized("The refresh token was already used or revoked; sign in again")


async def logout(*, session: AsyncSession, user_id: uuid.UUID, tenant_id: uuid.UUID,
                 token: str | None, everywhere: bool, actor: Actor) -> int:
    now = datetime.now(UTC)
    stmt = update(RefreshToken).where(RefreshToken.user_id == user_id,
                                      RefreshToken.revoked_at.is_(None))
    if not everywhere:
        if not token:
            return 0
        family = (await session.execute(select(RefreshToken.family_id).where(
            RefreshToken.token_hash == sha256_hex(token), RefreshToken.user_id == user_id))
        ).scalar_one_or_none()
        if family is None:
            return 0
        stmt = stmt.where(RefreshToken.family_id == family)
    result = await session.execute(stmt.values(revoked_at=now))
    if everywhere:
        # Access tokens issued so far stop working too.
        await session.execute(update(AppUser).where(AppUser.id == user_id)
                              .values(password_changed_at=now))
    await audit.record(session=session, actor=actor, action="auth.logout", tenant_id=tenant_id,
                       target_type="user", target_id=user_id,
                       detail="everywhere" if everywhere else None)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def change_password(*, session: AsyncSession, user_id: uuid.UUID, current: str,
                          new: str, actor: Actor) -> None:
    user = (await session.execute(select(AppUser).where(AppUser.id == user_id))).scalar_one()
    if not verify_password(current, user.password_hash):
        raise Unauthorized("The current password is wrong")
    check_password_policy(new, email=user.email,
                          min_length=get_settings().auth.password_min_length)
    now = datetime.now(UTC)
    user.password_hash = hash_password(new)
    user.password_changed_at = now
    await session.execute(update(RefreshToken).where(
        RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)).values(revoked_at=now))
    await audit.record(session=session, actor=actor, action="auth.password_change",
                       tenant_id=user.tenant_id, target_type="user", target_id=user.id)


async def tenant_slug(session: AsyncSession, tenant_id: uuid.UUID) -> str | None:
    from civitas_ray.tenants.models import Tenant

    await set_context(session, tenant_id=tenant_id)
    return (await session.execute(select(Tenant.slug).where(Tenant.id == tenant_id))).scalar()
