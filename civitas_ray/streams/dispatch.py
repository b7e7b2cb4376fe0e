"""After a commit, hand the readings to their StreamShard hosts: one Ray call per shard.

Installed as a TelemetryWriter commit hook in every process that ingests while Ray is
running (the Serve ingress replicas, the MQTT bridge). Readings are already durable, so
a shard that is down or restarting loses nothing: its entities rebuild from PostgreSQL.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from civitas_ray.config import get_settings
from civitas_ray.runtime import registry
from civitas_ray.telemetry.writer import Rows

log = logging.getLogger(__name__)


class ShardDispatcher:
    def __init__(self) -> None:
        self._handles: dict[int, Any] = {}
        self.sent_batches = 0

    def _shard(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = self._handles[index] = registry.stream_shard(index)
        return handle

    async def __call__(self, rows: Rows) -> None:
        n = get_settings().actors.stream_shards
        owner = registry.owners(rows.asset, n)
        for shard in np.unique(owner):
            sel = np.flatnonzero(owner == shard)
            part = rows.take(sel) if sel.size != len(rows) else rows
            # Fire and forget: the shard applies batches in arrival order per stream and
            # ignores readings it has already applied, so Ray's retries are harmless.
            self._shard(int(shard)).apply.remote(
                part.tenant, part.asset, part.metric_codes, part.metric_names, part.ts_us,
                part.value)
            self.sent_batches += 1


def install(ingestor: Any) -> ShardDispatcher | None:
    """Attach the dispatcher (once) when this process is connected to Ray; else nothing."""
    import ray

    existing: ShardDispatcher | None = getattr(ingestor, "dispatcher", None)
    if existing is not None or not ray.is_initialized():
        return existing
    dispatcher = ShardDispatcher()
    ingestor.add_commit_hook(dispatcher)
    ingestor.dispatcher = dispatcher
    return dispatcher
