"""Migrations: up, down and up again on an empty database, with every table and extension."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from civitas_ray.config import get_settings
from civitas_ray.db import migrate
from civitas_ray.db.models import Base

pytestmark = [pytest.mark.db, pytest.mark.slow]


async def _admin(db: str = "postgres") -> asyncpg.Connection:
    s = get_settings().database
    return await asyncpg.connect(host=s.host, port=s.port, user=s.admin_user,
                                 password=s.admin_password.get_secret_value() or None,
                                 database=db)


def _url(db: str) -> str:
    s = get_settings().database
    return s.admin_url.rsplit("/", 1)[0] + "/" + db


async def _tables(db: str) -> set[str]:
    conn = await _admin(db)
    try:
        rows = await conn.fetch("select tablename from pg_tables where schemaname = 'public'")
        return {r["tablename"] for r in rows} - {"spatial_ref_sys", "alembic_version"}
    finally:
        await conn.close()


async def _extensions(db: str) -> set[str]:
    conn = await _admin(db)
    try:
        return {r["extname"] for r in await conn.fetch("select extname from pg_extension")}
    finally:
        await conn.close()


def test_upgrade_downgrade_upgrade_on_empty_database() -> None:
    name = "civitas_mig_" + uuid.uuid4().hex[:8]

    async def create() -> None:
        conn = await _admin()
        await conn.execute(f'create database "{name}"')
        await conn.close()

    async def drop() -> None:
        conn = await _admin()
        await conn.execute(f'drop database if exists "{name}" with (force)')
        await conn.close()

    asyncio.run(create())
    try:
        expected = set(Base.metadata.tables)
        migrate.upgrade("head", url=_url(name))
        assert asyncio.run(_tables(name)) == expected
        assert {"postgis", "timescaledb", "vector"} <= asyncio.run(_extensions(name))
        migrate.downgrade("base", url=_url(name))
        assert asyncio.run(_tables(name)) == set()
        migrate.upgrade("head", url=_url(name))
        assert asyncio.run(_tables(name)) == expected
    finally:
        asyncio.run(drop())


async def test_schema_conventions(migrated_db: str) -> None:
    conn = await _admin(migrated_db)
    try:
        hyper = {r["hypertable_name"] for r in await conn.fetch(
            "select hypertable_name from timescaledb_information.hypertables")}
        assert {"telemetry", "telemetry_rollup"} <= hyper
        idx = {r["indexname"]: r["indexdef"] for r in await conn.fetch(
            "select indexname, indexdef from pg_indexes where schemaname = 'public'")}
        assert "USING gist" in idx["ix_zone_geom"] and "USING gist" in idx["ix_asset_geom"]
        assert "USING hnsw" in idx["ix_document_chunk_embedding_hnsw"]
        srids = {r["f_table_name"]: r["srid"] for r in await conn.fetch(
            "select f_table_name, srid from geometry_columns")}
        assert srids == {"zone": 4326, "asset": 4326, "gtfs_stop": 4326, "gtfs_shape": 4326}
        # Primary keys are UUIDs everywhere except the time series' natural keys.
        rows = await conn.fetch(
            "select c.table_name, c.data_type from information_schema.columns c "
            "where c.table_schema = 'public' and c.column_name = 'id'")
        assert rows and all(r["data_type"] == "uuid" for r in rows)
        names = [r["conname"] for r in await conn.fetch(
            "select conname from pg_constraint c join pg_namespace n on n.oid = c.connamespace "
            "join pg_class r on r.oid = c.conrelid where n.nspname = 'public' "
            "and contype in ('p','f','u') and r.relname = any($1::text[])",
            list(Base.metadata.tables))]
        assert all(n.startswith(("pk_", "fk_", "uq_")) for n in names), names
    finally:
        await conn.close()
