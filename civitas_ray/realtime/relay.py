"""Publish events so that a Redis outage delays them instead of losing them.

Components that raise events after a commit (entity hosts, the incident routes) hand
them to `send`. While Redis answers, `send` publishes at once (one pipelined round
trip). When it does not, the events wait in this process's backlog, in order, and a
background task publishes them as soon as Redis is back; once a backlog exists every
later `send` joins its end, so a tenant's events reach the stream in the order they
were raised. The WebSocket hub tells clients "live events are paused; nothing will be
lost" during the outage: this backlog is what keeps that promise.

The backlog is bounded (`realtime.relay_backlog`): past it the oldest events are
dropped and counted (`stats()["dropped"]`), logged as an error, because PostgreSQL
holds the truth (alerts, incidents, readings) and a client can re-read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from civitas_ray.config import get_settings
from civitas_ray.realtime.events import Event, publish

log = logging.getLogger(__name__)

_TRANSIENT = (RedisError, OSError)
_BATCH = 500  # events per publish while draining the backlog


class EventRelay:
    """One per process: publish now, or later and in order when Redis is away."""

    def __init__(self, *, capacity: int, backoff_s: float, backoff_max_s: float) -> None:
        self._backlog: deque[tuple[uuid.UUID, Event]] = deque()
        self._capacity = capacity
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one publish at a time keeps send order = stream order
        self.published = 0
        self.deferred = 0
        self.dropped = 0
        self.outages = 0

    @property
    def pending(self) -> int:
        return len(self._backlog)

    def stats(self) -> dict[str, Any]:
        return {"pending": self.pending, "published": self.published,
                "deferred": self.deferred, "dropped": self.dropped, "outages": self.outages}

    async def send(self, tenant_id: uuid.UUID, events: Sequence[Event]) -> bool:
        """Publish `events` now if possible; True when they are on the stream already.

        Raises ValueError for a malformed event (nothing is queued); never raises for
        Redis being away.
        """
        if not events:
            return True
        if not self._backlog:
            async with self._lock:
                if not self._backlog:
                    try:
                        await publish(tenant_id, events)
                        self.published += len(events)
                        return True
                    except _TRANSIENT as exc:
                        self.outages += 1
                        log.warning("event publish failed; keeping events until Redis is back",
                                    extra={"tenant_id": str(tenant_id), "events": len(events),
                                           "error": repr(exc)})
        self._defer(tenant_id, events)
        return False

    def _defer(self, tenant_id: uuid.UUID, events: Sequence[Event]) -> None:
        for e in events:
            e.fields()  # validate all first: a malformed batch is refused whole, not queued
        self._backlog.extend((tenant_id, e) for e in events)
        self.deferred += len(events)
        over = len(self._backlog) - self._capacity
        if over > 0:
            for _ in range(over):
                self._backlog.popleft()
            self.dropped += over
            log.error("event backlog full; dropped the oldest events",
                      extra={"dropped": over, "dropped_total": self.dropped})
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(),
                                                                name="event-relay")

    async def _drain(self) -> None:
        delay = self._backoff_s
        while self._backlog:
            async with self._lock:
                tenant_id = self._backlog[0][0]
                batch: list[Event] = []
                for t, e in self._backlog:
                    if t != tenant_id or len(batch) >= _BATCH:
                        break
                    batch.append(e)
                try:
                    await publish(tenant_id, batch)
                except _TRANSIENT:
                    pass
                except Exception:
                    # Not Redis being away: never spin on it; drop this batch loudly.
                    log.exception("event publish failed for good; dropping a batch",
                                  extra={"tenant_id": str(tenant_id), "events": len(batch)})
                    self._pop(len(batch))
                    self.dropped += len(batch)
                    continue
                else:
                    self._pop(len(batch))
                    self.published += len(batch)
                    delay = self._backoff_s
                    if not self._backlog:
                        log.info("event backlog published", extra={"published": self.published})
                    continue
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
            delay = min(delay * 2, self._backoff_max_s)

    def _pop(self, n: int) -> None:
        for _ in range(min(n, len(self._backlog))):
            self._backlog.popleft()

    async def flush(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the backlog to empty (shutdown); True if it did."""
        task = self._task
        if task is None or task.done():
            return not self._backlog
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        return not self._backlog


_relay: EventRelay | None = None


def get_relay() -> EventRelay:
    global _relay
    if _relay is None:
        s = get_settings().realtime
        _relay = EventRelay(capacity=s.relay_backlog, backoff_s=s.reconnect_backoff_s,
                            backoff_max_s=s.reconnect_backoff_max_s)
    return _relay


async def send(tenant_id: uuid.UUID, events: Sequence[Event]) -> bool:
    """`get_relay().send(...)`: the way components publish what they raised."""
    return await get_relay().send(tenant_id, events)
