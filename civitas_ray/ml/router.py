"""/api/v1/ml and /api/v1/forecasts: training jobs, backtests, the registry, forecasts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from sqlalchemy import select

from civitas_ray.auth.deps import AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.errors import NotFound
from civitas_ray.ml import data, forecasts, registry, training
from civitas_ray.ml.registry_models import MlJob
from civitas_ray.ml.schemas import (
    BacktestIn,
    BacktestOut,
    ForecastOut,
    JobOut,
    ModelPage,
    ModelVersionOut,
    StageChangeOut,
    TrainIn,
)
from civitas_ray.schemas import page_of

router = APIRouter(prefix="/ml", tags=["ml"])
forecasts_router = APIRouter(prefix="/forecasts", tags=["ml"])


@router.post("/train", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut,
             summary="Train a model (a background job)",
             description="Starts a training job and answers at once with it (202). The job "
                         "backtests the model with rolling origins on the newest part of the "
                         "data against seasonal-naive and last-value, trains on everything, "
                         "and stores a `candidate` version with its metrics. Follow it with "
                         "`GET /ml/jobs/{id}` (status, progress). Runs as a Ray task when the "
                         "server runs on Ray.",
             **needs(Perm.ML_TRAIN))
async def train(ctx: AuthDep, body: TrainIn) -> MlJob:
    tenant_id = ctx.principal.tenant_id
    subject = data.Subject.of(asset_id=body.asset_id, zone_id=body.zone_id, metric=body.metric)
    await _require_subject(ctx, subject)
    job = MlJob(tenant_id=tenant_id, kind="train", status="queued", progress=0.0,
                request=body.model_dump(mode="json"), message="queued",
                created_by=ctx.principal.id if ctx.principal.kind == "user" else None)
    ctx.session.add(job)
    await ctx.session.flush()
    await ctx.session.refresh(job)
    job_id = job.id

    async def go() -> None:
        training.launch(job_id, tenant_id)

    ctx.after_commit(go)
    return job


@router.get("/jobs", response_model=list[JobOut], summary="Recent training jobs",
            **needs(Perm.ML_READ))
async def list_jobs(ctx: AuthDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    ) -> list[MlJob]:
    rows = (await ctx.session.execute(select(MlJob).where(
        MlJob.tenant_id == ctx.principal.tenant_id).order_by(MlJob.created_at.desc())
        .limit(limit))).scalars().all()
    return list(rows)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="A training job",
            **needs(Perm.ML_READ))
async def get_job(ctx: AuthDep, job_id: uuid.UUID) -> MlJob:
    job = await ctx.session.get(MlJob, job_id)
    if job is None or job.tenant_id != ctx.principal.tenant_id:
        raise NotFound("job not found")
    return job


@router.post("/backtest", response_model=BacktestOut, summary="Backtest a model on a stream",
             description="Trains the model on the data before `holdout_start`, then forecasts "
                         "`horizon` steps from every origin from there on (at most 31 days), "
                         "each made only from data before its origin; answers the forecasts "
                         "with their intervals beside the actuals and the seasonal-naive and "
                         "last-value forecasts, and the scores of all three (MAE, RMSE, "
                         "sMAPE, interval coverage).",
             **needs(Perm.ML_READ))
async def backtest(ctx: AuthDep, body: BacktestIn) -> dict[str, Any]:
    subject = data.Subject.of(asset_id=body.asset_id, zone_id=body.zone_id, metric=body.metric)
    await _require_subject(ctx, subject)
    return await training.backtest(ctx.principal.tenant_id, kind=body.model, subject=subject,
                                   holdout_start=body.holdout_start, horizon=body.horizon,
                                   freq=body.freq, history_days=body.history_days,
                                   end=body.end)


@router.get("/models", response_model=ModelPage, summary="Model versions",
            description="The tenant's model versions, newest first per name and subject; "
                        "filter by `name`, `kind`, `stage` or subject (`asset_id`/`zone_id` "
                        "with `metric`).",
            **needs(Perm.ML_READ))
async def list_models(
    ctx: AuthDep, name: str | None = None, kind: str | None = None,
    stage: str | None = None, asset_id: uuid.UUID | None = None,
    zone_id: uuid.UUID | None = None, metric: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    key = None
    if metric and (asset_id or zone_id):
        key = data.Subject.of(asset_id=asset_id, zone_id=None if asset_id else zone_id,
                              metric=metric).key
    rows, total = await registry.list_versions(
        ctx.session, ctx.principal.tenant_id, name=name, kind=kind, stage=stage, key=key,
        limit=limit, offset=offset)
    return page_of([ModelVersionOut.model_validate(r) for r in rows], total=total,
                   limit=limit, offset=offset)


@router.get("/models/{version_id}", response_model=ModelVersionOut, summary="A model version",
            **needs(Perm.ML_READ))
async def get_model(ctx: AuthDep, version_id: uuid.UUID) -> Any:
    return await registry.require(ctx.session, ctx.principal.tenant_id, version_id)


@router.post("/models/{version_id}/promote", response_model=StageChangeOut,
             summary="Put a version in production",
             description="The production version of the same name and subject is archived. "
                         "Refused (409) for a version whose backtest did not beat the "
                         "seasonal-naive baseline. Forecaster replicas pick the change up "
                         "without a redeploy.",
             **needs(Perm.ML_PROMOTE))
async def promote(ctx: AuthDep, version_id: uuid.UUID) -> dict[str, Any]:
    new, old = await registry.promote(ctx.session, tenant_id=ctx.principal.tenant_id,
                                      version_id=version_id, actor=ctx.actor)
    return {"version": ModelVersionOut.model_validate(new),
            "replaced": ModelVersionOut.model_validate(old) if old else None}


@router.post("/models/{version_id}/shadow", response_model=StageChangeOut,
             summary="Score a candidate beside production",
             description="The Forecaster scores the shadow version on every request for the "
                         "subject and compares it with production; it serves production.",
             **needs(Perm.ML_PROMOTE))
async def shadow(ctx: AuthDep, version_id: uuid.UUID) -> dict[str, Any]:
    row = await registry.shadow(ctx.session, tenant_id=ctx.principal.tenant_id,
                                version_id=version_id, actor=ctx.actor)
    return {"version": ModelVersionOut.model_validate(row), "replaced": None}


@router.post("/models/{version_id}/rollback", response_model=StageChangeOut,
             summary="Roll a production version back",
             description="Archives this production version and puts the previously promoted "
                         "one back in production (409 when there is none).",
             **needs(Perm.ML_PROMOTE))
async def rollback(ctx: AuthDep, version_id: uuid.UUID) -> dict[str, Any]:
    restored, retired = await registry.rollback(ctx.session, tenant_id=ctx.principal.tenant_id,
                                                version_id=version_id, actor=ctx.actor)
    return {"version": ModelVersionOut.model_validate(restored),
            "replaced": ModelVersionOut.model_validate(retired)}


_HORIZON = Annotated[int, Query(ge=1, le=24 * 14, description="Hours ahead (1 to 336)")]


@forecasts_router.get("", response_model=ForecastOut, summary="Forecast a stream",
                      description="The production model of the stream forecasts `horizon` "
                                  "hours from its newest data, with an 80 % interval.",
                      **needs(Perm.ML_READ))
async def forecast_stream(ctx: AuthDep, asset_id: uuid.UUID,
                          metric: Annotated[str, Query(max_length=64)],
                          horizon: _HORIZON = 24, name: str | None = None) -> dict[str, Any]:
    subject = data.Subject.of(asset_id=asset_id, zone_id=None, metric=metric)
    return await forecasts.forecast(ctx.session, ctx.principal.tenant_id, subject,
                                    horizon=timedelta(hours=horizon), name=name)


@forecasts_router.get("/zones/{zone_id}", response_model=ForecastOut,
                      summary="Forecast a zone series",
                      description="The production model of the zone and metric (a sum over "
                                  "the zone's assets; `incidents` for incident probability).",
                      **needs(Perm.ML_READ))
async def forecast_zone(ctx: AuthDep, zone_id: uuid.UUID,
                        metric: Annotated[str, Query(max_length=64)],
                        horizon: _HORIZON = 24, name: str | None = None) -> dict[str, Any]:
    subject = data.Subject.of(asset_id=None, zone_id=zone_id, metric=metric)
    return await forecasts.forecast(ctx.session, ctx.principal.tenant_id, subject,
                                    horizon=timedelta(hours=horizon), name=name)


async def _require_subject(ctx: Any, subject: data.Subject) -> None:
    from sqlalchemy import text

    if subject.asset_id is not None:
        found = await ctx.session.scalar(text(
            "select 1 from asset where id = :i and deleted_at is null"), {"i": subject.asset_id})
    else:
        found = await ctx.session.scalar(text(
            "select 1 from zone where id = :i and deleted_at is null"), {"i": subject.zone_id})
    if found is None:
        raise NotFound("asset not found" if subject.asset_id else "zone not found")
