"""The online seasonal forecaster against the naive baselines on real city series.

Protocol (the numbers go in docs/architecture.md): the forecaster learns the first 75 %
of a series in one batch, then reads the last 25 % one reading at a time, as it would
live. For each target reading at t it is judged by the forecast it made for t at the
moment it had read everything up to t - 1 h: a 1-hour-ahead forecast, i.e. 1 step on
hourly series and 6 steps on the 10-minute one. Baselines at the same origin:
last value (the reading at t - 1 h) and seasonal naive (the reading one season
earlier: t - 7 days for the hourly series, t - 1 day for the 10-minute one). Only
targets with a reading exactly 1 h earlier and exactly one season earlier count, so
the three forecasts are scored on the same readings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from civitas_ray.streams.forecast import ForecastConfig, SeasonalForecaster
from civitas_ray.streams.timebase import US_PER_HOUR, US_PER_S, calendar_for, iso_utc
from tests.unit import city_series
from tests.unit.city_series import Series

pytestmark = pytest.mark.unit

DAY = 86_400
WEEK = 7 * DAY


def evaluate(series: Series, *, horizon_s: int, season_s: int,
             eval_share: float = 0.25) -> dict[str, float]:
    ts, y = series.ts_us, series.values
    h_us, s_us = horizon_s * US_PER_S, season_s * US_PER_S
    n = ts.size
    start = int(n * (1 - eval_share))
    targets = np.arange(start, n)
    origin = np.searchsorted(ts, ts[targets] - h_us, side="right") - 1
    seasonal = np.minimum(np.searchsorted(ts, ts[targets] - s_us), n - 1)
    ok = ((origin >= 0) & (ts[np.maximum(origin, 0)] == ts[targets] - h_us)
          & (ts[seasonal] == ts[targets] - s_us))
    targets, origin, seasonal = targets[ok], origin[ok], seasonal[ok]

    fc = SeasonalForecaster(ForecastConfig(tz=series.tz))
    first = int(origin.min())
    fc.update(ts[:first], y[:first])
    mean = np.full(targets.size, np.nan)
    lower, upper = mean.copy(), mean.copy()
    by_origin = np.argsort(origin, kind="stable")
    j = 0
    for i in range(first, int(origin.max()) + 1):
        fc.update(ts[i:i + 1], y[i:i + 1])
        while j < by_origin.size and origin[by_origin[j]] == i:
            k = by_origin[j]
            m, lo, hi = fc.predict(ts[targets[k]:targets[k] + 1])
            mean[k], lower[k], upper[k] = m[0], lo[0], hi[0]
            j += 1
    actual = y[targets]
    return {
        "targets": float(targets.size),
        "steps": horizon_s / float(np.median(np.diff(ts))) * US_PER_S,
        "ours": float(np.mean(np.abs(actual - mean))),
        "last_value": float(np.mean(np.abs(actual - y[origin]))),
        "seasonal_naive": float(np.mean(np.abs(actual - y[seasonal]))),
        "coverage": float(np.mean((actual >= lower) & (actual <= upper))),
    }


CASES = [
    ("i94", city_series.i94_traffic, WEEK, "t - 7 d"),
    ("tetouan", city_series.tetouan_power, DAY, "t - 1 d"),
    ("daiad", city_series.daiad_district, WEEK, "t - 7 d"),
]


@pytest.mark.parametrize(("case", "load", "season_s", "season_name"), CASES,
                         ids=[c[0] for c in CASES])
def test_one_hour_ahead_beats_last_value_and_seasonal_naive(
        data_dir: Path, case: str, load: object, season_s: int, season_name: str) -> None:
    series = load(data_dir)  # type: ignore[operator]
    r = evaluate(series, horizon_s=3_600, season_s=season_s)
    print(f"\n{series.name}: 1-hour-ahead MAE over the last 25 % "
          f"({int(r['targets'])} targets, {r['steps']:.0f} step(s) ahead): "
          f"ours {r['ours']:.1f} | last value {r['last_value']:.1f} | "
          f"seasonal naive ({season_name}) {r['seasonal_naive']:.1f} | "
          f"90 % interval coverage {r['coverage']:.3f}")
    assert r["targets"] > 1_000
    assert r["ours"] < r["last_value"]
    assert r["ours"] < r["seasonal_naive"]
    assert 0.80 <= r["coverage"] <= 0.97


def test_checkpoint_round_trip_predicts_identically(data_dir: Path) -> None:
    s = city_series.tetouan_power(data_dir)
    fc = SeasonalForecaster(ForecastConfig(tz="Africa/Casablanca"))
    fc.update(s.ts_us[:5_000], s.values[:5_000])
    copy = SeasonalForecaster.from_state_dict(json.loads(json.dumps(fc.state_dict())))
    ahead = s.ts_us[5_000:5_012]
    for a, b in zip(fc.predict(ahead), copy.predict(ahead), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fc.update(s.ts_us[5_000:5_100], s.values[5_000:5_100]),
                                  copy.update(s.ts_us[5_000:5_100], s.values[5_000:5_100]))


def _daily_wave(ts_us: np.ndarray) -> np.ndarray:
    hour = (ts_us // US_PER_HOUR) % 24
    return 100.0 + 50.0 * np.sin(2 * np.pi * hour / 24)


def test_interval_is_estimated_from_irregular_samples() -> None:
    rng = np.random.default_rng(7)
    t0 = 1_700_000_000 * US_PER_S
    steps = (300 + rng.integers(-20, 21, 2_000)) * US_PER_S  # 5 min +- 20 s jitter
    steps[500] = 6 * 3_600 * US_PER_S  # and a six-hour outage
    ts = t0 + np.cumsum(steps)
    fc = SeasonalForecaster()
    fc.update(ts, _daily_wave(ts))
    assert fc.interval_s == pytest.approx(300, abs=10)


def test_hour_of_day_carries_the_season_before_the_week_is_seen() -> None:
    # two days of a clean daily wave, hourly: every hour of the day seen twice, but the
    # week knots of the next days never
    t0 = 1_704_067_200 * US_PER_S  # Monday 2024-01-01 00:00 UTC
    ts = t0 + np.arange(48) * US_PER_HOUR
    fc = SeasonalForecaster(ForecastConfig(alpha_day=0.5))
    for _ in range(3):  # learn the same two days a few times over (shifted by weeks)
        fc.update(ts, _daily_wave(ts))
        ts = ts + 7 * 24 * US_PER_HOUR
    ahead = ts[-1] - 7 * 24 * US_PER_HOUR + np.arange(30, 42) * US_PER_HOUR  # Wednesday
    mean, _, _ = fc.predict(ahead)
    assert np.max(np.abs(mean - _daily_wave(ahead))) < 15.0


def test_residual_fades_with_the_horizon_and_after_gaps() -> None:
    t0 = 1_704_067_200 * US_PER_S
    ts = t0 + np.arange(24 * 21) * US_PER_HOUR
    rng = np.random.default_rng(3)
    noise = np.convolve(rng.normal(0, 5, ts.size), np.ones(6) / 6, mode="same")
    fc = SeasonalForecaster()
    fc.update(ts, _daily_wave(ts) + noise)
    # the series runs 30 above its usual shape for four hours (not a one-off: a single
    # wild reading would be Huber-clipped)
    hot = ts[-1] + np.arange(1, 5) * US_PER_HOUR
    fc.update(hot, _daily_wave(hot) + 30.0)
    near = hot[-1] + US_PER_HOUR
    far = hot[-1] + (1 + 24 * 7) * US_PER_HOUR
    m_near, lo_near, hi_near = fc.predict(np.asarray([near]))
    m_far, lo_far, hi_far = fc.predict(np.asarray([far]))
    off_near = m_near[0] - _daily_wave(np.asarray([near]))[0]
    off_far = m_far[0] - _daily_wave(np.asarray([far]))[0]
    assert off_near > 15.0  # the departure carries on next hour
    assert off_far < 0.6 * off_near  # and mostly fades toward the usual week
    assert hi_near[0] - lo_near[0] < hi_far[0] - lo_far[0]  # intervals widen


def test_horizon_covers_the_next_hour_on_the_stream_grid() -> None:
    t0 = 1_704_067_200 * US_PER_S
    ts = t0 + np.arange(500) * 600 * US_PER_S
    fc = SeasonalForecaster()
    fc.update(ts, _daily_wave(ts))
    now = int(ts[-1]) + 90 * US_PER_S
    f_ts, mean, lower, upper = fc.horizon(now, 3_600)
    assert f_ts.size == 6
    assert f_ts[0] > now and f_ts[-1] <= now + 3_600 * US_PER_S
    assert np.all(np.diff(f_ts) == 600 * US_PER_S)
    assert np.all(lower <= mean) and np.all(mean <= upper)
    assert iso_utc(f_ts)[0].endswith("Z")


def test_old_readings_do_not_move_the_forecaster() -> None:
    ts = 1_704_067_200 * US_PER_S + np.arange(100) * US_PER_HOUR
    fc = SeasonalForecaster()
    fc.update(ts, _daily_wave(ts))
    before = fc.state_dict()
    preds = fc.update(ts[10:20], _daily_wave(ts[10:20]) + 1_000)
    assert np.isnan(preds).all()
    assert fc.state_dict() == before


def test_week_position_follows_local_time_across_dst() -> None:
    cal = calendar_for("America/New_York")
    # Monday 08:00 local, in winter (UTC-5) and in summer (UTC-4)
    winter = np.datetime64("2024-01-08T13:00", "us").astype(np.int64)
    summer = np.datetime64("2024-07-08T12:00", "us").astype(np.int64)
    np.testing.assert_allclose(cal.week_hours(np.asarray([winter, summer])), [8.0, 8.0])
    naive = np.datetime64("2024-07-08T08:00", "us").astype(np.int64)
    assert cal.local_naive_to_utc_us(np.asarray([naive]))[0] == summer


def test_update_speed_is_printed(data_dir: Path) -> None:
    s = city_series.tetouan_power(data_dir)
    fc = SeasonalForecaster()
    fc.update(s.ts_us[:10_000], s.values[:10_000])
    t = time.perf_counter()
    for k in range(10):
        lo = 10_000 + k * 1_000
        fc.update(s.ts_us[lo:lo + 1_000], s.values[lo:lo + 1_000])
    per_batch = (time.perf_counter() - t) / 10
    print(f"\nSeasonalForecaster.update: {per_batch * 1e3:.2f} ms per 1000 readings")
