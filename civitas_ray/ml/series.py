"""Regular series helpers: every model and baseline works on a UTC grid with NaN gaps."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

AGGREGATIONS = ("mean", "sum", "last", "first", "max", "min", "median")


class SeriesError(ValueError):
    """A series or timestamp that the forecasting library cannot use as given."""


def to_utc_index(index: pd.Index) -> pd.DatetimeIndex:
    """The index as UTC instants; naive stamps are taken as UTC (the store's convention)."""
    if not isinstance(index, pd.DatetimeIndex):
        raise SeriesError(f"expected a DatetimeIndex, got {type(index).__name__}")
    if index.tz is None:
        return index.tz_localize("UTC")
    return index.tz_convert("UTC")


def to_utc(ts: str | datetime | pd.Timestamp) -> pd.Timestamp:
    """One instant as a UTC Timestamp; naive values are taken as UTC."""
    try:
        stamp = pd.Timestamp(ts)
    except (TypeError, ValueError) as exc:
        raise SeriesError(f"not a timestamp: {ts!r}") from exc
    if stamp is pd.NaT:
        raise SeriesError(f"not a timestamp: {ts!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def step_of(freq: str) -> pd.Timedelta:
    """The grid step of a fixed frequency string ("1h", "10min", "1D")."""
    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    except (TypeError, ValueError) as exc:
        raise SeriesError(f"not a fixed frequency: {freq!r}") from exc
    if step <= pd.Timedelta(0):
        raise SeriesError(f"frequency must be positive: {freq!r}")
    return step


def steps_in(span: pd.Timedelta | str, freq: str) -> int:
    """How many grid steps make up `span` (at least one)."""
    return max(1, int(pd.Timedelta(span) // step_of(freq)))


def regularize(s: pd.Series, freq: str = "1h", how: str = "mean") -> pd.Series:
    """Resample onto a complete UTC grid of `freq`; empty bins stay NaN (never zero-filled).

    Models need one value per step so that lag k means "k steps ago"; gaps are kept as
    NaN so that nothing invents readings that were never made.
    """
    if how not in AGGREGATIONS:
        raise SeriesError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")
    step_of(freq)
    values = pd.to_numeric(s, errors="coerce").astype("float64")
    values.index = to_utc_index(s.index)
    values = values.sort_index()
    if values.empty:
        return pd.Series([], index=pd.DatetimeIndex([], tz="UTC", freq=freq), dtype="float64",
                         name=s.name)
    grouped = values.resample(freq)
    out = grouped.sum(min_count=1) if how == "sum" else grouped.agg(how)
    out = out.astype("float64")
    out.name = s.name
    return out


def ensure_regular(s: pd.Series, freq: str) -> pd.Series:
    """`s` on its complete grid of `freq`, refusing stamps that are off the grid or repeated.

    Unlike `regularize` nothing is aggregated: a series that is not already regular is an
    error, so a caller never gets silently averaged data.
    """
    index = to_utc_index(s.index)
    step = step_of(freq)
    if index.has_duplicates:
        raise SeriesError("series has repeated timestamps; regularize() it first")
    if not index.is_monotonic_increasing:
        raise SeriesError("series timestamps are not sorted; regularize() it first")
    out = pd.Series(pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64"), index=index,
                    name=s.name)
    if out.empty:
        return out
    grid = pd.date_range(index[0], index[-1], freq=step)
    if not index.isin(grid).all():
        raise SeriesError(f"series timestamps are not on a {freq} grid; regularize() it first")
    return out.reindex(grid)
