"""Training and backtest runs, off the request path.

`start_training` records an `ml_job` row and launches `run_training` as a Ray task when
this process is connected to Ray (a Serve replica is), or as a task of this process's
event loop otherwise (plain uvicorn, tests); the CPU-heavy parts always run in a worker
thread. A run reads the series, backtests the model with rolling origins on the newest
part (against seasonal-naive and last-value), trains the final model on everything,
stores it as a candidate version with its metrics, and reports progress on the job row.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import update

from civitas_ray.audit.service import Actor
from civitas_ray.db.session import tenant_session
from civitas_ray.errors import ValidationFailed
from civitas_ray.ml import data, registry
from civitas_ray.ml.backtest import BacktestResult, rolling_origin
from civitas_ray.ml.models import MODELS, ForecastModel, ModelError
from civitas_ray.ml.registry_models import MlJob
from civitas_ray.ml.series import steps_in

log = logging.getLogger(__name__)
T = TypeVar("T")
_tasks: set[asyncio.Task[Any]] = set()  # keep local runs referenced until they finish


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound work as a Ray task when connected to Ray, else in a thread."""
    try:
        import ray

        if ray.is_initialized():
            remote = ray.remote(num_cpus=1)(fn)
            return await remote.remote(*args)
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return await asyncio.to_thread(fn, *args)


def _metrics_doc(result: BacktestResult, holdout_start: datetime, horizon: int
                 ) -> dict[str, Any]:
    return {"backtest": result.metrics, "beats_seasonal_naive": bool(result.beats_seasonal_naive),
            "selection_metric": result.selection_metric,
            "holdout_start": holdout_start.isoformat(), "horizon": horizon,
            "holdout_points": int(result.predictions["actual"].notna().sum())}


def _fit_and_backtest(kind: str, target: pd.Series, covariates: pd.DataFrame | None,
                      holdout_start: datetime, horizon: int, params: dict[str, Any] | None,
                      ) -> tuple[ForecastModel, BacktestResult]:
    cls = MODELS[kind]
    result = rolling_origin(cls, target, holdout_start, horizon, covariates=covariates,
                            params=params)
    model = cls(spec=result.model.spec if result.model else None, params=params)
    model.fit(target, covariates)
    return model, result


async def _set(job_id: uuid.UUID, tenant_id: uuid.UUID, **values: Any) -> None:
    async with tenant_session(tenant_id) as s:
        await s.execute(update(MlJob).where(MlJob.id == job_id).values(**values))


