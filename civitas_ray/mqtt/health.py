"""The bridge's heartbeat in Redis, and the /readyz probe that reads it.

The bridge runs in its own processes (Ray actors or `civitas mqtt-bridge`) and the
ingress in others, so the state travels through Redis: each bridge process writes its
counters under a key that expires unless refreshed, and records its id in a sorted
set scored by the time of its last heartbeat. An id whose key has expired is a bridge
that died without saying goodbye (readiness is down); a clean stop removes both, and
an id silent for `forget_after_s` is forgotten. Keys carry the database name: a
bridge matters to the API that serves the same database.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from civitas_ray.cache import get_redis
from civitas_ray.config import get_settings


def _keys() -> tuple[str, str]:
    db = get_settings().database.name
    return f"civitas:{db}:mqtt:bridges", f"civitas:{db}:mqtt:bridge:"


def heartbeat_ttl_s(heartbeat_s: float) -> int:
    return max(5, round(heartbeat_s * 3))


async def publish_state(state: dict[str, Any], *, ttl_s: int) -> None:
    r = get_redis()
    bridges, state_key = _keys()
    bridge_id = state["bridge_id"]
    async with r.pipeline(transaction=False) as pipe:
        pipe.set(state_key + bridge_id, orjson.dumps(state), ex=ttl_s)
        pipe.zadd(bridges, {bridge_id: state["heartbeat_at"]})
        await pipe.execute()


async def clear_state(bridge_id: str) -> None:
    r = get_redis()
    bridges, state_key = _keys()
    async with r.pipeline(transaction=False) as pipe:
        pipe.delete(state_key + bridge_id)
        pipe.zrem(bridges, bridge_id)
        await pipe.execute()


async def bridge_states() -> tuple[list[dict[str, Any]], list[tuple[str, float]]]:
    """Live bridges' states, and (id, seconds since heartbeat) of silent ones."""
    s = get_settings().mqtt.bridge
    r = get_redis()
    bridges, state_key = _keys()
    now = time.time()
    members: list[tuple[str, float]] = await r.zrange(  # type: ignore[assignment]
        bridges, 0, -1, withscores=True)
    forget = [m for m, score in members if now - score > s.forget_after_s]
    if forget:
        await r.zrem(bridges, *forget)
    members = [(m, score) for m, score in members if m not in forget]
    if not members:
        return [], []
    raw: list[str | None] = await r.mget(  # type: ignore[assignment]
        [state_key + m for m, _ in members])
    live: list[dict[str, Any]] = []
    silent: list[tuple[str, float]] = []
    for (member, score), value in zip(members, raw, strict=True):
        if value is None:
            silent.append((member, now - score))
        else:
            live.append(orjson.loads(value))
    return live, silent


async def bridge_readiness() -> dict[str, Any]:
    """/readyz probe: ok with totals, or an error naming what is wrong.

    No bridge registered at all is ready ("not running"): the API may run without one.
    """
    live, silent = await bridge_states()
    if silent:
        names = ", ".join(f"{m} ({age:.0f} s)" for m, age in silent)
        raise RuntimeError(f"MQTT bridge silent (no heartbeat): {names}")
    if not live:
        return {"bridges": 0, "state": "not running"}
    connected = [b for b in live if b["connected"]]
    if not connected:
        errors = "; ".join(f"{b['bridge_id']}: {b['last_error']}" for b in live)
        raise RuntimeError(f"no MQTT bridge connected to the broker ({errors})")
    return {
        "bridges": len(live), "connected": len(connected),
        "received": sum(b["messages_received"] for b in live),
        "acked": sum(b["messages_acked"] for b in live),
        "pending": sum(b["pending"] for b in live),
        "throttled": any(b["throttled"] for b in live),
    }
