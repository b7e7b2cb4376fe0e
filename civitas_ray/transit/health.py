"""GTFS-RT feed health in Redis (age, entities, errors) and the /readyz probe that reads it.

Pushes and polls happen in many processes (ingress replicas, poller actors), so each
records what it saw in one Redis hash per feed. Keys carry the database name, like the
MQTT bridge's: a feed matters to the API that serves the same database.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from redis.exceptions import RedisError

from civitas_ray.cache import get_redis
from civitas_ray.config import get_settings

FEEDS_TTL_S = 7 * 24 * 3600
# A polled feed silent for this many poll intervals makes /readyz report it down.
SILENT_INTERVALS = 5


def _keys() -> tuple[str, str]:
    db = get_settings().database.name
    return f"civitas:{db}:gtfsrt:feeds", f"civitas:{db}:gtfsrt:feed:"


async def record(feed_id: uuid.UUID, **fields: Any) -> None:
    """Merge fields into the feed's health hash (values are JSON) and mark it known."""
    feeds, prefix = _keys()
    r = get_redis()
    async with r.pipeline(transaction=False) as pipe:
        pipe.hset(prefix + str(feed_id),
                  mapping={k: orjson.dumps(v) for k, v in fields.items()})
        pipe.expire(prefix + str(feed_id), FEEDS_TTL_S)
        pipe.zadd(feeds, {str(feed_id): time.time()})
        await pipe.execute()


async def record_ingest(feed_id: uuid.UUID, *, tenant_id: uuid.UUID, name: str,
                        header_ts: int | None, entities: int, matched: int, unmatched: int,
                        stale: bool, mismatched: bool, source: str) -> None:
    r = get_redis()
    _, prefix = _keys()
    newest = max(header_ts or 0, await last_header_ts(feed_id))
    await record(feed_id, tenant_id=str(tenant_id), name=name, header_ts=header_ts,
                 max_header_ts=newest,
                 received_at=time.time(), entities=entities, matched=matched,
                 unmatched=unmatched, stale=stale, mismatched=mismatched, source=source)
    await r.hincrby(prefix + str(feed_id), "ingests", 1)


async def record_error(feed_id: uuid.UUID, *, tenant_id: uuid.UUID, name: str, error: str,
                       poll_interval_s: float | None = None) -> None:
    r = get_redis()
    _, prefix = _keys()
    fields: dict[str, Any] = {"tenant_id": str(tenant_id), "name": name,
                              "last_error": error[:500], "last_error_at": time.time()}
    if poll_interval_s is not None:
        fields["poll_interval_s"] = poll_interval_s
    await record(feed_id, **fields)
    await r.hincrby(prefix + str(feed_id), "errors", 1)


async def last_header_ts(feed_id: uuid.UUID) -> int:
    """The newest header timestamp seen for the feed (0 if none or Redis is away): an
    older one arriving later is stale, whatever its age."""
    _, prefix = _keys()
    try:
        raw = await get_redis().hget(prefix + str(feed_id), "max_header_ts")
    except (RedisError, OSError):
        return 0
    return int(orjson.loads(raw)) if raw else 0


async def feed_health(feed_id: uuid.UUID) -> dict[str, Any]:
    """What is known about a feed: age of its newest data, entities, errors, mismatch."""
    _, prefix = _keys()
    raw: dict[Any, Any] = await get_redis().hgetall(prefix + str(feed_id))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        out[key] = orjson.loads(v)
    now = time.time()
    header_ts = out.get("header_ts")
    out["age_s"] = round(now - header_ts, 1) if header_ts else None
    received = out.get("received_at")
    out["since_receipt_s"] = round(now - received, 1) if received else None
    out.setdefault("errors", 0)
    out.setdefault("ingests", 0)
    return out


async def forget(feed_id: uuid.UUID) -> None:
    feeds, prefix = _keys()
    r = get_redis()
    async with r.pipeline(transaction=False) as pipe:
        pipe.delete(prefix + str(feed_id))
        pipe.zrem(feeds, str(feed_id))
        await pipe.execute()


async def readiness() -> dict[str, Any]:
    """/readyz probe: ok with per-feed figures; down when a polled feed has gone silent.

    A pushed feed cannot be judged silent (its sender decides when to push), so only
    feeds with a poll interval are; stale or mismatched data are reported, not fatal.
    """
    feeds, _ = _keys()
    ids: list[Any] = await get_redis().zrange(feeds, 0, -1)
    if not ids:
        return {"feeds": 0}
    summary: dict[str, Any] = {}
    silent: list[str] = []
    for raw in ids:
        fid = raw.decode() if isinstance(raw, bytes) else raw
        h = await feed_health(uuid.UUID(fid))
        if not h:
            continue
        name = h.get("name", fid)
        summary[name] = {k: h.get(k) for k in ("age_s", "entities", "errors", "stale",
                                               "mismatched", "last_error")}
        interval = h.get("poll_interval_s")
        since = h.get("since_receipt_s")
        if interval and (since is None or since > SILENT_INTERVALS * interval):
            silent.append(f"{name} ({'never' if since is None else f'{since:.0f} s'})")
    if silent:
        raise RuntimeError(f"GTFS-RT feeds silent: {', '.join(silent)}")
    return {"feeds": len(summary), "detail": summary}
