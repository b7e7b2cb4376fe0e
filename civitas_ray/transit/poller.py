"""GTFS-RT pollers: one per feed, conditional GETs (ETag / If-Modified-Since), back-off.

`PollSchedule` is the pure part (what to send, how long to wait after each outcome);
`FeedPollerLoop` does the fetching and hands each new body to the same ingest path as the
push endpoint; `FeedPoller` is the Ray actor shell that `civitas up` starts for every feed
with realtime URLs. Persisted: nothing; the validators are re-learnt on the first poll
after a restart (one unconditional GET).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import ray
from sqlalchemy import text

from civitas_ray.audit.service import Actor
from civitas_ray.config import get_settings
from civitas_ray.db.session import tenant_session
from civitas_ray.transit import health, realtime

log = logging.getLogger(__name__)

POLLER_ACTOR = Actor(type="system", label="gtfs-rt poller")
KINDS = ("trip_updates", "vehicle_positions", "alerts")
MIN_INTERVAL_S = 1.0


@dataclass(slots=True)
class PollSchedule:
    """Per URL: the validators of the last 200 and the back-off after failures."""

    interval_s: float
    backoff_max_s: float = 300.0
    etag: str | None = None
    last_modified: str | None = None
    failures: int = 0
    not_modified: int = 0
    fetched: int = 0
    last_error: str | None = None

    def headers(self) -> dict[str, str]:
        h = {"Accept": "application/x-protobuf, application/octet-stream"}
        if self.etag:
            h["If-None-Match"] = self.etag
        if self.last_modified:
            h["If-Modified-Since"] = self.last_modified
        return h

    def on_response(self, status: int, headers: httpx.Headers) -> bool:
        """Record a response; True when the body is new and should be ingested."""
        if status == 304:
            self.failures = 0
            self.not_modified += 1
            return False
        if 200 <= status < 300:
            self.failures = 0
            self.fetched += 1
            self.etag = headers.get("etag") or None
            self.last_modified = headers.get("last-modified") or None
            return True
        self.on_error(f"HTTP {status}")
        return False

    def on_error(self, error: str) -> None:
        self.failures += 1
        self.last_error = error

    def next_delay_s(self, retry_after_s: float | None = None) -> float:
        """The poll interval, or exponential back-off with jitter after failures."""
        if self.failures == 0:
            return self.interval_s
        base = min(self.backoff_max_s, self.interval_s * 2 ** min(self.failures, 16))
        delay = base * (0.5 + random.random() / 2)  # noqa: S311  # jitter, not security
        return max(delay, retry_after_s or 0.0)


@dataclass(slots=True)
class FeedPollerLoop:
    tenant_id: uuid.UUID
    feed_name: str
    urls: dict[str, str]
    interval_s: float
    timeout_s: float = 10.0
    schedules: dict[str, PollSchedule] = field(default_factory=dict)
    ingested: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        for kind, url in self.urls.items():
            if kind not in KINDS or not url:
                raise ValueError(f"unknown realtime URL kind {kind!r}; expected one of {KINDS}")
            self.schedules[kind] = PollSchedule(max(self.interval_s, MIN_INTERVAL_S))

    async def poll_once(self, client: httpx.AsyncClient, kind: str) -> float:
        """Fetch one URL and ingest it when new; return how long to wait before the next."""
        sched = self.schedules[kind]
        retry_after = None
        try:
            r = await client.get(self.urls[kind], headers=sched.headers(),
                                 timeout=self.timeout_s)
            if r.status_code in (429, 503) and r.headers.get("retry-after", "").isdigit():
                retry_after = float(r.headers["retry-after"])
            if sched.on_response(r.status_code, r.headers):
                await self._ingest(r.content)
        except (httpx.HTTPError, OSError) as exc:
            sched.on_error(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # bad feed, DB trouble: log, back off, keep polling
            sched.on_error(f"{type(exc).__name__}: {exc}")
            log.exception("GTFS-RT poll failed", extra={"feed": self.feed_name, "kind": kind})
        if sched.failures:
            await self._record_error(kind, sched)
        return sched.next_delay_s(retry_after)

    async def _ingest(self, payload: bytes) -> None:
        async with tenant_session(self.tenant_id) as s:
            ref = await realtime.get_feed(session=s, tenant_id=self.tenant_id,
                                          name=self.feed_name)
            result = await realtime.ingest(session=s, feed=ref, payload=payload,
                                           actor=POLLER_ACTOR)
        await realtime.after_commit(ref, result, source="poll")
        self.ingested += 1
        await health.record(ref.id, poll_interval_s=self.interval_s, last_poll_at=time.time(),
                            not_modified=sum(x.not_modified for x in self.schedules.values()))

    async def _record_error(self, kind: str, sched: PollSchedule) -> None:
        try:
            async with tenant_session(self.tenant_id) as s:
                ref = await realtime.get_feed(session=s, tenant_id=self.tenant_id,
                                              name=self.feed_name)
            await health.record_error(ref.id, tenant_id=self.tenant_id, name=self.feed_name,
                                      error=f"{kind}: {sched.last_error}",
                                      poll_interval_s=self.interval_s)
            await health.record(ref.id, backoff_s=sched.next_delay_s())
        except Exception:
            log.exception("could not record a poll error", extra={"feed": self.feed_name})

    async def run(self) -> None:
        async with httpx.AsyncClient(follow_redirects=True) as client:
            due = dict.fromkeys(self.urls, 0.0)
            while not self._stop.is_set():
                now = time.monotonic()
                for kind, at in due.items():
                    if at <= now:
                        due[kind] = time.monotonic() + await self.poll_once(client, kind)
                wait = max(0.05, min(due.values()) - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)

    def stop(self) -> None:
        self._stop.set()

    async def retire(self) -> None:
        """No longer polled: /readyz must not wait for this feed's next fetch."""
        try:
            async with tenant_session(self.tenant_id) as s:
                ref = await realtime.get_feed(session=s, tenant_id=self.tenant_id,
                                              name=self.feed_name)
            await health.record(ref.id, poll_interval_s=None)
        except Exception:
            log.exception("could not retire a poller's health", extra={"feed": self.feed_name})

    def info(self) -> dict[str, Any]:
        return {"feed": self.feed_name, "ingested": self.ingested, "urls": {
            k: {"fetched": s.fetched, "not_modified": s.not_modified, "failures": s.failures,
                "last_error": s.last_error, "etag": s.etag} for k, s in self.schedules.items()}}


