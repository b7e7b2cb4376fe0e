"""Ask the entity hosts for live state from the ingress (or report that they are down).

The ingress talks to the shards through Ray; on a plain uvicorn process without Ray
there is no live state to serve, and the API says so with a 503 rather than guessing.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from civitas_ray.errors import ServiceUnavailable
from civitas_ray.runtime import registry

STATE_TIMEOUT_S = 10.0


def _require_ray() -> None:
    import ray

    if not ray.is_initialized():
        raise ServiceUnavailable(
            "Live state needs the actors: run the server with `civitas up` (Ray Serve)",
            headers={"Retry-After": "5"})


async def _ask(ref: Any) -> Any:
    try:
        return await asyncio.wait_for(ref, STATE_TIMEOUT_S)
    except TimeoutError as exc:
        raise ServiceUnavailable("The entity host did not answer in time; retry",
                                 headers={"Retry-After": "2"}) from exc


async def stream_state(*, tenant_id: uuid.UUID, asset_id: uuid.UUID, metric: str,
                       window: int, horizon_s: float) -> dict[str, Any] | None:
    _require_ray()
    shard = registry.stream_shard_for(asset_id.bytes)
    result: dict[str, Any] | None = await _ask(shard.state.remote(
        str(tenant_id), str(asset_id), metric, window, horizon_s))
    return result


async def zone_state(*, tenant_id: uuid.UUID, zone_id: uuid.UUID,
                     horizon_s: float, members: bool = True) -> bytes | None:
    """The zone's snapshot as JSON bytes, serialized by the shard."""
    _require_ray()
    shard = registry.zone_shard_for(zone_id.bytes)
    result: bytes | None = await _ask(shard.state_json.remote(
        str(tenant_id), str(zone_id), horizon_s, members))
    return result


def invalidate_rules(tenant_id: uuid.UUID) -> None:
    """Tell every host to reload the tenant's rules now (they also expire on a TTL)."""
    import ray

    if not ray.is_initialized():
        return
    from civitas_ray.config import get_settings

    a = get_settings().actors
    for i in range(a.stream_shards):
        registry.stream_shard(i).invalidate.remote(str(tenant_id))
    for i in range(a.zone_shards):
        registry.zone_shard(i).invalidate.remote(str(tenant_id))
