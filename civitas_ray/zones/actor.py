"""ZoneShard: the Ray host actor of a share of the ZoneEntities (a thin shell).

Persisted: nothing of its own; each zone's state is checkpointed to Redis periodically
and when passivated. Rebuilt on (re)start: lazily, zone by zone, from the checkpoint or
from PostgreSQL (see ZoneHost). Ray restarts it on a crash and retries calls meanwhile.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import orjson
import ray

from civitas_ray.runtime.periodic import Periodic
from civitas_ray.streams.state import StreamDelta
from civitas_ray.zones.host import ZoneHost

log = logging.getLogger(__name__)


@ray.remote
class ZoneShard:
    def __init__(self, index: int, n_shards: int) -> None:
        self.host = ZoneHost(index, n_shards)
        self._housekeeping = Periodic(self.host.housekeeping, 5.0, "zone shard housekeeping")

    async def apply(self, items: list[tuple[uuid.UUID, uuid.UUID, StreamDelta]]) -> int:
        self._housekeeping.ensure()
        return await self.host.apply(items)

    async def state(self, tenant_id: str, zone_id: str,
                    horizon_s: float = 3600.0) -> dict[str, Any] | None:
        self._housekeeping.ensure()
        return await self.host.snapshot(uuid.UUID(tenant_id), uuid.UUID(zone_id),
                                        horizon_s=horizon_s)

    async def state_json(self, tenant_id: str, zone_id: str, horizon_s: float = 3600.0,
                         members: bool = True) -> bytes | None:
        """The snapshot serialized here, once: the ingress sends these bytes as they are
        (no Ray pickling of a nested dict, no second JSON encoding)."""
        self._housekeeping.ensure()
        snap = await self.host.snapshot(uuid.UUID(tenant_id), uuid.UUID(zone_id),
                                        horizon_s=horizon_s, members=members)
        return None if snap is None else orjson.dumps(snap)

    async def checkpoint(self) -> dict[str, int]:
        return await self.host.housekeeping(force_checkpoint=True)

    async def invalidate(self, tenant_id: str | None = None) -> None:
        self.host.invalidate_rules(uuid.UUID(tenant_id) if tenant_id else None)

    async def info(self) -> dict[str, Any]:
        return {**self.host.info(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid()}
