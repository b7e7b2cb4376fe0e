"""Who is watching which zone: one Redis hash per zone, kept alive by socket heartbeats.

`civitas:<tenant>:presence:<zone>` maps a connection id to `{user_id, role, since,
expires}`. A connection writes its entry when it subscribes to `zone:<id>`, refreshes
it every `realtime.presence_heartbeat_s` and deletes it when it unsubscribes or closes;
`presence.joined` / `presence.left` events go out on the zone's channel. An entry whose
process died stops being refreshed: readers ignore it once `expires` has passed, and
the first reader to delete it publishes its `presence.left` (reason `expired`). The key
itself expires with its last entry.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from civitas_ray.cache import get_redis
from civitas_ray.config import get_settings
from civitas_ray.realtime.events import Event, EventType, publish

logger = logging.getLogger(__name__)


def presence_key(tenant_id: uuid.UUID, zone_id: uuid.UUID) -> str:
    return f"civitas:{tenant_id}:presence:{zone_id}"


@dataclass(frozen=True, slots=True)
class Watcher:
    connection_id: str
    user_id: uuid.UUID
    role: str | None
    since: datetime


def _entry(watcher: Watcher, expires: float) -> str:
    return orjson.dumps({"user_id": str(watcher.user_id), "role": watcher.role,
                         "since": watcher.since.isoformat(), "expires": expires}).decode()


def _event(kind: EventType, zone_id: uuid.UUID, watcher: Watcher,
           reason: str | None = None) -> Event:
    data: dict[str, Any] = {"zone_id": str(zone_id), "user_id": str(watcher.user_id),
                            "role": watcher.role, "connection_id": watcher.connection_id}
    if reason:
        data["reason"] = reason
    return Event(type=kind, channel=f"zone:{zone_id}", data=data)


async def _write(client: aioredis.Redis, tenant_id: uuid.UUID,
                 zones: Mapping[uuid.UUID, Watcher]) -> None:
    ttl = get_settings().realtime.presence_ttl_s
    expires = time.time() + ttl
    async with client.pipeline(transaction=False) as pipe:
        for zone_id, watcher in zones.items():
            key = presence_key(tenant_id, zone_id)
            pipe.hset(key, watcher.connection_id, _entry(watcher, expires))
            pipe.expire(key, ttl)
        await pipe.execute()


async def join(*, tenant_id: uuid.UUID, zone_ids: Collection[uuid.UUID], watcher: Watcher,
               redis: aioredis.Redis | None = None) -> None:
    """Record the watcher on each zone and announce it on the zones' channels."""
    if not zone_ids:
        return
    client = redis if redis is not None else get_redis()
    await _write(client, tenant_id, dict.fromkeys(zone_ids, watcher))
    await publish(tenant_id, [_event(EventType.PRESENCE_JOINED, z, watcher) for z in zone_ids],
                  redis=client)


async def refresh(*, tenant_id: uuid.UUID, zones: Mapping[uuid.UUID, Watcher],
                  redis: aioredis.Redis | None = None) -> None:
    """The heartbeat: push each entry's expiry forward."""
    if zones:
        await _write(redis if redis is not None else get_redis(), tenant_id, zones)


async def leave(*, tenant_id: uuid.UUID, zone_ids: Collection[uuid.UUID], watcher: Watcher,
                reason: str | None = None, redis: aioredis.Redis | None = None) -> None:
    """Remove the watcher's entries; announce each one this call actually removed."""
    if not zone_ids:
        return
    client = redis if redis is not None else get_redis()
    zones = list(zone_ids)
    async with client.pipeline(transaction=False) as pipe:
        for zone_id in zones:
            pipe.hdel(presence_key(tenant_id, zone_id), watcher.connection_id)
        removed = await pipe.execute()
    events = [_event(EventType.PRESENCE_LEFT, z, watcher, reason)
              for z, n in zip(zones, removed, strict=True) if n]
    await publish(tenant_id, events, redis=client)


async def watchers(*, tenant_id: uuid.UUID, zone_id: uuid.UUID,
                   redis: aioredis.Redis | None = None) -> list[Watcher]:
    """The live watchers of a zone, oldest first; expired entries are cleaned up."""
    client = redis if redis is not None else get_redis()
    key = presence_key(tenant_id, zone_id)
    raw: dict[Any, Any] = await client.hgetall(key)
    now = time.time()
    live: list[Watcher] = []
    expired: list[Watcher] = []
    for field_name, value in raw.items():
        conn = field_name.decode() if isinstance(field_name, bytes) else field_name
        try:
            entry = orjson.loads(value)
            watcher = Watcher(connection_id=conn, user_id=uuid.UUID(entry["user_id"]),
                              role=entry.get("role"),
                              since=datetime.fromisoformat(entry["since"]).astimezone(UTC))
            fresh = float(entry["expires"]) > now
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("dropping a malformed presence entry",
                           extra={"key": key, "connection_id": conn})
            await client.hdel(key, conn)
            continue
        (live if fresh else expired).append(watcher)
    for watcher in expired:
        await leave(tenant_id=tenant_id, zone_ids=[zone_id], watcher=watcher,
                    reason="expired", redis=client)
    return sorted(live, key=lambda w: w.since)
