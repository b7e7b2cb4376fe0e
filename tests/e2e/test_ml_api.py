"""The ML API end to end on real data: train (a background job) -> candidate with backtest
metrics -> promote (tenant admins only) -> forecast -> retrain, promote, roll back;
backtests answer hold-out forecasts beside the actuals and the baselines."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from civitas_ray.audit.service import SYSTEM_ACTOR
from civitas_ray.db.session import tenant_session
from civitas_ray.ml import datasets, registry
from civitas_ray.ml.models import MODELS
from tests.e2e.test_telemetry_ingest import iso, make_assets

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WEEKS = 16


async def load_i94(client: httpx.AsyncClient, t: Any, asset_id: str, data_dir: Path,
                   end: datetime) -> pd.Series:
    """Sixteen real weeks of I-94 hourly volume, shifted so they end just before `end`."""
    y = datasets.i94_traffic(data_dir)["traffic_volume"].dropna().iloc[-WEEKS * 7 * 24:]
    shift = pd.Timestamp(end).floor("h") - pd.Timedelta(hours=1) - y.index[-1]
    # Shift by whole weeks so weekdays stay weekdays.
    shift = pd.Timedelta(weeks=int(shift / pd.Timedelta(weeks=1)))
    y.index = y.index + shift
    readings = [{"asset_id": asset_id, "metric": "volume", "ts": iso(ts.to_pydatetime()),
                 "value": float(v)} for ts, v in y.items()]
    for i in range(0, len(readings), 5000):
        r = await client.post("/api/v1/telemetry", headers=t.device_headers,
                              json={"readings": readings[i:i + 5000]})
        assert r.status_code == 202 and not r.json()["rejected"], r.text
    return y


async def wait_job(client: httpx.AsyncClient, headers: dict[str, str], job_id: str,
                   timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        r = await client.get(f"/api/v1/ml/jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        seen.add(job["status"])
        if job["status"] in ("succeeded", "failed"):
            job["seen"] = seen
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


async def test_train_promote_forecast_rollback(client: httpx.AsyncClient, make_tenant,
                                               admin_sql, data_dir: Path) -> None:
    t = await make_tenant(roles=["tenant_admin", "analyst", "viewer"])
    [a] = await make_assets(admin_sql, t.id, 1)
    y = await load_i94(client, t, a["id"], data_dir, datetime.now(UTC))
    body = {"model": "traffic", "asset_id": a["id"], "metric": "volume", "horizon": 24}

    r = await client.post("/api/v1/ml/train", headers=t.headers("viewer"), json=body)
    assert r.status_code == 403
    r = await client.post("/api/v1/ml/train", headers=t.headers("analyst"), json=body)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    job = await wait_job(client, t.headers("analyst"), r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["result"]["version"] == 1
    metrics = job["result"]["backtest"]
    assert set(metrics) == {"model", "seasonal_naive", "last_value"}
    # Measured on the real series, not asserted by constants: the model wins.
    assert metrics["model"]["mae"] < metrics["seasonal_naive"]["mae"]
    assert job["result"]["beats_seasonal_naive"] is True
    v1 = job["model_version_id"]

    r = await client.get(f"/api/v1/ml/models/{v1}", headers=t.headers("analyst"))
    model = r.json()
    assert model["stage"] == "candidate" and model["kind"] == "traffic"
    assert model["subject_key"] == f"asset:{a['id']}:volume" and model["features"]
    assert model["params"]["artifact_sha256"] and model["artifact_uri"]

    # No production model yet: a clear 404, not a made-up forecast.
    params = {"asset_id": a["id"], "metric": "volume", "horizon": 6}
    r = await client.get("/api/v1/forecasts", headers=t.headers("analyst"), params=params)
    assert r.status_code == 404 and "promote" in r.json()["detail"]

    r = await client.post(f"/api/v1/ml/models/{v1}/promote", headers=t.headers("analyst"))
    assert r.status_code == 403
    r = await client.post(f"/api/v1/ml/models/{v1}/promote", headers=t.headers("tenant_admin"))
    assert r.status_code == 200, r.text
    assert r.json()["version"]["stage"] == "production" and r.json()["replaced"] is None

    r = await client.get("/api/v1/forecasts", headers=t.headers("analyst"), params=params)
    assert r.status_code == 200, r.text
    fc = r.json()
    assert fc["served_by"] == "in-process" and fc["version"] == 1
    assert fc["history_end"] == y.index[-1].isoformat().replace("+00:00", "Z") or \
        datetime.fromisoformat(fc["history_end"]) == y.index[-1].to_pydatetime()
    points = fc["points"]
    assert len(points) == 6
    first = datetime.fromisoformat(points[0]["ts"])
    assert first == y.index[-1].to_pydatetime() + timedelta(hours=1)
    assert all(p["lower"] <= p["value"] <= p["upper"] for p in points)
    assert all(0 <= p["value"] < 2 * y.max() for p in points)

    # A second version, promoted, then rolled back: version 1 serves again.
    r = await client.post("/api/v1/ml/train", headers=t.headers("analyst"),
                          json={**body, "params": {"n_estimators": 60, "num_leaves": 15}})
    job2 = await wait_job(client, t.headers("analyst"), r.json()["id"])
    v2 = job2["model_version_id"]
    assert job2["result"]["version"] == 2
    r = await client.post(f"/api/v1/ml/models/{v2}/promote", headers=t.headers("tenant_admin"))
    assert r.json()["replaced"]["id"] == v1 and r.json()["replaced"]["stage"] == "archived"
    r = await client.get("/api/v1/forecasts", headers=t.headers("analyst"), params=params)
    assert r.json()["version"] == 2
    r = await client.post(f"/api/v1/ml/models/{v1}/rollback",
                          headers=t.headers("tenant_admin"))
    assert r.status_code == 409  # only the production version rolls back
    r = await client.post(f"/api/v1/ml/models/{v2}/rollback",
                          headers=t.headers("tenant_admin"))
    assert r.status_code == 200, r.text
    assert r.json()["version"]["id"] == v1 and r.json()["replaced"]["stage"] == "archived"
    r = await client.get("/api/v1/forecasts", headers=t.headers("analyst"), params=params)
    assert r.json()["version"] == 1
    r = await client.get("/api/v1/ml/models", headers=t.headers("analyst"),
                         params={"asset_id": a["id"], "metric": "volume"})
    assert [(m["version"], m["stage"]) for m in r.json()["items"]] == [
        (2, "archived"), (1, "production")]
    audit = await admin_sql("select action from audit_log where tenant_id = $1 and action "
                            "like 'model.%' order by seq", t.id)
    assert [r["action"] for r in audit] == ["model.create", "model.promote", "model.create",
                                            "model.promote", "model.rollback"]

    # Another tenant sees none of it.
    other = await make_tenant(roles=["tenant_admin"])
    r = await client.get(f"/api/v1/ml/models/{v1}", headers=other.headers("tenant_admin"))
    assert r.status_code == 404
    r = await client.post(f"/api/v1/ml/models/{v1}/promote",
                          headers=other.headers("tenant_admin"))
    assert r.status_code == 404


async def test_a_model_that_loses_to_seasonal_naive_is_not_promoted(
        client: httpx.AsyncClient, make_tenant, admin_sql, data_dir: Path) -> None:
    t = await make_tenant(roles=["tenant_admin"])
    [a] = await make_assets(admin_sql, t.id, 1)
    y = datasets.i94_traffic(data_dir)["traffic_volume"].dropna().iloc[-24 * 21:]
    model = MODELS["traffic"](params={"n_estimators": 10}).fit(y)
    async with tenant_session(t.id) as s:
        row = await registry.create_version(
            s, tenant_id=t.id, name="traffic", kind="traffic",
            subject={"asset_id": a["id"], "metric": "volume"},
            key=f"asset:{a['id']}:volume", model=model, training_start=None,
            training_end=None, created_by=None, actor=SYSTEM_ACTOR,
            metrics={"beats_seasonal_naive": False, "backtest": {
                "model": {"mae": 900.0}, "seasonal_naive": {"mae": 400.0}}})
        version_id = row.id
    r = await client.post(f"/api/v1/ml/models/{version_id}/promote",
                          headers=t.headers("tenant_admin"))
    assert r.status_code == 409 and "seasonal-naive" in r.json()["detail"]
    [stage] = await admin_sql("select stage from model_version where id = $1", version_id)
    assert stage["stage"] == "candidate"


async def test_backtest_endpoint(client: httpx.AsyncClient, make_tenant, admin_sql,
                                 data_dir: Path) -> None:
    t = await make_tenant(roles=["analyst"])
    [a] = await make_assets(admin_sql, t.id, 1)
    y = await load_i94(client, t, a["id"], data_dir, datetime(2026, 9, 1, tzinfo=UTC))
    holdout = y.index[-72].to_pydatetime()
    r = await client.post("/api/v1/ml/backtest", headers=t.headers("analyst"), json={
        "model": "traffic", "asset_id": a["id"], "metric": "volume",
        "holdout_start": holdout.isoformat(), "horizon": 24})
    assert r.status_code == 200, r.text
    out = r.json()
    points = out["points"]
    assert len(points) == 72
    assert set(out["metrics"]) == {"model", "seasonal_naive", "last_value"}
    for p in points:
        ts, origin = datetime.fromisoformat(p["ts"]), datetime.fromisoformat(p["origin"])
        assert origin <= ts < origin + timedelta(hours=24)
        assert p["actual"] == pytest.approx(float(y[pd.Timestamp(ts)]))
        # Seasonal-naive is the value a week before: computed here independently.
        assert p["seasonal_naive"] == pytest.approx(
            float(y[pd.Timestamp(ts) - pd.Timedelta(weeks=1)]))
    mae = sum(abs(p["value"] - p["actual"]) for p in points) / len(points)
    assert mae == pytest.approx(out["metrics"]["model"]["mae"], rel=1e-6)
    r = await client.post("/api/v1/ml/backtest", headers=t.headers("analyst"), json={
        "model": "traffic", "asset_id": str(uuid.uuid4()), "metric": "volume",
        "holdout_start": holdout.isoformat(), "horizon": 24})
    assert r.status_code == 404
    r = await client.post("/api/v1/ml/backtest", headers=t.headers("analyst"), json={
        "model": "nope", "asset_id": a["id"], "metric": "volume",
        "holdout_start": holdout.isoformat()})
    assert r.status_code == 422


async def civitas(*args: str) -> tuple[int, str, str]:
    """The real `civitas` command in a subprocess (it inherits the test database)."""
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "civitas_ray.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_train_list_promote_backtest(client: httpx.AsyncClient, make_tenant,
                                               admin_sql, data_dir: Path) -> None:
    import json

    t = await make_tenant(roles=["analyst"])
    [a] = await make_assets(admin_sql, t.id, 1)
    y = await load_i94(client, t, a["id"], data_dir, datetime(2026, 6, 1, tzinfo=UTC))
    rc, out, err = await civitas("ml", "train", "traffic", "--tenant", t.slug, "--asset",
                                 a["id"], "--metric", "volume", "--json")
    assert rc == 0, err
    job = json.loads(out)
    assert job["status"] == "succeeded" and "%" in err  # progress went to stderr
    vid = job["result"]["model_version_id"]
    rc, out, _ = await civitas("ml", "list", "--tenant", t.slug, "--json")
    assert [(m["id"], m["stage"]) for m in json.loads(out)] == [(vid, "candidate")]
    rc, out, err = await civitas("ml", "promote", vid, "--tenant", t.slug)
    assert rc == 0 and "is now production" in out, err
    rc, out, err = await civitas("ml", "rollback", vid, "--tenant", t.slug)
    assert rc == 1 and "nothing to roll back to" in err
    holdout = y.index[-48].isoformat()
    rc, out, err = await civitas("ml", "backtest", "traffic", "--tenant", t.slug, "--asset",
                                 a["id"], "--metric", "volume", "--holdout-start",
                                 holdout[:19], "--horizon", "24")
    assert rc == 0, err
    assert "seasonal_naive" in out and "48 hold-out points" in out
    audit = await admin_sql("select action, actor_type from audit_log where tenant_id = $1 "
                            "and action like 'model.%' order by seq", t.id)
    assert [(r["action"], r["actor_type"]) for r in audit][-1] == ("model.promote", "system")
    rc, _, err = await civitas("ml", "list", "--tenant", "no-such-tenant")
    assert rc != 0 and "no tenant" in err


async def test_a_corrupt_or_missing_artifact_is_not_promoted_and_the_old_one_serves(
        client: httpx.AsyncClient, make_tenant, admin_sql, data_dir: Path) -> None:
    from civitas_ray.storage import get_storage

    t = await make_tenant(roles=["tenant_admin", "analyst"])
    [a] = await make_assets(admin_sql, t.id, 1)
    y = await load_i94(client, t, a["id"], data_dir, datetime.now(UTC))
    key = f"asset:{a['id']}:volume"
    ids = []
    for n in (20, 30):
        model = MODELS["traffic"](params={"n_estimators": n}).fit(y.iloc[-24 * 28:])
        async with tenant_session(t.id) as s:
            row = await registry.create_version(
                s, tenant_id=t.id, name="traffic", kind="traffic",
                subject={"asset_id": a["id"], "metric": "volume"}, key=key, model=model,
                training_start=None, training_end=None, created_by=None, actor=SYSTEM_ACTOR,
                metrics={"beats_seasonal_naive": True})
            ids.append((str(row.id), row.params["artifact_key"]))
    (v1, _), (v2, v2_key) = ids
    r = await client.post(f"/api/v1/ml/models/{v1}/promote", headers=t.headers("tenant_admin"))
    assert r.status_code == 200, r.text
    params = {"asset_id": a["id"], "metric": "volume", "horizon": 3}

    storage = get_storage()
    good = await storage.get(v2_key)
    await storage.put(v2_key, good[:-40] + b"x" * 40)  # altered after training
    r = await client.post(f"/api/v1/ml/models/{v2}/promote", headers=t.headers("tenant_admin"))
    assert r.status_code == 409 and "altered or corrupted" in r.json()["detail"]
    await storage.delete(v2_key)
    r = await client.post(f"/api/v1/ml/models/{v2}/promote", headers=t.headers("tenant_admin"))
    assert r.status_code == 409 and "missing" in r.json()["detail"]
    r = await client.post(f"/api/v1/ml/models/{v2}/shadow", headers=t.headers("tenant_admin"))
    assert r.status_code == 409
    # Nothing changed: version 1 still serves.
    stages = await admin_sql("select version, stage from model_version where tenant_id = $1 "
                             "order by version", t.id)
    assert [(r["version"], r["stage"]) for r in stages] == [(1, "production"), (2, "candidate")]
    r = await client.get("/api/v1/forecasts", headers=t.headers("analyst"), params=params)
    assert r.status_code == 200 and r.json()["version"] == 1 and len(r.json()["points"]) == 3
    # With the good bytes back, it is promotable again.
    await storage.put(v2_key, good)
    r = await client.post(f"/api/v1/ml/models/{v2}/promote", headers=t.headers("tenant_admin"))
    assert r.status_code == 200 and r.json()["replaced"]["id"] == v1


async def test_one_unloadable_artifact_does_not_take_the_forecaster_down(
        make_tenant, admin_sql, data_dir: Path) -> None:
    """The Forecaster's table build (what every replica runs on deploy and refresh): a
    production version whose artifact is gone is left out and reported; the others load.
    A redeploy that pins exactly that version is refused."""
    from civitas_ray.ml import serving
    from civitas_ray.storage import get_storage

    y = datasets.i94_traffic(data_dir)["traffic_volume"].dropna().iloc[-24 * 21:]
    model = MODELS["traffic"](params={"n_estimators": 10}).fit(y)
    made = []
    for _ in range(2):
        t = await make_tenant(roles=["tenant_admin"], with_key=False)
        [a] = await make_assets(admin_sql, t.id, 1)
        async with tenant_session(t.id) as s:
            row = await registry.create_version(
                s, tenant_id=t.id, name="traffic", kind="traffic",
                subject={"asset_id": a["id"], "metric": "volume"},
                key=f"asset:{a['id']}:volume", model=model, training_start=None,
                training_end=None, created_by=None, actor=SYSTEM_ACTOR,
                metrics={"beats_seasonal_naive": True})
            await registry.promote(s, tenant_id=t.id, version_id=row.id, actor=SYSTEM_ACTOR)
            made.append((serving.SubjectRef(t.id, "traffic", row.subject_key), row.id,
                         row.params["artifact_key"]))
    (good_ref, _, _), (bad_ref, bad_id, bad_key) = made
    await get_storage().delete(bad_key)

    table = await serving.build_table(serving.ForecasterConfig(generation=1), None)
    assert good_ref in table.entries and bad_ref not in table.entries
    assert "ObjectNotFound" in table.unloadable[bad_id]
    with pytest.raises(serving.ForecasterConfigError, match="cannot be loaded"):
        await serving.build_table(serving.ForecasterConfig(
            generation=2, pins={str(bad_ref): str(bad_id)}), None)
