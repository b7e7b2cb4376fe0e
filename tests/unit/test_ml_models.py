"""The LightGBM models on real city series: rolling-origin backtests against the naive
baselines, no look-ahead, calibrated intervals, byte-exact round trips.

Each model is trained on about a year (a few months for power, the whole trial for water,
2020-2023 for daily ridership) and judged on a hold-out of 24-hour (7-day) forecasts
from successive origins; the scores are measured here, never written down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from civitas_ray.ml import datasets
from civitas_ray.ml.backtest import BacktestResult, rolling_origin
from civitas_ray.ml.features import FeatureError
from civitas_ray.ml.models import MODELS, ForecastModel, ModelError
from civitas_ray.ml.models.energy import EnergyModel
from civitas_ray.ml.models.traffic import TrafficModel

pytestmark = pytest.mark.unit

WEATHER = list(datasets.I94_WEATHER)


@dataclass(frozen=True)
class Case:
    target: pd.Series
    holdout_start: str
    horizon: int
    covariates: pd.DataFrame | None = None


@pytest.fixture(scope="module")
def cases(data_dir: Path) -> dict[str, Case]:
    i94 = datasets.i94_traffic(data_dir).loc["2017-06-01":"2018-08-31"]
    power = datasets.tetouan_power(data_dir).loc["2017-06-01":]
    return {
        "traffic": Case(i94["traffic_volume"], "2018-08-01", 24, i94[WEATHER]),
        "energy": Case(power["power"], "2017-12-01", 24, power[["temperature"]]),
        "water": Case(datasets.daiad_district(data_dir), "2017-02-01", 24),
        "demand": Case(datasets.mta_subway(data_dir).loc["2021-06-01":"2024-03-31"],
                       "2024-01-01", 7),
        "incident": Case(datasets.i94_drop_events(data_dir).loc["2016-06-01":"2018-06-30"],
                         "2018-01-01", 24),
    }


@pytest.fixture(scope="module")
def backtests(cases: dict[str, Case]) -> dict[str, BacktestResult]:
    out = {}
    for name, case in cases.items():
        out[name] = rolling_origin(MODELS[name], case.target, case.holdout_start, case.horizon,
                                   covariates=case.covariates)
        scores = {k: round(v["mae"], 4) for k, v in out[name].metrics.items()}
        print(f"{name}: MAE {scores}")
    return out


def test_every_domain_has_a_model() -> None:
    assert set(MODELS) == {"traffic", "energy", "water", "incident", "demand"}
    assert all(MODELS[name].name == name for name in MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_beats_seasonal_naive_on_its_real_series(
        name: str, backtests: dict[str, BacktestResult]) -> None:
    result = backtests[name]
    key = result.selection_metric
    model, naive = result.metrics["model"][key], result.metrics["seasonal_naive"][key]
    assert result.beats_seasonal_naive == (model < naive)
    assert model < naive, f"{name}: {key} {model:.4g} vs seasonal naive {naive:.4g}"
    assert result.metrics["model"]["n"] >= 80


@pytest.mark.parametrize("name", ["traffic", "energy", "water", "demand"])
def test_central_80_percent_interval_covers_about_80_percent(
        name: str, backtests: dict[str, BacktestResult]) -> None:
    coverage = backtests[name].metrics["model"]["coverage"]
    assert 0.65 <= coverage <= 0.97, f"{name}: coverage {coverage:.3f}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_are_ordered_and_bounded(name: str, backtests: dict[str, BacktestResult]
                                         ) -> None:
    pred = backtests[name].predictions
    assert list(pred.columns) == ["actual", "value", "lower", "upper", "seasonal_naive",
                                  "last_value", "origin"]
    assert (pred["lower"] <= pred["value"]).all() and (pred["value"] <= pred["upper"]).all()
    assert (pred["lower"] >= 0).all()
    assert (pred.index > pred["origin"]).sum() == len(pred) - pred["origin"].nunique()
    assert (pred.index >= pred["origin"]).all()
    if name == "incident":
        assert (pred["upper"] <= 1).all()


def test_incident_probabilities_are_calibrated_in_the_large(
        backtests: dict[str, BacktestResult]) -> None:
    pred = backtests["incident"].predictions.dropna(subset=["actual"])
    observed = pred["actual"].mean()
    assert set(pred["actual"].unique()) <= {0.0, 1.0}
    assert 0.25 * observed <= pred["value"].mean() <= 4 * observed


def test_backtest_forecasts_ignore_everything_after_their_origin(cases: dict[str, Case]
                                                                 ) -> None:
    case = cases["traffic"]
    target = case.target.loc[:"2018-08-10"]
    assert case.covariates is not None
    cov = case.covariates.loc[:"2018-08-10"]
    model = TrafficModel(params={"n_estimators": 60}).fit(target.loc[:"2018-07-31"],
                                                          cov.loc[:"2018-07-31"])
    origins = list(pd.date_range("2018-08-01", periods=6, freq="29h", tz="UTC"))
    base = model.predict_origins(target, origins, 36, cov)
    for origin in origins:
        changed_y, changed_cov = target.copy(), cov.copy()
        changed_y.loc[origin:] = 0.0
        changed_cov.loc[changed_cov.index >= origin] = -40.0
        moved = model.predict_origins(changed_y, [origin], 36, changed_cov)
        pd.testing.assert_frame_equal(base.loc[base["origin"] == origin], moved)
        # the batch path is the single-history path: predict() sees only the past
        alone = model.predict(target.loc[:origin - pd.Timedelta(hours=1)], 36,
                              cov.loc[:origin - pd.Timedelta(hours=1)])
        np.testing.assert_allclose(alone.to_numpy(), moved[["value", "lower", "upper"]],
                                   rtol=1e-12)
    changed = target.copy()
    changed.loc[origins[0] - pd.Timedelta(hours=1)] += 3000.0  # the past does matter
    moved = model.predict_origins(changed, origins[:1], 36, cov)
    assert not np.allclose(moved["value"], base.loc[base["origin"] == origins[0], "value"])


def test_supplied_covariate_forecast_is_used(cases: dict[str, Case]) -> None:
    case = cases["energy"]
    assert case.covariates is not None
    history = case.target.loc[:"2017-11-30"]
    cov = case.covariates.loc[:"2017-11-30"]
    model = EnergyModel(params={"n_estimators": 80}).fit(history, cov)
    assert model.spec.covariates == ("temperature",)
    plain = model.predict(history, 24, cov)
    future = pd.DataFrame({"temperature": 45.0},
                          index=pd.date_range("2017-12-01", periods=24, freq="1h", tz="UTC"))
    hot = model.predict(history, 24, pd.concat([cov, future]))
    assert plain.index[0] == pd.Timestamp("2017-12-01", tz="UTC")
    assert np.array_equal(plain.iloc[0], hot.iloc[0])  # step 1 reads the temperature at t-1
    assert not np.allclose(plain["value"].iloc[2:], hot["value"].iloc[2:])
    with pytest.raises(FeatureError, match="required"):
        model.predict(history, 24)


@pytest.mark.parametrize("name", ["energy", "incident"])
def test_bytes_round_trip_predicts_identically(name: str, cases: dict[str, Case]) -> None:
    case = cases[name]
    history = case.target.loc[:case.holdout_start].iloc[:-1]
    cov = None if case.covariates is None else case.covariates.loc[:history.index[-1]]
    model = MODELS[name](params={"n_estimators": 80}).fit(history, cov)
    data = model.to_bytes()
    assert b"lightgbm" not in data[:20]  # compressed JSON, not code
    again = ForecastModel.from_bytes(data)
    assert type(again) is MODELS[name]
    assert again.feature_names == model.feature_names and again.params == model.params
    pd.testing.assert_frame_equal(model.predict(history, 48, cov), again.predict(history, 48, cov),
                                  check_exact=True)
    assert again.to_bytes() == data


def test_training_is_deterministic(cases: dict[str, Case]) -> None:
    case = cases["energy"]
    history = case.target.loc[:"2017-09-30"]
    first = EnergyModel(params={"n_estimators": 50}).fit(history).to_bytes()
    second = EnergyModel(params={"n_estimators": 50}).fit(history).to_bytes()
    assert _without_timing(first) == _without_timing(second)


def _without_timing(data: bytes) -> bytes:
    import gzip
    import json

    doc = json.loads(gzip.decompress(data))
    doc["info"].pop("fit_seconds")
    return json.dumps(doc).encode()


def test_bad_requests_get_clear_errors(cases: dict[str, Case]) -> None:
    case = cases["water"]
    model = MODELS["water"]()
    with pytest.raises(ModelError, match="not trained"):
        model.predict(case.target, 24)
    with pytest.raises(ModelError, match="usable rows"):
        model.fit(case.target.iloc[:100])
    with pytest.raises(ModelError, match="after the end"):
        rolling_origin(MODELS["water"], case.target, "2030-01-01", 24)
    with pytest.raises(ModelError, match="no training data"):
        rolling_origin(MODELS["water"], case.target, "2000-01-01", 24)
    with pytest.raises(ModelError, match="horizon"):
        rolling_origin(MODELS["water"], case.target, "2017-02-01", 0)
    with pytest.raises(ModelError, match="not a serialized"):
        ForecastModel.from_bytes(b"not a model")
    energy = EnergyModel(params={"n_estimators": 20}).fit(cases["energy"].target.iloc[:2000])
    with pytest.raises(ModelError, match="'energy' model"):
        MODELS["water"].from_bytes(energy.to_bytes())
