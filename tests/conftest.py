"""Shared fixtures: the real test database (migrated once), Redis, and an API client.

Tests run against `civitas_test` (CIVITAS_DATABASE__NAME overrides it). Each test
builds its own tenant with `make_tenant`, so no test depends on another's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("CIVITAS_DATABASE__NAME", "civitas_test")
os.environ.setdefault("CIVITAS_ENVIRONMENT", "test")
os.environ.setdefault("CIVITAS_LOG_JSON", "false")


import asyncio
import contextlib
import socket

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from civitas_ray.config import get_settings
from tests.services import RedisServer

# A Redis of the session's own, so fault tests may kill it (see tests/services.py).
# Set before anything reads the settings; Ray workers and subprocesses inherit it.
REDIS = RedisServer()
os.environ["CIVITAS_REDIS__URL"] = REDIS.url

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("CIVITAS_DATA_DIR", ROOT.parent / "shared" / "data"))
PASSWORD = "Correct-Horse-Staple-91"  # meets the policy


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.exists():
        pytest.fail(f"city data not found at {DATA_DIR}; set CIVITAS_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[RedisServer]:
    """The session's private redis-server (started once, stopped at the end)."""
    REDIS.start()
    try:
        yield REDIS
    finally:
        REDIS.stop()


@pytest.fixture(scope="session")
def migrated_db() -> str:
    """Migrate the test database to head once per run."""
    from civitas_ray.db import migrate

    migrate.upgrade("head")
    return get_settings().database.name


@pytest.fixture(scope="session")
async def app(migrated_db: str) -> AsyncIterator[Any]:
    from civitas_ray.api.app import create_app
    from civitas_ray.cache import close_redis, get_redis
    from civitas_ray.db.session import dispose_engine

    await get_redis().ping()
    application = create_app()
    yield application
    await dispose_engine()
    await close_redis()


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.9.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@dataclass
class TenantFixture:
    """A fresh tenant with one user per role, each already signed in."""

    id: uuid.UUID
    slug: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    api_key: str | None = None

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.users[role]['access_token']}"}

    @property
    def device_headers(self) -> dict[str, str]:
        assert self.api_key
        return {"X-API-Key": self.api_key}


ROLES = ["platform_admin", "tenant_admin", "operator", "analyst", "viewer"]


@pytest.fixture
def make_tenant(app: Any, client: httpx.AsyncClient) -> Callable[..., Awaitable[TenantFixture]]:
    async def factory(roles: list[str] | None = None, with_key: bool = True) -> TenantFixture:
        from civitas_ray.audit.service import SYSTEM_ACTOR
        from civitas_ray.db.session import set_context, tenant_session
        from civitas_ray.tenants import service as tenants
        from civitas_ray.tenants.schemas import TenantCreate
        from civitas_ray.users import service as users
        from civitas_ray.users.schemas import ApiKeyCreate, UserCreate

        slug = "t-" + uuid.uuid4().hex[:10]
        fx: TenantFixture
        async with tenant_session(None, system=True) as s:
            t = await tenants.create(session=s, data=TenantCreate(slug=slug, name=slug),
                                     actor=SYSTEM_ACTOR)
            fx = TenantFixture(id=t.id, slug=slug)
            await set_context(s, tenant_id=t.id)
            for role in roles or ROLES:
                email = f"{role}.{slug}@example.org"
                u = await users.create(session=s, tenant_id=t.id, actor=SYSTEM_ACTOR,
                                       data=UserCreate(email=email, password=PASSWORD, role=role))
                fx.users[role] = {"id": u.id, "email": email}
            if with_key:
                _, fx.api_key = await users.create_api_key(
                    session=s, tenant_id=t.id, data=ApiKeyCreate(name="devices"),
                    actor=SYSTEM_ACTOR, created_by=None)
        for role, info in fx.users.items():
            r = await client.post("/api/v1/auth/token",
                                  data={"username": info["email"], "password": PASSWORD})
            assert r.status_code == 200, r.text
            info.update(r.json())
        return fx

    return factory


@pytest.fixture
async def admin_sql(migrated_db: str) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Run raw SQL as the database owner (for tampering and checks)."""
    import asyncpg

    conn = await asyncpg.connect(get_settings().database.admin_dsn)

    async def run(sql: str, *args: Any) -> Any:
        return await conn.fetch(sql, *args)

    yield run
    await conn.close()


@pytest.fixture
async def redis_clean() -> AsyncIterator[None]:
    """No sign-in failure counters before or after the test (an aborted run leaves some)."""
    from civitas_ray.cache import get_redis

    async def clean() -> None:
        r = get_redis()
        keys = [k async for k in r.scan_iter("civitas:login:*")]
        if keys:
            await r.delete(*keys)

    await clean()
    yield
    await clean()


def sql_text(s: str) -> Any:
    return text(s)


@pytest.fixture(scope="session")
async def live_server(app: Any) -> AsyncIterator[str]:
    """`create_app()` under uvicorn in this process and event loop, on a free port.

    A fixed send buffer (accepted sockets inherit it) instead of loopback autotuning up
    to 4 MiB: a client that stops reading is felt by the server after ~100 KiB.
    """
    from civitas_ray.api.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(), lifespan="on", log_config=None, access_log=False,
                            log_level="warning")
    server = uvicorn.Server(config)
    # The test process keeps its signals: Ctrl-C stops pytest, not just the server.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        task.cancel()
        pytest.fail("the live server did not start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 15)
    sock.close()
