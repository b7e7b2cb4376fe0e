"""The ingest path shared by HTTP and MQTT: resolve assets, validate, commit, dispatch.

One `Ingestor` per process owns an asyncpg pool (as the ingest role), the asset
directory and the TelemetryWriter. `ingest()` returns only after the accepted readings
are committed; rejected ones come back with their request index and a reason, and
never hold back the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np

from civitas_ray.config import Settings, get_settings
from civitas_ray.feeds.meters import MeterAdapter
from civitas_ray.telemetry.directory import AssetDirectory
from civitas_ray.telemetry.parse import ParsedReadings
from civitas_ray.telemetry.writer import CommitHook, Rows, TelemetryWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    accepted: int
    rejected: list[tuple[int, str]]


class Ingestor:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._pool: asyncpg.Pool | None = None
        self.directory: AssetDirectory | None = None
        self.writer: TelemetryWriter | None = None
        self._hooks: list[CommitHook] = []
        self.dispatcher: CommitHook | None = None  # set by streams.dispatch.install
        self.meters: MeterAdapter | None = None  # set by feeds.meters.install
        self._lock = asyncio.Lock()
        s = self.settings.ingest
        self._min_ts_us = int(datetime.fromisoformat(s.min_ts).timestamp() * 1_000_000)

    async def start(self) -> None:
        async with self._lock:
            if self._pool is not None:
                return
            s, db = self.settings.ingest, self.settings.database
            self._pool = await asyncpg.create_pool(
                db.dsn_for(s.db_user, s.db_password), min_size=1,
                max_size=s.connections + 1, command_timeout=60,
                server_settings={"application_name": "civitas_ingest"})
            self.directory = AssetDirectory(self._pool, ttl_s=s.asset_cache_ttl_s)
            self.writer = TelemetryWriter(
                self._pool, connections=s.connections,
                commit_max_readings=s.commit_max_readings,
                commit_max_delay_ms=s.commit_max_delay_ms,
                max_pending_readings=s.max_pending_readings)
            for hook in self._hooks:
                self.writer.add_commit_hook(hook)
        # Under Ray (Serve replicas, the MQTT bridge) committed readings go on to the
        # entity hosts; a plain process (tests, `serve-dev`) only stores them.
        from civitas_ray.feeds.meters import install as install_meters
        from civitas_ray.streams.dispatch import install

        install(self)
        install_meters(self)  # cumulative registers get `<metric>_consumption` beside them

    def add_commit_hook(self, hook: CommitHook) -> None:
        self._hooks.append(hook)
        if self.writer is not None:
            self.writer.add_commit_hook(hook)

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        if self._pool is not None:
            await self._pool.close()
        self._pool = self.writer = self.directory = None

    async def ingest(self, *, tenant_id: uuid.UUID, parsed: ParsedReadings,
                     allowed_assets: frozenset[uuid.UUID] | None = None,
                     now_us: int | None = None) -> IngestOutcome:
        await self.start()
        assert self.directory is not None and self.writer is not None
        rejected = list(parsed.rejected)
        n = len(parsed)
        if n == 0:
            return IngestOutcome(0, sorted(rejected))
        refs = parsed.asset_ref
        assets = await self.directory.get(tenant_id, refs=set(refs))
        lookup = assets.by_ref.get
        rows_idx = np.fromiter((lookup(r, -1) for r in refs), np.int64, n)
        ok = rows_idx >= 0
        for i in np.flatnonzero(~ok):
            rejected.append((int(parsed.index[i]),
                             f"unknown asset {refs[i][:64]!r} in this tenant"))
        if allowed_assets is not None:
            allowed = np.array([assets.ids[j] in allowed_assets if j >= 0 else False
                                for j in rows_idx], dtype=bool)
            for i in np.flatnonzero(ok & ~allowed):
                rejected.append((int(parsed.index[i]),
                                 f"this API key may not write asset {refs[i][:64]!r}"))
            ok &= allowed
        now = now_us if now_us is not None else time.time_ns() // 1000
        future = parsed.ts_us > now + self.settings.ingest.max_future_s * 1_000_000
        for i in np.flatnonzero(ok & future):
            rejected.append((int(parsed.index[i]), "ts is more than "
                             f"{self.settings.ingest.max_future_s} s in the future"))
        old = parsed.ts_us < self._min_ts_us
        for i in np.flatnonzero(ok & old):
            rejected.append((int(parsed.index[i]), f"ts is before {self.settings.ingest.min_ts}"))
        ok &= ~future & ~old
        sel = np.flatnonzero(ok)
        if sel.size:
            names: dict[str, int] = {}
            metric = parsed.metric
            asset_rows, ts_us = rows_idx[sel], parsed.ts_us[sel]
            value, quality = parsed.value[sel], parsed.quality[sel]
            metrics = [metric[i] for i in sel]
            if self.meters is not None and self._pool is not None:
                d_rows, d_names, d_ts, d_val, d_q = await self.meters.derive(
                    pool=self._pool, assets=assets, parsed=parsed, rows_idx=rows_idx, sel=sel)
                if d_rows.size:  # derived consumption rides in the same commit
                    asset_rows = np.concatenate([asset_rows, d_rows])
                    ts_us, value = np.concatenate([ts_us, d_ts]), np.concatenate([value, d_val])
                    quality = np.concatenate([quality, d_q])
                    metrics.extend(d_names)
            codes = np.fromiter((names.setdefault(m, len(names)) for m in metrics),
                                np.int32, len(metrics))
            rows = Rows(
                tenant=np.frombuffer(tenant_id.bytes * len(metrics), dtype="V16"),
                asset=assets.id_bytes[asset_rows], metric_codes=codes,
                metric_names=list(names), ts_us=ts_us, value=value, quality=quality)
            await self.writer.submit(rows)
        return IngestOutcome(int(sel.size), sorted(rejected))


_ingestor: Ingestor | None = None


def get_ingestor() -> Ingestor:
    global _ingestor
    if _ingestor is None:
        _ingestor = Ingestor()
    return _ingestor


async def close_ingestor() -> None:
    global _ingestor
    if _ingestor is not None:
        await _ingestor.close()
    _ingestor = None
