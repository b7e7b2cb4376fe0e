"""Naive baselines that every model must beat before it is promoted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from civitas_ray.ml.series import SeriesError, ensure_regular, step_of


def _future_index(history: pd.Series, horizon: int, freq: str | None) -> tuple[pd.Series,
                                                                              pd.DatetimeIndex]:
    if horizon < 1:
        raise SeriesError(f"horizon must be at least 1 step, got {horizon}")
    if history.empty:
        raise SeriesError("history is empty")
    if freq is None:
        inferred = history.index.freqstr if isinstance(history.index, pd.DatetimeIndex) else None
        if inferred is None:
            raise SeriesError("history has no regular frequency; pass freq")
        freq = inferred
    regular = ensure_regular(history, freq)
    step = step_of(freq)
    future = pd.date_range(regular.index[-1] + step, periods=horizon, freq=step)
    return regular, future


def seasonal_naive(history: pd.Series, horizon: int, season: int,
                   freq: str | None = None) -> pd.Series:
    """Each future step repeats the value one season earlier (the last season, repeated).

    A missing value in the last season is taken from the same phase of an earlier season,
    so one gap does not blank the forecast; it stays NaN only when no season has it.
    """
    if season < 1:
        raise SeriesError(f"season must be at least 1 step, got {season}")
    regular, future = _future_index(history, horizon, freq)
    values = regular.to_numpy(dtype="float64")
    n = values.size
    phase = np.arange(horizon) % season
    out = np.full(horizon, np.nan)
    for back in range(1, n // season + 2):
        pos = n - back * season + phase
        ok = np.isnan(out) & (pos >= 0)
        out[ok] = values[pos[ok]]
        if not np.isnan(out).any():
            break
    return pd.Series(out, index=future, name="seasonal_naive")


def last_value(history: pd.Series, horizon: int, freq: str | None = None) -> pd.Series:
    """Each future step repeats the last value that was actually observed."""
    regular, future = _future_index(history, horizon, freq)
    observed = regular.dropna()
    value = float(observed.iloc[-1]) if not observed.empty else np.nan
    return pd.Series(np.full(horizon, value), index=future, name="last_value")
