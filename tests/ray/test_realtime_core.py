"""The real-time core end to end on a local Ray: HTTP ingest -> committed -> StreamShard
and ZoneShard state -> rule fires -> alert and incident -> recovery resolves them; then
a shard is killed and its state comes back from PostgreSQL and checkpoints."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import websockets

from civitas_ray.realtime.events import replay
from tests.conftest import TenantFixture

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SQUARE = {"type": "Polygon", "coordinates": [[
    [-73.99, 40.75], [-73.97, 40.75], [-73.97, 40.77], [-73.99, 40.77], [-73.99, 40.75]]]}


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 20.0,
                     every_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last: {last!r})")


@pytest.fixture
async def wired(ray_local: str) -> Any:
    """The test process's ingestor dispatches to the shards, as a Serve replica does."""
    from civitas_ray.streams import dispatch
    from civitas_ray.telemetry.ingest import get_ingestor

    ing = get_ingestor()
    await ing.start()
    d = dispatch.install(ing)  # already there if this process started its ingestor under Ray
    assert d is not None and ing.dispatcher is d
    return d


async def _setup(client: httpx.AsyncClient, t: TenantFixture) -> tuple[str, str]:
    h = t.headers("tenant_admin")
    r = await client.post("/api/v1/zones", headers=h, json={
        "name": "Midtown", "code": "MID", "geometry": SQUARE})
    assert r.status_code == 201, r.text
    zone_id = r.json()["id"]
    r = await client.post("/api/v1/assets", headers=h, json={
        "name": "Level gauge", "kind": "sensor",
        "metrics": {"level": {"unit": "cm", "min": 0, "max": 1000}},
        "geometry": {"type": "Point", "coordinates": [-73.98, 40.76]}})
    assert r.status_code == 201, r.text
    asset_id = r.json()["id"]
    assert r.json()["zone_id"] == zone_id
    return zone_id, asset_id


