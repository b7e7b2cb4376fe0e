"""MqttBridge: the MQTT ingest bridge as Ray actors, one per bridge process.

A thin shell over `MqttIngestBridge`, which runs on its own event loop in a thread of
the actor, so the actor's methods (state, stop) answer while it works.

Persisted: nothing in the actor. A message it received but did not commit was never
acknowledged, so the broker keeps it in the actor's persistent session (fixed client
id) and resends it to the restarted actor; committed readings are in PostgreSQL.
Rebuilt on restart: connections, the tenant and asset caches; counters restart at 0.
The actor restarts by itself (`max_restarts=-1`): a bridge loop that ends without
being asked to stop takes the process down so Ray brings it back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any, cast

import ray

from civitas_ray.config import Settings, get_settings

log = logging.getLogger(__name__)

ACTOR_PREFIX = "civitas-mqtt-bridge-"


class MqttBridgeHost:
    def __init__(self, index: int, connections: int | None = None) -> None:
        from civitas_ray.logging import configure
        from civitas_ray.mqtt.bridge import MqttIngestBridge

        s = get_settings()
        configure(s.log_level, json_output=s.log_json)
        self._loop = asyncio.new_event_loop()
        self._stopping = False
        self._bridge = MqttIngestBridge(s, index=index, connections=connections)
        self._thread = threading.Thread(target=self._main, name="mqtt-bridge", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException:
            log.exception("mqtt bridge loop crashed")
        finally:
            if not self._stopping:
                # Not asked to stop: exit so that Ray restarts the actor.
                logging.shutdown()
                os._exit(1)

    async def _serve(self) -> None:
        from civitas_ray.cache import close_redis
        from civitas_ray.db.session import dispose_engine

        try:
            await self._bridge.run()
        finally:
            await dispose_engine()
            await close_redis()

    def state(self) -> dict[str, Any]:
        """The bridge's counters and connections (as in its Redis heartbeat)."""
        return self._bridge.snapshot()

    def stop(self, timeout_s: float = 30.0, retire: bool = False) -> dict[str, Any]:
        """Drain (commit and ack what was received), disconnect; the final counters.
        `retire`: this index will not come back (see MqttIngestBridge.stop)."""
        self._stopping = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(lambda: self._bridge.stop(retire=retire))
            self._thread.join(timeout_s)
        return self._bridge.snapshot()


MqttBridge = ray.remote(MqttBridgeHost)


def _names(namespace: str) -> list[str]:
    if not ray.is_initialized():
        return []
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == namespace and a["name"].startswith(ACTOR_PREFIX))


def start_bridge(settings: Settings | None = None, *, processes: int | None = None,
                 connections: int | None = None, env_vars: dict[str, str] | None = None,
                 timeout_s: float = 60.0) -> list[str]:
    """Start the bridge actors (or find them running); returns their names.

    Needs a connected Ray driver (`civitas up` has one). Idempotent: running actors are
    reused; extra ones from a larger earlier setting are stopped. Does nothing when
    `mqtt.bridge.enabled` is false. The actors get this process's CIVITAS_* settings.
    """
    s = settings or get_settings()
    cfg = s.mqtt.bridge
    if not cfg.enabled:
        return []
    if env_vars is None:
        from civitas_ray.runtime.serving import settings_env

        env_vars = settings_env()
    n = processes if processes is not None else cfg.processes
    names = [f"{ACTOR_PREFIX}{i}" for i in range(n)]
    handles: list[Any] = [MqttBridge.options(
        name=name, namespace=s.ray.namespace, get_if_exists=True, lifetime="detached",
        max_restarts=-1, max_task_retries=0, num_cpus=cfg.num_cpus,
        runtime_env={"env_vars": env_vars}).remote(i, connections)
        for i, name in enumerate(names)]
    extra = [name for name in _names(s.ray.namespace) if name not in names]
    if extra:  # fewer processes than before: those ids will not come back
        _stop(extra, s.ray.namespace, timeout_s, retire=True)
    ray.get([h.state.remote() for h in handles], timeout=timeout_s)
    log.info("mqtt bridge actors running", extra={"actors": names})
    return names


def stop_bridge(settings: Settings | None = None, *, timeout_s: float = 30.0,
                retire: bool = False) -> list[str]:
    """Drain and stop every bridge actor; returns the names stopped. Idempotent.

    Call it before taking Serve or Ray down, so that what was received is committed
    and acknowledged rather than resent later. The sessions stay at the broker, which
    queues what arrives meanwhile for the next start; `retire=True` ends them instead
    (the bridge is being removed for good).
    """
    s = settings or get_settings()
    names = _names(s.ray.namespace)
    _stop(names, s.ray.namespace, timeout_s, retire=retire)
    return names


def bridge_states(settings: Settings | None = None, *, timeout_s: float = 10.0,
                  ) -> dict[str, dict[str, Any]]:
    s = settings or get_settings()
    out: dict[str, dict[str, Any]] = {}
    for name in _names(s.ray.namespace):
        handle = ray.get_actor(name, namespace=s.ray.namespace)
        out[name] = cast(dict[str, Any], ray.get(handle.state.remote(), timeout=timeout_s))
    return out


def _stop(names: list[str], namespace: str, timeout_s: float, *, retire: bool = False) -> None:
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=namespace)
        except ValueError:
            continue
        try:
            ray.get(handle.stop.remote(timeout_s, retire), timeout=timeout_s + 5)
        except Exception as exc:
            log.warning("mqtt bridge actor did not stop cleanly",
                        extra={"actor": name, "error": repr(exc)})
        ray.kill(handle, no_restart=True)
