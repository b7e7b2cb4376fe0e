"""ML API models: training and backtest requests, model versions, jobs, forecasts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from civitas_ray.ml.models import MODELS

ModelKind = Literal["traffic", "energy", "water", "incident", "demand"]
assert set(MODELS) == {"traffic", "energy", "water", "incident", "demand"}


class CovariateIn(BaseModel):
    asset_id: uuid.UUID
    metric: str = Field(max_length=64)


class _Subject(BaseModel):
    asset_id: uuid.UUID | None = Field(None, description="A stream: the asset ...")
    zone_id: uuid.UUID | None = Field(None, description="... or a zone (sum over its assets; "
                                      "metric `incidents` counts incidents opened)")
    metric: str = Field(max_length=64)

    @model_validator(mode="after")
    def _one_subject(self) -> _Subject:
        if (self.asset_id is None) == (self.zone_id is None):
            raise ValueError("give exactly one of asset_id and zone_id")
        return self


class TrainIn(_Subject):
    model_config = ConfigDict(json_schema_extra={"example": {
        "model": "traffic", "asset_id": "6f1c0c3e-5b7e-4a9e-9a55-0f1e2d3c4b5a",
        "metric": "volume", "horizon": 24}})

    model: ModelKind
    name: str | None = Field(None, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="Registry name (default: the model kind)")
    freq: str = Field("1h", pattern=r"^\d{1,3}(min|h|D)$")
    start: datetime | None = None
    end: datetime | None = None
    holdout_start: datetime | None = Field(
        None, description="Backtest from here (default: the newest 20 % of the data)")
    horizon: int | None = Field(None, ge=1, le=24 * 14, description="Steps (default 24 h)")
    covariates: list[CovariateIn] = Field(default_factory=list, max_length=8)
    params: dict[str, float | int | str | bool] | None = Field(
        None, description="LightGBM parameters (n_estimators, learning_rate, num_leaves...)")

    @field_validator("start", "end", "holdout_start")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("needs a UTC offset")
        return v


class BacktestIn(_Subject):
    model_config = ConfigDict(json_schema_extra={"example": {
        "model": "traffic", "asset_id": "6f1c0c3e-5b7e-4a9e-9a55-0f1e2d3c4b5a",
        "metric": "volume", "holdout_start": "2018-09-01T00:00:00Z", "horizon": 24}})

    model: ModelKind
    holdout_start: datetime
    horizon: int = Field(24, ge=1, le=24 * 7)
    freq: str = Field("1h", pattern=r"^\d{1,3}(min|h|D)$")
    end: datetime | None = Field(None, description="Last hold-out time (at most 31 days)")
    history_days: int = Field(120, ge=7, le=3650)

    @field_validator("holdout_start", "end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("needs a UTC offset")
        return v


class BacktestPoint(BaseModel):
    ts: datetime
    origin: datetime | None
    actual: float | None
    value: float | None
    lower: float | None
    upper: float | None
    seasonal_naive: float | None
    last_value: float | None


class BacktestOut(BaseModel):
    model: str
    asset_id: uuid.UUID | None
    zone_id: uuid.UUID | None
    metric: str
    freq: str
    horizon: int
    holdout_start: datetime
    beats_seasonal_naive: bool
    metrics: dict[str, dict[str, float]]
    points: list[BacktestPoint]


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float
    message: str | None
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    model_version_id: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ModelVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: str
    version: int
    stage: Literal["candidate", "shadow", "production", "archived"]
    subject_key: str
    subject: dict[str, Any]
    freq: str
    features: list[str]
    params: dict[str, Any]
    metrics: dict[str, Any]
    training_start: datetime | None
    training_end: datetime | None
    artifact_uri: str | None
    created_at: datetime
    promoted_at: datetime | None


class ModelPage(BaseModel):
    items: list[ModelVersionOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None = None


class StageChangeOut(BaseModel):
    version: ModelVersionOut
    replaced: ModelVersionOut | None = None


class ForecastPoint(BaseModel):
    ts: datetime
    value: float
    lower: float
    upper: float


class ForecastOut(BaseModel):
    subject_key: str
    model: str
    model_version_id: uuid.UUID
    version: int
    served_by: Literal["forecaster", "in-process"] = Field(
        description="The Forecaster Serve deployment, or this process when Serve is not up")
    history_end: datetime | None
    points: list[ForecastPoint]
