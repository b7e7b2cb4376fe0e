"""Online seasonal forecaster for one stream: week + day profiles, level, damped residual.

The model, updated on every reading in time order:

    y(t) = level + week(t) + day(t) + r(t),   r(t + h) ~ phi(h) * r(t)

* `week` is a piecewise-linear profile with one knot per local hour of the week (168
  knots, tenant time zone); `day` has one knot per local hour of the day (24). Both
  learn from the same error by exponential smoothing: the day profile fast (a knot is
  visited daily), the week profile slowly. The day profile therefore carries the
  shape while a week knot is still unseen (it starts at zero, so an unseen hour of the
  week falls back to the hour of the day) and follows seasonal drift such as the
  evening peak moving with sunset; the week profile keeps what differs by weekday.
* `level` follows slow drifts (holidays, seasons of the year) with a time constant.
* `r` is what the profiles missed at the last reading (a jam, a cold evening). It is
  carried forward with `phi(h) = rho ** (h / interval)`, rho being the residual's
  lag-one autocorrelation estimated online, so the forecast bends from "like the
  last reading" to "like a usual week" as the horizon grows.
* Errors are Huber-clipped before they update anything (robust Holt-Winters), so a
  glitch does not bend the profiles; the clip scale is the running one-step error. A
  second reading beyond the clip on the same side is a real change, learned in full.
* Intervals: error variances are tracked directly at lags of 1, 2, 4 ... 64 readings
  (what a forecast made that many readings earlier would have missed) and
  interpolated in between; beyond, they grow toward the residual variance. The
  multiplier starts Gaussian and is calibrated online so ~90 % of one-step readings
  land inside, which corrects for heavy tails.

Learning rates are stated per visit of a knot or per time constant, not per reading,
so one configuration suits a 10-minute feed, an hourly one and an irregular one. The
sampling interval is estimated from the data (`IntervalEstimator`). Readings at or
before the last learned one are skipped: the forecaster only moves forward in time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from civitas_ray.streams.timebase import (
    US_PER_S,
    F64Array,
    I64Array,
    IntervalEstimator,
    calendar_for,
)

WEEK_KNOTS = 168
DAY_KNOTS = 24
# Lags (in readings) at which forecast error variances are tracked directly.
LAGS = np.asarray([1, 2, 4, 8, 16, 32, 64], dtype=np.int64)
_LOG_LAGS = np.log2(LAGS.astype(np.float64))
_HIST = int(LAGS[-1])
_LAG_LIST = LAGS.tolist()
_LAG_TOL = [max(0.5, 0.25 * lag) for lag in _LAG_LIST]  # accepted slack, in readings
_DAY_OF_KNOT = np.arange(WEEK_KNOTS) % DAY_KNOTS
_NAN = float("nan")


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """Tuning of a `SeasonalForecaster`; defaults suit city feeds from 1 min to 1 h."""

    tz: str = "UTC"
    alpha_week: float = 0.10      # share of a week knot's error learned per visit
    alpha_day: float = 0.20       # share of a day knot's error learned per visit
    level_tau_s: float = 86_400.0       # level memory
    stats_tau_s: float = 14 * 86_400.0  # memory of the residual autocorrelation
    var_tau_s: float = 2 * 86_400.0     # memory of the error variances
    huber_k: float = 3.0          # clip errors beyond k one-step sigmas
    coverage: float = 0.90        # target share of readings inside [lower, upper]
    min_value: float | None = None  # physical bounds, applied to mean and interval
    max_value: float | None = None
    default_interval_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForecastConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SeasonalForecaster:
    """Online forecaster of one series (a stream, or a zone aggregate).

    Checkpointed (`state_dict`): the profiles, level, residual and its statistics, the
    interval estimator and the configuration, a few kilobytes of JSON. Rebuilt: the
    calendar (shared per time zone). Without a checkpoint, replaying recent rows
    through `update` rebuilds it; about two weeks of data give a full week profile.
    """

    def __init__(self, config: ForecastConfig | None = None) -> None:
        self.config = config or ForecastConfig()
        self._cal = calendar_for(self.config.tz)
        self._interval = IntervalEstimator(self.config.default_interval_s)
        self._week = [0.0] * WEEK_KNOTS
        self._week_w = [0.0] * WEEK_KNOTS
        self._day = [0.0] * DAY_KNOTS
        self._level = 0.0
        self._resid = 0.0
        self._last_us: int | None = None
        self._n = 0
        self._outlier = 0  # side (+1/-1) of the last reading beyond the clip, else 0
        self._sxy = 0.0  # EW mean of r(t - dt) * r(t): lag-one covariance
        self._sxx = 0.0
        self._var1 = 0.0  # EW one-step error variance (of clipped errors)
        self._varr = 0.0  # EW variance of the residual around level + season
        self._zq = 1.6448536269514722  # calibrated interval multiplier, starts Gaussian
        self._lag_var = [_NAN] * LAGS.size  # EW error variance per lag
        self._hist_t: list[float] = []  # times (s) and residuals of the last readings
        self._hist_r: list[float] = []
        self._profile: F64Array | None = None  # week + day per week knot, built lazily
        self._table: tuple[F64Array, int] | None = None  # see _lag_table

    # ---- read-only views -------------------------------------------------------------
    @property
    def n(self) -> int:
        """Readings learned so far."""
        return self._n

    @property
    def last_ts_us(self) -> int | None:
        return self._last_us

    @property
    def interval_s(self) -> float | None:
        """Estimated usual sampling interval (seconds), None before two readings."""
        return self._interval.seconds

    @property
    def week_coverage(self) -> float:
        """Share of the 168 week knots learned from data (the rest ride on the day)."""
        return sum(w > 0.0 for w in self._week_w) / WEEK_KNOTS

    @property
    def rho(self) -> float:
        """Lag-one autocorrelation of the residual, clipped to [0, 0.995]."""
        if self._sxx <= 0.0:
            return 0.5
        return min(max(self._sxy / self._sxx, 0.0), 0.995)

    # ---- learning ----------------------------------------------------------------------
    def update(self, ts_us: I64Array, values: F64Array) -> F64Array:
        """Learn readings sorted by time; return the forecast each got before it arrived.

        The returned one-step-ahead forecasts (NaN for the first reading and for skipped
        ones) are what anomaly scoring compares the readings against. Readings at or
        before the last learned one are skipped; unsorted input is refused.
        """
        ts_us = np.asarray(ts_us, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        out = np.full(values.shape, _NAN)
        if ts_us.size == 0:
            return out
        if ts_us.size > 1 and not bool(np.all(ts_us[1:] > ts_us[:-1])):
            raise ValueError("readings must be sorted by time without repeats")
        if self._last_us is not None and ts_us[0] <= self._last_us:
            keep = ts_us > self._last_us
            idx = np.flatnonzero(keep)
            if idx.size == 0:
                return out
            out[idx] = self.update(ts_us[idx], values[idx])
            return out
        self._interval.update(ts_us, self._last_us)
        interval = self._interval.seconds or 3_600.0
        cfg = self.config
        step_h = min(interval, 3_600.0) / 3_600.0  # share of a knot visit per reading
        a_week = cfg.alpha_week * step_h
        a_day = cfg.alpha_day * step_h
        a_level = -math.expm1(-interval / cfg.level_tau_s)
        a_stat = -math.expm1(-interval / cfg.stats_tau_s)
        a_var = -math.expm1(-interval / cfg.var_tau_s)
        z_up = cfg.coverage * 0.05   # multiplicative steps whose balance point is the
        z_down = (1.0 - cfg.coverage) * 0.05  # target coverage
        huber_k = cfg.huber_k

        pos = self._cal.week_hours(ts_us)
        k0 = pos.astype(np.int64)
        frac = (pos - k0).tolist()
        knots = k0.tolist()
        times = (ts_us / US_PER_S).tolist()
        ys = values.tolist()
        preds = out.tolist()
        devs = out.tolist()  # deviation from level + season before learning
        resids = out.tolist()  # residual after learning

        week, week_w, day = self._week, self._week_w, self._day
        level, resid, n, outlier = self._level, self._resid, self._n, self._outlier
        sxy, sxx, var1, varr, zq = self._sxy, self._sxx, self._var1, self._varr, self._zq
        last_s = self._last_us / US_PER_S if self._last_us is not None else None
        log_rho = math.log(min(max(sxy / sxx, 1e-6), 0.995)) if sxx > 0.0 else math.log(0.5)

        for i in range(len(ys)):
            y = ys[i]
            t = times[i]
            a = knots[i]
            b = a + 1 if a < WEEK_KNOTS - 1 else 0
            f = frac[i]
            g = 1.0 - f
            ha = a % DAY_KNOTS
            hb = b % DAY_KNOTS
            season = g * (week[a] + day[ha]) + f * (week[b] + day[hb])
            base = level + season
            if last_s is None:
                level = y - season
                resid = 0.0
                resids[i] = 0.0
                n = 1
                last_s = t
                continue
            dt = (t - last_s) / interval
            phi = math.exp(log_rho * dt) if dt < 200.0 else 0.0
            pred = base + phi * resid
            preds[i] = pred
            err = y - pred
            if n > 24 and var1 > 0.0:
                sigma = math.sqrt(var1)
                clip = huber_k * sigma
                # one wild reading is clipped; a second one beyond the clip on the same
                # side is a real change and is learned in full
                if err > clip:
                    if outlier <= 0:
                        err = clip
                    outlier = 1
                elif err < -clip:
                    if outlier >= 0:
                        err = -clip
                    outlier = -1
                else:
                    outlier = 0
                zq *= (1.0 + z_up) if abs(y - pred) > zq * sigma else (1.0 - z_down)
                var1 += a_var * (min(err * err, clip * clip) - var1)
            else:
                var1 += (err * err - var1) / (n + 1)
            yc = pred + err
            d = yc - base
            devs[i] = d
            if 0.5 < dt < 1.5:
                sxy += a_stat * (resid * d - sxy)
                sxx += a_stat * (resid * resid - sxx)
                if sxx > 0.0:
                    log_rho = math.log(min(max(sxy / sxx, 1e-6), 0.995))
            varr += a_var * (d * d - varr) if n > 24 else (d * d - varr) / (n + 1)
            es = yc - level - season
            week[a] += a_week * g * es
            week[b] += a_week * f * es
            day[ha] += a_day * g * es
            day[hb] += a_day * f * es
            week_w[a] += g
            week_w[b] += f
            season = g * (week[a] + day[ha]) + f * (week[b] + day[hb])
            level += a_level * (yc - season - level)
            resid = yc - level - season
            resids[i] = resid
            last_s = t
            n += 1

        self._level, self._resid, self._n, self._outlier = level, resid, n, outlier
        self._sxy, self._sxx, self._var1, self._varr, self._zq = sxy, sxx, var1, varr, zq
        self._last_us = int(ts_us[-1])
        self._profile = None
        self._table = None
        self._learn_lag_errors(times, devs, resids, interval, a_var)
        return np.asarray(preds, dtype=np.float64)

    def _learn_lag_errors(self, times: list[float], devs: list[float], resids: list[float],
                          interval: float, a_var: float) -> None:
        """Track the error a forecast made L readings earlier would have had, per lag.

        Pairs whose time distance is not about L intervals (gaps, bursts) are left out.
        Each lag's variance moves by the EW weight of the pairs the batch brought, so a
        batch of k readings counts like k single readings.
        """
        hist_t = self._hist_t + times
        hist_r = self._hist_r + resids
        off = len(self._hist_t)
        m = len(times)
        rho = self.rho
        phis = [rho**lag for lag in _LAG_LIST]
        sums = [0.0] * len(_LAG_LIST)
        counts = [0] * len(_LAG_LIST)
        if m <= 8:  # plain Python beats numpy's call overhead on the usual small batch
            for j in range(m):
                d = devs[j]
                if d != d:  # NaN: the stream's first reading has no forecast
                    continue
                t, p = times[j], off + j
                for k, lag in enumerate(_LAG_LIST):
                    q = p - lag
                    if q < 0:
                        break
                    if abs((t - hist_t[q]) / interval - lag) <= _LAG_TOL[k]:
                        e = d - phis[k] * hist_r[q]
                        sums[k] += e * e
                        counts[k] += 1
        else:
            t_all, r_all = np.asarray(hist_t), np.asarray(hist_r)
            dev = np.asarray(devs)
            src = off + np.arange(m)[None, :] - LAGS[:, None]
            ok = (src >= 0) & ~np.isnan(dev)[None, :]
            src = np.maximum(src, 0)
            steps = (t_all[off:][None, :] - t_all[src]) / interval
            ok &= np.abs(steps - LAGS[:, None]) <= np.asarray(_LAG_TOL)[:, None]
            err = dev[None, :] - np.asarray(phis)[:, None] * r_all[src]
            sums = np.where(ok, err * err, 0.0).sum(axis=1).tolist()
            counts = ok.sum(axis=1).tolist()
        lag_var = self._lag_var
        for k, c in enumerate(counts):
            if c:
                mean = sums[k] / c
                old = lag_var[k]
                lag_var[k] = mean if old != old else old - math.expm1(
                    c * math.log1p(-a_var)) * (mean - old)
        self._hist_t = hist_t[-_HIST:]
        self._hist_r = hist_r[-_HIST:]

    # ---- forecasting -------------------------------------------------------------------
    def _season(self, ts_us: I64Array) -> F64Array:
        pos = self._cal.week_hours(ts_us)
        k0 = pos.astype(np.int64)
        f = pos - k0
        k1 = (k0 + 1) % WEEK_KNOTS
        prof = self._profile
        if prof is None:
            prof = np.asarray(self._week) + np.asarray(self._day)[_DAY_OF_KNOT]
            self._profile = prof
        return (1.0 - f) * prof[k0] + f * prof[k1]

    def predict(self, ts_us: I64Array) -> tuple[F64Array, F64Array, F64Array]:
        """Mean and ~`coverage` interval (lower, upper) at each instant.

        Before any reading the arrays are NaN. Instants before the last reading get the
        profile plus the full residual (no damping backwards).
        """
        ts_us = np.asarray(ts_us, dtype=np.int64)
        if self._last_us is None:
            nan = np.full(ts_us.shape, _NAN)
            return nan, nan.copy(), nan.copy()
        interval = self._interval.seconds or 3_600.0
        rho = self.rho
        steps = np.maximum(ts_us - self._last_us, 0) / (interval * US_PER_S)
        phi = np.power(rho, steps) if rho > 0.0 else (steps == 0).astype(np.float64)
        mean = self._level + self._season(ts_us) + phi * self._resid
        half = self._zq * np.sqrt(self._error_var(steps, phi))
        lower, upper = mean - half, mean + half
        lo, hi = self.config.min_value, self.config.max_value
        if lo is not None or hi is not None:
            mean = np.clip(mean, lo, hi)
            lower = np.clip(lower, lo, hi)
            upper = np.clip(upper, lo, hi)
        return mean, lower, upper

    def _lag_table(self) -> tuple[F64Array, int] | None:
        """Per-lag variances with holes interpolated, and the last lag with data."""
        if self._table is None:
            lag_var = np.asarray(self._lag_var)
            have = ~np.isnan(lag_var)
            if not have.any():
                return None
            filled = np.interp(LAGS, LAGS[have], lag_var[have])
            self._table = (np.where(have, lag_var, filled),
                           int(np.flatnonzero(have)[-1]))
        return self._table

    def _error_var(self, steps: F64Array, phi: F64Array) -> F64Array:
        """Error variance of a forecast `steps` readings ahead.

        From the tracked lags where they have data; past the last one (or before any),
        the AR(1) shape: growing from there toward the residual variance.
        """
        varr = max(self._varr, self._var1)
        rho = self.rho
        table = self._lag_table()
        if table is None:
            grow = np.clip(1.0 - phi * phi / max(rho * rho, 1e-12), 0.0, 1.0)
            return self._var1 + max(varr - self._var1, 0.0) * grow
        tab, last = table
        base_var, base_phi = float(tab[last]), rho ** float(LAGS[last])
        direct = np.interp(np.log2(np.maximum(steps, 1.0)), _LOG_LAGS[: last + 1],
                           tab[: last + 1])
        grow = np.clip(1.0 - phi * phi / max(base_phi * base_phi, 1e-12), 0.0, 1.0)
        tail = base_var + max(varr - base_var, 0.0) * grow
        return np.where(steps > float(LAGS[last]), tail, direct)

    def horizon_times(self, now_us: int, horizon_s: float = 3_600.0,
                      step_s: float | None = None, max_points: int = 60) -> I64Array:
        """Forecast instants after `now_us` up to `now_us + horizon_s`.

        They sit on the stream's own grid (last reading + k * step), the step being the
        sampling interval unless given, widened so at most `max_points` are returned.
        """
        if self._last_us is None or horizon_s <= 0:
            return np.zeros(0, dtype=np.int64)
        step = step_s or self._interval.seconds or horizon_s
        step = max(step, horizon_s / max_points, 1.0)
        step_us = round(step * US_PER_S)
        end_us = now_us + int(horizon_s * US_PER_S)
        k0 = max((now_us - self._last_us) // step_us + 1, 1)
        first = self._last_us + k0 * step_us
        if first > end_us:
            return np.asarray([end_us], dtype=np.int64)
        return np.arange(first, end_us + 1, step_us, dtype=np.int64)

    def horizon(self, now_us: int, horizon_s: float = 3_600.0, step_s: float | None = None,
                ) -> tuple[I64Array, F64Array, F64Array, F64Array]:
        """(ts, mean, lower, upper) covering the next `horizon_s` seconds after `now_us`."""
        ts = self.horizon_times(now_us, horizon_s, step_s)
        mean, lower, upper = self.predict(ts)
        return ts, mean, lower, upper

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state; `from_state_dict` restores an identical forecaster."""
        return {
            "format": 1,
            "config": self.config.to_dict(),
            "interval": self._interval.state_dict(),
            "week": list(self._week), "week_w": list(self._week_w),
            "day": list(self._day),
            "level": self._level, "resid": self._resid,
            "last_us": self._last_us, "n": self._n, "outlier": self._outlier,
            "sxy": self._sxy, "sxx": self._sxx,
            "var1": self._var1, "varr": self._varr, "zq": self._zq,
            "lag_var": [None if math.isnan(v) else v for v in self._lag_var],
            "hist_t": list(self._hist_t), "hist_r": list(self._hist_r),
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> SeasonalForecaster:
        fc = cls(ForecastConfig.from_dict(d["config"]))
        fc._interval = IntervalEstimator.from_state_dict(d["interval"])
        fc._week = [float(x) for x in d["week"]]
        fc._week_w = [float(x) for x in d["week_w"]]
        fc._day = [float(x) for x in d["day"]]
        fc._level, fc._resid = float(d["level"]), float(d["resid"])
        fc._last_us = None if d["last_us"] is None else int(d["last_us"])
        fc._n = int(d["n"])
        fc._outlier = int(d["outlier"])
        fc._sxy, fc._sxx = float(d["sxy"]), float(d["sxx"])
        fc._var1, fc._varr, fc._zq = float(d["var1"]), float(d["varr"]), float(d["zq"])
        fc._lag_var = [_NAN if v is None else float(v) for v in d["lag_var"]]
        fc._hist_t = [float(v) for v in d["hist_t"]]
        fc._hist_r = [float(v) for v in d["hist_r"]]
        return fc
