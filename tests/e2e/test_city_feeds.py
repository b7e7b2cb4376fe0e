"""City feeds end to end: meters through HTTP ingest, signal controllers, the domain APIs."""

from __future__ import annotations

import math
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from civitas_ray.feeds.meters import REL_TOLERANCE

pytestmark = pytest.mark.e2e

SQUARE = {"type": "MultiPolygon", "coordinates": [[[[-74.0, 40.7], [-73.9, 40.7],
                                                     [-73.9, 40.8], [-74.0, 40.8],
                                                     [-74.0, 40.7]]]]}


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def make_zone(admin_sql, tenant_id: uuid.UUID) -> uuid.UUID:
    zid = uuid.uuid4()
    await admin_sql("insert into zone (id, tenant_id, name, code, kind, geom) values "
                    "($1, $2, 'Midtown', $3, 'district', "
                    "ST_SetSRID(ST_GeomFromGeoJSON($4), 4326))",
                    zid, tenant_id, "MT-" + zid.hex[:6], orjson.dumps(SQUARE).decode())
    return zid


async def make_asset(admin_sql, tenant_id: uuid.UUID, *, kind: str, metrics: dict,
                     zone_id: uuid.UUID | None = None, properties: dict | None = None) -> dict:
    aid, ext = uuid.uuid4(), f"{kind}-{uuid.uuid4().hex[:8]}"
    await admin_sql(
        "insert into asset (id, tenant_id, name, kind, external_id, zone_id, metrics, "
        "properties, geom) values ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, "
        "ST_SetSRID(ST_MakePoint(-73.95, 40.75), 4326))",
        aid, tenant_id, f"{kind} {ext}", kind, ext, zone_id, orjson.dumps(metrics).decode(),
        orjson.dumps(properties or {}).decode())
    return {"id": str(aid), "external_id": ext}


@pytest.fixture(scope="module")
def daiad_meter(data_dir: Path) -> pd.DataFrame:
    """The DAIAD meter with real resets, around its drops (about 600 hourly readings)."""
    path = data_dir / "timeseries" / "daiad_smart_water_meter_trialA_hourly_2016-2017.zip"
    with zipfile.ZipFile(path) as zf, zf.open("swm_trialA.csv") as fh:
        df = pd.read_csv(fh, sep=";")
    df = df[df["user key"] == "1de2cf65-092d-4791-9257-374470bdb3c3"].copy()
    df["ts"] = pd.to_datetime(df["datetime"], format="%d/%m/%Y %H:%M:%S", utc=True)
    df = df.sort_values("ts").drop_duplicates("ts").reset_index(drop=True)
    v = df["meter reading"].to_numpy(float)
    drops = np.flatnonzero(np.diff(v) < -REL_TOLERANCE * v[:-1])
    assert drops.size >= 2
    lo, hi = max(int(drops.min()) - 300, 0), min(int(drops.max()) + 300, len(df))
    return df.iloc[lo:hi].reset_index(drop=True)


