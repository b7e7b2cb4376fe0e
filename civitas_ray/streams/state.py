"""StreamState: the live state of one asset stream (asset + metric), Ray-free and DB-free.

A StreamShard host actor keeps thousands of these and feeds each the readings just
committed to PostgreSQL, in numpy batches. `apply` is idempotent: a reading whose
timestamp was already applied is ignored, so a replayed or duplicated batch changes
nothing; readings older than the newest go into the window in time order but do not
move `latest` (nor the forecaster, which only moves forward). A cumulative register
(`{"cumulative": true}`) is analysed as its consumption rate per hour: forecast,
anomaly score and rule values use the rate; the window and latest show the register,
and the snapshot's forecast is the register projected with the forecast rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from civitas_ray.alerts.engine import RuleInput
from civitas_ray.streams.anomaly import AnomalyConfig, AnomalyDetector
from civitas_ray.streams.forecast import ForecastConfig, SeasonalForecaster
from civitas_ray.streams.quality import (
    FlagEvent,
    MetricSpec,
    QualityConfig,
    QualityMonitor,
    QualityUpdate,
)
from civitas_ray.streams.timebase import US_PER_S, F64Array, I64Array, iso_one, iso_utc

_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_F64 = np.zeros(0, dtype=np.float64)


def _json_float(x: float | None) -> float | None:
    """Floats for JSON: NaN and infinities become null."""
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Per-stream tuning; `forecast.tz` is the tenant's time zone."""

    capacity: int = 1024
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)

    def __post_init__(self) -> None:
        if self.capacity < 2:
            raise ValueError("stream capacity must be at least 2")

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "forecast": self.forecast.to_dict(),
                "quality": self.quality.to_dict(), "anomaly": self.anomaly.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamConfig:
        return cls(capacity=int(d.get("capacity", 1024)),
                   forecast=ForecastConfig.from_dict(d.get("forecast", {})),
                   quality=QualityConfig.from_dict(d.get("quality", {})),
                   anomaly=AnomalyConfig.from_dict(d.get("anomaly", {})))


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one `apply` (or `check_gap`) changed, for zones, rules and the event bus.

    `ts_us`/`values` are the readings that moved the stream forward (late ones only
    enter the window). `value` is what rules compare: the reading, or for a cumulative
    register its consumption rate per hour; `previous` is the value before it.
    """

    asset_id: str
    metric: str
    as_of_us: int | None = None  # the stream's newest reading when this was made
    version: int = 0  # bumped by every change; (as_of_us, version) orders deltas
    applied: int = 0
    late: int = 0
    duplicates: int = 0
    ts_us: I64Array = field(default_factory=lambda: _EMPTY_I64)
    values: F64Array = field(default_factory=lambda: _EMPTY_F64)
    latest: tuple[int, float] | None = None
    value: float | None = None
    previous: tuple[int, float] | None = None
    anomaly_score: float | None = None
    is_anomaly: bool = False
    max_score: float | None = None
    anomalies: int = 0
    consumption: float | None = None
    raised: tuple[FlagEvent, ...] = ()
    cleared: tuple[FlagEvent, ...] = ()
    flags: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[str, str]:
        return self.asset_id, self.metric

    @property
    def changed(self) -> bool:
        """False for a batch that was entirely duplicates (nothing to forward)."""
        return bool(self.applied or self.raised or self.cleared)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready event for the bus (arrays left out: they are in PostgreSQL)."""
        return {
            "asset_id": self.asset_id, "metric": self.metric, "applied": self.applied,
            "late": self.late, "duplicates": self.duplicates,
            "latest": None if self.latest is None else {
                "ts": iso_one(self.latest[0]), "value": _json_float(self.latest[1])},
            "value": _json_float(self.value),
            "anomaly": {"score": _json_float(self.anomaly_score),
                        "is_anomaly": self.is_anomaly,
                        "max_score": _json_float(self.max_score), "count": self.anomalies},
            "consumption": _json_float(self.consumption),
            "flags_raised": [ev.to_dict() for ev in self.raised],
            "flags_cleared": [ev.to_dict() for ev in self.cleared],
            "flags": sorted(self.flags),
        }


