"""Forecasts from the production model of a subject.

The Forecaster Serve deployment answers when Serve is running (`ml/serving.py`); a
process without Serve (plain uvicorn, tests, the CLI) loads the same version itself,
and the answer says which did (`served_by`), never pretending.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.errors import NotFound
from civitas_ray.ml import data, registry
from civitas_ray.ml.models import ForecastModel
from civitas_ray.ml.registry_models import ModelVersion
from civitas_ray.ml.series import step_of

log = logging.getLogger(__name__)
_CACHE_MAX = 32
_models: OrderedDict[uuid.UUID, ForecastModel] = OrderedDict()
_lock = asyncio.Lock()


async def production_version(session: AsyncSession, tenant_id: uuid.UUID, key: str,
                             name: str | None = None) -> ModelVersion:
    q = select(ModelVersion).where(ModelVersion.tenant_id == tenant_id,
                                   ModelVersion.subject_key == key,
                                   ModelVersion.stage == "production")
    if name:
        q = q.where(ModelVersion.name == name)
    rows = list((await session.execute(q.order_by(ModelVersion.promoted_at.desc())))
                .scalars().all())
    if not rows:
        raise NotFound(f"no model in production for {key}"
                       + (f" named {name!r}" if name else "")
                       + ": train one (POST /api/v1/ml/train) and promote it")
    return rows[0]


async def _model(row: ModelVersion) -> ForecastModel:
    async with _lock:
        if row.id in _models:
            _models.move_to_end(row.id)
            return _models[row.id]
    model = await registry.load_model(row)
    async with _lock:
        _models[row.id] = model
        while len(_models) > _CACHE_MAX:
            _models.popitem(last=False)
    return model


def history_span(model: ForecastModel) -> timedelta:
    """How much history the model's lags and windows need, with room for gaps."""
    spec = model.spec
    steps = max([*spec.lags, *spec.windows, 1])
    return (step_of(spec.freq) * (2 * steps + 48)).to_pytimedelta()


async def forecast(session: AsyncSession, tenant_id: uuid.UUID, subject: data.Subject, *,
                   horizon_steps: int | None = None, horizon: timedelta | None = None,
                   name: str | None = None) -> dict[str, Any]:
    row = await production_version(session, tenant_id, subject.key, name)
    model = await _model(row)
    step = step_of(model.spec.freq).to_pytimedelta()
    steps = horizon_steps or max(1, int((horizon or timedelta(hours=24)) / step))
    now = datetime.now(UTC)
    history = await data.load_target(tenant_id, subject, start=now - history_span(model),
                                     end=now, freq=model.spec.freq)
    observed = history.dropna()
    if observed.empty:
        raise NotFound(f"{subject.key} has no recent data to forecast from")
    # Forecast from the newest observed step: a stream that went quiet still gets one.
    history = history.loc[:observed.index[-1]]
    served_by = "in-process"
    points: list[dict[str, Any]] | None = None
    via_serve = _serve_client()
    if via_serve is not None:
        points = await via_serve(tenant_id=tenant_id, name=row.name, subject_key=subject.key,
                                 history=history, horizon=steps)
        if points is not None:
            served_by = "forecaster"
    if points is None:
        frame = await asyncio.to_thread(model.predict, history, steps)
        points = [{"ts": pd.Timestamp(ts).to_pydatetime(), "value": float(r["value"]),
                   "lower": float(r["lower"]), "upper": float(r["upper"])}
                  for ts, r in frame.iterrows()]
    return {"subject_key": subject.key, "model": row.name, "model_version_id": row.id,
            "version": row.version, "served_by": served_by,
            "history_end": observed.index[-1].to_pydatetime(), "points": points}


def _serve_client() -> Any:
    """`serving.forecast_via_serve` when the Forecaster module is importable."""
    try:
        serving = importlib.import_module("civitas_ray.ml.serving")
    except ImportError:
        return None
    return getattr(serving, "forecast_via_serve", None)
