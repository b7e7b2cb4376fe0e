"""Rolling-origin backtests of a model against the seasonal-naive and last-value baselines.

Every forecast in a backtest is made from the data before its origin only: the model is
trained on the series before the hold-out (and, with `refit_every`, retrained on the
series before later origins), each path reads the target before its origin and then its
own forecasts, covariates are the last values known at the origin, and the baselines
read the same history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from civitas_ray.ml.baselines import last_value, seasonal_naive
from civitas_ray.ml.features import FeatureSpec
from civitas_ray.ml.models.base import ForecastModel, ModelError
from civitas_ray.ml.series import SeriesError, ensure_regular, step_of, to_utc, to_utc_index

logger = logging.getLogger(__name__)

BASELINES = ("seasonal_naive", "last_value")


@dataclass
class BacktestResult:
    """Hold-out forecasts beside the actuals and the baselines, and their scores.

    `predictions` has one row per (origin, step): index ts; columns actual, value, lower,
    upper, seasonal_naive, last_value, origin. `metrics` scores the model and both
    baselines on the same rows (those where all three and the actual exist).
    """

    predictions: pd.DataFrame
    metrics: dict[str, dict[str, float]]
    beats_seasonal_naive: bool
    selection_metric: str = "mae"
    model: ForecastModel | None = None


def metrics(actual: Any, predicted: Any, lower: Any = None,
            upper: Any = None) -> dict[str, float]:
    """MAE, RMSE, sMAPE (%), MAPE (% over non-zero actuals) and, given bounds, coverage.

    Rows where the actual or the prediction is missing are left out; `n` says how many
    counted. A score that is undefined (MAPE with only zero actuals) is omitted rather
    than NaN, so the dict stores as JSON.
    """
    a = np.asarray(actual, dtype="float64")
    p = np.asarray(predicted, dtype="float64")
    if a.shape != p.shape:
        raise ValueError(f"actual and predicted differ in shape: {a.shape} vs {p.shape}")
    ok = np.isfinite(a) & np.isfinite(p)
    if not ok.any():
        raise ValueError("no row has both an actual and a prediction")
    a_ok, p_ok = a[ok], p[ok]
    err = p_ok - a_ok
    denom = np.abs(a_ok) + np.abs(p_ok)
    out = {"n": float(ok.sum()), "mae": float(np.mean(np.abs(err))),
           "rmse": float(np.sqrt(np.mean(err * err))),
           "smape": float(100.0 * np.mean(np.where(denom > 0, 2 * np.abs(err) / np.where(
               denom > 0, denom, 1.0), 0.0)))}
    nonzero = a_ok != 0
    if nonzero.any():
        out["mape"] = float(100.0 * np.mean(np.abs(err[nonzero] / a_ok[nonzero])))
    if (lower is None) != (upper is None):
        raise ValueError("give both lower and upper bounds, or neither")
    if lower is not None:
        lo = np.asarray(lower, dtype="float64")[ok]
        hi = np.asarray(upper, dtype="float64")[ok]
        out["coverage"] = float(np.mean((a_ok >= lo) & (a_ok <= hi)))
        out["interval_width"] = float(np.mean(hi - lo))
    return out


def _infer_freq(index: pd.DatetimeIndex) -> str:
    if index.freqstr is not None:
        return index.freqstr
    if index.size < 2:
        raise SeriesError("cannot infer the frequency of a series with fewer than 2 points")
    diffs = np.diff(index.as_unit("ns").asi8)
    positive = diffs[diffs > 0]
    if positive.size == 0:
        raise SeriesError("cannot infer the frequency: timestamps do not advance")
    offset = pd.tseries.frequencies.to_offset(pd.Timedelta(int(positive.min()), unit="ns"))
    return str(offset.freqstr)


def rolling_origin(model_cls: type[ForecastModel], target: pd.Series,
                   holdout_start: str | datetime | pd.Timestamp, horizon: int,
                   step: int | None = None, covariates: pd.DataFrame | None = None,
                   refit_every: int | None = None, *, spec: FeatureSpec | None = None,
                   params: dict[str, Any] | None = None) -> BacktestResult:
    """Forecast `horizon` steps from origins every `step` steps (default `horizon`) from
    `holdout_start` to the end of `target`, and score the model against the baselines.

    The model is trained on the target before `holdout_start`; with `refit_every=k` it
    is retrained on everything before every k-th origin. `spec` defaults to the model's
    default spec moved to the target's grid.
    """
    if horizon < 1:
        raise ModelError(f"horizon must be at least 1 step, got {horizon}")
    if step is not None and step < 1:
        raise ModelError(f"step must be at least 1, got {step}")
    if refit_every is not None and refit_every < 1:
        raise ModelError(f"refit_every must be at least 1 origin, got {refit_every}")
    step = step or horizon
    index = to_utc_index(target.index)
    if spec is None:
        freq = _infer_freq(target.index if isinstance(target.index, pd.DatetimeIndex)
                           and target.index.freq is not None else index)
        same = step_of(freq) == model_cls.default_spec.step
        spec = model_cls.default_spec if same else model_cls.spec_for(freq)
    y = ensure_regular(pd.Series(target.to_numpy(), index=index, name=target.name), spec.freq)
    start = to_utc(holdout_start)
    first = int(y.index.searchsorted(start))
    if first >= y.size:
        raise ModelError(f"holdout_start {start.isoformat()} is after the end of the series "
                         f"({y.index[-1].isoformat()})")
    if first == 0:
        raise ModelError(f"holdout_start {start.isoformat()} leaves no training data")
    origins = np.arange(first, y.size, step)
    season = model_cls.season_steps(spec.freq)

    blocks = [origins] if refit_every is None else [
        origins[i:i + refit_every] for i in range(0, origins.size, refit_every)]
    frames = []
    model: ForecastModel | None = None
    for block in blocks:
        cut = y.index[block[0]]
        train_cov = None if covariates is None else covariates.loc[
            to_utc_index(covariates.index) < cut]
        model = model_cls(spec=spec, params=params).fit(y.iloc[:block[0]], train_cov)
        frames.append(model.predict_origins(y, list(y.index[block]), horizon, covariates))
    assert model is not None
    pred = pd.concat(frames)
    pred = pred.loc[pred.index <= y.index[-1]]
    actual_series = model.prepare_target(y)
    pred.insert(0, "actual", actual_series.reindex(pred.index).to_numpy())
    naive = np.full(len(pred), np.nan)
    last = naive.copy()
    pos = 0
    for origin, rows in pred.groupby("origin", sort=False).size().items():
        o = int(y.index.get_loc(origin))
        history = actual_series.iloc[:o]
        if history.notna().any():
            naive[pos:pos + rows] = seasonal_naive(history, horizon, season,
                                                   freq=spec.freq).to_numpy()[:rows]
            last[pos:pos + rows] = last_value(history, horizon, freq=spec.freq).to_numpy()[:rows]
        pos += rows
    pred["seasonal_naive"] = naive
    pred["last_value"] = last
    pred = pred[["actual", "value", "lower", "upper", "seasonal_naive", "last_value", "origin"]]

    scored = pred.dropna(subset=["actual", "value", "seasonal_naive", "last_value"])
    if scored.empty:
        raise ModelError("no hold-out step has an actual value and all forecasts")
    with_interval = model_cls.interval_kind == "quantile"
    scores = {
        "model": metrics(scored["actual"], scored["value"],
                         scored["lower"] if with_interval else None,
                         scored["upper"] if with_interval else None),
        "seasonal_naive": metrics(scored["actual"], scored["seasonal_naive"]),
        "last_value": metrics(scored["actual"], scored["last_value"]),
    }
    key = model_cls.selection_metric
    beats = scores["model"][key] < scores["seasonal_naive"][key]
    logger.info("backtest done", extra={
        "model": model_cls.name, "origins": int(origins.size), "horizon": horizon,
        "selection_metric": key, "model_score": scores["model"][key],
        "seasonal_naive_score": scores["seasonal_naive"][key], "beats_seasonal_naive": beats})
    return BacktestResult(predictions=pred, metrics=scores, beats_seasonal_naive=bool(beats),
                          selection_metric=key, model=model)