@ray.remote(num_cpus=0)
class FeedPoller:
    """One per feed, named `gtfs-poller-<feed id>`; polls until `stop()`."""

    def __init__(self, tenant_id: str, feed_name: str, urls: dict[str, str],
                 interval_s: float) -> None:
        self.loop = FeedPollerLoop(uuid.UUID(tenant_id), feed_name, urls, interval_s)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.loop.run())
        return True

    async def stop(self) -> dict[str, Any]:
        self.loop.stop()
        if self._task is not None:
            await self._task
        await self.loop.retire()
        return self.loop.info()

    async def info(self) -> dict[str, Any]:
        return self.loop.info()


async def feeds_with_urls() -> list[tuple[uuid.UUID, uuid.UUID, str, dict[str, str], float]]:
    """(tenant, feed id, name, urls, interval) of every feed that has realtime URLs."""
    async with tenant_session(None, system=True) as s:
        rows = (await s.execute(text(
            "select tenant_id, id, name, realtime_urls, poll_interval_s from transit_feed "
            "where realtime_urls is not null and realtime_urls <> '{}'::jsonb"))).all()
    out = []
    for tenant_id, feed_id, name, urls, interval in rows:
        urls = {k: v for k, v in (urls or {}).items() if k in KINDS and v}
        if urls:
            out.append((tenant_id, feed_id, name, urls, float(interval or 30.0)))
    return out


def poller_name(feed_id: uuid.UUID) -> str:
    return f"gtfs-poller-{feed_id}"


def start_poller(tenant_id: uuid.UUID, feed_id: uuid.UUID, name: str, urls: dict[str, str],
                 interval_s: float, *, env_vars: dict[str, str] | None = None) -> Any:
    """Create (or find) one feed's poller actor and start it; returns its handle."""
    handle = FeedPoller.options(  # type: ignore[attr-defined]  # a Ray actor class
        name=poller_name(feed_id), namespace=get_settings().ray.namespace, get_if_exists=True,
        lifetime="detached", max_restarts=-1, runtime_env={"env_vars": env_vars or {}},
    ).remote(str(tenant_id), name, urls, interval_s)
    ray.get(handle.start.remote())
    return handle


def start_pollers(env_vars: dict[str, str] | None = None) -> list[str]:
    """A poller per feed with realtime URLs (from a sync caller such as `civitas up`).

    A database without the transit tables (not migrated yet) starts none, and says so.
    """
    try:
        feeds = asyncio.run(feeds_with_urls())
    except Exception:
        log.exception("GTFS-RT pollers not started: could not list the feeds")
        return []
    for tenant_id, feed_id, name, urls, interval in feeds:
        start_poller(tenant_id, feed_id, name, urls, interval, env_vars=env_vars)
    return [poller_name(f[1]) for f in feeds]


def poller_names() -> list[str]:
    if not ray.is_initialized():
        return []
    ns = get_settings().ray.namespace
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == ns and a["name"].startswith("gtfs-poller-"))


def stop_pollers(timeout_s: float = 30.0) -> list[str]:
    """Stop and remove every poller actor of this namespace; returns their names."""
    ns = get_settings().ray.namespace
    stopped: list[str] = []
    for name in poller_names():
        try:
            handle = ray.get_actor(name, namespace=ns)
            ray.get(handle.stop.remote(), timeout=timeout_s)
            ray.kill(handle)
            stopped.append(name)
        except Exception:
            log.exception("could not stop a poller", extra={"actor": name})
    return stopped
