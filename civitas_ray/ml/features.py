"""The one feature pipeline every forecasting model shares: lags, rolling statistics,
calendar and holidays, and lagged covariates such as weather.

Every feature of the row at time t is built from target values strictly before t, from
t's own calendar, and from covariate values at t - 1 step at the latest. Training
(`build_features`) and recursive prediction (`target_features` on a rolling buffer) go
through the same functions, so a model sees the same features either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from civitas_ray.ml.series import SeriesError, ensure_regular, step_of, to_utc_index

LEVEL = "level"
COVARIATE_PREFIX = "cov_"
_ONE_DAY = pd.Timedelta(days=1)


class FeatureError(ValueError):
    """A feature spec or covariate frame that cannot be used."""


@dataclass(frozen=True)
class FeatureSpec:
    """What the pipeline builds. Lags and windows are counted in steps of `freq`.

    `tz` is the local time zone of the calendar features (rush hour is a local-time
    thing); `normalize` divides every target-derived feature, and the target itself, by
    the trailing mean over the longest window (the `level`), so that a model trained on
    one level keeps working after the series grows or shrinks.
    """

    freq: str = "1h"
    lags: tuple[int, ...] = (1, 2, 3, 24, 48, 168)
    windows: tuple[int, ...] = (24, 168)
    calendar: bool = True
    holidays_country: str | None = None
    covariates: tuple[str, ...] = field(default_factory=tuple)
    tz: str = "UTC"
    normalize: bool = False

    def __post_init__(self) -> None:
        try:
            step_of(self.freq)
        except SeriesError as exc:
            raise FeatureError(str(exc)) from exc
        object.__setattr__(self, "lags", tuple(int(k) for k in self.lags))
        object.__setattr__(self, "windows", tuple(int(w) for w in self.windows))
        object.__setattr__(self, "covariates", tuple(str(c) for c in self.covariates))
        if not self.lags or min(self.lags) < 1 or len(set(self.lags)) != len(self.lags):
            raise FeatureError(f"lags must be distinct positive step counts, got {self.lags}")
        if any(w < 2 for w in self.windows) or len(set(self.windows)) != len(self.windows):
            raise FeatureError(f"windows must be distinct and at least 2 steps, got {self.windows}")
        if self.normalize and not self.windows:
            raise FeatureError("normalize needs at least one window to measure the level")
        if len(set(self.covariates)) != len(self.covariates):
            raise FeatureError(f"covariate names repeat: {self.covariates}")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise FeatureError(f"unknown time zone {self.tz!r}") from exc
        if self.holidays_country is not None:
            _holiday_dates(self.holidays_country, 2020, 2020)

    @property
    def lookback(self) -> int:
        """How many past steps one feature row reads."""
        return max(*self.lags, *self.windows) if self.windows else max(self.lags)

    @property
    def step(self) -> pd.Timedelta:
        return step_of(self.freq)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise FeatureError(f"unknown FeatureSpec fields: {sorted(unknown)}")
        values = dict(data)
        for key in ("lags", "windows", "covariates"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def feature_names(spec: FeatureSpec) -> list[str]:
    """Column names of `build_features`, in order."""
    names = [f"lag_{k}" for k in spec.lags]
    for w in spec.windows:
        names += [f"mean_{w}", f"std_{w}"]
    if spec.normalize:
        names.append(LEVEL)
    names += _calendar_names(spec)
    names += [COVARIATE_PREFIX + c for c in spec.covariates]
    return names


def past_windows(values: np.ndarray, lookback: int) -> np.ndarray:
    """Row i holds values[i - lookback .. i - 1] (NaN before the start): the past of step i."""
    padded = np.concatenate([np.full(lookback, np.nan), np.asarray(values, dtype="float64")])
    return np.lib.stride_tricks.sliding_window_view(padded, lookback)[: len(values)]


def target_features(windows: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Lags and rolling mean/std from each row's past values (oldest first, newest last).

    A rolling statistic needs at least half its window present; otherwise it is NaN,
    which LightGBM treats as missing.
    """
    n, width = windows.shape
    if width != spec.lookback:
        raise FeatureError(f"windows must be {spec.lookback} steps wide, got {width}")
    cols = [windows[:, width - k] for k in spec.lags]
    level = None
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for w in spec.windows:
            seg = windows[:, width - w:]
            present = np.isfinite(seg)
            count = present.sum(axis=1)
            total = np.where(present, seg, 0.0).sum(axis=1)
            mean = np.where(count >= max(1, w // 2), total / np.maximum(count, 1), np.nan)
            dev = np.where(present, seg - mean[:, None], 0.0)
            std = np.sqrt((dev * dev).sum(axis=1) / np.maximum(count, 1))
            std = np.where(np.isfinite(mean), std, np.nan)
            cols += [mean, std]
            if w == max(spec.windows):
                level = mean
        out = np.column_stack(cols) if cols else np.empty((n, 0))
        if spec.normalize:
            scale = level_of(level)
            out = np.column_stack([out / scale[:, None], scale])
    return out


def level_of(mean: np.ndarray | None) -> np.ndarray:
    """The divisor of normalized features: the trailing mean, or 1 where it is unusable
    (missing, zero or negative), so those rows keep their raw scale instead of dividing by 0.
    """
    assert mean is not None
    return np.where(np.isfinite(mean) & (mean > 0), mean, 1.0)


def _calendar_names(spec: FeatureSpec) -> list[str]:
    if not spec.calendar:
        return []
    names = []
    if spec.step < _ONE_DAY:
        names.append("hour")
    names += ["day_of_week", "is_weekend", "month", "day_of_year"]
    if spec.holidays_country is not None:
        names += ["is_holiday", "holiday_yesterday", "holiday_tomorrow"]
    return names


@lru_cache(maxsize=64)
def _holiday_dates(country: str, first_year: int, last_year: int) -> frozenset[date]:
    import holidays

    try:
        table = holidays.country_holidays(country, years=range(first_year, last_year + 1))
    except NotImplementedError as exc:
        raise FeatureError(f"no holiday calendar for country {country!r}") from exc
    return frozenset(table.keys())


def calendar_features(index: pd.DatetimeIndex, spec: FeatureSpec) -> np.ndarray:
    """Local-time calendar of each instant, plus public holidays of `holidays_country`."""
    if not spec.calendar:
        return np.empty((len(index), 0))
    local = to_utc_index(index).tz_convert(spec.tz)
    cols: list[np.ndarray] = []
    if spec.step < _ONE_DAY:
        cols.append(local.hour.to_numpy(dtype="float64"))
    dow = local.dayofweek.to_numpy(dtype="float64")
    cols += [dow, (dow >= 5).astype("float64"), local.month.to_numpy(dtype="float64"),
             local.dayofyear.to_numpy(dtype="float64")]
    if spec.holidays_country is not None:
        days = local.tz_localize(None).to_numpy().astype("datetime64[D]")
        table = np.array(sorted(_holiday_dates(
            spec.holidays_country, int(local.year.min()) - 1, int(local.year.max()) + 1)),
            dtype="datetime64[D]") if len(days) else np.array([], dtype="datetime64[D]")
        one = np.timedelta64(1, "D")
        cols += [np.isin(days + shift, table).astype("float64") for shift in (0 * one, -one, one)]
    return np.column_stack(cols)


def align_covariates(covariates: pd.DataFrame | None, spec: FeatureSpec) -> pd.DataFrame | None:
    """The spec's covariate columns on the spec's grid (bin means), checked and sorted."""
    if not spec.covariates:
        return None
    if covariates is None:
        raise FeatureError(f"covariates {list(spec.covariates)} are required but none were given")
    missing = [c for c in spec.covariates if c not in covariates.columns]
    if missing:
        raise FeatureError(f"covariate columns missing: {missing}")
    frame = covariates[list(spec.covariates)].apply(pd.to_numeric, errors="coerce")
    frame.index = to_utc_index(covariates.index)
    return frame.sort_index().resample(spec.freq).mean()


def covariate_features(index: pd.DatetimeIndex, spec: FeatureSpec,
                       aligned: pd.DataFrame | None, *, known_until: pd.Timestamp | None = None
                       ) -> np.ndarray:
    """Covariates as known one step before each instant, carried forward over gaps.

    `known_until` cuts the covariates at an origin: later rows are not read, so every
    instant after it gets the last value known then (how a forecast without a weather
    forecast must run).
    """
    if not spec.covariates:
        return np.empty((len(index), 0))
    assert aligned is not None
    if known_until is not None:
        aligned = aligned.loc[aligned.index <= known_until]
    filled = aligned.ffill()
    wanted = to_utc_index(index) - spec.step
    if filled.empty:
        return np.full((len(index), len(spec.covariates)), np.nan)
    return filled.reindex(wanted, method="ffill").to_numpy(dtype="float64")


def build_features(target: pd.Series, spec: FeatureSpec,
                   covariates: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per step of `target`'s grid; row t uses only target values before t.

    `target` must already be on `spec.freq`'s grid (see `series.regularize`); gaps may be
    NaN. Covariates are required exactly when the spec names some.
    """
    regular = ensure_regular(target, spec.freq)
    values = regular.to_numpy(dtype="float64")
    aligned = align_covariates(covariates, spec)
    blocks = [target_features(past_windows(values, spec.lookback), spec),
              calendar_features(regular.index, spec),
              covariate_features(regular.index, spec, aligned)]
    return pd.DataFrame(np.column_stack(blocks), index=regular.index,
                        columns=feature_names(spec))
