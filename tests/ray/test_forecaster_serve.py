"""The Forecaster Serve deployment on the session's local Ray, with real LightGBM models
trained on I-94 traffic and stored through the registry: a redeploy that pins another
version under continuous load (no failed request, no restarted replica), shadow scoring,
promotion and rollback picked up by the background refresh, and a bad redeploy that
leaves the serving table alone."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from civitas_ray.ml import datasets
from civitas_ray.ml.features import build_features
from civitas_ray.ml.models import MODELS, ForecastModel
from civitas_ray.ml.serving import (
    APP_NAME,
    ForecasterConfig,
    ForecastRequestError,
    SubjectRef,
    UnknownSubject,
    VersionRow,
    get_forecaster_handle,
    plan_table,
)
from civitas_ray.runtime import serving

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "serve_config.yaml"
NAME = "traffic"
HISTORY = 400  # hours a request sends: the longest lag (2 weeks) plus a margin
HORIZON = 6


# ---- pure parts: no Ray, no database ---------------------------------------------------
def _row(ref: SubjectRef, version: int, stage: str) -> VersionRow:
    return VersionRow(id=uuid.uuid4(), ref=ref, version=version, kind=NAME, stage=stage,
                      artifact_key="k", artifact_sha256="")


@pytest.mark.unit
def test_pins_beat_production_and_shadow_is_scored_beside_what_serves() -> None:
    a = SubjectRef(uuid.uuid4(), NAME, "asset:1:volume")
    b = SubjectRef(uuid.uuid4(), NAME, "asset:2:volume")
    c = SubjectRef(uuid.uuid4(), NAME, "asset:3:volume")
    a1, a2, a3 = _row(a, 1, "production"), _row(a, 2, "shadow"), _row(a, 3, "archived")
    b1, b2 = _row(b, 1, "production"), _row(b, 2, "shadow")
    c1 = _row(c, 1, "shadow")
    plan = plan_table([a1, a2, b1, b2, c1], {a: a3, b: b2})
    assert plan[a] == (a3, a2, True)          # pinned; the registry's shadow still scored
    assert plan[b] == (b2, None, True)        # the pinned shadow serves, nothing shadows it
    assert c not in plan                      # a shadow alone is never served


@pytest.mark.unit
def test_user_config_is_checked_before_anything_is_built() -> None:
    ok = ForecasterConfig.model_validate(
        {"generation": 3, "pins": {f"{uuid.uuid4()}/{NAME}/zone:9:flow": str(uuid.uuid4())}})
    [(ref, _)] = ok.pinned().items()
    assert ref.name == NAME and ref.subject_key == "zone:9:flow"
    for bad in ({"pins": {"not-a-tenant/traffic/asset:1:v": str(uuid.uuid4())}},
                {"pins": {f"{uuid.uuid4()}/traffic": str(uuid.uuid4())}},
                {"pins": {f"{uuid.uuid4()}/traffic/asset:1:v": "v2"}},
                {"generation": -1}, {"refresh_s": -5}, {"generations": 1}):
        with pytest.raises(ValueError):
            ForecasterConfig.model_validate(bad)
    # The shipped serve_config.yaml deploys the Forecaster with a valid user_config.
    config = serving.load_config(CONFIG)
    [app] = [a for a in config.applications if a.name == APP_NAME]
    assert app.route_prefix is None and app.import_path == "civitas_ray.ml.serving:build"
    [dep] = app.deployments
    ForecasterConfig.model_validate(dep.user_config)
    assert 0 < dep.ray_actor_options.num_cpus <= 1
    assert not dep.ray_actor_options.num_gpus


# ---- on Ray ------------------------------------------------------------------------------
@dataclass
class Models:
    y: pd.Series          # hourly I-94 volume, UTC
    v1: ForecastModel
    v2: ForecastModel


@dataclass
class Subject:
    tenant_id: uuid.UUID
    key: str
    v1: uuid.UUID
    v2: uuid.UUID

    @property
    def pin(self) -> str:
        return f"{self.tenant_id}/{NAME}/{self.key}"


@pytest.fixture(scope="module")
async def models(data_dir: Path) -> Models:
    """Two real versions: trained on the same four weeks with different boosting budgets."""
    y = datasets.i94_traffic(data_dir)["traffic_volume"].iloc[-24 * 35:]
    train = y.iloc[: -24 * 7]

    def fit(params: dict[str, Any]) -> ForecastModel:
        return MODELS[NAME](params=params).fit(train)

    v1, v2 = await asyncio.gather(
        asyncio.to_thread(fit, {"n_estimators": 6, "num_leaves": 7}),
        asyncio.to_thread(fit, {"n_estimators": 40}))
    return Models(y=y, v1=v1, v2=v2)


async def _new_subject(m: Models) -> Subject:
    """A tenant of its own with versions 1 and 2 of one stream's model, both candidates."""
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import tenant_session
    from civitas_ray.ml import registry
    from civitas_ray.tenants import service as tenants
    from civitas_ray.tenants.schemas import TenantCreate

    slug = "fc-" + uuid.uuid4().hex[:10]
    asset_id = uuid.uuid4()
    key = registry.subject_key(asset_id=asset_id, zone_id=None, metric="volume")
    ids = []
    async with tenant_session(None, system=True) as s:
        t = await tenants.create(session=s, data=TenantCreate(slug=slug, name=slug),
                                 actor=SYSTEM_ACTOR)
        for model in (m.v1, m.v2):
            row = await registry.create_version(
                s, tenant_id=t.id, name=NAME, kind=NAME, key=key, model=model,
                subject={"asset_id": str(asset_id), "metric": "volume"},
                metrics={"beats_seasonal_naive": True}, training_start=None,
                training_end=None, created_by=None, actor=SYSTEM_ACTOR)
            ids.append(row.id)
    return Subject(tenant_id=t.id, key=key, v1=ids[0], v2=ids[1])


