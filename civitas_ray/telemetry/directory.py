"""Per-process cache of each tenant's assets, for validating readings without a query each.

Refreshed on a TTL and, rate-limited, on a miss: an asset created a moment ago is
recognised by the next batch that names it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np


@dataclass(slots=True)
class TenantAssets:
    by_ref: dict[str, int] = field(default_factory=dict)  # UUID text or external id -> row
    ids: list[uuid.UUID] = field(default_factory=list)
    id_bytes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="V16"))
    zone_ids: list[uuid.UUID | None] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    loaded_at: float = 0.0


class AssetDirectory:
    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float = 15.0,
                 miss_refresh_s: float = 0.25) -> None:
        self._pool = pool
        self._ttl = ttl_s
        self._miss_refresh = miss_refresh_s
        self._tenants: dict[uuid.UUID, TenantAssets] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}

    async def _load(self, tenant_id: uuid.UUID) -> TenantAssets:
        rows = await self._pool.fetch(
            "select id, external_id, zone_id, metrics from asset "
            "where tenant_id = $1 and deleted_at is null", tenant_id)
        ta = TenantAssets(loaded_at=time.monotonic())
        for i, r in enumerate(rows):
            ta.ids.append(r["id"])
            ta.zone_ids.append(r["zone_id"])
            ta.metrics.append(_json(r["metrics"]))
            ta.by_ref[str(r["id"])] = i
            if r["external_id"]:
                ta.by_ref.setdefault(r["external_id"], i)
        ta.id_bytes = np.frombuffer(b"".join(u.bytes for u in ta.ids), dtype="V16") \
            if ta.ids else np.empty(0, dtype="V16")
        self._tenants[tenant_id] = ta
        return ta

    async def get(self, tenant_id: uuid.UUID, *, refs: set[str] | None = None) -> TenantAssets:
        """The tenant's assets; reloads when stale or when `refs` names an unknown one."""
        ta = self._tenants.get(tenant_id)
        now = time.monotonic()
        stale = ta is None or now - ta.loaded_at > self._ttl
        missing = ta is not None and refs is not None and not refs <= ta.by_ref.keys() \
            and now - ta.loaded_at > self._miss_refresh
        if stale or missing:
            lock = self._locks.setdefault(tenant_id, asyncio.Lock())
            async with lock:
                ta = self._tenants.get(tenant_id)
                if ta is None or time.monotonic() - ta.loaded_at > min(self._ttl,
                                                                       self._miss_refresh):
                    ta = await self._load(tenant_id)
        assert ta is not None
        return ta

    def invalidate(self, tenant_id: uuid.UUID | None = None) -> None:
        if tenant_id is None:
            self._tenants.clear()
        else:
            self._tenants.pop(tenant_id, None)


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        import orjson

        loaded = orjson.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return {}
