"""A Serve deployment handle that may not exist: looked up once, retried after a pause.

Callers (the ingress asking the Forecaster, indexing asking the Embedder) fall back to
in-process work when Ray, Serve or the deployment is not there; this keeps them from
paying a failed lookup on every call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class OptionalHandle:
    def __init__(self, lookup: Callable[[], Any], what: str, retry_s: float = 30.0) -> None:
        self._lookup = lookup
        self._what = what
        self._retry_s = retry_s
        self._handle: Any = None
        self._retry_at = 0.0

    def get(self) -> Any | None:
        """The handle, or None (Ray not connected, or the deployment not reachable)."""
        import ray

        if not ray.is_initialized():
            return None
        if self._handle is not None:
            return self._handle
        now = time.monotonic()
        if now < self._retry_at:
            return None
        try:
            self._handle = self._lookup()
        except Exception as exc:  # Serve not started, or the app not deployed
            self._retry_at = now + self._retry_s
            log.info("deployment not reachable; working in-process",
                     extra={"deployment": self._what, "error": repr(exc)})
            return None
        return self._handle

    def failed(self) -> None:
        """A call through the handle failed: look it up again, after the pause."""
        self._handle = None
        self._retry_at = time.monotonic() + self._retry_s
