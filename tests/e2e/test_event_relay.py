"""The event relay against a real Redis that crashes: events wait, keep their order, and
are published once it is back; a full backlog drops the oldest and says so."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from civitas_ray.cache import get_redis
from civitas_ray.realtime.events import Event, replay
from civitas_ray.realtime.relay import EventRelay
from tests.services import RedisServer

pytestmark = pytest.mark.e2e


def ev(n: int) -> Event:
    return Event(type="alert.fired", channel="alerts", data={"n": n})


async def numbers(tenant_id: uuid.UUID) -> list[int]:
    return [e.data["n"] for e in await replay(tenant_id, "0-0", limit=1000)]


async def test_outage_defers_in_order_then_publishes(redis_server: RedisServer) -> None:
    relay = EventRelay(capacity=1000, backoff_s=0.05, backoff_max_s=0.2)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert await relay.send(a, [ev(1)]) is True
    assert await numbers(a) == [1]

    redis_server.kill()
    try:
        assert await relay.send(a, [ev(2), ev(3)]) is False
        assert await relay.send(b, [ev(10)]) is False
        assert await relay.send(a, [ev(4)]) is False  # joins the backlog, no new wait
        assert relay.pending == 4
        await asyncio.sleep(0.3)  # a few failed drain rounds change nothing
        assert relay.pending == 4 and relay.dropped == 0
    finally:
        redis_server.start()
    assert await relay.flush(10) is True
    # Redis came back empty: what it held (event 1) is gone, what waited is there, in order.
    assert await numbers(a) == [2, 3, 4]
    assert await numbers(b) == [10]
    assert relay.stats() == {"pending": 0, "published": 5, "deferred": 4, "dropped": 0,
                             "outages": 1}
    # Back to publishing at once.
    assert await relay.send(a, [ev(5)]) is True
    assert await numbers(a) == [2, 3, 4, 5]


async def test_full_backlog_drops_the_oldest(redis_server: RedisServer) -> None:
    relay = EventRelay(capacity=3, backoff_s=0.05, backoff_max_s=0.2)
    t = uuid.uuid4()
    redis_server.kill()
    try:
        await relay.send(t, [ev(i) for i in range(5)])
        assert relay.pending == 3 and relay.dropped == 2
    finally:
        redis_server.start()
    assert await relay.flush(10)
    assert await numbers(t) == [2, 3, 4]


async def test_malformed_events_are_refused_not_queued(redis_server: RedisServer) -> None:
    relay = EventRelay(capacity=10, backoff_s=0.05, backoff_max_s=0.2)
    redis_server.kill()
    try:
        await relay.send(uuid.uuid4(), [ev(1)])
        with pytest.raises(ValueError):
            await relay.send(uuid.uuid4(), [Event(type="Bad Type", channel="alerts", data={})])
        assert relay.pending == 1
    finally:
        redis_server.start()
    assert await relay.flush(10)
    await get_redis().ping()
