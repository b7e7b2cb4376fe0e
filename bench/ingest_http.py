"""End-to-end HTTP ingest rate vs the raw 2-connection COPY rate, in one run.

1. Reference: two asyncpg connections COPY 5,000-row batches of ready-made records
   into the telemetry hypertable (the database's own ceiling on this machine).
2. Our path: `wrk` posts 1,000-reading JSON batches (distinct readings, pre-generated)
   to `POST /api/v1/telemetry` with a device key; every 202 means committed. The rate is
   rows that landed in the hypertable during the run / run time.

    .venv/bin/python bench/ingest_http.py [--seconds 15] [--connections 16] [--server uvicorn]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
import orjson

from bench import common

LUA = r"""
local bodies = {}
local idx = 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  idx = tonumber(args[2]) or 0
end
request = function()
  idx = idx % #bodies + 1
  return wrk.format("POST", "/api/v1/telemetry", {["Content-Type"] = "application/json",
    ["X-API-Key"] = args_key}, bodies[idx])
end
"""


async def raw_copy_rate(tenant: uuid.UUID, assets: list[uuid.UUID], rows: int) -> float:
    from civitas_ray.config import get_settings

    s = get_settings()
    dsn = s.database.dsn_for(s.ingest.db_user, s.ingest.db_password)
    base = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    batch = 5000
    batches = []
    for b in range(rows // batch):
        batches.append([(tenant, assets[(b * batch + i) % len(assets)], "ref_metric",
                         datetime.fromtimestamp(base + b * batch + i, UTC), float(i), 0)
                        for i in range(batch)])
    conns = [await asyncpg.connect(dsn) for _ in range(2)]

    async def worker(conn: asyncpg.Connection, mine: list[list[tuple]]) -> None:
        for recs in mine:
            await conn.copy_records_to_table(
                "telemetry", records=recs,
                columns=["tenant_id", "asset_id", "metric", "ts", "value", "quality"])

    start = time.perf_counter()
    await asyncio.gather(*(worker(c, batches[i::2]) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for c in conns:
        await c.close()
    return len(batches) * batch / elapsed


def make_bodies(path: Path, assets: list[uuid.UUID], n_bodies: int, per_body: int) -> int:
    """Distinct readings: asset i, consecutive seconds, so nothing is a duplicate."""
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    ids = [str(a) for a in assets]
    metric = "flow"
    total = 0
    with path.open("wb") as f:
        for b in range(n_bodies):
            ts = start + b * per_body // len(ids) + np.arange(per_body) // len(ids)
            readings = [{"asset_id": ids[(b * per_body + i) % len(ids)], "metric": metric,
                         "ts": float(ts[i]) + (b * per_body + i) % len(ids) * 1e-3,
                         "value": float(i % 97)} for i in range(per_body)]
            f.write(orjson.dumps({"readings": readings}) + b"\n")
            total += per_body
    return total


async def count_rows(tenant: uuid.UUID, metric: str) -> int:
    from civitas_ray.config import get_settings

    conn = await asyncpg.connect(get_settings().database.admin_dsn)
    n = await conn.fetchval("select count(*) from telemetry where tenant_id = $1 and metric = $2",
                            tenant, metric)
    await conn.close()
    return int(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--assets", type=int, default=1000)
    ap.add_argument("--bodies", type=int, default=3000)
    ap.add_argument("--ref-rows", type=int, default=600_000)
    args = ap.parse_args()

    asyncio.run(common.ensure_database())
    tenant, assets, key = asyncio.run(common.make_tenant_with_assets(args.assets))
    ref = asyncio.run(raw_copy_rate(tenant, assets, args.ref_rows))
    print(f"raw COPY, 2 connections, 5000-row batches: {ref:,.0f} rows/s")

    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.ndjson"
        generated = make_bodies(bodies, assets, args.bodies, 1000)
        script = Path(tmp) / "post.lua"
        script.write_text(LUA.replace("args_key", f'"{key}"'))
        port = common.free_port()
        with common.uvicorn_server(port) as url:
            # Warm up the asset cache and connection pool.
            import httpx

            httpx.post(url + "/api/v1/telemetry", headers={"X-API-Key": key},
                       json={"readings": []}, timeout=10)
            before = asyncio.run(count_rows(tenant, "flow"))
            t0 = time.perf_counter()
            out = subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                 "-s", str(script), url, "--", str(bodies), "0"],
                capture_output=True, text=True, check=True)
            elapsed = time.perf_counter() - t0
            after = asyncio.run(count_rows(tenant, "flow"))
    print(out.stdout)
    landed = after - before
    rate = landed / elapsed
    print(f"generated {generated:,} distinct readings; landed {landed:,} in {elapsed:.1f} s")
    print(f"end-to-end HTTP ingest (uvicorn, 1 worker): {rate:,.0f} readings/s "
          f"= {rate / ref:.0%} of raw COPY")
    if landed >= generated:
        print("warning: the run used every pre-generated body; raise --bodies")
    print(f"machine: {common.machine()}")
    os.environ.pop("CIVITAS_DATABASE__NAME", None)


if __name__ == "__main__":
    main()