async def test_ingest_state_alert_incident_recovery(client: httpx.AsyncClient, make_tenant,
                                                    wired: Any, admin_sql,
                                                    live_server: str) -> None:
    t = await make_tenant(roles=["tenant_admin", "operator", "analyst"])
    zone_id, asset_id = await _setup(client, t)
    r = await client.post("/api/v1/alert-rules", headers=t.headers("operator"), json={
        "name": "Flood level", "asset_id": asset_id, "metric": "level",
        "condition": {"op": ">", "threshold": 100, "hysteresis": 10},
        "severity": "major", "for_seconds": 0})
    assert r.status_code == 201, r.text
    rule_id = r.json()["id"]

    # A control-room client watching alerts and incidents over the WebSocket.
    ws_url = live_server.replace("http", "ws") + "/ws?token=" + \
        t.users["operator"]["access_token"]
    ws = await websockets.connect(ws_url)
    assert orjson.loads(await ws.recv())["type"] == "authenticated"
    await ws.send(orjson.dumps({"type": "subscribe", "channels": ["alerts", "incidents"]}).decode())
    assert orjson.loads(await ws.recv())["type"] == "subscribed"

    now = datetime.now(UTC).replace(microsecond=0)
    readings = [{"asset_id": asset_id, "metric": "level",
                 "ts": iso(now - timedelta(minutes=10 - i)), "value": 20.0 + i}
                for i in range(5)]
    r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                          json={"readings": readings})
    assert r.json()["accepted"] == 5

    async def stream_state() -> dict | None:
        r = await client.get(f"/api/v1/streams/{asset_id}/level/state",
                             headers=t.headers("analyst"))
        if r.status_code == 200 and r.json()["latest"]["value"] == 24.0:
            return r.json()
        return None

    state = await eventually(stream_state)
    assert [p["value"] for p in state["window"]] == [20.0, 21.0, 22.0, 23.0, 24.0]
    assert state["forecast"] and {"ts", "value", "lower", "upper"} <= set(state["forecast"][0])
    last_forecast = datetime.fromisoformat(state["forecast"][-1]["ts"])
    assert last_forecast >= datetime.now(UTC) + timedelta(minutes=55)

    async def zone_state() -> dict | None:
        r = await client.get(f"/api/v1/zones/{zone_id}/state", headers=t.headers("analyst"))
        body = r.json() if r.status_code == 200 else {}
        return body if body.get("kpis", {}).get("assets_reporting") == 1 else None

    zs = await eventually(zone_state)
    assert zs["metrics"]["level"]["latest"]["max"] == 24.0
    assert zs["metrics"]["level"]["forecast_source"] == "online"
    assert [m["asset_id"] for m in zs["members"]] == [asset_id]
    r = await client.get(f"/api/v1/zones/{zone_id}/state", headers=t.headers("analyst"),
                         params={"members": "false"})
    assert "members" not in r.json() and r.json()["kpis"] == zs["kpis"]

    # The threshold is crossed: one alert, one incident, events on the tenant's stream.
    r = await client.post("/api/v1/telemetry", headers=t.device_headers, json={"readings": [
        {"asset_id": asset_id, "metric": "level", "ts": iso(now - timedelta(minutes=4)),
         "value": 150.0},
        {"asset_id": asset_id, "metric": "level", "ts": iso(now - timedelta(minutes=3)),
         "value": 160.0}]})
    assert r.json()["accepted"] == 2

    async def firing() -> list:
        return await admin_sql("select * from alert where tenant_id = $1 and status = 'firing'",
                               t.id)

    [alert] = await eventually(firing)
    # Rules see every reading: the alert fired on the first crossing, 150.
    assert str(alert["rule_id"]) == rule_id and alert["value"] == 150.0
    [incident] = await admin_sql("select * from incident where id = $1", alert["incident_id"])
    assert incident["status"] == "open" and incident["source"] == "rule"
    assert incident["severity"] == "major" and str(incident["asset_id"]) == asset_id
    events = await replay(t.id, "0-0", channels={"alerts", "incidents"}, limit=100)
    assert [e.type for e in events][:2] == ["alert.fired", "incident.opened"]
    on_socket = await _socket_events(ws, 2)
    assert [(m["type"], m["channel"]) for m in on_socket] == [
        ("alert.fired", "alerts"), ("incident.opened", "incidents")]
    assert on_socket[0]["data"]["rule_id"] == rule_id and on_socket[0]["id"] == events[0].id

    # Inside the hysteresis band it keeps firing; below it, it recovers.
    await client.post("/api/v1/telemetry", headers=t.device_headers, json={"readings": [
        {"asset_id": asset_id, "metric": "level", "ts": iso(now - timedelta(minutes=2)),
         "value": 95.0}]})
    await asyncio.sleep(1.0)
    assert len(await firing()) == 1
    await client.post("/api/v1/telemetry", headers=t.device_headers, json={"readings": [
        {"asset_id": asset_id, "metric": "level", "ts": iso(now - timedelta(minutes=1)),
         "value": 40.0}]})

    async def resolved() -> list:
        return await admin_sql("select * from alert where tenant_id = $1 and "
                               "status = 'resolved'", t.id)

    await eventually(resolved)
    [incident] = await admin_sql("select status from incident where id = $1",
                                 alert["incident_id"])
    assert incident["status"] == "resolved"
    events = await replay(t.id, "0-0", channels={"alerts", "incidents"}, limit=100)
    assert [e.type for e in events] == ["alert.fired", "incident.opened", "alert.resolved",
                                        "incident.resolved"]
    r = await client.get("/api/v1/alerts", headers=t.headers("operator"))
    assert [a["status"] for a in r.json()["items"]] == ["resolved"]
    assert [m["type"] for m in await _socket_events(ws, 2)] == ["alert.resolved",
                                                               "incident.resolved"]
    await ws.close()


