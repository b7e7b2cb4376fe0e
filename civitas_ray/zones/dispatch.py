"""Send member deltas from a StreamShard to the ZoneShards that own their zones."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from civitas_ray.config import get_settings
from civitas_ray.runtime import registry
from civitas_ray.streams.state import StreamDelta

ZoneItem = tuple[uuid.UUID, uuid.UUID, StreamDelta]


class ZoneDispatcher:
    """One fire-and-forget Ray call per zone shard per batch."""

    def __init__(self) -> None:
        self._handles: dict[int, Any] = {}

    def _shard(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = self._handles[index] = registry.zone_shard(index)
        return handle

    def __call__(self, items: list[ZoneItem]) -> None:
        n = get_settings().actors.zone_shards
        zones = np.frombuffer(b"".join(z.bytes for _, z, _ in items), dtype="V16")
        owners = registry.owners(zones, n)
        for shard in np.unique(owners):
            part = [items[i] for i in np.flatnonzero(owners == shard)]
            self._shard(int(shard)).apply.remote(part)
