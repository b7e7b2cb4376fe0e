"""The shared feature pipeline, the regular-series helpers, the baselines and the metrics,
on the real I-94 series where the data matters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from civitas_ray.ml import datasets
from civitas_ray.ml.backtest import metrics
from civitas_ray.ml.baselines import last_value, seasonal_naive
from civitas_ray.ml.features import FeatureError, FeatureSpec, build_features
from civitas_ray.ml.series import SeriesError, regularize

pytestmark = pytest.mark.unit

WEATHER = list(datasets.I94_WEATHER)
SPEC = FeatureSpec(freq="1h", lags=(1, 2, 24, 168), windows=(24, 168), calendar=True,
                   holidays_country="US", covariates=tuple(WEATHER), tz="America/Chicago")


@pytest.fixture(scope="module")
def i94(data_dir: Path) -> pd.DataFrame:
    return datasets.i94_traffic(data_dir).loc["2016-01-01":"2016-12-31"]


def test_regularize_keeps_gaps_and_aggregates_per_bin() -> None:
    idx = pd.to_datetime(["2024-01-01 00:10", "2024-01-01 00:50", "2024-01-01 03:20"])
    s = pd.Series([2.0, 4.0, 10.0], index=idx)
    mean = regularize(s, "1h")
    assert list(mean.index.strftime("%H")) == ["00", "01", "02", "03"]
    assert str(mean.index.tz) == "UTC"
    assert mean.iloc[0] == 3.0 and mean.iloc[3] == 10.0
    assert mean.iloc[1:3].isna().all()
    total = regularize(s, "1h", how="sum")
    assert total.iloc[0] == 6.0 and total.iloc[1:3].isna().all()  # empty bins are not 0


def test_regularize_converts_time_zones_and_rejects_bad_input() -> None:
    idx = pd.DatetimeIndex(["2024-07-01 09:00"]).tz_localize("America/Chicago")
    out = regularize(pd.Series([1.0], index=idx))
    assert out.index[0] == pd.Timestamp("2024-07-01 14:00", tz="UTC")
    with pytest.raises(SeriesError, match="aggregation"):
        regularize(pd.Series([1.0], index=idx), how="mode")
    with pytest.raises(SeriesError, match="DatetimeIndex"):
        regularize(pd.Series([1.0, 2.0]))


def test_lags_and_rolling_statistics_read_the_past(i94: pd.DataFrame) -> None:
    y = i94["traffic_volume"]
    feats = build_features(y, SPEC, i94[WEATHER])
    np.testing.assert_array_equal(feats["lag_24"].to_numpy(), y.shift(24).to_numpy())
    expected = y.shift(1).rolling(24, min_periods=12).mean()
    np.testing.assert_allclose(feats["mean_24"].to_numpy(), expected.to_numpy(), rtol=1e-9)
    np.testing.assert_array_equal(feats["cov_temp"].to_numpy(),
                                  i94["temp"].ffill().shift(1).to_numpy())


def test_features_at_t_use_only_data_before_t(i94: pd.DataFrame) -> None:
    y = i94["traffic_volume"]
    cov = i94[WEATHER]
    cut = 5000
    base = build_features(y, SPEC, cov)
    y2, cov2 = y.copy(), cov.copy()
    y2.iloc[cut:] = y2.iloc[cut:] * 3 + 1000  # a different future
    cov2.iloc[cut:] = cov2.iloc[cut:] + 50
    moved = build_features(y2, SPEC, cov2)
    pd.testing.assert_frame_equal(base.iloc[:cut + 1], moved.iloc[:cut + 1])
    assert not base.iloc[cut + 1:].equals(moved.iloc[cut + 1:])  # the check can fail


def test_calendar_and_holidays_on_hand_checked_dates() -> None:
    idx = pd.DatetimeIndex(["2016-07-04 04:00", "2016-07-04 05:00", "2016-07-05 05:00",
                            "2017-11-23 18:00", "2017-11-25 18:00"], tz="UTC")
    spec = FeatureSpec(freq="1h", lags=(1,), windows=(), calendar=True,
                       holidays_country="US", tz="America/Chicago")
    full = pd.Series(np.arange(len(idx), dtype=float), index=idx)
    grid = regularize(full, "1h")
    f = build_features(grid, spec).loc[idx]
    # 04:00 UTC = 23:00 CDT on Sunday 3 July, the eve of Independence Day
    assert f.iloc[0][["hour", "day_of_week", "is_weekend", "is_holiday",
                      "holiday_tomorrow"]].tolist() == [23, 6, 1, 0, 1]
    # 05:00 UTC = midnight on Monday 4 July
    assert f.iloc[1][["hour", "day_of_week", "is_weekend", "is_holiday",
                      "month", "day_of_year"]].tolist() == [0, 0, 0, 1, 7, 186]
    assert f.iloc[2][["is_holiday", "holiday_yesterday"]].tolist() == [0, 1]
    # Thanksgiving 2017 (Thursday 23 November), 12:00 CST
    assert f.iloc[3][["hour", "day_of_week", "is_holiday"]].tolist() == [12, 3, 1]
    assert f.iloc[4][["day_of_week", "is_weekend", "is_holiday"]].tolist() == [5, 1, 0]


def test_daily_grid_has_no_hour_feature() -> None:
    spec = FeatureSpec(freq="1D", lags=(1, 7), windows=(7,), holidays_country="US")
    idx = pd.date_range("2024-12-20", periods=10, freq="1D", tz="UTC")
    f = build_features(pd.Series(np.arange(10.0), index=idx), spec)
    assert "hour" not in f.columns
    assert f.loc["2024-12-25", "is_holiday"].item() == 1.0


@pytest.mark.parametrize("kwargs,message", [
    ({"lags": (0, 1)}, "lags"), ({"windows": (1,)}, "windows"), ({"tz": "Mars/Olympus"}, "zone"),
    ({"holidays_country": "XX"}, "holiday"), ({"freq": "fortnightly"}, "frequency"),
])
def test_bad_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        FeatureSpec(**kwargs)


def test_bad_inputs_are_refused(i94: pd.DataFrame) -> None:
    y = i94["traffic_volume"]
    with pytest.raises(FeatureError, match="missing"):
        build_features(y, SPEC, i94[["temp"]])
    with pytest.raises(FeatureError, match="required"):
        build_features(y, SPEC, None)
    irregular = y.iloc[[0, 1, 3]].copy()
    irregular.index = irregular.index + pd.Timedelta(minutes=7) * np.arange(3)
    with pytest.raises(SeriesError, match="grid"):
        build_features(irregular, SPEC, i94[WEATHER])


def test_baselines_repeat_the_right_past_values(i94: pd.DataFrame) -> None:
    history = i94["traffic_volume"].iloc[:2000]
    naive = seasonal_naive(history, 200, 168)
    assert naive.index[0] == history.index[-1] + pd.Timedelta(hours=1)
    past = history.to_numpy()
    for h in (0, 17, 167, 168, 199):
        want = past[len(past) - 168 + (h % 168)]
        if np.isnan(want):
            want = past[len(past) - 2 * 168 + (h % 168)]
        assert naive.iloc[h] == want
    gappy = history.copy()
    gappy.iloc[-1] = np.nan
    assert last_value(gappy, 3).tolist() == [history.dropna().iloc[-2]] * 3
    assert seasonal_naive(gappy, 168, 168).iloc[-1] == history.iloc[-1 - 168]


def test_metrics_on_a_hand_computed_case() -> None:
    m = metrics([10.0, 0.0, 20.0, np.nan], [12.0, 0.0, 15.0, 3.0],
                lower=[9.0, -1.0, 16.0, 0.0], upper=[13.0, 1.0, 18.0, 5.0])
    assert m["n"] == 3
    assert m["mae"] == pytest.approx(7 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(29 / 3))
    assert m["smape"] == pytest.approx(100 * (4 / 22 + 0 + 10 / 35) / 3)
    assert m["mape"] == pytest.approx(100 * (0.2 + 0.25) / 2)
    assert m["coverage"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="both"):
        metrics([1.0], [1.0], lower=[0.0])
