"""A background loop for actors: started lazily in the actor's event loop, never dies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class Periodic:
    """Runs `fn` every `every_s` once `ensure()` was called from inside the event loop.

    Ray builds an async actor before its loop runs, so the task is created on the first
    call instead; a failing round is logged and the next one comes as usual.
    """

    def __init__(self, fn: Callable[[], Awaitable[Any]], every_s: float, name: str) -> None:
        self._fn = fn
        self._every_s = every_s
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def ensure(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await self._fn()
            except Exception:
                log.exception("periodic task failed", extra={"task": self._name})
