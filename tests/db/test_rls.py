"""Row-level security: PostgreSQL itself hides other tenants' rows from the app role."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit.service import SYSTEM_ACTOR
from civitas_ray.db.base import TENANT_TABLES
from civitas_ray.db.session import set_context
from civitas_ray.tenants import service as tenants
from civitas_ray.tenants.schemas import TenantCreate
from civitas_ray.users import service as users
from civitas_ray.users.schemas import UserCreate

pytestmark = pytest.mark.db
PASSWORD = "Quiet-Harbour-Lamp-63"


async def _two_tenants(s: AsyncSession) -> tuple[uuid.UUID, uuid.UUID]:
    await set_context(s, tenant_id=None, system=True)
    ids = []
    for _ in range(2):
        slug = "rls-" + uuid.uuid4().hex[:8]
        t = await tenants.create(session=s, data=TenantCreate(slug=slug, name=slug),
                                 actor=SYSTEM_ACTOR)
        await set_context(s, tenant_id=t.id)
        await users.create(session=s, tenant_id=t.id, actor=SYSTEM_ACTOR, data=UserCreate(
            email=f"u@{slug}.example.org", password=PASSWORD, role="viewer"))
        await set_context(s, tenant_id=None, system=True)
        ids.append(t.id)
    return ids[0], ids[1]


async def test_raw_sql_in_other_tenant_context_sees_nothing(db_session: AsyncSession) -> None:
    a, b = await _two_tenants(db_session)
    await set_context(db_session, tenant_id=b)
    rows = (await db_session.execute(
        text("select count(*) from app_user where tenant_id = :a"), {"a": a})).scalar()
    assert rows == 0
    rows = (await db_session.execute(
        text("select count(*) from audit_log where tenant_id = :a"), {"a": a})).scalar()
    assert rows == 0
    assert (await db_session.execute(
        text("select count(*) from tenant where id = :a"), {"a": a})).scalar() == 0
    # Its own rows are visible.
    assert (await db_session.execute(
        text("select count(*) from app_user where tenant_id = :b"), {"b": b})).scalar() == 1


async def test_no_tenant_context_sees_nothing(db_session: AsyncSession) -> None:
    await _two_tenants(db_session)
    await set_context(db_session, tenant_id=None)
    for table in ["tenant", *TENANT_TABLES, "audit_log"]:
        n = (await db_session.execute(text(f"select count(*) from {table}"))).scalar()
        assert n == 0, f"{table} leaks {n} rows without a tenant context"


async def test_cannot_write_into_another_tenant(db_session: AsyncSession) -> None:
    a, b = await _two_tenants(db_session)
    await set_context(db_session, tenant_id=b)
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db_session.begin_nested():
            await db_session.execute(text(
                "insert into zone (tenant_id, name, code, kind, geom) values (:a, 'x', 'x', "
                "'district', ST_Multi(ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 1,0 0))', 4326)))"),
                {"a": a})
    await set_context(db_session, tenant_id=b)
    # Updating another tenant's rows silently matches nothing.
    res = await db_session.execute(
        text("update app_user set full_name = 'pwned' where tenant_id = :a"), {"a": a})
    assert res.rowcount == 0


async def test_every_tenant_table_has_forced_rls(db_session: AsyncSession) -> None:
    rows = (await db_session.execute(text(
        "select relname, relrowsecurity, relforcerowsecurity from pg_class "
        "where relname = any(:t)"), {"t": ["tenant", *TENANT_TABLES]})).all()
    assert {r[0] for r in rows} == {"tenant", *TENANT_TABLES}
    assert all(r[1] and r[2] for r in rows), rows


async def test_app_role_cannot_bypass_rls(db_session: AsyncSession) -> None:
    row = (await db_session.execute(text(
        "select rolsuper, rolbypassrls from pg_roles where rolname = current_user"))).one()
    assert row == (False, False)


async def test_audit_log_is_append_only_for_the_app(db_session: AsyncSession) -> None:
    a, _ = await _two_tenants(db_session)
    await set_context(db_session, tenant_id=a)
    with pytest.raises(DBAPIError):
        async with db_session.begin_nested():
            await db_session.execute(text("update audit_log set action = 'x'"))
    with pytest.raises(DBAPIError):
        async with db_session.begin_nested():
            await db_session.execute(text("delete from audit_log"))
