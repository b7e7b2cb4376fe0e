"""The LightGBM forecasting model every domain model specializes: quantile boosters on the
shared features, recursive multi-step prediction, calibrated intervals, portable bytes.

How a model is trained (`fit`):
1. the target is put on its grid and turned into the model's target (`prepare_target`);
   with `spec.normalize` the booster learns target / trailing level;
2. one booster per quantile (0.1, 0.5, 0.9) is trained on the older rows with early
   stopping on the newest `validation_fraction` of them (a time-ordered split);
3. from origins inside that validation span the model forecasts recursively, as it will
   live, and the interval is widened (or narrowed) per horizon step so that it covers
   the central 80 % there (conformalized quantile regression);
4. the boosters are retrained on all rows with the early-stopped number of rounds.

A recursive path feeds on its own forecasts, so each step is kept within the training
range widened by its span on both sides: one odd step cannot snowball.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from abc import ABC
from dataclasses import replace
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd

from civitas_ray.ml.features import (
    LEVEL,
    FeatureSpec,
    align_covariates,
    calendar_features,
    covariate_features,
    feature_names,
    past_windows,
    target_features,
)
from civitas_ray.ml.series import SeriesError, ensure_regular, step_of, steps_in, to_utc

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

# Hyper-parameters of our own; everything else in `params` goes to LightGBM as is.
OWN_PARAMS = ("n_estimators", "early_stopping_rounds", "validation_fraction")

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 400,
    "early_stopping_rounds": 40,
    "validation_fraction": 0.15,
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "num_threads": 1,  # on a busy 2-core host 2 OpenMP threads train ~5x slower
    "seed": 7,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}

MIN_TRAIN_ROWS = 200
MIN_VALIDATION_ROWS = 48
CALIBRATION_ORIGINS = 60


class ModelError(ValueError):
    """A model that cannot be trained, used or loaded as asked."""


def hourly_spec(**changes: Any) -> FeatureSpec:
    """The default hourly spec: the last 3 hours, same hour 1 and 2 days and 1 and 2 weeks
    ago, daily and weekly rolling statistics, local calendar."""
    base = FeatureSpec(freq="1h", lags=(1, 2, 3, 24, 48, 168, 336), windows=(24, 168),
                       calendar=True, holidays_country=None, covariates=())
    return replace(base, **changes)


def grid_stamps(start: pd.Timestamp, step: pd.Timedelta, positions: np.ndarray
                ) -> pd.DatetimeIndex:
    """The UTC instants of grid positions counted from `start`."""
    ns = start.as_unit("ns").value + step.as_unit("ns").value * np.asarray(positions, np.int64)
    return pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True))


class ForecastModel(ABC):
    """A recursive multi-step LightGBM forecaster with a central interval.

    Subclasses set `name` and `default_spec` and may change the target (`prepare_target`),
    the boosters (`_train_set`, `_predict_matrix`) and the bounds of the output.
    """

    name: ClassVar[str]
    default_spec: ClassVar[FeatureSpec]
    quantiles: ClassVar[tuple[float, float, float]] = (0.1, 0.5, 0.9)
    season: ClassVar[pd.Timedelta] = pd.Timedelta(days=7)
    nonnegative: ClassVar[bool] = False
    bounds: ClassVar[tuple[float, float] | None] = None
    interval_kind: ClassVar[str] = "quantile"
    selection_metric: ClassVar[str] = "mae"
    model_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec: FeatureSpec | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.spec = spec if spec is not None else self.default_spec
        self.params: dict[str, Any] = {**DEFAULT_PARAMS, **self.model_params, **(params or {})}
        for key in ("n_estimators", "early_stopping_rounds"):
            if int(self.params[key]) < 1:
                raise ModelError(f"{key} must be at least 1")
        if not 0.0 < float(self.params["validation_fraction"]) < 0.5:
            raise ModelError("validation_fraction must be between 0 and 0.5")
        self.feature_names: list[str] = feature_names(self.spec)
        self.info: dict[str, Any] = {}
        self._boosters: dict[str, lgb.Booster] = {}
        self._widen = np.zeros(0)
        self._limits = (-np.inf, np.inf)

    # ---- specs ---------------------------------------------------------------------
    @classmethod
    def spec_for(cls, freq: str, **changes: Any) -> FeatureSpec:
        """`default_spec` moved to another grid: lags and windows keep their durations
        (a day, a week), the three newest steps are always lags."""
        base = cls.default_spec
        if step_of(freq) == base.step:
            return replace(base, freq=freq, **changes)
        lags = sorted({1, 2, 3} | {steps_in(k * base.step, freq) for k in base.lags})
        windows = sorted({w for w in (steps_in(k * base.step, freq) for k in base.windows)
                          if w >= 2})
        if not windows:
            windows = [max(2, cls.season_steps(freq))]
        return replace(base, freq=freq, lags=tuple(lags), windows=tuple(windows), **changes)

    @classmethod
    def season_steps(cls, freq: str) -> int:
        """The seasonal-naive period on `freq`'s grid."""
        return steps_in(cls.season, freq)

    @property
    def fitted(self) -> bool:
        return bool(self._boosters)

    # ---- hooks -----------------------------------------------------------------------
    def prepare_target(self, y: pd.Series) -> pd.Series:
        """The series the boosters learn, from the series the caller has (identity here)."""
        return y

    def _booster_keys(self) -> list[str]:
        return [f"q{q:g}" for q in self.quantiles]

    def _booster_params(self, key: str) -> dict[str, Any]:
        lgb_params = {k: v for k, v in self.params.items() if k not in OWN_PARAMS}
        alpha = float(key[1:])
        return {**lgb_params, "objective": "quantile", "alpha": alpha, "metric": "quantile"}

    def _feedback(self, value: np.ndarray) -> np.ndarray:
        """What a recursive path writes as the observed value of a forecast step."""
        return value

    def _predict_matrix(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value, lower, upper) in the boosters' space for feature rows X."""
        lo, mid, hi = (self._boosters[k].predict(X) for k in self._booster_keys())
        return np.asarray(mid), np.asarray(lo), np.asarray(hi)

    # ---- training ----------------------------------------------------------------------
    def _train_set(self, X: np.ndarray, t: np.ndarray, X_val: np.ndarray | None,
                   t_val: np.ndarray | None, rounds: dict[str, int] | None
                   ) -> tuple[dict[str, lgb.Booster], dict[str, int]]:
        boosters: dict[str, lgb.Booster] = {}
        best: dict[str, int] = {}
        for key in self._booster_keys():
            params = self._booster_params(key)
            data = lgb.Dataset(X, t, feature_name=self.feature_names, free_raw_data=True,
                               params={"verbosity": -1})
            if rounds is None:
                assert X_val is not None and t_val is not None
                val = lgb.Dataset(X_val, t_val, reference=data)
                booster = lgb.train(
                    params, data, num_boost_round=int(self.params["n_estimators"]),
                    valid_sets=[val], callbacks=[lgb.early_stopping(
                        int(self.params["early_stopping_rounds"]), verbose=False)])
                best[key] = max(1, booster.best_iteration or booster.current_iteration())
            else:
                booster = lgb.train(params, data, num_boost_round=rounds[key])
                best[key] = rounds[key]
            boosters[key] = booster
        return boosters, best

    def _spec_with(self, covariates: pd.DataFrame | None) -> FeatureSpec:
        if covariates is not None and not self.spec.covariates:
            names = tuple(str(c) for c in covariates.columns)
            if not names:
                raise ModelError("covariates frame has no columns")
            return replace(self.spec, covariates=names)
        return self.spec

    def _grid(self, target: pd.Series) -> pd.Series:
        try:
            return ensure_regular(target, self.spec.freq)
        except SeriesError as exc:
            raise ModelError(str(exc)) from exc

    def fit(self, target: pd.Series, covariates: pd.DataFrame | None = None) -> ForecastModel:
        """Train on all of `target` (regular on `spec.freq`, NaN gaps allowed)."""
        started = time.perf_counter()
        self.spec = self._spec_with(covariates)
        self.feature_names = feature_names(self.spec)
        y = self.prepare_target(self._grid(target))
        values = y.to_numpy(dtype="float64")
        aligned = align_covariates(covariates, self.spec)
        X = self._matrix(values, y.index, aligned)
        scale = self._scale(X)
        t = values / scale
        lag_cols = X[:, : len(self.spec.lags)]
        rows = np.flatnonzero(np.isfinite(t) & np.isfinite(lag_cols).any(axis=1))
        n_val = max(int(rows.size * float(self.params["validation_fraction"])),
                    MIN_VALIDATION_ROWS)
        if rows.size - n_val < MIN_TRAIN_ROWS:
            raise ModelError(f"{self.name}: {rows.size} usable rows; need at least "
                             f"{MIN_TRAIN_ROWS + MIN_VALIDATION_ROWS} on a {self.spec.freq} grid")
        fit_rows, val_rows = rows[:-n_val], rows[-n_val:]
        observed = values[rows]
        span = float(observed.max() - observed.min())
        self._limits = (float(observed.min()) - span, float(observed.max()) + span)
        trial, best = self._train_set(X[fit_rows], t[fit_rows], X[val_rows], t[val_rows], None)
        self._boosters = trial
        self._widen = np.zeros(0)
        if self.interval_kind == "quantile":
            self._widen = self._calibrate(values, y.index, aligned, int(val_rows[0]))
        self._boosters, _ = self._train_set(X[rows], t[rows], None, None, best)
        self.info = {"rows": int(rows.size), "validation_rows": int(n_val),
                     "best_iterations": best, "trained_from": y.index[0].isoformat(),
                     "trained_until": y.index[-1].isoformat(),
                     "fit_seconds": round(time.perf_counter() - started, 3)}
        logger.info("forecast model trained", extra={"model": self.name, **self.info})
        return self

    def _matrix(self, values: np.ndarray, index: pd.DatetimeIndex,
                aligned: pd.DataFrame | None) -> np.ndarray:
        return np.column_stack([target_features(past_windows(values, self.spec.lookback),
                                                self.spec),
                                calendar_features(index, self.spec),
                                covariate_features(index, self.spec, aligned)])

    def _scale(self, X: np.ndarray) -> np.ndarray:
        if not self.spec.normalize:
            return np.ones(X.shape[0])
        return X[:, self.feature_names.index(LEVEL)]

    def _calibrate(self, values: np.ndarray, index: pd.DatetimeIndex,
                   aligned: pd.DataFrame | None, first: int) -> np.ndarray:
        """Per-step interval corrections from recursive forecasts inside the validation span."""
        span = values.size - first
        horizon = min(self.season_steps(self.spec.freq), span // 2)
        if horizon < 1:
            return np.zeros(0)
        last = values.size - horizon
        stride = max(1, (last - first) // CALIBRATION_ORIGINS)
        origins = np.arange(first, last + 1, stride)
        _, lo, hi, scale = self._forecast(values, index, aligned, origins, horizon,
                                          widen=False)
        actual = values[origins[:, None] + np.arange(horizon)[None, :]]
        score = np.maximum(lo - actual, actual - hi) / scale[:, None]
        coverage = self.quantiles[2] - self.quantiles[0]
        widen = np.zeros(horizon)
        for h in range(horizon):
            s = score[:, h][np.isfinite(score[:, h])]
            if s.size >= 5:
                level = min(1.0, np.ceil((s.size + 1) * coverage) / s.size)
                widen[h] = float(np.quantile(s, level))
        return widen

    # ---- prediction --------------------------------------------------------------------
    def _forecast(self, values: np.ndarray, index: pd.DatetimeIndex,
                  aligned: pd.DataFrame | None, origins: np.ndarray, horizon: int, *,
                  widen: bool = True, future_covariates: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Recursive forecasts of `horizon` steps from each origin position, all at once.

        The path from origin o reads `values` only before o; later steps read the model's
        own median forecasts. Covariates are the last known at the origin unless
        `future_covariates` (a supplied forecast frame). Returns value, lower, upper
        (origins x horizon) and each origin's level (1 unless normalized).
        """
        spec = self.spec
        width = spec.lookback
        n_o = origins.size
        step = spec.step
        past = past_windows(values, width)
        buffer = np.full((n_o, width + horizon), np.nan)
        inside = origins < values.size
        buffer[inside, :width] = past[origins[inside]]
        beyond = ~inside
        if beyond.any():  # an origin right after the end of `values` (plain predict)
            tail = np.concatenate([np.full(width, np.nan), values])[-width:]
            buffer[beyond, :width] = tail
        start = index[0]
        flat = grid_stamps(start, step, (origins[:, None] + np.arange(horizon)[None, :]).ravel())
        cal = calendar_features(flat, spec).reshape(n_o, horizon, -1)
        if not spec.covariates:
            cov = np.empty((n_o, horizon, 0))
        elif future_covariates:
            cov = covariate_features(flat, spec, aligned).reshape(n_o, horizon, -1)
        else:
            known = covariate_features(grid_stamps(start, step, origins), spec, aligned)
            cov = np.repeat(known[:, None, :], horizon, axis=1)
        value = np.empty((n_o, horizon))
        lower, upper = value.copy(), value.copy()
        origin_scale = np.ones(n_o)
        for h in range(horizon):
            tf = target_features(buffer[:, h:h + width], spec)
            X = np.column_stack([tf, cal[:, h], cov[:, h]])
            scale = self._scale(X)
            if h == 0:
                origin_scale = scale.copy()
            mid, lo, hi = self._predict_matrix(X)
            if widen and self._widen.size:
                extra = self._widen[min(h, self._widen.size - 1)]
                lo, hi = lo - extra, hi + extra
            mid, lo, hi = mid * scale, lo * scale, hi * scale
            mid, lo, hi = (self._bound(np.clip(x, *self._limits)) for x in (mid, lo, hi))
            value[:, h] = mid
            lower[:, h] = np.minimum(lo, mid)
            upper[:, h] = np.maximum(hi, mid)
            buffer[:, width + h] = self._feedback(mid)
        return value, lower, upper, origin_scale

    def _bound(self, x: np.ndarray) -> np.ndarray:
        if self.bounds is not None:
            return np.clip(x, *self.bounds)
        if self.nonnegative:
            return np.maximum(x, 0.0)
        return x

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError(f"{self.name} model is not trained; call fit() or from_bytes()")

    def predict(self, history: pd.Series, horizon: int,
                covariates: pd.DataFrame | None = None) -> pd.DataFrame:
        """Forecast `horizon` steps after the end of `history`, from `history` alone.

        Covariate rows after the end of `history` are taken as a forecast of them;
        without such rows the last known covariate values are carried forward.
        """
        self._require_fitted()
        if horizon < 1:
            raise ModelError(f"horizon must be at least 1 step, got {horizon}")
        y = self.prepare_target(self._grid(history))
        if y.dropna().empty:
            raise ModelError("history has no observed value")
        aligned = align_covariates(covariates, self.spec)
        origin = np.array([y.size])
        value, lower, upper, _ = self._forecast(y.to_numpy(dtype="float64"), y.index, aligned,
                                                origin, horizon, future_covariates=True)
        future = pd.date_range(y.index[-1] + self.spec.step, periods=horizon,
                               freq=self.spec.step, name="ts")
        return pd.DataFrame({"value": value[0], "lower": lower[0], "upper": upper[0]},
                            index=future)

    def predict_origins(self, target: pd.Series, origins: list[Any] | pd.DatetimeIndex,
                        horizon: int, covariates: pd.DataFrame | None = None) -> pd.DataFrame:
        """Forecasts from many origins of one series at once, each made only from the data
        before its origin (covariates: the last values known at the origin).

        Returns rows (ts, origin) with columns value, lower, upper.
        """
        self._require_fitted()
        if horizon < 1:
            raise ModelError(f"horizon must be at least 1 step, got {horizon}")
        y = self.prepare_target(self._grid(target))
        stamps = pd.DatetimeIndex([to_utc(o) for o in origins])
        positions = y.index.get_indexer(stamps)
        if (positions < 0).any():
            raise ModelError("every origin must be a timestamp of the target's grid")
        aligned = align_covariates(covariates, self.spec)
        value, lower, upper, _ = self._forecast(y.to_numpy(dtype="float64"), y.index, aligned,
                                                positions, horizon)
        ts = grid_stamps(y.index[0], self.spec.step,
                         (positions[:, None] + np.arange(horizon)[None, :]).ravel())
        return pd.DataFrame({"value": value.ravel(), "lower": lower.ravel(),
                             "upper": upper.ravel(),
                             "origin": np.repeat(stamps, horizon)},
                            index=ts.rename("ts"))

    # ---- bytes -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Gzipped JSON: spec, params, LightGBM text models, interval corrections. No pickle."""
        self._require_fitted()
        doc = {"format": FORMAT_VERSION, "name": self.name, "spec": self.spec.to_dict(),
               "params": self.params, "feature_names": self.feature_names, "info": self.info,
               "widen": [float(x) for x in self._widen], "limits": list(self._limits),
               "boosters": {k: b.model_to_string() for k, b in self._boosters.items()}}
        return gzip.compress(json.dumps(doc).encode(), mtime=0)

    @classmethod
    def from_bytes(cls, data: bytes) -> ForecastModel:
        """A trained model from `to_bytes` output; on the base class, the class named inside."""
        try:
            doc = json.loads(gzip.decompress(data))
        except (OSError, ValueError) as exc:
            raise ModelError("not a serialized forecast model") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
            raise ModelError("unsupported forecast model format")
        from civitas_ray.ml.models import MODELS

        name = doc.get("name")
        target_cls = MODELS.get(str(name)) if cls is ForecastModel else cls
        if target_cls is None or target_cls.name != name:
            raise ModelError(f"bytes hold a {name!r} model, not {getattr(cls, 'name', cls)!r}")
        spec = FeatureSpec.from_dict(doc["spec"])
        model = target_cls(spec=spec, params=doc["params"])
        if model.feature_names != doc["feature_names"]:
            raise ModelError("feature names do not match the spec")
        if set(doc["boosters"]) != set(model._booster_keys()):
            raise ModelError("booster set does not match the model")
        model._boosters = {k: lgb.Booster(model_str=s) for k, s in doc["boosters"].items()}
        model._widen = np.asarray(doc["widen"], dtype="float64")
        model._limits = (float(doc["limits"][0]), float(doc["limits"][1]))
        model.info = dict(doc.get("info", {}))
        return model