async def run_training(job_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    """Execute one queued training job to the end; failures are recorded on the job."""
    async with tenant_session(tenant_id) as s:
        job = await s.get(MlJob, job_id)
        if job is None:
            return
        req = dict(job.request)
        created_by = job.created_by
    await _set(job_id, tenant_id, status="running", progress=0.05, started_at=datetime.now(UTC),
               message="loading data")
    try:
        kind = req["model"]
        freq = req.get("freq") or "1h"
        subject = data.Subject.of(
            asset_id=uuid.UUID(req["asset_id"]) if req.get("asset_id") else None,
            zone_id=uuid.UUID(req["zone_id"]) if req.get("zone_id") else None,
            metric=req["metric"])
        span = await data.data_range(tenant_id, subject)
        if span is None:
            raise ValidationFailed("the subject has no data to train on")
        start = datetime.fromisoformat(req["start"]) if req.get("start") else span[0]
        end = datetime.fromisoformat(req["end"]) if req.get("end") else span[1]
        target = await data.load_target(tenant_id, subject, start=start, end=end, freq=freq)
        covs = [(uuid.UUID(c["asset_id"]), c["metric"]) for c in req.get("covariates") or []]
        covariates = await data.load_covariates(tenant_id, covs, start=start, end=end, freq=freq)
        horizon = int(req.get("horizon") or steps_in(pd.Timedelta(hours=24), freq))
        observed = target.dropna()
        if observed.size < 2 * horizon + 200:
            raise ValidationFailed(f"not enough data: {observed.size} points on a {freq} grid")
        holdout = req.get("holdout_start")
        holdout_start = (datetime.fromisoformat(holdout) if holdout else
                         observed.index[int(observed.size * 0.8)].to_pydatetime())
        await _set(job_id, tenant_id, progress=0.2,
                   message=f"backtesting from {holdout_start.isoformat()}")
        model, result = await off_loop(_fit_and_backtest, kind, target, covariates,
                                       holdout_start, horizon, req.get("params"))
        metrics = _metrics_doc(result, holdout_start, horizon)
        await _set(job_id, tenant_id, progress=0.9, message="storing the model")
        async with tenant_session(tenant_id) as s:
            row = await registry.create_version(
                s, tenant_id=tenant_id, name=req.get("name") or kind, kind=kind,
                subject=subject.as_dict(), key=subject.key, model=model, metrics=metrics,
                training_start=start, training_end=end, created_by=created_by,
                actor=Actor(type="user", id=str(created_by) if created_by else None,
                            label="ml.train"))
            version_id, version = row.id, row.version
        await _set(job_id, tenant_id, status="succeeded", progress=1.0,
                   finished_at=datetime.now(UTC), model_version_id=version_id,
                   message=f"version {version} stored as a candidate",
                   result={"model_version_id": str(version_id), "version": version, **metrics})
        log.info("model trained", extra={"job_id": str(job_id), "kind": kind,
                                         "version": version,
                                         "beats_seasonal_naive": metrics["beats_seasonal_naive"]})
    except (ValidationFailed, ModelError, KeyError, ValueError) as exc:
        await _set(job_id, tenant_id, status="failed", finished_at=datetime.now(UTC),
                   error=str(exc), message="failed")
    except Exception as exc:
        log.exception("training failed", extra={"job_id": str(job_id)})
        await _set(job_id, tenant_id, status="failed", finished_at=datetime.now(UTC),
                   error=repr(exc), message="failed")


def _ray_training(job_id: str, tenant_id: str) -> None:
    asyncio.run(_run_and_dispose(uuid.UUID(job_id), uuid.UUID(tenant_id)))


async def _run_and_dispose(job_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    from civitas_ray.db.session import dispose_engine

    try:
        await run_training(job_id, tenant_id)
    finally:
        await dispose_engine()


def launch(job_id: uuid.UUID, tenant_id: uuid.UUID) -> str:
    """Start a queued job; returns where it runs (`ray` or `local`)."""
    import ray

    if ray.is_initialized():
        ray.remote(num_cpus=1, max_retries=0)(_ray_training).remote(str(job_id), str(tenant_id))
        return "ray"
    task = asyncio.get_running_loop().create_task(run_training(job_id, tenant_id))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return "local"


def _backtest(kind: str, target: pd.Series, covariates: pd.DataFrame | None,
              holdout_start: datetime, horizon: int) -> BacktestResult:
    return rolling_origin(MODELS[kind], target, holdout_start, horizon, covariates=covariates)


async def backtest(tenant_id: uuid.UUID, *, kind: str, subject: data.Subject,
                   holdout_start: datetime, horizon: int, freq: str = "1h",
                   history_days: int = 120, end: datetime | None = None) -> dict[str, Any]:
    """Hold-out forecasts made only from data before each origin, beside the actuals and
    the baselines, with their scores (the model is trained on data before holdout_start)."""
    if kind not in MODELS:
        raise ValidationFailed(f"unknown model {kind!r}; one of {sorted(MODELS)}")
    span = await data.data_range(tenant_id, subject)
    if span is None:
        raise ValidationFailed("the subject has no data")
    end = min(end or span[1], holdout_start + timedelta(days=31))
    start = max(span[0], holdout_start - timedelta(days=history_days))
    target = await data.load_target(tenant_id, subject, start=start, end=end, freq=freq)
    try:
        result = await off_loop(_backtest, kind, target, None, holdout_start, horizon)
    except ModelError as exc:
        raise ValidationFailed(str(exc)) from exc
    p = result.predictions
    points = []
    for ts, row in p.iterrows():
        points.append({"ts": pd.Timestamp(ts).isoformat(), "origin": _iso(row.get("origin")),
                       "actual": _num(row["actual"]), "value": _num(row["value"]),
                       "lower": _num(row["lower"]), "upper": _num(row["upper"]),
                       "seasonal_naive": _num(row["seasonal_naive"]),
                       "last_value": _num(row["last_value"])})
    return {"model": kind, **subject.as_dict(), "freq": freq, "horizon": horizon,
            "holdout_start": holdout_start.isoformat(), "points": points,
            "metrics": result.metrics, "beats_seasonal_naive": bool(result.beats_seasonal_naive)}


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if np.isnan(f) else f


def _iso(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return pd.Timestamp(v).isoformat()
