"""Faults during ingest: Redis crashes and comes back empty while readings keep arriving.

Every acknowledged reading must be in PostgreSQL, the shards keep their state, an alert
raised while Redis was away reaches the WebSocket client once it is back, and the client
connected throughout is told about the pause and misses nothing.
(Killed shards: test_realtime_core.py; the MQTT broker going away: test_mqtt_bridge.py.)
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tests.conftest import TenantFixture
from tests.ray.test_realtime_core import _setup, eventually, iso, wired  # noqa: F401
from tests.services import RedisServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]


class Feeder:
    """Posts one reading every `every_s` and counts what the API acknowledged."""

    def __init__(self, client: httpx.AsyncClient, t: TenantFixture, asset_id: str,
                 start: datetime, every_s: float = 0.05) -> None:
        self.client, self.t, self.asset_id = client, t, asset_id
        self.start, self.every_s = start, every_s
        self.sent = 0
        self.acked = 0
        self.value = 20.0
        self.last_acked_value: float | None = None
        self.statuses: dict[int, int] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            value = self.value
            reading = {"asset_id": self.asset_id, "metric": "level",
                       "ts": iso(self.start + timedelta(seconds=self.sent)), "value": value}
            self.sent += 1
            r = await self.client.post("/api/v1/telemetry", headers=self.t.device_headers,
                                       json={"readings": [reading]})
            self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
            if r.status_code == 202 and r.json()["accepted"] == 1:
                self.acked += 1
                self.last_acked_value = value
            await asyncio.sleep(self.every_s)

    def stop(self) -> None:
        self._stop.set()


class Socket:
    """A WebSocket client that records every message it receives, in order."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            body = orjson.loads(frame)
            self.messages.extend(body if isinstance(body, list) else [body])

    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("id") and m.get("channel")]

    def notices(self) -> list[str]:
        return [m["code"] for m in self.messages if m.get("type") == "notice"]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.task, 5)


async def test_redis_crash_during_ingest_loses_nothing(
        client: httpx.AsyncClient, make_tenant, wired: Any, admin_sql,  # noqa: F811
        live_server: str, redis_server: RedisServer) -> None:
    t = await make_tenant(roles=["tenant_admin", "operator", "analyst"])
    _, asset_id = await _setup(client, t)
    r = await client.post("/api/v1/alert-rules", headers=t.headers("operator"), json={
        "name": "Flood level", "asset_id": asset_id, "metric": "level",
        "condition": {"op": ">", "threshold": 100, "hysteresis": 10},
        "severity": "major", "for_seconds": 0})
    assert r.status_code == 201, r.text

    ws = await websockets.connect(live_server.replace("http", "ws") + "/ws?token="
                                  + t.users["operator"]["access_token"])
    assert orjson.loads(await ws.recv())["type"] == "authenticated"
    await ws.send(orjson.dumps({"type": "subscribe",
                                "channels": ["alerts", "incidents"]}).decode())
    assert orjson.loads(await ws.recv())["type"] == "subscribed"
    sock = Socket(ws)

    feeder = Feeder(client, t, asset_id, datetime.now(UTC).replace(microsecond=0)
                    - timedelta(hours=1))
    feeding = asyncio.create_task(feeder.run())
    try:
        await eventually(lambda: _true(feeder.acked >= 10))

        redis_server.kill()
        await eventually(lambda: _true("redis_unavailable" in sock.notices()), timeout_s=15)
        acked_before_rise = feeder.acked
        feeder.value = 150.0  # crosses the threshold while Redis is down

        async def firing() -> list[Any]:
            return await admin_sql("select * from alert where tenant_id = $1 and "
                                   "status = 'firing'", t.id)

        # Ingest, state and alerting carry on without Redis; only the events wait.
        [alert] = await eventually(firing, timeout_s=30)
        assert alert["value"] == 150.0
        await eventually(lambda: _true(feeder.acked >= acked_before_rise + 20))
        assert sock.events() == []

        down_for = time.monotonic()
        redis_server.start()  # same port, empty: everything Redis held is gone
        await eventually(lambda: _true("redis_restored" in sock.notices()), timeout_s=30)
        got = await eventually(lambda: _list(len(sock.events()) >= 2, sock.events()),
                               timeout_s=30)
        recovery_s = time.monotonic() - down_for
        assert [(m["type"], m["channel"]) for m in got[:2]] == [
            ("alert.fired", "alerts"), ("incident.opened", "incidents")]
        assert got[0]["data"]["alert_id"] == str(alert["id"])
        await asyncio.sleep(0.5)
    finally:
        feeder.stop()
        await asyncio.wait_for(feeding, 10)
        await sock.close()

    # Zero loss: every acknowledged reading is stored; nothing was refused on the way.
    assert set(feeder.statuses) == {202}, feeder.statuses
    [row] = await admin_sql("select count(*) as n from telemetry where asset_id = $1",
                            _uuid(asset_id))
    assert row["n"] == feeder.acked == feeder.sent
    # The shard followed every reading through the outage.
    r = await client.get(f"/api/v1/streams/{asset_id}/level/state",
                         headers=t.headers("analyst"))
    assert r.json()["latest"]["value"] == feeder.last_acked_value
    # No duplicates on the socket: each event id once, in order.
    ids = [m["id"] for m in sock.events()]
    assert len(ids) == len(set(ids)) == 2
    assert recovery_s < 30


async def _true(v: bool) -> bool:
    return v


async def _list(ok: bool, items: list[Any]) -> list[Any] | None:
    return items if ok else None


def _uuid(s: str) -> Any:
    import uuid

    return uuid.UUID(s)
