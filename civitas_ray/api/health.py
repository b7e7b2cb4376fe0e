"""Liveness (/healthz) and readiness (/readyz: database, Redis, MQTT, each with its status)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiomqtt
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from civitas_ray import __version__
from civitas_ray.cache import get_redis
from civitas_ray.config import get_settings
from civitas_ray.db.session import get_engine
from civitas_ray.mqtt.health import bridge_readiness
from civitas_ray.transit.health import readiness as gtfs_rt_readiness

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


async def _timed(name: str, probe: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        detail = await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
        out: dict[str, Any] = {"status": "ok"}
        if detail:
            out.update(detail)
    except Exception as exc:
        out = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    out["latency_ms"] = round((time.perf_counter() - start) * 1000, 1)
    return out


async def _db() -> dict[str, Any]:
    async with get_engine().connect() as conn:
        version = (await conn.execute(text(
            "select extversion from pg_extension where extname = 'timescaledb'"))).scalar()
    return {"timescaledb": version}


async def _redis() -> None:
    await get_redis().ping()


async def _mqtt() -> None:
    s = get_settings().mqtt
    password = s.password.get_secret_value() if s.password else None
    async with aiomqtt.Client(s.host, s.port, username=s.username, password=password,
                              timeout=CHECK_TIMEOUT_S):
        pass


# Extra readiness probes registered by other components (MQTT bridge, feed pollers...).
EXTRA_CHECKS: dict[str, Any] = {}
# The MQTT bridge runs in other processes: its heartbeat in Redis says how it is doing.
EXTRA_CHECKS["mqtt_bridge"] = bridge_readiness
# GTFS-RT feeds: age, entities and errors per feed; a polled feed gone silent is down.
EXTRA_CHECKS["gtfs_rt"] = gtfs_rt_readiness


@router.get("/readyz", summary="Dependencies reachable (database, Redis, MQTT)",
            responses={503: {"description": "At least one dependency is down"}})
async def readyz() -> JSONResponse:
    probes = {"database": _db, "redis": _redis, "mqtt": _mqtt, **EXTRA_CHECKS}
    results = await asyncio.gather(*(_timed(n, p) for n, p in probes.items()))
    checks = dict(zip(probes, results, strict=True))
    ready = all(c["status"] == "ok" for c in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)