async def _stage(subject: Subject, action: str, version_id: uuid.UUID) -> None:
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import tenant_session
    from civitas_ray.ml import registry

    async with tenant_session(subject.tenant_id) as s:
        await getattr(registry, action)(s, tenant_id=subject.tenant_id, version_id=version_id,
                                        actor=SYSTEM_ACTOR)


def _deploy(user_config: dict[str, Any]) -> None:
    """Apply serve_config.yaml's forecaster application the way `civitas up` does, with
    this user_config, one replica (so its pid can be compared) and no HTTP proxy."""
    from ray.serve.schema import ServeDeploySchema

    raw = serving.load_config(CONFIG, env_vars=serving.settings_env()).model_dump(
        exclude_unset=True)
    [app] = [a for a in raw["applications"] if a["name"] == APP_NAME]
    [dep] = app["deployments"]
    dep.pop("autoscaling_config", None)
    dep.update(num_replicas=1, user_config=user_config)
    serving.deploy(ServeDeploySchema.model_validate(
        {**raw, "proxy_location": "Disabled", "applications": [app]}))


async def _until(check: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


async def _running() -> bool:
    state = (await asyncio.to_thread(serving.app_states)).get(APP_NAME)
    if state is not None and state.status in ("DEPLOY_FAILED", "UNHEALTHY"):
        pytest.fail(f"the forecaster application is {state.status}: {state.reason}")
    return state is not None and state.status == "RUNNING"


@pytest.fixture
def forecaster(ray_local: str) -> Iterator[None]:
    """The forecaster application is deleted after each test, whatever happened."""
    from ray import serve

    try:
        yield
    finally:
        serve.delete(APP_NAME)


def _request(subject: Subject, y: pd.Series, end: int, *, epoch: bool = False,
             horizon: int = HORIZON) -> dict[str, Any]:
    h = y.iloc[end - HISTORY:end]
    ts = ([int(t.timestamp()) for t in h.index] if epoch
          else [t.isoformat() for t in h.index])
    return {"tenant_id": str(subject.tenant_id), "name": NAME, "subject_key": subject.key,
            "history": {"ts": ts, "value": [None if np.isnan(v) else float(v)
                                            for v in h.to_numpy()]},
            "horizon": horizon}


@pytest.mark.ray
@pytest.mark.slow
async def test_a_pinned_redeploy_switches_versions_under_load_without_failures_or_restarts(
        models: Models, forecaster: None) -> None:
    subject = await _new_subject(models)
    await _stage(subject, "promote", subject.v1)
    await asyncio.to_thread(_deploy, {"generation": 1, "pins": {}, "refresh_s": 30})
    await _until(_running, timeout=60, what="the forecaster to run")
    handle = get_forecaster_handle()
    before = await handle.info.remote()
    assert before["generation"] == 1
    [served] = [s for s in before["subjects"] if s["subject_key"] == subject.key]
    assert served["serving"]["model_version_id"] == str(subject.v1)

    n = len(models.y)
    stop = asyncio.Event()
    failures: list[str] = []

    async def client(i: int) -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        k = 0
        while not stop.is_set():
            end = n - 24 * 7 + (i * 7 + k) % 48  # origins inside the week after training
            k += 1
            try:
                r = await handle.forecast.remote(_request(subject, models.y, end,
                                                          epoch=i % 2 == 0))
                assert len(r["points"]) == HORIZON and r["shadow"] is None
                seen.append((r["version"], r["generation"]))
            except Exception as exc:  # every failure is counted, none may happen
                failures.append(f"{type(exc).__name__}: {exc}")
        return seen

    tasks = [asyncio.create_task(client(i)) for i in range(4)]
    await asyncio.sleep(1.5)
    redeploy = {"generation": 2, "pins": {subject.pin: str(subject.v2)}, "refresh_s": 30}
    await asyncio.to_thread(_deploy, redeploy)

    async def switched() -> bool:
        return (await handle.info.remote())["generation"] == 2 and await _running()

    await _until(switched, timeout=60, what="generation 2 on the replica")
    await asyncio.sleep(1.5)  # keep the load on after the switch
    stop.set()
    per_client = await asyncio.gather(*tasks)

    assert failures == []
    answers = [a for seen in per_client for a in seen]
    assert set(answers) == {(1, 1), (2, 2)}  # each version answers under its own generation
    for seen in per_client:
        versions = [v for v, _ in seen]
        assert versions == sorted(versions), "a client saw version 1 again after version 2"
        assert versions[0] == 1 and versions[-1] == 2
    after = await handle.info.remote()
    assert (after["pid"], after["replica"]) == (before["pid"], before["replica"])
    [served] = [s for s in after["subjects"] if s["subject_key"] == subject.key]
    assert served["serving"]["model_version_id"] == str(subject.v2) and served["pinned"]

    # A redeploy that cannot be applied (a pin to another subject's version) leaves the
    # serving table alone and says why; the replica is neither stopped nor replaced.
    other = await _new_subject(models)
    bad = {"generation": 3, "pins": {subject.pin: str(other.v1)}, "refresh_s": 30}
    await asyncio.to_thread(_deploy, bad)

    async def refused() -> dict[str, Any] | None:
        info: dict[str, Any] = await handle.info.remote()
        return info if info["last_error"] else None

    info = await _until(refused, timeout=60, what="the bad config to be refused")
    assert "belongs to" in info["last_error"]["error"] and info["generation"] == 2
    assert (info["pid"], info["replica"]) == (before["pid"], before["replica"])
    r = await handle.forecast.remote(_request(subject, models.y, n - 24))
    assert (r["version"], r["generation"]) == (2, 2)


@pytest.mark.ray
@pytest.mark.slow
async def test_shadow_scoring_promotion_and_rollback_through_the_registry(
        models: Models, forecaster: None) -> None:
    subject = await _new_subject(models)
    await _stage(subject, "promote", subject.v1)
    await _stage(subject, "shadow", subject.v2)
    await asyncio.to_thread(_deploy, {"generation": 1, "pins": {}, "refresh_s": 1})
    await _until(_running, timeout=60, what="the forecaster to run")
    handle = get_forecaster_handle()
    y = models.y
    n = len(y)

    # Three origins a horizon apart in the week the models never saw.
    ends = [n - 24 * 6 + HORIZON * i for i in range(3)]
    responses = await asyncio.gather(*(handle.forecast.remote(_request(subject, y, e))
                                       for e in ends))
    prod, shadow, actual = [], [], []
    for end, r in zip(ends, responses, strict=True):
        assert (r["model_version_id"], r["version"]) == (str(subject.v1), 1)
        sh = r["shadow"]
        assert (sh["model_version_id"], sh["version"]) == (str(subject.v2), 2)
        assert [p["ts"] for p in sh["points"]] == [p["ts"] for p in r["points"]]
        assert [pd.Timestamp(p["ts"]) for p in r["points"]] == list(y.index[end:end + HORIZON])
        prod += [p["value"] for p in r["points"]]
        shadow += [p["value"] for p in sh["points"]]
        actual += list(y.iloc[end:end + HORIZON])
    p, s, a = np.array(prod), np.array(shadow), np.array(actual)
    assert np.abs(p - s).max() > 0  # two different models

    stats = await handle.stats.remote()
    [mine] = [x for x in stats["subjects"] if x["subject_key"] == subject.key]
    assert (mine["requests"], mine["points"]) == (3, 3 * HORIZON)
    assert mine["mean_abs_diff"] == pytest.approx(np.abs(p - s).mean())
    assert mine["observed"] == 0 and mine["production_mae"] is None

    # Actuals arrive later: each model's MAE over the instants both forecast.
    span = y.iloc[ends[0]:ends[-1] + HORIZON]
    obs = {"tenant_id": str(subject.tenant_id), "name": NAME, "subject_key": subject.key,
           "actuals": {"ts": [t.isoformat() for t in span.index],
                       "value": [float(v) for v in span.to_numpy()]}}
    known = np.isfinite(a)
    assert (await handle.observe.remote(obs))["matched"] == int(known.sum())
    stats = await handle.stats.remote()
    [mine] = [x for x in stats["subjects"] if x["subject_key"] == subject.key]
    assert mine["observed"] == int(known.sum())
    assert mine["production_mae"] == pytest.approx(np.abs(a - p)[known].mean())
    assert mine["shadow_mae"] == pytest.approx(np.abs(a - s)[known].mean())

    # Errors the caller can map: 404 for a subject nothing serves, 422 for bad input.
    with pytest.raises(UnknownSubject):
        await handle.forecast.remote({**_request(subject, y, n), "subject_key": "asset:x:y"})
    with pytest.raises(ForecastRequestError, match="horizon"):
        await handle.forecast.remote(_request(subject, y, n, horizon=0))

    # Promotion and rollback happen in the registry; the refresh brings them to the replica.
    async def serving(version: int, shadowed: bool) -> bool:
        r = await handle.forecast.remote(_request(subject, y, n))
        return r["version"] == version and (r["shadow"] is not None) == shadowed

    await _stage(subject, "promote", subject.v2)
    await _until(lambda: serving(2, False), timeout=20, what="version 2 in production")
    stats = await handle.stats.remote()
    assert subject.key not in {x["subject_key"] for x in stats["subjects"]}
    await _stage(subject, "rollback", subject.v2)
    await _until(lambda: serving(1, False), timeout=20, what="the rollback to version 1")
    info = await handle.info.remote()
    [served] = [x for x in info["subjects"] if x["subject_key"] == subject.key]
    assert served["serving"]["model_version_id"] == str(subject.v1) and not served["pinned"]
    assert info["failed_refreshes"] == 0


@pytest.mark.ray
@pytest.mark.slow
async def test_score_batches_feature_rows_and_matches_the_models_first_forecast_step(
        models: Models, forecaster: None) -> None:
    subject = await _new_subject(models)
    await _stage(subject, "promote", subject.v2)
    await asyncio.to_thread(_deploy, {"generation": 5, "pins": {}, "refresh_s": 30})
    await _until(_running, timeout=60, what="the forecaster to run")
    handle = get_forecaster_handle()
    y = models.y
    n = len(y)
    # One-step feature rows of the week the models never saw, built by the shared pipeline.
    origins = np.arange(n - 24 * 7, n)
    X = build_features(y, models.v2.spec).to_numpy()[origins]
    expected = models.v2.predict_origins(y, y.index[origins], 1)
    buffer = io.BytesIO()
    np.save(buffer, X[:60])
    base = {"tenant_id": str(subject.tenant_id), "name": NAME, "subject_key": subject.key}
    rows = [[None if np.isnan(v) else float(v) for v in row] for row in X[60:100]]
    # Concurrent requests in the three payload forms, so the replica batches them.
    answers = await asyncio.gather(
        handle.score.remote({**base, "features": buffer.getvalue()}),
        handle.score.remote({**base, "features": rows}),
        handle.score.remote({**base, "features": X[100:]}))
    assert [a["rows"] for a in answers] == [60, 40, X.shape[0] - 100]
    for a in answers:
        assert (a["model_version_id"], a["version"], a["generation"]) == (str(subject.v2), 2, 5)
    for column in ("value", "lower", "upper"):
        got = np.concatenate([a[column] for a in answers])
        np.testing.assert_allclose(got, expected[column].to_numpy(), rtol=1e-9)
    assert (np.concatenate([a["lower"] for a in answers])
            <= np.concatenate([a["value"] for a in answers])).all()

    # Bad input is refused with a reason; nothing is scored half.
    with pytest.raises(ForecastRequestError, match=f"reads {X.shape[1]} features"):
        await handle.score.remote({**base, "features": X[:5, :-1]})
    with pytest.raises(ForecastRequestError, match=r"not an \.npy array"):
        await handle.score.remote({**base, "features": b"not npy"})
    with pytest.raises(ForecastRequestError, match="infinite"):
        await handle.score.remote({**base, "features": np.full((2, X.shape[1]), np.inf)})
    with pytest.raises(ForecastRequestError, match="equal length"):
        await handle.score.remote({**base, "features": [[1.0, 2.0], [1.0]]})
    with pytest.raises(UnknownSubject):
        await handle.score.remote({**base, "subject_key": "asset:x:y", "features": X[:5]})
