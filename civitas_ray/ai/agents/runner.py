"""AgentRunner: runs the agents on the tenants' event streams, at least once, idempotently.

Every tenant stream (`civitas:<tenant>:events`, found by SCAN every `discover_every_s`)
is read through the consumer group `civitas-agents` (created with MKSTREAM), this
process being one consumer. Each event maps to agent runs by type:

| event                               | agents                                         |
|-------------------------------------|------------------------------------------------|
| alert.fired                         | summarizer, notifier (+ data_quality when the  |
|                                     | alert's condition is `data_quality`)           |
| incident.opened                     | summarizer, notifier                           |
| incident.updated, incident.resolved | summarizer (not on the summarizer's own update)|
| stream.quality                      | data_quality                                   |

Each run carries the idempotency key `<agent>:<event id>`; an entry is XACKed only once
every run it maps to is recorded (succeeded, failed or found as a duplicate), so a crash
between run and ack redelivers the event and the redelivery finds the recorded runs.
Entries pending on a dead consumer longer than `claim_idle_s` are taken over with
XAUTOCLAIM. Runs execute concurrently up to `concurrency`. Events older than
`max_age_s` are acknowledged without running (a first start does not replay a day).

`AgentRunnerActor` is the thin Ray shell (detached, like Maintenance) that `civitas up`
starts; it persists nothing: the group's pending list and the `agent_run` rows are the
state, so a restarted actor resumes where the old one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import ray
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from civitas_ray.ai.agents import data_quality, notifier, summarizer
from civitas_ray.ai.agents.base import AgentContext, RunResult
from civitas_ray.audit.service import Actor
from civitas_ray.cache import get_redis
from civitas_ray.config import get_settings
from civitas_ray.realtime.events import StoredEvent, decode_fields, parse_id

log = logging.getLogger(__name__)

GROUP = "civitas-agents"
STREAM_PATTERN = "civitas:*:events"
ACTOR_NAME = "civitas-agents"
AGENT_ACTOR = Actor(type="system", id=None, label="agent-runner")

Job = tuple[str, Callable[[AgentContext, str], Awaitable[RunResult]]]


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    concurrency: int = 4
    batch: int = 32  # entries per XREADGROUP
    block_ms: int = 1_000
    discover_every_s: float = 10.0
    claim_idle_s: float = 300.0  # a pending entry this idle belongs to a dead consumer
    claim_every_s: float = 30.0
    max_age_s: float = 3_600.0


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def tenant_of(key: str) -> uuid.UUID | None:
    parts = key.split(":")
    if len(parts) != 3 or parts[0] != "civitas" or parts[2] != "events":
        return None
    try:
        return uuid.UUID(parts[1])
    except ValueError:
        return None


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def jobs_for(event: StoredEvent) -> list[Job]:
    """The agent runs an event calls for (pure: the dispatch table in one place)."""
    d = event.data
    jobs: list[Job] = []
    incident_id = _uuid(d.get("incident_id"))

    def summarize(iid: uuid.UUID) -> Job:
        return ("summarizer", lambda c, key: summarizer.run(
            c, incident_id=iid, trigger_event=event.id, idempotency_key=key))

    def notify(iid: uuid.UUID) -> Job:
        return ("notifier", lambda c, key: notifier.run(c, incident_id=iid,
                                                        idempotency_key=key))

    def check(asset: uuid.UUID, metric: str) -> Job:
        return ("data_quality", lambda c, key: data_quality.run(
            c, asset_id=asset, metric=metric, idempotency_key=key))

    if event.type == "alert.fired":
        if incident_id is not None:
            jobs += [summarize(incident_id), notify(incident_id)]
        asset, metric = _uuid(d.get("asset_id")), d.get("metric")
        if (d.get("data") or {}).get("condition") == "data_quality" and asset and metric:
            jobs.append(check(asset, str(metric)))
    elif event.type == "incident.opened" and incident_id is not None:
        jobs += [summarize(incident_id), notify(incident_id)]
    elif event.type in ("incident.updated", "incident.resolved") and incident_id is not None:
        if d.get("origin") != summarizer.ORIGIN:
            jobs.append(summarize(incident_id))
    elif event.type == "stream.quality":
        asset, metric = _uuid(d.get("asset_id")), d.get("metric")
        if asset and metric:
            jobs.append(check(asset, str(metric)))
    return jobs


@dataclass(slots=True)
class RunnerStats:
    events: int = 0
    runs: int = 0
    duplicates: int = 0
    failed: int = 0
    acked: int = 0
    stale: int = 0
    reclaimed: int = 0
    errors: int = 0
    streams: int = 0
    last_error: str | None = None
    by_agent: dict[str, int] = field(default_factory=dict)


class AgentRunner:
    """The consumer loop; `handle` is one entry's whole at-least-once path."""

    def __init__(self, config: RunnerConfig | None = None, *,
                 redis: aioredis.Redis | None = None, consumer: str | None = None,
                 llm: Any = None) -> None:
        self.config = config or RunnerConfig()
        self.redis = redis or get_redis()
        self.consumer = consumer or consumer_name()
        self.llm = llm
        self.streams: dict[str, uuid.UUID] = {}
        self.stats = RunnerStats()
        self._sem = asyncio.Semaphore(self.config.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    async def discover(self) -> list[str]:
        """Find tenant streams (SCAN) and join the group on each new one."""
        new: list[str] = []
        async for raw in self.redis.scan_iter(match=STREAM_PATTERN, count=500, _type="stream"):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            tenant = tenant_of(key)
            if tenant is None or key in self.streams:
                continue
            await self.ensure_group(key)
            self.streams[key] = tenant
            new.append(key)
        self.stats.streams = len(self.streams)
        return new

    async def ensure_group(self, key: str) -> None:
        try:
            await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _context(self, tenant_id: uuid.UUID) -> AgentContext:
        return AgentContext(tenant_id=tenant_id, actor=AGENT_ACTOR, llm=self.llm,
                            trigger="event")

    async def handle(self, key: str, entry_id: str, fields: dict[Any, Any]) -> bool:
        """Run every agent the entry calls for, then XACK; False (not acked) on error."""
        tenant_id = self.streams.get(key) or tenant_of(key)
        if tenant_id is None:
            return False
        try:
            etype, channel, data = decode_fields(fields)
            event = StoredEvent(id=entry_id, type=etype, channel=channel,
                                data=orjson.loads(data))
        except ValueError:
            log.warning("acking a malformed stream entry", extra={"stream": key,
                                                                 "entry_id": entry_id})
            await self.redis.xack(key, GROUP, entry_id)
            return True
        self.stats.events += 1
        age_s = time.time() - parse_id(entry_id)[0] / 1000
        jobs = jobs_for(event) if age_s <= self.config.max_age_s else []
        if age_s > self.config.max_age_s:
            self.stats.stale += 1
        try:
            results = await asyncio.gather(*(
                self._run(agent, fn, tenant_id, f"{agent}:{entry_id}") for agent, fn in jobs))
        except Exception as exc:
            self.stats.errors += 1
            self.stats.last_error = repr(exc)
            log.exception("agent run not recorded; the entry stays pending",
                          extra={"stream": key, "entry_id": entry_id})
            return False
        for r in results:
            if r.status == "duplicate":
                self.stats.duplicates += 1
            elif r.status == "failed":
                self.stats.failed += 1
        await self.redis.xack(key, GROUP, entry_id)
        self.stats.acked += 1
        return True

    async def _run(self, agent: str, fn: Callable[[AgentContext, str], Awaitable[RunResult]],
                   tenant_id: uuid.UUID, key: str) -> RunResult:
        async with self._sem:
            result = await fn(self._context(tenant_id), key)
        self.stats.runs += 1
        self.stats.by_agent[agent] = self.stats.by_agent.get(agent, 0) + 1
        return result

    async def read_once(self, *, block_ms: int | None = None) -> int:
        """One XREADGROUP over every known stream; returns the entries handled."""
        if not self.streams:
            return 0
        reply = await self.redis.xreadgroup(
            GROUP, self.consumer, {k: ">" for k in self.streams},
            count=self.config.batch,
            block=self.config.block_ms if block_ms is None else block_ms)
        handled = 0
        rows: list[Any] = list(reply or [])
        for raw_key, entries in rows:
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            for raw_id, fields in entries:
                eid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                await self._spawn(key, eid, fields)
                handled += 1
        return handled

    async def reclaim(self, *, min_idle_s: float | None = None) -> int:
        """Take over entries left pending by a dead consumer (XAUTOCLAIM) and handle them."""
        idle_ms = int(1000 * (self.config.claim_idle_s if min_idle_s is None else min_idle_s))
        taken = 0
        for key in list(self.streams):
            start = "0-0"
            while True:
                reply = await self.redis.xautoclaim(key, GROUP, self.consumer, idle_ms,
                                                    start_id=start, count=self.config.batch)
                nxt, entries = reply[0], reply[1]
                for raw_id, fields in entries:
                    if fields is None:  # trimmed away: nothing left to run
                        continue
                    eid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                    await self._spawn(key, eid, fields)
                    taken += 1
                start = nxt.decode() if isinstance(nxt, bytes) else str(nxt)
                if start == "0-0" or not entries:
                    break
        self.stats.reclaimed += taken
        return taken

    async def _spawn(self, key: str, eid: str, fields: dict[Any, Any]) -> None:
        # Backpressure: no more entries in flight than runs allowed at once.
        while len(self._inflight) >= self.config.concurrency:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._guarded(key, eid, fields))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _guarded(self, key: str, eid: str, fields: dict[Any, Any]) -> None:
        try:
            await self.handle(key, eid, fields)
        except Exception as exc:
            self.stats.errors += 1
            self.stats.last_error = repr(exc)
            log.exception("entry handling failed", extra={"stream": key, "entry_id": eid})

    async def drain(self) -> None:
        """Wait for the entries in flight."""
        if self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def run_forever(self) -> None:
        """Discover, read, reclaim; log and keep going on errors (Redis restarts too)."""
        next_discover = next_claim = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_discover:
                    await self.discover()
                    next_discover = now + self.config.discover_every_s
                if now >= next_claim:
                    await self.reclaim()
                    next_claim = now + self.config.claim_every_s
                if not self.streams:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.config.block_ms / 1000)
                    continue
                await self.read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.errors += 1
                self.stats.last_error = repr(exc)
                log.exception("agent runner loop error; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
        await self.drain()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {"consumer": self.consumer, "group": GROUP, "streams": sorted(self.streams),
                "inflight": len(self._inflight), "events": s.events, "runs": s.runs,
                "duplicates": s.duplicates, "failed": s.failed, "acked": s.acked,
                "stale": s.stale, "reclaimed": s.reclaimed, "errors": s.errors,
                "by_agent": dict(s.by_agent), "last_error": s.last_error}


@ray.remote
class AgentRunnerActor:
    """Ray shell over AgentRunner; its loop starts in the constructor (see module doc)."""

    def __init__(self) -> None:
        self._runner: AgentRunner | None = None
        self._task: asyncio.Task[None] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # an older Ray builds async actors outside their loop: start on first call
        self._start()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._runner = AgentRunner()
            self._task = asyncio.get_running_loop().create_task(self._runner.run_forever())

    async def status(self) -> dict[str, Any]:
        self._start()
        assert self._runner is not None
        return self._runner.status()

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 30)


def handle() -> Any:
    """The runner actor (created on first use, detached, restarted by Ray)."""
    s = get_settings()
    return AgentRunnerActor.options(  # type: ignore[attr-defined]  # a Ray actor class
        name=ACTOR_NAME, namespace=s.ray.namespace, get_if_exists=True, lifetime="detached",
        max_restarts=-1, max_task_retries=-1, num_cpus=0).remote()


def start() -> dict[str, Any]:
    """Create (or find) the runner and wait until it answers; returns its status."""
    result: dict[str, Any] = ray.get(handle().status.remote(), timeout=60)
    return result


def stop() -> bool:
    """Drain and kill the runner (`civitas down`); False when there was none."""
    try:
        actor = ray.get_actor(ACTOR_NAME, namespace=get_settings().ray.namespace)
    except ValueError:
        return False
    with contextlib.suppress(Exception):
        ray.get(actor.stop.remote(), timeout=40)
    ray.kill(actor, no_restart=True)
    return True
