"""Engines and sessions: every transaction runs in one tenant's context (or none).

Row-level security policies read two transaction-local settings:
`civitas.tenant_id` (the principal's tenant) and `civitas.system` ('on' only for the
few code paths that must look across tenants: login, API-key lookup, platform admin).
A transaction that sets neither sees no tenant-owned rows at all.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from civitas_ray.config import Settings, get_settings

_engine: AsyncEngine | None = None
_sessionmaker: async_sessionmaker[AsyncSession] | None = None


def make_engine(settings: Settings | None = None, *, admin: bool = False) -> AsyncEngine:
    s = settings or get_settings()
    db = s.database
    return create_async_engine(
        db.admin_url if admin else db.url,
        pool_size=db.pool_size,
        max_overflow=db.max_overflow,
        pool_pre_ping=True,
        connect_args={
            "server_settings": {
                "statement_timeout": str(db.statement_timeout_ms),
                "application_name": "civitas_ray",
            }
        },
    )


def get_engine() -> AsyncEngine:
    global _engine, _sessionmaker
    if _engine is None:
        # Every mapped class must be known before a flush resolves foreign keys, also in
        # processes (Ray actors) that imported only a few domains.
        import civitas_ray.db.models  # noqa: F401
        _engine = make_engine()
        _sessionmaker = async_sessionmaker(_engine, expire_on_commit=False)
    return _engine


def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


async def dispose_engine() -> None:
    global _engine, _sessionmaker
    if _engine is not None:
        await _engine.dispose()
    _engine = None
    _sessionmaker = None


async def set_context(
    session: AsyncSession, *, tenant_id: uuid.UUID | None, system: bool = False
) -> None:
    """Bind the current transaction to a tenant; settings end with the transaction."""
    await session.execute(
        text(
            "select set_config('civitas.tenant_id', :tenant, true), "
            "set_config('civitas.system', :system, true)"
        ),
        {"tenant": str(tenant_id) if tenant_id else "", "system": "on" if system else "off"},
    )


@asynccontextmanager
async def tenant_session(
    tenant_id: uuid.UUID | None, *, system: bool = False
) -> AsyncIterator[AsyncSession]:
    """A session in one transaction, committed on success, in a tenant's context."""
    async with get_sessionmaker()() as session, session.begin():
        await set_context(session, tenant_id=tenant_id, system=system)
        yield session
