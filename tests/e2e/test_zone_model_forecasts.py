"""Zone actors use the production zone model (the Forecaster, or in-process without
Serve) for zone-level horizons, and forecast rules on the zone evaluate that forecast."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from civitas_ray.alerts.engine import RuleEvaluator
from civitas_ray.audit.service import SYSTEM_ACTOR
from civitas_ray.db.session import tenant_session
from civitas_ray.ml import data, forecasts, registry
from civitas_ray.ml.models import MODELS
from civitas_ray.streams.timebase import now_us
from civitas_ray.zones.host import ZoneHost
from tests.e2e.test_ml_api import load_i94

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SQUARE = {"type": "Polygon", "coordinates": [[
    [-73.99, 40.75], [-73.97, 40.75], [-73.97, 40.77], [-73.99, 40.77], [-73.99, 40.75]]]}


async def test_zone_forecasts_come_from_the_production_model(
        client: httpx.AsyncClient, make_tenant, data_dir: Path) -> None:
    t = await make_tenant(roles=["tenant_admin"])
    h = t.headers("tenant_admin")
    r = await client.post("/api/v1/zones", headers=h, json={
        "name": "Corridor", "code": "I94", "geometry": SQUARE})
    zone_id = r.json()["id"]
    r = await client.post("/api/v1/assets", headers=h, json={
        "name": "Counter", "kind": "sensor",
        "geometry": {"type": "Point", "coordinates": [-73.98, 40.76]}})
    asset_id = r.json()["id"]
    assert r.json()["zone_id"] == zone_id
    await load_i94(client, t, asset_id, data_dir, datetime.now(UTC))

    host = ZoneHost()
    snap = await host.snapshot(t.id, _uuid(zone_id), horizon_s=6 * 3600)
    assert snap is not None and snap["metrics"]["volume"]["forecast_source"] == "online"
    assert await host.refresh_learned() == 0  # no zone model yet

    subject = data.Subject.of(asset_id=None, zone_id=_uuid(zone_id), metric="volume")
    now = datetime.now(UTC)
    y = await data.load_target(t.id, subject, start=now - timedelta(weeks=16), end=now)
    model = MODELS["traffic"](params={"n_estimators": 60}).fit(y.dropna().iloc[-24 * 42:])
    async with tenant_session(t.id) as s:
        row = await registry.create_version(
            s, tenant_id=t.id, name="traffic", kind="traffic", subject=subject.as_dict(),
            key=subject.key, model=model, metrics={"beats_seasonal_naive": True},
            training_start=None, training_end=None, created_by=None, actor=SYSTEM_ACTOR)
        await registry.promote(s, tenant_id=t.id, version_id=row.id, actor=SYSTEM_ACTOR)

    assert await host.refresh_learned() == 1
    assert host.stats["learned_forecasts"] == 1
    t_us = now_us()
    snap = await host.snapshot(t.id, _uuid(zone_id), horizon_s=6 * 3600)
    vol = snap["metrics"]["volume"]
    assert vol["forecast_source"] == "model:traffic:v1"
    # The very numbers the model gives for the zone's own history, computed here.
    async with tenant_session(t.id) as s:
        expected = await forecasts.forecast(s, t.id, subject, horizon=timedelta(hours=24))
    by_ts = {p["ts"]: p["value"] for p in expected["points"]}
    got = [(datetime.fromisoformat(p["ts"].replace("Z", "+00:00")), p["value"])
           for p in vol["forecast"]]
    assert got and all(ts in by_ts and v == pytest.approx(by_ts[ts]) for ts, v in got)
    assert all(ts.timestamp() * 1e6 <= t_us + 6 * 3600e6 for ts, _ in got)

    # A zone forecast rule over the next 6 h sees the model's forecast.
    entity = host.entities[(t.id, _uuid(zone_id))]
    inp = entity.state.rule_input("volume", t_us, forecast_s=6 * 3600)
    assert inp.forecast_mean is not None
    peak = float(np.max(inp.forecast_mean))
    assert peak == pytest.approx(max(v for _, v in got))
    ev = RuleEvaluator(rule_id="r1", subject=f"zone:{zone_id}/volume", condition={
        "type": "forecast", "op": ">", "threshold": peak - 1.0, "within_seconds": 6 * 3600})
    tr = ev.observe(inp, now_us=t_us)
    assert tr is not None and tr.kind == "fired"
    # A stale model forecast is not used: back to the online forecaster.
    entity.state.learned["volume"].made_at_us -= int(4 * 3600e6)
    assert entity.state.forecast_source("volume", t_us, 6 * 3600) == "online"


def _uuid(s: str) -> uuid.UUID:
    return uuid.UUID(s)
