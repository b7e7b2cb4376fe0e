"""Hourly rollups: computed from raw rows, idempotent, updated by late data, and read by
range queries (`source=auto`) even after the raw rows are gone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from statistics import mean

import httpx
import pytest

from civitas_ray.telemetry.rollup import rollup_due, rollup_range
from tests.e2e.test_telemetry_ingest import iso, make_assets

pytestmark = pytest.mark.e2e

START = datetime(2026, 10, 5, 8, 0, tzinfo=UTC)


async def post(client: httpx.AsyncClient, t, readings: list[dict]) -> None:
    r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                          json={"readings": readings})
    assert r.status_code == 202 and r.json()["accepted"] == len(readings), r.text


def series(asset_id: str, metric: str, values: list[float], every_min: int = 10,
           start: datetime = START) -> list[dict]:
    return [{"asset_id": asset_id, "metric": metric,
             "ts": iso(start + timedelta(minutes=every_min * i)), "value": v}
            for i, v in enumerate(values)]


async def rollups(admin_sql, asset_id: str, metric: str) -> list[dict]:
    return [dict(r) for r in await admin_sql(
        "select bucket, count, avg, min, max, last, tenant_id from telemetry_rollup "
        "where asset_id = $1 and metric = $2 order by bucket", uuid.UUID(asset_id), metric)]


async def test_rollup_matches_the_raw_rows_and_is_idempotent(client: httpx.AsyncClient,
                                                             make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["analyst"])
    a, b = await make_assets(admin_sql, t.id, 2)
    values = [float((i * 7) % 11) for i in range(18)]  # 3 hours of 10-minute readings
    await post(client, t, series(a["id"], "flow", values) + series(b["id"], "temp", [1.0, 2.0]))

    await rollup_range(START, START + timedelta(hours=3))
    rows = await rollups(admin_sql, a["id"], "flow")
    expected = [values[h * 6:(h + 1) * 6] for h in range(3)]
    assert [r["bucket"] for r in rows] == [START + timedelta(hours=h) for h in range(3)]
    assert [(r["count"], r["min"], r["max"], r["last"]) for r in rows] == [
        (6, min(v), max(v), v[-1]) for v in expected]
    assert [r["avg"] for r in rows] == pytest.approx([mean(v) for v in expected])
    assert {r["tenant_id"] for r in rows} == {t.id}
    assert [(r["count"], r["last"]) for r in await rollups(admin_sql, b["id"], "temp")] == [
        (2, 2.0)]

    # Again: nothing changes, nothing is rewritten.
    again = await rollup_range(START, START + timedelta(hours=3))
    assert again.rows == 0 and await rollups(admin_sql, a["id"], "flow") == rows

    # A late reading in the second hour updates that hour only.
    await post(client, t, [{"asset_id": a["id"], "metric": "flow",
                            "ts": iso(START + timedelta(hours=1, minutes=5)), "value": 100.0}])
    late = await rollup_range(START + timedelta(hours=1, minutes=30),
                              START + timedelta(hours=1, minutes=31))
    assert late.hours == 1 and late.rows == 1
    after = await rollups(admin_sql, a["id"], "flow")
    assert after[0] == rows[0] and after[2] == rows[2]
    assert (after[1]["count"], after[1]["max"]) == (7, 100.0)


async def test_range_queries_read_rollups_and_survive_raw_retention(
        client: httpx.AsyncClient, make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["analyst"])
    [a] = await make_assets(admin_sql, t.id, 1)
    values = [float(i) for i in range(36)]  # 6 hours
    await post(client, t, series(a["id"], "flow", values))
    # Only the first 4 hours are rolled up; the last 2 are raw only.
    await rollup_range(START, START + timedelta(hours=4))
    params = {"asset_id": a["id"], "metric": "flow", "start": iso(START),
              "end": iso(START + timedelta(hours=6))}

    async def get(**extra: str) -> dict:
        r = await client.get("/api/v1/telemetry", headers=t.headers("analyst"),
                             params={**params, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    for agg in ["avg", "min", "max", "count", "last", "sum"]:
        raw = await get(bucket="1h", agg=agg, source="raw")
        auto = await get(bucket="1h", agg=agg)
        assert raw["source"] == "raw" and auto["source"] == "rollup+raw"
        assert [p["value"] for p in auto["points"]] == pytest.approx(
            [p["value"] for p in raw["points"]]), agg
        assert len(auto["points"]) == 6
    # Coarser buckets recompose the hourly rows (a count-weighted average).
    day = await get(bucket="1d", agg="avg")
    assert [p["value"] for p in day["points"]] == pytest.approx([mean(values)])
    # Sub-hour buckets cannot come from hourly rollups.
    assert (await get(bucket="30m"))["source"] == "raw"
    r = await client.get("/api/v1/telemetry", headers=t.headers("analyst"),
                         params={**params, "bucket": "30m", "source": "rollup"})
    assert r.status_code == 422

    # Raw retention drops the first two hours: the rollups still answer for them.
    await admin_sql("delete from telemetry where asset_id = $1 and ts >= $2 and ts < $3",
                    uuid.UUID(a["id"]), START, START + timedelta(hours=2))
    raw = await get(bucket="1h", agg="max", source="raw")
    auto = await get(bucket="1h", agg="max")
    only = await get(bucket="1h", agg="max", source="rollup")
    assert [p["value"] for p in raw["points"]] == [17.0, 23.0, 29.0, 35.0]
    assert [p["value"] for p in auto["points"]] == [5.0, 11.0, 17.0, 23.0, 29.0, 35.0]
    assert [p["value"] for p in only["points"]] == [5.0, 11.0, 17.0, 23.0]
    # Another tenant reads nothing through the rollups either.
    other = await make_tenant(roles=["analyst"])
    r = await client.get("/api/v1/telemetry", headers=other.headers("analyst"),
                         params={**params, "bucket": "1h", "source": "rollup"})
    assert r.json()["points"] == []


async def test_the_periodic_job_rolls_recent_closed_hours(client: httpx.AsyncClient,
                                                          make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["analyst"])
    [a] = await make_assets(admin_sql, t.id, 1)
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    await post(client, t, [*series(a["id"], "flow", [1.0, 2.0, 3.0], start=hour),
                           {"asset_id": a["id"], "metric": "flow",
                            "ts": iso(now - timedelta(seconds=5)), "value": 9.0}])
    await rollup_due()
    rows = await rollups(admin_sql, a["id"], "flow")
    # The open hour (holding the reading from seconds ago) is not rolled up yet.
    assert [(r["bucket"], r["count"], r["last"]) for r in rows] == [(hour, 3, 3.0)]
