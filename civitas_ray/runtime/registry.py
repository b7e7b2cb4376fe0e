"""One registry for the entity hosts: which shard owns a key, and its actor handle.

Keys are placed by rendezvous (highest-random-weight) hashing, vectorised over numpy
arrays of UUID bytes: every process computes the same owner without coordination, and
changing the shard count moves only the keys that must move (1/N of them).
Hosts are named, detached Ray actors created on first use (`get_if_exists`) and
restarted by Ray when they die (`max_restarts=-1`); calls are retried across a restart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from civitas_ray.config import get_settings

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SEEDS = np.array([0x9E3779B97F4A7C15 * (i + 1) & 0xFFFFFFFFFFFFFFFF for i in range(256)],
                  dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-distributed 64-bit hash of 64-bit integers."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def key_hash(uuid_bytes: np.ndarray) -> np.ndarray:
    """64-bit hashes of an array of 16-byte keys (dtype V16)."""
    words = np.ascontiguousarray(uuid_bytes).view(np.uint64).reshape(-1, 2)
    with np.errstate(over="ignore"):
        return _mix(words[:, 0] ^ _mix(words[:, 1]))


def owners(uuid_bytes: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard index (0..n-1) that owns each key."""
    if n_shards <= 1:
        return np.zeros(len(uuid_bytes), dtype=np.int32)
    h = key_hash(uuid_bytes)
    scores = _mix(h[:, None] ^ _SEEDS[None, :n_shards])
    return np.argmax(scores, axis=1).astype(np.int32)


def owner(key: bytes, n_shards: int) -> int:
    return int(owners(np.frombuffer(key, dtype="V16"), n_shards)[0])


def _actor_options(name: str) -> dict[str, Any]:
    s = get_settings()
    return {"name": name, "namespace": s.ray.namespace, "get_if_exists": True,
            "lifetime": "detached", "max_restarts": -1, "max_task_retries": -1,
            # Batches beyond this wait in Ray's queue (back-pressure), not in the pools.
            "num_cpus": s.actors.shard_num_cpus, "max_concurrency": 64}


# Handles by (namespace, name): a named actor keeps its handle across Ray's restarts of
# it, so each process looks a shard up once.
_handles: dict[tuple[str, str], Any] = {}


def stream_shard(index: int) -> Any:
    from civitas_ray.streams.actor import StreamShard

    s = get_settings()
    key = (s.ray.namespace, f"stream-shard-{index}")
    if key not in _handles:
        _handles[key] = StreamShard.options(  # type: ignore[attr-defined]  # a Ray actor class
            **_actor_options(key[1])).remote(
            index, s.actors.stream_shards)
    return _handles[key]


def zone_shard(index: int) -> Any:
    from civitas_ray.zones.actor import ZoneShard

    s = get_settings()
    key = (s.ray.namespace, f"zone-shard-{index}")
    if key not in _handles:
        _handles[key] = ZoneShard.options(  # type: ignore[attr-defined]  # a Ray actor class
            **_actor_options(key[1])).remote(
            index, s.actors.zone_shards)
    return _handles[key]


def forget_handles() -> None:
    """After a disconnect from Ray (handles belong to one connection)."""
    _handles.clear()


def stream_shard_for(asset_id: bytes) -> Any:
    return stream_shard(owner(asset_id, get_settings().actors.stream_shards))


def zone_shard_for(zone_id: bytes) -> Any:
    return zone_shard(owner(zone_id, get_settings().actors.zone_shards))
