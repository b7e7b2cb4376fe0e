"""StreamHost against the real PostgreSQL and Redis, without Ray: bulk activation,
rebuild from the database and from checkpoints, idempotent batches, zone deltas."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from civitas_ray.audit.service import SYSTEM_ACTOR
from civitas_ray.db.session import set_context, tenant_session
from civitas_ray.streams.host import StreamHost
from civitas_ray.telemetry.ingest import get_ingestor
from civitas_ray.telemetry.writer import Rows
from civitas_ray.tenants import service as tenants
from civitas_ray.tenants.schemas import TenantCreate

pytestmark = pytest.mark.db


async def _tenant_with_assets(admin_sql, n: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    async with tenant_session(None, system=True) as s:
        t = await tenants.create(session=s, data=TenantCreate(
            slug="host-" + uuid.uuid4().hex[:8], name="host"), actor=SYSTEM_ACTOR)
        await set_context(s, tenant_id=t.id)
    ids = [uuid.uuid4() for _ in range(n)]
    await admin_sql(
        "insert into asset (id, tenant_id, name, kind, geom) select a, $1, 'gauge', 'sensor', "
        "ST_SetSRID(ST_MakePoint(-73.98, 40.75), 4326) from unnest($2::uuid[]) a", t.id, ids)
    return t.id, ids


def _rows(tenant: uuid.UUID, assets: list[uuid.UUID], per_asset: int, start_us: int,
          offset: float = 0.0) -> Rows:
    n = len(assets) * per_asset
    asset = np.frombuffer(b"".join(a.bytes for a in assets), dtype="V16").repeat(per_asset)
    ts = start_us + np.tile(np.arange(per_asset, dtype=np.int64) * 60_000_000, len(assets))
    return Rows(tenant=np.frombuffer(tenant.bytes * n, dtype="V16"), asset=asset,
                metric_codes=np.zeros(n, np.int32), metric_names=["level"], ts_us=ts,
                value=np.tile(np.arange(per_asset, dtype=np.float64), len(assets)) + offset,
                quality=np.zeros(n, np.int16))


async def _store(rows: Rows) -> None:
    ing = get_ingestor()
    await ing.start()
    assert ing.writer is not None
    await ing.writer.submit(rows)


async def _apply(host: StreamHost, rows: Rows) -> int:
    return await host.apply(rows.tenant, rows.asset, rows.metric_codes, rows.metric_names,
                            rows.ts_us, rows.value)


async def test_a_burst_of_new_streams_activates_in_bulk(migrated_db, admin_sql) -> None:
    tenant, assets = await _tenant_with_assets(admin_sql, 600)
    start = (time.time_ns() // 1000) - 3_600_000_000
    rows = _rows(tenant, assets, 5, start)
    await _store(rows)
    zone_items: list = []
    host = StreamHost(zone_sink=zone_items.extend)
    assert await _apply(host, rows) == 600
    assert host.stats["activations"] == 600 and host.stats["errors"] == 0
    # Rebuilt from the database, then the same batch again: nothing changes.
    snap = await host.snapshot(tenant, assets[0], "level", window=10)
    assert snap is not None and [p["value"] for p in snap["window"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    before = host.info()["readings"]
    assert await _apply(host, rows) == 600
    assert host.info()["readings"] == before + len(rows)
    snap2 = await host.snapshot(tenant, assets[0], "level", window=10)
    assert snap2 is not None and snap2["window"] == snap["window"]
    assert zone_items == []  # these assets are in no zone


async def test_restart_rebuilds_from_checkpoint_plus_newer_rows(migrated_db, admin_sql) -> None:
    tenant, [asset] = await _tenant_with_assets(admin_sql, 1)
    start = (time.time_ns() // 1000) - 7_200_000_000
    first = _rows(tenant, [asset], 30, start)
    await _store(first)
    host = StreamHost()
    await _apply(host, first)
    saved = await host.housekeeping(force_checkpoint=True)
    assert saved["checkpointed"] == 1
    # Rows committed while no host was running are picked up after the checkpoint.
    later = _rows(tenant, [asset], 10, start + 30 * 60_000_000, offset=100.0)
    await _store(later)
    fresh = StreamHost()
    snap = await fresh.snapshot(tenant, asset, "level", window=100)
    assert snap is not None
    values = [p["value"] for p in snap["window"]]
    assert values == [float(i) for i in range(30)] + [100.0 + i for i in range(10)]
    assert fresh.stats["rebuilt_rows"] == 10  # only what the checkpoint did not have


async def test_unknown_stream_has_no_state(migrated_db, admin_sql) -> None:
    tenant, [asset] = await _tenant_with_assets(admin_sql, 1)
    host = StreamHost()
    assert await host.snapshot(tenant, asset, "nothing", window=5) is None
    assert await host.snapshot(tenant, uuid.uuid4(), "level", window=5) is None


async def test_crossing_and_recovery_in_one_batch_both_count(migrated_db, admin_sql) -> None:
    from civitas_ray.alerts import service as alerts

    tenant, [asset] = await _tenant_with_assets(admin_sql, 1)
    async with tenant_session(tenant) as s:
        await alerts.create_rule(session=s, tenant_id=tenant, actor=SYSTEM_ACTOR,
                                 created_by=None, values={
            "name": "high", "asset_id": asset, "metric": "level", "severity": "major",
            "condition": {"type": "threshold", "op": ">", "threshold": 100},
            "for_seconds": 0})
    start = (time.time_ns() // 1000) - 600_000_000
    rows = _rows(tenant, [asset], 4, start)
    rows.value[:] = [10.0, 150.0, 20.0, 30.0]  # up and back down within one batch
    await _store(rows)
    host = StreamHost()
    await _apply(host, rows)
    alerts_rows = await admin_sql("select status, value, data from alert where tenant_id = $1",
                                  tenant)
    assert [(r["status"], r["value"]) for r in alerts_rows] == [("resolved", 150.0)], host.info()
    [incident] = await admin_sql("select status from incident where tenant_id = $1", tenant)
    assert incident["status"] == "resolved"
    assert host.stats["alerts_fired"] == 1 and host.stats["alerts_resolved"] == 1


async def test_closed_minutes_are_published_as_rollups(migrated_db, admin_sql) -> None:
    from civitas_ray.realtime.events import replay

    tenant, [asset] = await _tenant_with_assets(admin_sql, 1)
    minute = 60_000_000
    start = ((time.time_ns() // 1000) // minute - 5) * minute  # five minutes ago, aligned
    rows = _rows(tenant, [asset], 6, start)
    rows.ts_us[:] = start + np.arange(6) * (minute // 2)  # two readings a minute, 3 minutes
    rows.value[:] = [1.0, 3.0, 10.0, 20.0, 5.0, 7.0]
    await _store(rows)
    host = StreamHost()
    await _apply(host, rows)
    await host.housekeeping()
    events = [e for e in await replay(tenant, "0-0") if e.type == "telemetry.rollup"]
    assert [(e.data["count"], e.data["avg"], e.data["min"], e.data["max"], e.data["last"])
            for e in events] == [(2, 2.0, 1.0, 3.0, 3.0), (2, 15.0, 10.0, 20.0, 20.0),
                                 (2, 6.0, 5.0, 7.0, 7.0)]
    assert all(e.channel == f"stream:{asset}/level" for e in events)
    # Each closed minute is published once.
    await host.housekeeping()
    again = [e for e in await replay(tenant, "0-0") if e.type == "telemetry.rollup"]
    assert len(again) == 3


async def test_idle_streams_are_checkpointed_and_passivated(migrated_db, admin_sql,
                                                            monkeypatch) -> None:
    tenant, [asset] = await _tenant_with_assets(admin_sql, 1)
    rows = _rows(tenant, [asset], 5, (time.time_ns() // 1000) - 600_000_000)
    await _store(rows)
    host = StreamHost()
    await _apply(host, rows)
    monkeypatch.setattr(host.settings.actors, "passivate_after_s", 0.0)
    done = await host.housekeeping()
    assert done == {"checkpointed": 1, "checkpoint_failures": 0, "passivated": 1}
    assert host.entities == {}
    # Back on demand, from the checkpoint alone (nothing newer was stored).
    snap = await host.snapshot(tenant, asset, "level", window=10)
    assert snap is not None and [p["value"] for p in snap["window"]] == [0, 1, 2, 3, 4]
    assert host.stats["rebuilt_rows"] == 0
