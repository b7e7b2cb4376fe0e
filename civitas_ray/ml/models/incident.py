"""Incident probability per zone and hour, learned from incident history."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from civitas_ray.ml.features import FeatureSpec
from civitas_ray.ml.models.base import ForecastModel, ModelError, hourly_spec

BAGS = 5


class IncidentModel(ForecastModel):
    """P(at least one incident) in each zone-hour.

    The target is the incident count turned into 0/1. The value is the mean of
    `BAGS` bagged binary boosters (different row samples and seeds); lower and upper are
    the 10th and 90th percentiles of their probabilities: a bootstrap spread that says
    how sure the estimate is, not where a 0/1 outcome will fall, so interval coverage is
    not reported for this model. Models are selected on RMSE, the root of the Brier
    score: MAE rewards predicting 0 for rare events and is no proper score for a
    probability.
    """

    name: ClassVar[str] = "incident"
    default_spec: ClassVar[FeatureSpec] = hourly_spec(holidays_country="US")
    bounds: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    interval_kind: ClassVar[str] = "probability"
    selection_metric: ClassVar[str] = "rmse"
    model_params: ClassVar[dict[str, Any]] = {"bagging_fraction": 0.8, "bagging_freq": 1,
                                              "min_data_in_leaf": 40}

    def prepare_target(self, y: pd.Series) -> pd.Series:
        values = y.to_numpy(dtype="float64")
        if (values[np.isfinite(values)] < 0).any():
            raise ModelError("incident counts cannot be negative")
        binary = np.where(np.isfinite(values), (values >= 1).astype("float64"), np.nan)
        return pd.Series(binary, index=y.index, name=y.name)

    def _feedback(self, value: np.ndarray) -> np.ndarray:
        """A path continues with the likelier outcome (0 or 1): the boosters learnt from 0/1
        lags and would read any non-zero probability as an incident that happened."""
        return (value >= 0.5).astype("float64")

    def _booster_keys(self) -> list[str]:
        return [f"bag{i}" for i in range(BAGS)]

    def _booster_params(self, key: str) -> dict[str, Any]:
        lgb_params = super()._booster_params("q0.5")
        lgb_params.pop("alpha")
        bag = int(key[3:])
        return {**lgb_params, "objective": "binary", "metric": "binary_logloss",
                "seed": int(self.params["seed"]) + bag,
                "bagging_seed": int(self.params["seed"]) + 101 * bag}

    def _predict_matrix(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probs = np.vstack([self._boosters[k].predict(X) for k in self._booster_keys()])
        lo, hi = np.quantile(probs, [self.quantiles[0], self.quantiles[2]], axis=0)
        return probs.mean(axis=0), lo, hi
