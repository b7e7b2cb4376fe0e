"""Maintenance: the cluster's one runner of periodic data jobs (hourly rollups today).

A named, detached actor (`civitas-maintenance`), created by `civitas up` and restarted
by Ray when it dies; its jobs start in its constructor, so a restart resumes them with
no one having to call it. Every job is idempotent, so a run lost to a crash is simply
done again by the next one. `civitas telemetry rollup` runs the same job by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

import ray

from civitas_ray.config import get_settings
from civitas_ray.runtime.periodic import Periodic
from civitas_ray.telemetry import rollup

log = logging.getLogger(__name__)
ACTOR_NAME = "civitas-maintenance"


@ray.remote
class Maintenance:
    def __init__(self, rollup_every_s: float | None = None) -> None:
        s = get_settings().jobs
        self._runs: dict[str, dict[str, Any]] = {}
        self._jobs = {"rollup": Periodic(self.rollup, rollup_every_s or s.rollup_every_s,
                                         "telemetry rollup")}
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # an older Ray builds async actors outside their loop: start on first call
        self._start()

    def _start(self) -> None:
        for job in self._jobs.values():
            job.ensure()

    async def rollup(self) -> dict[str, Any]:
        s = get_settings().jobs
        started = time.time()
        try:
            result = await rollup.rollup_due(lookback_hours=s.rollup_lookback_hours,
                                             backfill_hours=s.rollup_backfill_hours)
        except Exception as exc:
            self._runs["rollup"] = {"at": started, "ok": False, "error": repr(exc)}
            raise
        out = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
               for k, v in asdict(result).items()}
        self._runs["rollup"] = {"at": started, "ok": True, **out}
        return out

    async def status(self) -> dict[str, Any]:
        self._start()
        return {"jobs": sorted(self._jobs), "last_runs": dict(self._runs)}


def handle(name: str = ACTOR_NAME, rollup_every_s: float | None = None) -> Any:
    """The maintenance actor (created on first use, like the entity hosts)."""
    s = get_settings()
    return Maintenance.options(  # type: ignore[attr-defined]  # a Ray actor class
        name=name, namespace=s.ray.namespace, get_if_exists=True, lifetime="detached",
        max_restarts=-1, max_task_retries=-1, num_cpus=0).remote(rollup_every_s)


def start() -> dict[str, Any]:
    """Create (or find) the actor and wait until its jobs run; returns its status."""
    result: dict[str, Any] = ray.get(handle().status.remote(), timeout=60)
    return result


def stop() -> bool:
    """Kill the actor for good (`civitas down`); False when there was none."""
    try:
        actor = ray.get_actor(ACTOR_NAME, namespace=get_settings().ray.namespace)
    except ValueError:
        return False
    ray.kill(actor, no_restart=True)
    return True
