"""The maintenance actor runs the hourly rollup on its own, and again after a crash."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.test_telemetry_ingest import iso, make_assets
from tests.ray.test_realtime_core import eventually

pytestmark = [pytest.mark.ray, pytest.mark.slow]


async def test_rollups_run_periodically_and_resume_after_a_crash(
        client: httpx.AsyncClient, make_tenant, admin_sql, ray_local: str) -> None:
    import ray

    from civitas_ray.runtime import maintenance

    t = await make_tenant(roles=["analyst"])
    [a] = await make_assets(admin_sql, t.id, 1)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)

    async def post(minute: int, value: float) -> None:
        r = await client.post("/api/v1/telemetry", headers=t.device_headers, json={"readings": [
            {"asset_id": a["id"], "metric": "flow", "ts": iso(hour + timedelta(minutes=minute)),
             "value": value}]})
        assert r.json()["accepted"] == 1

    async def rolled() -> tuple[int, float] | None:
        rows = await admin_sql("select count, max from telemetry_rollup where asset_id = $1",
                               uuid.UUID(a["id"]))
        return (rows[0]["count"], rows[0]["max"]) if rows else None

    for i in range(3):
        await post(i, float(i))
    actor: Any = maintenance.handle(name="maintenance-test-" + uuid.uuid4().hex[:6],
                                    rollup_every_s=0.5)
    try:
        # Nobody calls it: its jobs started with it.
        assert await eventually(lambda: _equals(rolled, (3, 2.0)), timeout_s=30)
        pid = await actor.__ray_ready__.remote()  # noqa: F841  (alive)
        ray.kill(actor, no_restart=False)
        await asyncio.sleep(0.5)
        await post(30, 50.0)  # a late reading while it restarts
        assert await eventually(lambda: _equals(rolled, (4, 50.0)), timeout_s=60)
        status = await actor.status.remote()
        assert status["jobs"] == ["rollup"] and status["last_runs"]["rollup"]["ok"] is True
    finally:
        ray.kill(actor, no_restart=True)


async def _equals(fn: Any, expected: Any) -> bool:
    return await fn() == expected
