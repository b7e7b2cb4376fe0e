""""State of a zone now": the ZoneShard actor (`live.zone_state`) vs the equivalent SQL.

One run, same data: a fresh tenant, one zone, `--assets` sensors in it, `--readings`
readings per asset and metric (two metrics) ingested through the real ingestor, whose
commit hook dispatches to the StreamShards, which feed the ZoneShard. Once the zone
reports every asset, time `--calls` sequential calls of
1. `live.zone_state(...)` (what `GET /zones/{id}/state` does: a registry lookup of the
   shard handle, then one actor call; the answer also carries window stats and a
   forecast over `--horizon` seconds),
2. the same call on a handle looked up once (the lookup's share of (1)),
3. the SQL a server without actors would run: the latest value per asset+metric in the
   zone (DISTINCT ON over the hypertable, last day) with per-metric count/avg/min/max,
   one asyncpg round trip (admin connection: no RLS context to set),
and print p50/p99 and the ratios. A local Ray of its own (`address="local"`), shut down
at the end.

    .venv/bin/python -m bench.zone_state [--assets 200] [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import numpy as np
import orjson

from bench import common

NAMESPACE = "civitas-bench-" + uuid.uuid4().hex[:6]
os.environ["CIVITAS_RAY__NAMESPACE"] = NAMESPACE

SQUARE = ("MULTIPOLYGON(((-73.99 40.74, -73.97 40.74, -73.97 40.76, -73.99 40.76, "
          "-73.99 40.74)))")

ZONE_SQL = """
with latest as (
  select distinct on (t.asset_id, t.metric) t.asset_id, t.metric, t.ts, t.value
  from telemetry t join asset a on a.id = t.asset_id
  where a.zone_id = $1 and a.tenant_id = $2 and a.deleted_at is null
    and t.ts > now() - interval '1 day'
  order by t.asset_id, t.metric, t.ts desc)
select asset_id, metric, ts, value,
       count(*) over w, avg(value) over w, min(value) over w, max(value) over w,
       max(ts) over w
from latest window w as (partition by metric)
"""


async def make_zone(tenant: uuid.UUID, assets: list[uuid.UUID]) -> uuid.UUID:
    """A zone around the bench assets' point, with every asset in it (bulk SQL)."""
    from civitas_ray.config import get_settings

    conn = await asyncpg.connect(get_settings().database.admin_dsn)
    zone = await conn.fetchval(
        "insert into zone (tenant_id, name, code, kind, geom) values "
        "($1, 'bench zone', 'BENCH', 'district', ST_GeomFromText($2, 4326)) returning id",
        tenant, SQUARE)
    await conn.execute("update asset set zone_id = $1 where id = any($2::uuid[])", zone, assets)
    await conn.close()
    return zone  # type: ignore[no-any-return]


async def ingest(tenant: uuid.UUID, assets: list[uuid.UUID], per_asset: int) -> int:
    """Recent readings (the last minutes) through the ingestor and its commit hook."""
    from civitas_ray.telemetry.ingest import get_ingestor
    from civitas_ray.telemetry.parse import parse_readings

    ing = get_ingestor()
    await ing.start()
    now = time.time()
    total = 0
    for k in range(per_asset):
        items = [{"asset_id": str(a), "metric": m, "ts": now - (per_asset - k) * 10.0,
                  "value": float(10 * k + i % 7)}
                 for i, a in enumerate(assets) for m in ("level", "flow")]
        out = await ing.ingest(tenant_id=tenant,
                               parsed=parse_readings(items, max_readings=len(items)))
        total += out.accepted
    return total


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> np.ndarray:
    for _ in range(min(20, n)):  # warm-up
        await fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        await fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


async def run(args: argparse.Namespace) -> None:
    from civitas_ray.config import get_settings
    from civitas_ray.runtime import live, registry

    await common.ensure_database()
    tenant, assets, _ = await common.make_tenant_with_assets(args.assets)
    zone = await make_zone(tenant, assets)
    n = await ingest(tenant, assets, args.readings)
    print(f"ingested {n:,} readings for {args.assets} assets x 2 metrics", flush=True)

    t0 = time.monotonic()
    state: dict[str, Any] | None = None
    while time.monotonic() - t0 < 60:
        raw = await live.zone_state(tenant_id=tenant, zone_id=zone, horizon_s=args.horizon)
        state = orjson.loads(raw) if raw else None
        if state and state.get("kpis", {}).get("assets_reporting") == args.assets and \
                len(state.get("members", [])) == 2 * args.assets:
            break
        await asyncio.sleep(0.25)
    else:
        raise RuntimeError(f"the zone shard did not report every asset: {state and state['kpis']}")
    print(f"zone shard reports all {args.assets} assets after {time.monotonic() - t0:.1f} s",
          flush=True)

    async def via_live() -> Any:
        return await live.zone_state(tenant_id=tenant, zone_id=zone, horizon_s=args.horizon)

    async def via_live_kpis() -> Any:
        return await live.zone_state(tenant_id=tenant, zone_id=zone, horizon_s=args.horizon,
                                     members=False)

    handle = registry.zone_shard_for(zone.bytes)

    async def via_handle() -> Any:
        return await handle.state.remote(str(tenant), str(zone), args.horizon)  # dict

    conn = await asyncpg.connect(get_settings().database.admin_dsn)
    rows = await conn.fetch(ZONE_SQL, zone, tenant)
    assert len(rows) == 2 * args.assets, len(rows)

    async def via_sql() -> Any:
        return await conn.fetch(ZONE_SQL, zone, tenant)

    results = {"live.zone_state (actor, JSON bytes)": await timed(via_live, args.calls),
               "live.zone_state members=false": await timed(via_live_kpis, args.calls),
               "actor, cached handle": await timed(via_handle, args.calls),
               "SQL (asyncpg, DISTINCT ON)": await timed(via_sql, args.calls)}
    await conn.close()
    from civitas_ray.telemetry.ingest import close_ingestor

    await close_ingestor()

    sql50 = float(np.percentile(results["SQL (asyncpg, DISTINCT ON)"], 50))
    print(f"\nzone state, {args.assets} assets x 2 metrics, {args.calls} sequential calls "
          f"(horizon {args.horizon} s)")
    for name, ms in results.items():
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"  {name:<28} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
              f"p50 = {p50 / sql50:5.2f}x SQL")
    print(f"machine: {common.machine()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=200)
    ap.add_argument("--readings", type=int, default=5, help="per asset and metric")
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--horizon", type=int, default=3600)
    args = ap.parse_args()

    common.run_on_local_ray(NAMESPACE, run(args))


if __name__ == "__main__":
    main()