class _Window:
    """Fixed-capacity buffer of the newest readings, kept sorted by time.

    Appends go into a buffer of twice the capacity, compacted when full, so the
    live part is always one contiguous slice (no wrap-around arithmetic on reads).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ts = np.zeros(2 * capacity, dtype=np.int64)
        self._val = np.zeros(2 * capacity, dtype=np.float64)
        self._lo = 0
        self._hi = 0
        self.floor_us: int | None = None  # newest evicted timestamp: older is unknown

    def __len__(self) -> int:
        return self._hi - self._lo

    @property
    def ts(self) -> I64Array:
        return self._ts[self._lo:self._hi]

    @property
    def values(self) -> F64Array:
        return self._val[self._lo:self._hi]

    def _evict_to(self, keep: int) -> None:
        drop = (self._hi - self._lo) - keep
        if drop > 0:
            self.floor_us = int(self._ts[self._lo + drop - 1])
            self._lo += drop

    def append(self, ts: I64Array, values: F64Array) -> None:
        """Add readings newer than every one held."""
        m = ts.size
        cap = self.capacity
        if m >= cap:
            if m > cap:
                self.floor_us = int(ts[m - cap - 1])
            elif len(self):
                self.floor_us = int(self._ts[self._hi - 1])
            self._ts[:cap], self._val[:cap] = ts[-cap:], values[-cap:]
            self._lo, self._hi = 0, cap
            return
        if self._hi + m > 2 * cap:
            self._evict_to(cap - m)
            n = self._hi - self._lo
            self._ts[:n] = self._ts[self._lo:self._hi]
            self._val[:n] = self._val[self._lo:self._hi]
            self._lo, self._hi = 0, n
        self._ts[self._hi:self._hi + m] = ts
        self._val[self._hi:self._hi + m] = values
        self._hi += m
        self._evict_to(cap)

    def merge(self, ts: I64Array, values: F64Array) -> None:
        """Add readings anywhere in time (late ones); keeps time order and capacity."""
        all_ts = np.concatenate([self.ts, ts])
        all_val = np.concatenate([self.values, values])
        order = np.argsort(all_ts, kind="stable")
        keep = order[-self.capacity:]
        if order.size > self.capacity:
            self.floor_us = max(self.floor_us or -(2**62), int(all_ts[order[-keep.size - 1]]))
        n = keep.size
        self._ts[:n], self._val[:n] = all_ts[keep], all_val[keep]
        self._lo, self._hi = 0, n

    def contains(self, ts: I64Array) -> npt.NDArray[np.bool_]:
        """Which of `ts` are held already."""
        live = self.ts
        if live.size == 0:
            return np.zeros(ts.size, dtype=bool)
        idx = np.minimum(np.searchsorted(live, ts), live.size - 1)
        return np.asarray(live[idx] == ts)


class StreamState:
    """Live state of one asset stream: window, forecaster, anomaly detector, quality flags.

    Checkpointed (`checkpoint`/`restore`, JSON-ready): the window, latest reading,
    forecaster, anomaly and quality state, counters and the last batch sequence number.
    Rebuilt after a restart without a checkpoint: `rebuild` replays recent rows read back
    from PostgreSQL (two weeks or more give the forecaster its week profile); with one,
    `rebuild` restores it and applies the rows newer than it (duplicates are ignored).
    """

    def __init__(self, asset_id: str, metric: str, *, spec: MetricSpec | None = None,
                 config: StreamConfig | None = None) -> None:
        self.asset_id = str(asset_id)
        self.metric = metric
        self.spec = spec or MetricSpec()
        self.config = config or StreamConfig()
        fcfg = self.config.forecast
        if self.spec.cumulative:  # the rate of a register is never negative
            fcfg = _with_bounds(fcfg, 0.0 if fcfg.min_value is None else fcfg.min_value,
                                fcfg.max_value)
        else:
            fcfg = _with_bounds(fcfg, fcfg.min_value if fcfg.min_value is not None
                                else self.spec.min, fcfg.max_value if fcfg.max_value
                                is not None else self.spec.max)
        self.forecaster = SeasonalForecaster(fcfg)
        self.anomaly = AnomalyDetector(self.config.anomaly)
        self.quality = QualityMonitor(self.spec, self.config.quality)
        self._window = _Window(self.config.capacity)
        self.latest: tuple[int, float] | None = None  # newest reading (register value)
        self.value: float | None = None  # newest analysed value (rate for registers)
        self._value_ts: int | None = None
        self.version = 0  # change counter, see StreamDelta.version
        self.previous: tuple[int, float] | None = None  # analysed value before `value`
        self.score: float | None = None
        self.is_anomaly = False
        self.last_seq: int | None = None
        self.counts = {"applied": 0, "late": 0, "duplicates": 0, "invalid": 0,
                       "too_old": 0, "anomalies": 0}
        self.consumption_total = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return self.asset_id, self.metric

    @property
    def flags(self) -> frozenset[str]:
        return frozenset(str(f) for f in self.quality.active)

    # ---- applying readings -------------------------------------------------------------
    def apply(self, ts_us: I64Array, values: F64Array, *, seq: int | None = None
              ) -> StreamDelta:
        """Apply a batch of readings (any order); returns what changed.

        `seq`, when given, is the batch's sequence number: a batch at or below the last
        one applied is skipped whole. Non-finite values are dropped (counted invalid).
        """
        if seq is not None:
            if self.last_seq is not None and seq <= self.last_seq:
                return self._delta(duplicates=int(np.size(ts_us)))
            self.last_seq = seq
        ts = np.asarray(ts_us, dtype=np.int64).ravel()
        vals = np.asarray(values, dtype=np.float64).ravel()
        if ts.shape != vals.shape:
            raise ValueError(f"{ts.size} timestamps for {vals.size} values")
        finite = np.isfinite(vals)
        if not finite.all():
            self.counts["invalid"] += int((~finite).sum())
            ts, vals = ts[finite], vals[finite]
        if ts.size > 1 and not bool(np.all(ts[1:] > ts[:-1])):
            order = np.argsort(ts, kind="stable")
            ts, vals = ts[order], vals[order]
            first = np.concatenate(([True], ts[1:] != ts[:-1]))  # the first of equals wins
            dups_in_batch = int((~first).sum())
            ts, vals = ts[first], vals[first]
        else:
            dups_in_batch = 0
        newest = self.latest[0] if self.latest is not None else None
        if newest is not None and ts.size and ts[0] <= newest:
            split = int(np.searchsorted(ts, newest, side="right"))
            old_ts, old_vals = ts[:split], vals[:split]
            ts, vals = ts[split:], vals[split:]
        else:
            old_ts, old_vals = _EMPTY_I64, _EMPTY_F64
        late, dups = self._apply_late(old_ts, old_vals)
        dups += dups_in_batch
        self.counts["duplicates"] += dups
        if ts.size == 0:
            return self._delta(late=late, duplicates=dups)
        return self._apply_new(ts, vals, late=late, duplicates=dups)

    def _apply_late(self, ts: I64Array, vals: F64Array) -> tuple[int, int]:
        """Put readings older than `latest` into the window; returns (late, duplicates)."""
        if ts.size == 0:
            return 0, 0
        win = self._window
        known = win.contains(ts)
        floor = win.floor_us
        too_old = (ts <= floor) & ~known if floor is not None else np.zeros(ts.size, bool)
        fresh = ~known & ~too_old
        self.counts["too_old"] += int(too_old.sum())
        late = int(fresh.sum())
        if late:
            win.merge(ts[fresh], vals[fresh])
            self.counts["late"] += late
            self.counts["applied"] += late
        return late, int(known.sum())

    def _apply_new(self, ts: I64Array, vals: F64Array, *, late: int, duplicates: int
                   ) -> StreamDelta:
        prev_latest = self.latest
        interval = self.forecaster.interval_s
        q = self.quality.update(ts, vals, interval_s=interval)
        if self.spec.cumulative:
            an_ts, an_vals = self._rates(ts, q.consumption, prev_latest)
        else:
            an_ts, an_vals = ts, vals
        preds = self.forecaster.update(an_ts, an_vals)
        scores = self.anomaly.update(an_vals - preds)
        self._window.append(ts, vals)
        self.counts["applied"] += int(ts.size)
        n_anom = int(scores.is_anomaly.sum())
        self.counts["anomalies"] += n_anom
        self.latest = (int(ts[-1]), float(vals[-1]))
        if an_ts.size:
            if an_ts.size >= 2:
                self.previous = (int(an_ts[-2]), float(an_vals[-2]))
            elif self.value is not None and self._value_ts is not None:
                self.previous = (self._value_ts, self.value)
            self.value = float(an_vals[-1])
            self._value_ts = int(an_ts[-1])
            last = float(scores.score[-1])
            self.score = None if math.isnan(last) else last
            self.is_anomaly = bool(scores.is_anomaly[-1])
        finite = scores.score[~np.isnan(scores.score)]
        cons = None
        if q.consumption is not None:
            cons = float(q.consumption.sum())
            self.consumption_total += cons
        return self._delta(
            applied=int(ts.size) + late, late=late, duplicates=duplicates, ts=ts, vals=vals,
            moved=True, max_score=float(finite.max()) if finite.size else None,
            anomalies=n_anom, consumption=cons, q=q)

    def _rates(self, ts: I64Array, consumption: F64Array | None,
               prev: tuple[int, float] | None) -> tuple[I64Array, F64Array]:
        """Consumption rate per hour of a register, at each reading after the first."""
        assert consumption is not None
        if prev is not None:
            before = np.concatenate(([prev[0]], ts[:-1]))
            keep = np.ones(ts.size, dtype=bool)
        else:
            before = np.concatenate(([ts[0]], ts[:-1]))
            keep = np.arange(ts.size) > 0
        hours = (ts - before) / (3_600 * US_PER_S)
        keep &= hours > 0
        return ts[keep], consumption[keep] / hours[keep]

    def check_gap(self, now_us: int) -> StreamDelta:
        """Raise `gap` if the stream has been silent too long (call it periodically)."""
        q = self.quality.check_gap(now_us, interval_s=self.forecaster.interval_s)
        return self._delta(q=q)

    def _delta(self, *, applied: int = 0, late: int = 0, duplicates: int = 0,
               ts: I64Array = _EMPTY_I64, vals: F64Array = _EMPTY_F64, moved: bool = False,
               max_score: float | None = None, anomalies: int = 0,
               consumption: float | None = None, q: QualityUpdate | None = None
               ) -> StreamDelta:
        if applied or (q is not None and (q.raised or q.cleared)):
            self.version += 1
        return StreamDelta(
            asset_id=self.asset_id, metric=self.metric,
            as_of_us=None if self.latest is None else self.latest[0], version=self.version,
            applied=applied, late=late,
            duplicates=duplicates, ts_us=ts, values=vals,
            latest=self.latest if moved else None, value=self.value,
            previous=self.previous, anomaly_score=self.score, is_anomaly=self.is_anomaly,
            max_score=max_score, anomalies=anomalies, consumption=consumption,
            raised=tuple(q.raised) if q else (), cleared=tuple(q.cleared) if q else (),
            flags=self.flags)

    # ---- reading the state -------------------------------------------------------------
    def horizon(self, now_us: int, horizon_s: float = 3_600.0, step_s: float | None = None
                ) -> tuple[I64Array, F64Array, F64Array, F64Array]:
        """(ts, mean, lower, upper) of the analysed value (rate for registers)."""
        return self.forecaster.horizon(now_us, horizon_s, step_s)

    def rule_input(self, now_us: int, *, forecast_s: float = 0.0) -> RuleInput:
        """What alert rules on this stream evaluate; the forecast only when asked."""
        f_ts: I64Array | None = None
        f_mean: F64Array | None = None
        if forecast_s > 0:
            f_ts, f_mean, _, _ = self.horizon(now_us, forecast_s)
        return RuleInput(
            ts_us=self._value_ts if self._value_ts is not None else now_us,
            value=self.value,
            prev_ts_us=None if self.previous is None else self.previous[0],
            prev_value=None if self.previous is None else self.previous[1],
            anomaly_score=self.score, flags=self.flags,
            forecast_ts_us=f_ts, forecast_mean=f_mean)

    def window(self) -> tuple[I64Array, F64Array]:
        """The readings held, oldest first (views: copy before keeping them)."""
        return self._window.ts, self._window.values

    def snapshot(self, now_us: int, window: int = 100, horizon_s: float = 3_600.0
                 ) -> dict[str, Any]:
        """The public JSON shape of a stream's live state."""
        w_ts, w_val = self._window.ts[-window:], self._window.values[-window:]
        f_ts, mean, lower, upper = self.horizon(now_us, horizon_s)
        if self.spec.cumulative and self.latest is not None and f_ts.size:
            mean, lower, upper = self._project_register(f_ts, mean, lower, upper)
        stats = self._stats()
        return {
            "latest": None if self.latest is None else {
                "ts": iso_one(self.latest[0]), "value": _json_float(self.latest[1])},
            "window": [{"ts": t, "value": _json_float(v)}
                       for t, v in zip(iso_utc(w_ts), w_val.tolist(), strict=True)],
            "forecast": [{"ts": t, "value": _json_float(m), "lower": _json_float(lo),
                          "upper": _json_float(hi)}
                         for t, m, lo, hi in zip(iso_utc(f_ts), mean.tolist(), lower.tolist(),
                                                 upper.tolist(), strict=True)],
            "flags": [ev.to_dict() for ev in self.quality.active.values()],
            "anomaly": {"score": _json_float(self.score), "is_anomaly": self.is_anomaly},
            "stats": stats,
        }

    def _project_register(self, f_ts: I64Array, mean: F64Array, lower: F64Array,
                          upper: F64Array) -> tuple[F64Array, F64Array, F64Array]:
        """Register values ahead: the latest reading plus the forecast rate integrated."""
        assert self.latest is not None
        t0, reg = self.latest
        hours = np.diff(f_ts, prepend=t0) / (3_600 * US_PER_S)
        hours = np.maximum(hours, 0.0)
        return (reg + np.cumsum(np.maximum(mean, 0.0) * hours),
                reg + np.cumsum(np.maximum(lower, 0.0) * hours),
                reg + np.cumsum(np.maximum(upper, 0.0) * hours))

    def _stats(self) -> dict[str, Any]:
        vals = self._window.values
        out: dict[str, Any] = dict(self.counts)
        out.update({
            "count": len(self._window),
            "mean": _json_float(float(vals.mean())) if vals.size else None,
            "std": _json_float(float(vals.std())) if vals.size else None,
            "min": _json_float(float(vals.min())) if vals.size else None,
            "max": _json_float(float(vals.max())) if vals.size else None,
            "interval_s": _json_float(self.forecaster.interval_s),
            "forecast_readings": self.forecaster.n,
            "forecast_week_coverage": round(self.forecaster.week_coverage, 3),
            "anomaly_warmed_up": self.anomaly.warmed_up,
            "unit": self.spec.unit,
        })
        if self.spec.cumulative:
            out["rate_per_hour"] = _json_float(self.value)
            out["consumption_total"] = _json_float(self.consumption_total)
            out["rollovers"] = self.quality.rollovers
        return out

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """JSON-ready state; `restore` gives back an equivalent StreamState."""
        return {
            "format": 1, "asset_id": self.asset_id, "metric": self.metric,
            "spec": self.spec.to_dict(), "config": self.config.to_dict(),
            "window_ts": self._window.ts.tolist(), "window_values": self._window.values.tolist(),
            "window_floor_us": self._window.floor_us,
            "latest": None if self.latest is None else list(self.latest),
            "value": self.value, "value_ts": self._value_ts, "version": self.version,
            "previous": None if self.previous is None else list(self.previous),
            "score": self.score, "is_anomaly": self.is_anomaly, "last_seq": self.last_seq,
            "counts": dict(self.counts), "consumption_total": self.consumption_total,
            "forecaster": self.forecaster.state_dict(),
            "anomaly": self.anomaly.state_dict(),
            "quality": self.quality.state_dict(),
        }

    @classmethod
    def restore(cls, d: Mapping[str, Any]) -> StreamState:
        st = cls(d["asset_id"], d["metric"], spec=MetricSpec.from_dict(d["spec"]),
                 config=StreamConfig.from_dict(d["config"]))
        ts = np.asarray(d["window_ts"], dtype=np.int64)
        if ts.size:
            st._window.append(ts, np.asarray(d["window_values"], dtype=np.float64))
        st._window.floor_us = d["window_floor_us"]
        st.latest = None if d["latest"] is None else (int(d["latest"][0]),
                                                      float(d["latest"][1]))
        st.value = d["value"]
        st._value_ts = d["value_ts"]
        st.version = int(d["version"])
        st.previous = None if d["previous"] is None else (int(d["previous"][0]),
                                                          float(d["previous"][1]))
        st.score, st.is_anomaly, st.last_seq = d["score"], bool(d["is_anomaly"]), d["last_seq"]
        st.counts = {k: int(v) for k, v in d["counts"].items()}
        st.consumption_total = float(d["consumption_total"])
        st.forecaster = SeasonalForecaster.from_state_dict(d["forecaster"])
        st.anomaly = AnomalyDetector.from_state_dict(d["anomaly"])
        st.quality = QualityMonitor.from_state_dict(d["quality"])
        return st

    @classmethod
    def rebuild(cls, ts_us: I64Array, values: F64Array, *, asset_id: str, metric: str,
                spec: MetricSpec | None = None, config: StreamConfig | None = None,
                checkpoint: Mapping[str, Any] | None = None) -> StreamState:
        """State after a restart: the checkpoint (if any) plus rows from PostgreSQL."""
        st = (cls.restore(checkpoint) if checkpoint is not None
              else cls(asset_id, metric, spec=spec, config=config))
        st.apply(np.asarray(ts_us, dtype=np.int64), np.asarray(values, dtype=np.float64))
        return st


def _with_bounds(cfg: ForecastConfig, lo: float | None, hi: float | None) -> ForecastConfig:
    d = cfg.to_dict()
    d["min_value"], d["max_value"] = lo, hi
    return ForecastConfig.from_dict(d)
