"""TelemetryWriter: group-committed binary COPY into the hypertable, with back-pressure.

Callers `submit()` rows and wait; up to `connections` flushers each take whatever is
queued (up to `commit_max_readings`, waiting at most `commit_max_delay_ms` for more),
de-duplicate it, COPY it in one transaction and only then resolve the callers. So many
requests share one commit, parsing overlaps committing, and an acknowledged reading is
always durable. Duplicates of rows already stored are dropped by a fallback path
(COPY into a temporary table, then INSERT ... ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import numpy as np

from civitas_ray.telemetry import copy as pgcopy

log = logging.getLogger(__name__)


class Backpressure(Exception):
    """Too much is waiting for the database: the caller should retry later."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"ingest queue full; retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class Rows:
    """Telemetry rows, column-wise; metric is a code into `metric_names`."""

    tenant: np.ndarray  # V16
    asset: np.ndarray  # V16
    metric_codes: np.ndarray  # int32
    metric_names: list[str]
    ts_us: np.ndarray  # int64
    value: np.ndarray  # float64
    quality: np.ndarray  # int16

    def __len__(self) -> int:
        return int(self.ts_us.shape[0])

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        names: dict[str, int] = {}
        codes = []
        for p in parts:
            remap = np.array([names.setdefault(n, len(names)) for n in p.metric_names],
                             dtype=np.int32)
            codes.append(remap[p.metric_codes] if len(p) else p.metric_codes)
        return Rows(
            tenant=np.concatenate([p.tenant for p in parts]),
            asset=np.concatenate([p.asset for p in parts]),
            metric_codes=np.concatenate(codes), metric_names=list(names),
            ts_us=np.concatenate([p.ts_us for p in parts]),
            value=np.concatenate([p.value for p in parts]),
            quality=np.concatenate([p.quality for p in parts]))

    def take(self, sel: np.ndarray) -> Rows:
        return Rows(self.tenant[sel], self.asset[sel], self.metric_codes[sel],
                    self.metric_names, self.ts_us[sel], self.value[sel], self.quality[sel])

    def dedupe(self) -> Rows:
        """Keep the last row of each (asset, metric, ts) in the batch."""
        n = len(self)
        if n < 2:
            return self
        words = np.ascontiguousarray(self.asset).view(np.uint64).reshape(-1, 2)
        # Stable sort by the full key; equal keys stay in arrival order.
        order = np.lexsort((np.arange(n), self.ts_us, self.metric_codes, words[:, 1],
                            words[:, 0]))
        a0, a1 = words[order, 0], words[order, 1]
        m, t = self.metric_codes[order], self.ts_us[order]
        same_as_next = (a0[:-1] == a0[1:]) & (a1[:-1] == a1[1:]) & (m[:-1] == m[1:]) \
            & (t[:-1] == t[1:])
        if not same_as_next.any():
            return self
        keep = np.ones(n, dtype=bool)
        keep[:-1] = ~same_as_next  # the last of each run of equal keys wins
        return self.take(np.sort(order[keep]))


CommitHook = Callable[[Rows], Awaitable[None]]


async def _chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """COPY source as an async iterable: asyncpg reads file objects in a thread pool."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start:start + size])


class TelemetryWriter:
    def __init__(self, pool: asyncpg.Pool, *, connections: int = 2,
                 commit_max_readings: int = 20_000, commit_max_delay_ms: float = 2.0,
                 max_pending_readings: int = 400_000) -> None:
        self._pool = pool
        self._n = connections
        self._max = commit_max_readings
        self._delay = commit_max_delay_ms / 1000
        self._max_pending = max_pending_readings
        self._queue: deque[tuple[Rows, asyncio.Future[int]]] = deque()
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._hooks: list[CommitHook] = []
        self._background: set[asyncio.Task[None]] = set()
        self.stats = {"commits": 0, "rows": 0, "duplicates_dropped": 0, "fallbacks": 0,
                      "errors": 0, "last_commit_ms": 0.0}

    def add_commit_hook(self, hook: CommitHook) -> None:
        """Called with each committed batch (after the callers are answered)."""
        self._hooks.append(hook)

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._flusher(i), name=f"telemetry-flush-{i}")
                           for i in range(self._n)]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while self._queue:
            _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError("telemetry writer closed"))

    async def submit(self, rows: Rows) -> int:
        """Wait until `rows` are committed; returns how many were new or duplicates."""
        if not len(rows):
            return 0
        if self._pending + len(rows) > self._max_pending:
            raise Backpressure(retry_after_s=max(1.0, self._pending / 100_000))
        self.start()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, fut))
        self._pending += len(rows)
        self._wakeup.set()
        return await fut

    def _take(self) -> list[tuple[Rows, asyncio.Future[int]]]:
        taken, n = [], 0
        while self._queue and (n == 0 or n + len(self._queue[0][0]) <= self._max):
            item = self._queue.popleft()
            taken.append(item)
            n += len(item[0])
        if not self._queue:
            self._wakeup.clear()
        return taken

    async def _flusher(self, idx: int) -> None:
        while True:
            await self._wakeup.wait()
            if self._delay and sum(len(r) for r, _ in self._queue) < self._max:
                await asyncio.sleep(self._delay)  # let concurrent requests join this commit
            batch = self._take()
            if not batch:
                continue
            rows = Rows.concat([r for r, _ in batch])
            try:
                await self._commit(rows)
            except Exception as exc:
                self.stats["errors"] += 1
                log.warning("telemetry commit failed", extra={"error": repr(exc),
                                                              "rows": len(rows)})
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self._pending -= len(rows)
            for r, fut in batch:
                if not fut.done():
                    fut.set_result(len(r))
            for hook in self._hooks:
                task = asyncio.create_task(self._run_hook(hook, rows))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _run_hook(self, hook: CommitHook, rows: Rows) -> None:
        try:
            await hook(rows)
        except Exception:
            log.exception("telemetry commit hook failed")

    async def _commit(self, rows: Rows) -> None:
        start = time.perf_counter()
        unique = rows.dedupe()
        self.stats["duplicates_dropped"] += len(rows) - len(unique)
        data = pgcopy.encode(tenant=unique.tenant, asset=unique.asset,
                             metric_codes=unique.metric_codes, metric_names=unique.metric_names,
                             ts_us=unique.ts_us, value=unique.value, quality=unique.quality)
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.copy_to_table("telemetry", source=_chunks(data),
                                             columns=list(pgcopy.COLUMNS), format="binary")
            except asyncpg.UniqueViolationError:
                # Some rows are already stored (a retried batch): keep the others.
                self.stats["fallbacks"] += 1
                async with conn.transaction():
                    await conn.execute(
                        "create temp table if not exists telemetry_stage "
                        "(like telemetry including defaults) on commit delete rows")
                    await conn.copy_to_table("telemetry_stage", source=_chunks(data),
                                             columns=list(pgcopy.COLUMNS), format="binary")
                    status = await conn.execute(
                        "insert into telemetry (tenant_id, asset_id, metric, ts, value, quality) "
                        "select tenant_id, asset_id, metric, ts, value, quality "
                        "from telemetry_stage on conflict do nothing")
                    inserted = int(status.rsplit(" ", 1)[-1])
                    self.stats["duplicates_dropped"] += len(unique) - inserted
        self.stats["commits"] += 1
        self.stats["rows"] += len(unique)
        self.stats["last_commit_ms"] = (time.perf_counter() - start) * 1000
