"""Checkpointing and passivation shared by the stream and zone hosts.

Checkpoints in Redis only make activation cheaper: PostgreSQL holds every reading, so
an entity whose checkpoint is missing or cannot be read (Redis away or restarted) is
rebuilt from the database instead, and a failed checkpoint write never stops the host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, MutableMapping, Sequence
from typing import Any

import orjson
from redis.exceptions import RedisError

from civitas_ray.cache import get_redis
from civitas_ray.config import ActorSettings

log = logging.getLogger(__name__)
_REDIS_ERRORS = (RedisError, OSError)


async def read_checkpoints(keys: Sequence[str]) -> list[str | bytes | None]:
    """The stored checkpoints of `keys` (None where absent or while Redis is away)."""
    if not keys:
        return []
    try:
        return list(await get_redis().mget(list(keys)))
    except _REDIS_ERRORS as exc:
        log.warning("checkpoints unavailable; rebuilding from the database",
                    extra={"entities": len(keys), "error": repr(exc)})
        return [None] * len(keys)


async def checkpoint_and_passivate(
    entities: MutableMapping[Any, Any], evaluators: MutableMapping[Any, Any], *,
    key_of: Callable[[Any], str], now: float, settings: ActorSettings, ttl_s: int,
    force: bool = False,
) -> dict[str, int]:
    """Checkpoint dirty entities that are due (or idle, or `force`) to Redis in one
    pipeline, then drop idle entities and their rule evaluators (keyed `(rule, key, ...)`).
    """
    pipe = get_redis().pipeline(transaction=False)
    due_keys: list[Any] = []
    for key, entity in entities.items():
        idle = now - entity.last_active > settings.passivate_after_s
        due = now - entity.last_checkpoint > settings.checkpoint_every_s
        if entity.dirty and (idle or due or force):
            pipe.set(key_of(key), orjson.dumps(entity.state.checkpoint(),
                                               option=orjson.OPT_SERIALIZE_NUMPY), ex=ttl_s)
            due_keys.append(key)
    saved = failed = 0
    if due_keys:
        try:
            await pipe.execute()
        except _REDIS_ERRORS as exc:
            failed = len(due_keys)
            log.warning("checkpoint write failed; entities stay dirty",
                        extra={"entities": failed, "error": repr(exc)})
        else:
            saved = len(due_keys)
            for key in due_keys:
                entities[key].dirty, entities[key].last_checkpoint = False, now
    passivated = 0
    for key, entity in list(entities.items()):
        if now - entity.last_active > settings.passivate_after_s:
            # Without a fresh checkpoint the next activation rebuilds from PostgreSQL.
            del entities[key]
            for k in [k for k in evaluators if _subject(k) == key]:
                del evaluators[k]
            passivated += 1
    return {"checkpointed": saved, "checkpoint_failures": failed, "passivated": passivated}


def _subject(evaluator_key: tuple[Hashable, ...]) -> Hashable:
    return evaluator_key[1]
