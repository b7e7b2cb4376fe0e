"""StreamShard: the Ray host actor of a share of the StreamEntities (a thin shell).

Persisted: nothing of its own. Readings are in PostgreSQL before they reach a shard;
each entity's state is checkpointed to Redis periodically and when it is passivated.
Rebuilt on (re)start: lazily, entity by entity, on its next batch or state query, from
its checkpoint plus the rows stored after it (see StreamHost). Ray restarts a crashed
shard (`max_restarts=-1`) and retries calls made to it meanwhile (`max_task_retries`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
import ray

from civitas_ray.config import get_settings
from civitas_ray.runtime.periodic import Periodic
from civitas_ray.streams.host import StreamHost

log = logging.getLogger(__name__)


@ray.remote
class StreamShard:
    def __init__(self, index: int, n_shards: int) -> None:
        from civitas_ray.zones.dispatch import ZoneDispatcher

        self._zones = ZoneDispatcher()
        self.host = StreamHost(index, n_shards, zone_sink=self._zones)
        self._housekeeping = Periodic(self.host.housekeeping, 5.0, "stream shard housekeeping")

    async def apply(self, tenant: np.ndarray, asset: np.ndarray, codes: np.ndarray,
                    names: list[str], ts_us: np.ndarray, values: np.ndarray) -> int:
        self._housekeeping.ensure()
        return await self.host.apply(tenant, asset, codes, names, ts_us, values)

    async def state(self, tenant_id: str, asset_id: str, metric: str, window: int = 100,
                    horizon_s: float = 3600.0) -> dict[str, Any] | None:
        self._housekeeping.ensure()
        return await self.host.snapshot(uuid.UUID(tenant_id), uuid.UUID(asset_id), metric,
                                        window=window, horizon_s=horizon_s)

    async def checkpoint(self) -> dict[str, int]:
        return await self.host.housekeeping(force_checkpoint=True)

    async def invalidate(self, tenant_id: str | None = None) -> None:
        self.host.invalidate_rules(uuid.UUID(tenant_id) if tenant_id else None)

    async def info(self) -> dict[str, Any]:
        return {**self.host.info(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": __import__("os").getpid(),
                "configured_shards": get_settings().actors.stream_shards}
