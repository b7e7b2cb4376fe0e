"""POST /api/v1/telemetry (JSON and SenML) and GET /api/v1/telemetry against the real DB."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from civitas_ray.config import get_settings
from civitas_ray.telemetry.ingest import get_ingestor

pytestmark = pytest.mark.e2e


async def make_assets(admin_sql, tenant_id: uuid.UUID, n: int = 2,
                      metrics: dict | None = None) -> list[dict]:
    out = []
    for i in range(n):
        aid, ext = uuid.uuid4(), f"dev-{uuid.uuid4().hex[:8]}"
        await admin_sql(
            "insert into asset (id, tenant_id, name, kind, external_id, metrics, geom) "
            "values ($1, $2, $3, 'sensor', $4, $5::jsonb, "
            "ST_SetSRID(ST_MakePoint(-73.98, 40.75), 4326))",
            aid, tenant_id, f"sensor {i}", ext, orjson.dumps(metrics or {}).decode())
        out.append({"id": str(aid), "external_id": ext})
    return out


async def stored(admin_sql, asset_id: str, metric: str | None = None) -> list:
    q = "select metric, ts, value, quality from telemetry where asset_id = $1"
    args: list = [uuid.UUID(asset_id)]
    if metric:
        q += " and metric = $2"
        args.append(metric)
    return await admin_sql(q + " order by ts", *args)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def test_json_batch_partial_rejection(client: httpx.AsyncClient, make_tenant,
                                            admin_sql) -> None:
    t = await make_tenant(roles=["operator"])
    a, b = await make_assets(admin_sql, t.id)
    now = datetime.now(UTC).replace(microsecond=0)
    readings = [
        {"asset_id": a["id"], "metric": "traffic_volume", "ts": iso(now - timedelta(minutes=2)),
         "value": 410},
        {"asset_id": b["external_id"], "metric": "traffic_volume", "ts": iso(now), "value": 388.5,
         "quality": 3},
        {"asset_id": str(uuid.uuid4()), "metric": "traffic_volume", "ts": iso(now), "value": 1},
        {"asset_id": a["id"], "metric": "traffic_volume", "ts": iso(now)},
        {"asset_id": a["id"], "metric": "traffic_volume", "ts": iso(now), "value": "high"},
        {"asset_id": a["id"], "metric": "traffic_volume",
         "ts": iso(now + timedelta(hours=1)), "value": 5},
        {"asset_id": a["id"], "metric": "traffic_volume", "ts": "2026-11-27T10:00:00",
         "value": 5},
        {"asset_id": a["id"], "metric": "bad metric!", "ts": iso(now), "value": 5},
        {"asset_id": a["id"], "metric": "traffic_volume", "ts": now.timestamp() - 60.5,
         "value": 402},
        "not an object",
    ]
    r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                          json={"readings": readings})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 3
    reasons = {x["index"]: x["reason"] for x in body["rejected"]}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 9]
    assert "unknown asset" in reasons[2] and "missing" in reasons[3]
    assert "number" in reasons[4] and "future" in reasons[5] and "offset" in reasons[6]
    assert "metric" in reasons[7] and "object" in reasons[9]
    rows = await stored(admin_sql, a["id"])
    assert [r["value"] for r in rows] == [410.0, 402.0]
    assert rows[1]["ts"] == now - timedelta(seconds=60.5)
    [row_b] = await stored(admin_sql, b["id"])
    assert row_b["value"] == 388.5 and row_b["quality"] == 3


async def test_senml_pack(client: httpx.AsyncClient, make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator"])
    [a] = await make_assets(admin_sql, t.id, 1)
    base = datetime(2026, 11, 1, 12, 0, tzinfo=UTC).timestamp()
    pack = [
        {"bn": f"urn:dev:{a['id']}/", "bt": base, "bu": "Cel", "bver": 10,
         "n": "temperature", "v": 21.5},
        {"n": "temperature", "t": 60, "v": 21.75},
        {"n": "humidity", "u": "%RH", "t": 60, "v": 40},
        {"n": "temperature", "t": 120, "vs": "warm"},
        {"bn": "no-separator", "n": "", "v": 1},
    ]
    r = await client.post("/api/v1/telemetry", content=orjson.dumps(pack),
                          headers={**t.device_headers, "Content-Type": "application/senml+json"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 3
    assert [x["index"] for x in body["rejected"]] == [3, 4]
    temps = await stored(admin_sql, a["id"], "temperature")
    assert [(x["ts"].timestamp() - base, x["value"]) for x in temps] == [(0, 21.5), (60, 21.75)]
    assert len(await stored(admin_sql, a["id"], "humidity")) == 1


async def test_duplicates_stored_once(client: httpx.AsyncClient, make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator"])
    [a] = await make_assets(admin_sql, t.id, 1)
    ts = iso(datetime.now(UTC) - timedelta(minutes=5))
    dup = {"asset_id": a["id"], "metric": "level", "ts": ts, "value": 1.0}
    last = {**dup, "value": 2.0}
    r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                          json={"readings": [dup, last]})
    assert r.json()["accepted"] == 2
    assert [x["value"] for x in await stored(admin_sql, a["id"])] == [2.0]
    # A retried request (already stored rows) plus one new reading: the new one lands.
    new = {**dup, "ts": iso(datetime.now(UTC) - timedelta(minutes=4)), "value": 3.0}
    r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                          json={"readings": [dup, new]})
    assert r.status_code == 202 and r.json()["accepted"] == 2
    assert [x["value"] for x in await stored(admin_sql, a["id"])] == [2.0, 3.0]


async def test_other_tenants_asset_and_scoped_keys(client: httpx.AsyncClient, make_tenant,
                                                   admin_sql) -> None:
    ta = await make_tenant(roles=["tenant_admin"])
    tb = await make_tenant(roles=["operator"])
    [mine, other_mine] = await make_assets(admin_sql, ta.id, 2)
    [theirs] = await make_assets(admin_sql, tb.id, 1)
    ts = iso(datetime.now(UTC))
    r = await client.post("/api/v1/telemetry", headers=ta.device_headers, json={"readings": [
        {"asset_id": theirs["id"], "metric": "x", "ts": ts, "value": 1}]})
    assert r.json() == {"accepted": 0, "rejected": [
        {"index": 0, "reason": f"unknown asset {theirs['id']!r} in this tenant"}]}
    assert await stored(admin_sql, theirs["id"]) == []

    r = await client.post("/api/v1/api-keys", headers=ta.headers("tenant_admin"),
                          json={"name": "one sensor", "asset_ids": [mine["id"]]})
    scoped = {"X-API-Key": r.json()["key"]}
    r = await client.post("/api/v1/telemetry", headers=scoped, json={"readings": [
        {"asset_id": mine["id"], "metric": "x", "ts": ts, "value": 1},
        {"asset_id": other_mine["id"], "metric": "x", "ts": ts, "value": 1}]})
    body = r.json()
    assert body["accepted"] == 1 and "may not write" in body["rejected"][0]["reason"]


async def test_oversized_batch_and_body_and_media_type(client: httpx.AsyncClient, make_tenant,
                                                       admin_sql, monkeypatch) -> None:
    t = await make_tenant(roles=["operator"])
    [a] = await make_assets(admin_sql, t.id, 1)
    monkeypatch.setattr(get_settings().ingest, "max_batch_readings", 5)
    start = datetime.now(UTC) - timedelta(hours=1)
    readings = [{"asset_id": a["id"], "metric": "m", "ts": iso(start + timedelta(seconds=i)),
                 "value": i} for i in range(7)]
    r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                          json={"readings": readings})
    body = r.json()
    assert body["accepted"] == 5
    assert [x["index"] for x in body["rejected"]] == [5, 6]
    assert "exceeds 5 readings" in body["rejected"][0]["reason"]
    assert len(await stored(admin_sql, a["id"])) == 5

    monkeypatch.setattr(get_settings().ingest, "max_body_bytes", 100)
    r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                          json={"readings": readings})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    monkeypatch.undo()
    r = await client.post("/api/v1/telemetry", content=b"a,b\n1,2",
                          headers={**t.device_headers, "Content-Type": "text/csv"})
    assert r.status_code == 415
    r = await client.post("/api/v1/telemetry", content=b"{not json",
                          headers={**t.device_headers, "Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    assert len(await stored(admin_sql, a["id"])) == 5


async def test_backpressure_answers_503_with_retry_after(client: httpx.AsyncClient, make_tenant,
                                                          admin_sql, monkeypatch) -> None:
    t = await make_tenant(roles=["operator"])
    [a] = await make_assets(admin_sql, t.id, 1)
    ing = get_ingestor()
    await ing.start()
    assert ing.writer is not None
    monkeypatch.setattr(ing.writer, "_max_pending", 0)
    r = await client.post("/api/v1/telemetry", headers=t.device_headers, json={"readings": [
        {"asset_id": a["id"], "metric": "m", "ts": iso(datetime.now(UTC)), "value": 1}]})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert await stored(admin_sql, a["id"]) == []


async def test_range_query_with_buckets(client: httpx.AsyncClient, make_tenant,
                                        admin_sql) -> None:
    t = await make_tenant(roles=["operator", "analyst", "viewer"])
    [a] = await make_assets(admin_sql, t.id, 1)
    start = datetime(2026, 10, 5, 8, 0, tzinfo=UTC)
    readings = [{"asset_id": a["id"], "metric": "flow",
                 "ts": iso(start + timedelta(minutes=10 * i)), "value": float(i)}
                for i in range(12)]
    r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                          json={"readings": readings})
    assert r.json()["accepted"] == 12
    params = {"asset_id": a["id"], "metric": "flow", "start": iso(start),
              "end": iso(start + timedelta(hours=2))}
    raw = (await client.get("/api/v1/telemetry", headers=t.headers("analyst"),
                            params=params)).json()
    assert [p["value"] for p in raw["points"]] == [float(i) for i in range(12)]
    for agg, expected in [("avg", [2.5, 8.5]), ("max", [5.0, 11.0]), ("count", [6.0, 6.0]),
                          ("last", [5.0, 11.0]), ("min", [0.0, 6.0]), ("sum", [15.0, 51.0])]:
        r = await client.get("/api/v1/telemetry", headers=t.headers("analyst"),
                             params={**params, "bucket": "1h", "agg": agg})
        assert r.status_code == 200, r.text
        assert [p["value"] for p in r.json()["points"]] == expected, agg
    r = await client.get("/api/v1/telemetry", headers=t.headers("analyst"),
                         params={**params, "bucket": "1 hour; drop table telemetry"})
    assert r.status_code == 422
    r = await client.get("/api/v1/telemetry", headers=t.headers("viewer"), params=params)
    assert r.status_code == 403
    # Another tenant sees nothing of this stream.
    other = await make_tenant(roles=["analyst"])
    r = await client.get("/api/v1/telemetry", headers=other.headers("analyst"), params=params)
    assert r.json()["points"] == []
