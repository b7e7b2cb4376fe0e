"""Shared helpers for the benchmarks: a dedicated database, a tenant with assets, servers."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH_DB = os.environ.get("CIVITAS_BENCH_DB", "civitas_bench")
os.environ["CIVITAS_DATABASE__NAME"] = BENCH_DB
os.environ.setdefault("CIVITAS_LOG_LEVEL", "WARNING")


def machine() -> str:
    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {cpus} cores, {mem:.0f} GiB, Python {platform.python_version()}"


async def ensure_database() -> None:
    from civitas_ray.config import get_settings

    s = get_settings().database
    conn = await asyncpg.connect(s.admin_dsn.rsplit("/", 1)[0] + "/postgres")
    exists = await conn.fetchval("select 1 from pg_database where datname = $1", BENCH_DB)
    if not exists:
        await conn.execute(f'create database "{BENCH_DB}"')
    await conn.close()
    from civitas_ray.db import migrate

    await asyncio.to_thread(migrate.upgrade, "head")


async def make_tenant_with_assets(n_assets: int) -> tuple[uuid.UUID, list[uuid.UUID], str]:
    """A fresh tenant, `n_assets` sensors (bulk SQL: setup is not what we measure), a key."""
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.config import get_settings
    from civitas_ray.db.session import set_context, tenant_session
    from civitas_ray.tenants import service as tenants
    from civitas_ray.tenants.schemas import TenantCreate
    from civitas_ray.users import service as users
    from civitas_ray.users.schemas import ApiKeyCreate

    slug = "bench-" + uuid.uuid4().hex[:8]
    async with tenant_session(None, system=True) as s:
        t = await tenants.create(session=s, data=TenantCreate(slug=slug, name=slug),
                                 actor=SYSTEM_ACTOR)
        await set_context(s, tenant_id=t.id)
        _, key = await users.create_api_key(session=s, tenant_id=t.id,
                                            data=ApiKeyCreate(name="bench"),
                                            actor=SYSTEM_ACTOR, created_by=None)
    from civitas_ray.db.session import dispose_engine

    await dispose_engine()
    ids = [uuid.uuid4() for _ in range(n_assets)]
    conn = await asyncpg.connect(get_settings().database.admin_dsn)
    await conn.execute(
        "insert into asset (id, tenant_id, name, kind, geom) select a, $1, 'bench sensor', "
        "'sensor', ST_SetSRID(ST_MakePoint(-73.98, 40.75), 4326) from unnest($2::uuid[]) a",
        t.id, ids)
    await conn.close()
    return t.id, ids, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_server(port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """The FastAPI app on plain uvicorn (one worker), as a subprocess."""
    cmd = [sys.executable, "-m", "uvicorn", "civitas_ray.api.app:create_app", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
           "--no-access-log", "--loop", "uvloop", "--http", "httptools"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def run_on_local_ray(namespace: str, coro: Any) -> None:
    """Run `coro` with a fresh local Ray (never a running cluster) in `namespace`."""
    import ray

    from civitas_ray.config import get_settings

    get_settings().ray.namespace = namespace
    ray.init(address="local", namespace=namespace, include_dashboard=False, num_cpus=2,
             log_to_driver=False, configure_logging=False)
    try:
        asyncio.run(coro)
    finally:
        ray.shutdown()
