"""One asyncio Redis client per process (rate limits, events, presence)."""

from __future__ import annotations

import redis.asyncio as aioredis

from civitas_ray.config import get_settings

_client: aioredis.Redis | None = None


def get_redis() -> aioredis.Redis:
    global _client
    if _client is None:
        _client = aioredis.from_url(get_settings().redis.url, decode_responses=True,
                                    socket_connect_timeout=2, socket_timeout=5)
    return _client


async def close_redis() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
    _client = None
