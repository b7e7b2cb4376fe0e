"""Checkpointing and passivation shared by the stream and zone hosts."""

from __future__ import annotations

from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import orjson

from civitas_ray.cache import get_redis
from civitas_ray.config import ActorSettings


async def checkpoint_and_passivate(
    entities: MutableMapping[Any, Any], evaluators: MutableMapping[Any, Any], *,
    key_of: Callable[[Any], str], now: float, settings: ActorSettings, ttl_s: int,
    force: bool = False,
) -> dict[str, int]:
    """Checkpoint dirty entities that are due (or idle, or `force`) to Redis in one
    pipeline, then drop idle entities and their rule evaluators (keyed `(rule, key, ...)`).
    """
    saved = passivated = 0
    pipe = get_redis().pipeline(transaction=False)
    for key, entity in list(entities.items()):
        idle = now - entity.last_active > settings.passivate_after_s
        due = now - entity.last_checkpoint > settings.checkpoint_every_s
        if entity.dirty and (idle or due or force):
            pipe.set(key_of(key), orjson.dumps(entity.state.checkpoint(),
                                               option=orjson.OPT_SERIALIZE_NUMPY), ex=ttl_s)
            entity.dirty, entity.last_checkpoint = False, now
            saved += 1
        if idle:
            del entities[key]
            for k in [k for k in evaluators if _subject(k) == key]:
                del evaluators[k]
            passivated += 1
    if saved:
        await pipe.execute()
    return {"checkpointed": saved, "passivated": passivated}


def _subject(evaluator_key: tuple[Hashable, ...]) -> Hashable:
    return evaluator_key[1]