async def _socket_events(ws: Any, n: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The next `n` event messages (frames may carry one message or a list of them)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        for msg in frame if isinstance(frame, list) else [frame]:
            if msg.get("id") and msg.get("channel"):
                out.append(msg)
    return out


async def test_killed_stream_shard_rebuilds_from_the_database(
        client: httpx.AsyncClient, make_tenant, wired: Any) -> None:
    import ray

    from civitas_ray.runtime import registry

    t = await make_tenant(roles=["tenant_admin", "analyst"])
    _, asset_id = await _setup(client, t)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    readings = [{"asset_id": asset_id, "metric": "level", "ts": iso(base + timedelta(minutes=i)),
                 "value": float(i)} for i in range(60)]
    assert (await client.post("/api/v1/telemetry", headers=t.device_headers,
                              json={"readings": readings})).json()["accepted"] == 60

    async def latest() -> float | None:
        r = await client.get(f"/api/v1/streams/{asset_id}/level/state",
                             headers=t.headers("analyst"))
        return r.json()["latest"]["value"] if r.status_code == 200 else None

    assert await eventually(lambda: _equals(latest, 59.0))
    shard = registry.stream_shard_for(uuid.UUID(asset_id).bytes)
    pid_before = (await shard.info.remote())["pid"]
    ray.kill(shard, no_restart=False)
    # Readings acknowledged while the shard restarts are not lost either.
    more = [{"asset_id": asset_id, "metric": "level", "ts": iso(base + timedelta(minutes=60 + i)),
             "value": 100.0 + i} for i in range(5)]
    assert (await client.post("/api/v1/telemetry", headers=t.device_headers,
                              json={"readings": more})).json()["accepted"] == 5
    assert await eventually(lambda: _equals(latest, 104.0), timeout_s=60)
    info = await registry.stream_shard_for(uuid.UUID(asset_id).bytes).info.remote()
    assert info["pid"] != pid_before and info["activations"] >= 1
    r = await client.get(f"/api/v1/streams/{asset_id}/level/state",
                         headers=t.headers("analyst"), params={"window": 1000})
    assert len(r.json()["window"]) == 65


async def _equals(fn: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    return await fn() == expected


async def test_killed_zone_shard_rebuilds_its_zones(client: httpx.AsyncClient, make_tenant,
                                                    wired: Any) -> None:
    import ray

    from civitas_ray.runtime import registry

    t = await make_tenant(roles=["tenant_admin", "analyst"])
    zone_id, asset_id = await _setup(client, t)
    now = datetime.now(UTC).replace(microsecond=0)
    await client.post("/api/v1/telemetry", headers=t.device_headers, json={"readings": [
        {"asset_id": asset_id, "metric": "level", "ts": iso(now - timedelta(minutes=1)),
         "value": 42.0}]})

    async def zone_latest() -> float | None:
        r = await client.get(f"/api/v1/zones/{zone_id}/state", headers=t.headers("analyst"))
        if r.status_code != 200 or "level" not in r.json()["metrics"]:
            return None
        return r.json()["metrics"]["level"]["latest"]["max"]

    assert await eventually(lambda: _equals(zone_latest, 42.0))
    shard = registry.zone_shard_for(uuid.UUID(zone_id).bytes)
    pid_before = (await shard.info.remote())["pid"]
    ray.kill(shard, no_restart=False)
    # The restarted shard knows the zone again from PostgreSQL, then follows new readings.
    assert await eventually(lambda: _equals(zone_latest, 42.0), timeout_s=60)
    assert (await shard.info.remote())["pid"] != pid_before
    await client.post("/api/v1/telemetry", headers=t.device_headers, json={"readings": [
        {"asset_id": asset_id, "metric": "level", "ts": iso(now), "value": 57.0}]})
    assert await eventually(lambda: _equals(zone_latest, 57.0), timeout_s=30)