async def test_meter_consumption_through_ingest_and_utilities_api(
        client: httpx.AsyncClient, make_tenant, admin_sql, daiad_meter: pd.DataFrame) -> None:
    t = await make_tenant(roles=["operator", "viewer"])
    zone = await make_zone(admin_sql, t.id)
    meter = await make_asset(admin_sql, t.id, kind="meter", zone_id=zone,
                             metrics={"volume": {"unit": "L", "cumulative": True}})
    v = daiad_meter["meter reading"].to_numpy(float)
    readings = [{"asset_id": meter["external_id"], "metric": "volume", "ts": iso(ts),
                 "value": float(x)} for ts, x in zip(daiad_meter["ts"], v, strict=True)]
    # three batches: the register state carries across them
    for part in np.array_split(np.arange(len(readings)), 3):
        r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                              json={"readings": [readings[i] for i in part]})
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == len(part)
    rows = await admin_sql("select ts, value from telemetry where asset_id = $1 and metric = "
                           "'volume_consumption' order by ts", uuid.UUID(meter["id"]))
    cons = np.array([r["value"] for r in rows])
    assert len(cons) == len(v)
    assert cons.min() >= 0
    # independent bounds: every increment away from a drop is counted, nothing beyond the
    # gross positive increments is invented
    d = np.diff(v)
    drop = d < -REL_TOLERANCE * v[:-1]
    near = drop | np.r_[False, drop[:-1]] | np.r_[drop[1:], False]
    assert cons.sum() >= d[~near & (d > 0)].sum() - 1e-6
    assert cons.sum() <= d[d > 0].sum() + 1e-6

    start, end = daiad_meter["ts"].iloc[0], daiad_meter["ts"].iloc[-1] + timedelta(hours=1)
    q = {"kind": "water", "start": iso(start), "end": iso(end), "bucket": "1d"}
    r = await client.get("/api/v1/utilities/consumption", params=q, headers=t.headers("viewer"))
    assert r.status_code == 403  # consumption is telemetry: analysts and up
    r = await client.get("/api/v1/utilities/consumption", params=q,
                         headers=t.headers("operator"))
    assert r.status_code == 200, r.text
    body = r.json()
    [m] = body["meters"]
    assert m["meter_id"] == meter["id"] and m["metric"] == "volume_consumption"
    assert m["total"] == pytest.approx(cons.sum())
    assert all(p["value"] >= 0 for p in m["points"])
    assert body["zones"] == [{"zone_id": str(zone), "total": pytest.approx(cons.sum()),
                              "meters": 1}]
    energy = await client.get("/api/v1/utilities/consumption", headers=t.headers("operator"),
                              params={**q, "kind": "energy"})
    assert energy.json()["meters"] == []
    bad = await client.get("/api/v1/utilities/consumption", headers=t.headers("operator"),
                           params={**q, "bucket": "7x"})
    assert bad.status_code == 422

    # another tenant sees none of it, even naming the meter
    other = await make_tenant(roles=["operator"])
    r = await client.get("/api/v1/utilities/consumption", headers=other.headers("operator"),
                         params={**q, "meter_id": meter["id"]})
    assert r.status_code == 200 and r.json()["meters"] == [] and r.json()["total"] == 0

    # meter anomalies: an alert on the meter comes back as a GeoJSON point
    await admin_sql("insert into alert (tenant_id, dedup_key, asset_id, zone_id, metric, "
                    "severity, status, message, fired_at) values ($1, $2, $3, $4, 'volume', "
                    "'major', 'firing', 'counter reset', now())",
                    t.id, "k-" + meter["id"], uuid.UUID(meter["id"]), zone)
    r = await client.get("/api/v1/utilities/anomalies", headers=t.headers("operator"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    fc = r.json()
    assert fc["type"] == "FeatureCollection"
    [f] = fc["features"]
    assert f["geometry"]["type"] == "Point" and f["properties"]["utility"] == "water"
    r = await client.get("/api/v1/utilities/anomalies", headers=other.headers("operator"))
    assert r.json()["features"] == []


async def test_signal_controller_over_http_feeds_traffic_api(
        client: httpx.AsyncClient, make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator", "analyst"])
    zone = await make_zone(admin_sql, t.id)
    ctl = await make_asset(admin_sql, t.id, kind="signal_controller", zone_id=zone,
                           metrics={"vehicle_count": {"unit": "veh"},
                                    "occupancy": {"unit": "%"}})
    now = datetime.now(UTC).replace(microsecond=0)
    counts = [(12, 20), (30, 45), (7, 9)]
    for k, (c1, c2) in enumerate(counts):
        msg = {"controller_id": ctl["external_id"], "ts": iso(now - timedelta(minutes=3 - k)),
               "mode": "actuated", "stage": k + 1, "cycle_s": 90,
               "groups": [{"id": "1", "state": "green"}, {"id": "2", "state": "red"}],
               "detectors": [{"id": "D1", "count": c1, "occupancy": 30.0},
                             {"id": "D2", "count": c2, "occupancy": 50.0}]}
        r = await client.post("/api/v1/feeds/signals", json=msg, headers=t.device_headers)
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 11
    rows = await admin_sql("select metric, value from telemetry where asset_id = $1 "
                           "and ts = $2", uuid.UUID(ctl["id"]), now - timedelta(minutes=3))
    got = {r["metric"]: r["value"] for r in rows}
    assert got["sg.1.state"] == 3 and got["sg.2.state"] == 1 and got["mode"] == 2
    assert got["vehicle_count"] == 32 and got["det.D2.count"] == 20 and got["occupancy"] == 40
    bad = {"controller_id": ctl["external_id"], "ts": iso(now),
           "groups": [{"id": "1", "state": "purple"}],
           "detectors": [{"id": "D1", "count": 5}]}
    r = await client.post("/api/v1/feeds/signals", json=bad, headers=t.device_headers)
    assert r.status_code == 422 and "state" in r.text
    assert not await admin_sql("select 1 from telemetry where asset_id = $1 and ts = $2",
                               uuid.UUID(ctl["id"]), now)

    params = {"start": iso(now - timedelta(hours=1)), "end": iso(now)}
    r = await client.get("/api/v1/mobility/traffic", params=params,
                         headers=t.headers("analyst"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    [f] = r.json()["features"]
    p = f["properties"]
    assert f["geometry"] == {"type": "Point", "coordinates": [-73.95, 40.75]}
    assert p["flow_vph"] == pytest.approx(sum(a + b for a, b in counts))  # 1 h window
    assert p["congestion"] == pytest.approx(0.4) and p["level"] == "moderate"
    r = await client.get("/api/v1/mobility/traffic", params={**params, "group": "zone"},
                         headers=t.headers("analyst"))
    [z] = r.json()["features"]
    assert z["geometry"]["type"] == "MultiPolygon" and z["properties"]["segments"] == 1
    other = await make_tenant(roles=["analyst"])
    r = await client.get("/api/v1/mobility/traffic", params=params,
                         headers=other.headers("analyst"))
    assert r.json()["features"] == []


async def test_safety_incidents_and_base_rate_risk(client: httpx.AsyncClient, make_tenant,
                                                   admin_sql) -> None:
    t = await make_tenant(roles=["viewer"])
    zone = await make_zone(admin_sql, t.id)
    quiet = await make_zone(admin_sql, t.id)
    for k in range(3):
        await admin_sql("insert into incident (tenant_id, title, description, domain, severity,"
                        " status, source, zone_id, opened_at) values ($1, $2, '', 'safety', "
                        "'major', 'open', 'manual', $3, now() - make_interval(days => $4))",
                        t.id, f"assault {k}", zone, k + 1)
    r = await client.get("/api/v1/safety/incidents", headers=t.headers("viewer"))
    assert r.status_code == 200, r.text
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    assert all(f["geometry"]["type"] == "Point" for f in fc["features"])
    r = await client.get("/api/v1/safety/risk", headers=t.headers("viewer"),
                         params={"lookback_days": 30})
    assert r.status_code == 200, r.text
    by_zone = {f["properties"]["zone_id"]: f["properties"] for f in r.json()["features"]}
    assert by_zone[str(zone)]["source"] == "base_rate"
    assert by_zone[str(zone)]["p_incident"] == pytest.approx(1 - math.exp(-3 / (30 * 24)))
    assert by_zone[str(quiet)]["source"] == "none"
    other = await make_tenant(roles=["viewer"])
    r = await client.get("/api/v1/safety/incidents", headers=other.headers("viewer"))
    assert r.json()["features"] == []


async def test_weather_poller_against_local_http_source(make_tenant, admin_sql,
                                                        data_dir: Path) -> None:
    import csv
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from civitas_ray.feeds.settings import WeatherFeedSettings
    from civitas_ray.feeds.weather import WeatherPoller
    from civitas_ray.ml.weather import weather_covariates, weather_frame
    from civitas_ray.telemetry.ingest import Ingestor

    with (data_dir / "timeseries" / "seattle-weather.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:30]
    doc = {"station": "SEA", "observations": [
        {"date": r["date"], "temp": {"max": float(r["temp_max"]), "min": float(r["temp_min"])},
         "precipitation": float(r["precipitation"]), "wind": float(r["wind"])} for r in rows]}
    body, etag, hits = orjson.dumps(doc), '"v1"', []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.headers.get("If-None-Match"))
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("ETag", etag)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    t = await make_tenant(roles=["viewer"])
    zone = await make_zone(admin_sql, t.id)
    station = await make_asset(admin_sql, t.id, kind="weather_station", zone_id=zone, metrics={
        "temp_max": {"unit": "Cel"}, "temp_min": {"unit": "Cel"},
        "precipitation": {"unit": "mm"}, "wind": {"unit": "m/s"}})
    cfg = WeatherFeedSettings(
        url=f"http://127.0.0.1:{server.server_port}/obs", tenant=t.slug,
        station=station["external_id"], records="observations", ts_field="date",
        fields={"temp.max": "temp_max", "temp.min": "temp_min",
                "precipitation": "precipitation", "wind": "wind"}, interval_s=60)
    ingestor = Ingestor()
    try:
        poller = WeatherPoller(cfg, tenant_id=t.id, ingestor=ingestor)
        async with httpx.AsyncClient() as http:
            first = await poller.poll_once(http)
            assert first is not None and first.accepted == 4 * len(rows) and not first.rejected
            assert await poller.poll_once(http) is None  # 304: unchanged
        assert hits == [None, etag]
        stored = await admin_sql("select ts, value from telemetry where asset_id = $1 and "
                                 "metric = 'temp_max' order by ts", uuid.UUID(station["id"]))
        assert [r["value"] for r in stored] == [float(r["temp_max"]) for r in rows]
        assert stored[0]["ts"] == datetime.fromisoformat(rows[0]["date"]).replace(tzinfo=UTC)
        poller.failures = 3
        assert poller.delay() == 480
    finally:
        server.shutdown()
        await ingestor.close()
    covs = await weather_covariates(t.id, zone_id=zone)
    assert {c["metric"] for c in covs} == {"temp_max", "temp_min", "precipitation", "wind"}
    start = stored[0]["ts"]
    frame = await weather_frame(t.id, covs, start=start, end=start + timedelta(days=3),
                                freq="1d")
    assert list(frame["wind"]) == [float(r["wind"]) for r in rows[:3]]
