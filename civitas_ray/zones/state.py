"""ZoneState: the live state of one zone (tenant + zone), Ray-free and DB-free.

A ZoneShard host actor (or a dedicated actor) keeps one per zone and feeds it the
StreamDeltas of the zone's streams in batches. The zone keeps the latest value of
every (asset, metric) in it, rolling aggregates of the readings of the last N minutes
per metric, KPIs (assets reporting and stale, anomalies and flags now), and its own
online forecaster per metric on the zone aggregate (sum or mean of the members'
latest values, sampled on a fixed grid): it needs nothing from the stream hosts but
their deltas and keeps working as members come and go.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from civitas_ray.alerts.engine import RuleInput
from civitas_ray.streams.forecast import ForecastConfig, SeasonalForecaster
from civitas_ray.streams.state import StreamDelta
from civitas_ray.streams.timebase import US_PER_S, F64Array, I64Array, iso_one, iso_utc

ForecastAggregate = Literal["sum", "mean"]
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_F64 = np.zeros(0, dtype=np.float64)
_NEVER = -(2**62)


def _jf(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """Rolling window, staleness and forecast settings of a zone."""

    window_s: float = 900.0  # rolling aggregates cover the last 15 minutes
    stale_after_s: float = 900.0  # a member is stale past this, or 3 of its intervals
    bucket_s: float = 600.0  # the zone aggregate is sampled for its forecaster this often
    forecast_aggregate: ForecastAggregate = "sum"
    forecast_aggregates: dict[str, ForecastAggregate] = field(default_factory=dict)
    tz: str = "UTC"
    learned_max_age_s: float = 3 * 3600.0  # a trained model's forecast is used this long

    def aggregate_for(self, metric: str) -> ForecastAggregate:
        return self.forecast_aggregates.get(metric, self.forecast_aggregate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ZoneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(slots=True)
class _Member:
    """The latest known state of one (asset, metric) in the zone."""

    ts_us: int | None = None
    value: float | None = None
    step_s: float | None = None  # its last sampling step, for staleness
    score: float | None = None
    is_anomaly: bool = False
    flags: frozenset[str] = frozenset()
    as_of: tuple[int, int] = (_NEVER, -1)  # (stream time, version) of the last delta

    def state(self) -> dict[str, Any]:
        return {"ts_us": self.ts_us, "value": self.value, "step_s": self.step_s,
                "score": self.score, "is_anomaly": self.is_anomaly,
                "flags": sorted(self.flags), "as_of": list(self.as_of)}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _Member:
        return cls(d["ts_us"], d["value"], d["step_s"], d["score"], bool(d["is_anomaly"]),
                   frozenset(d["flags"]), (int(d["as_of"][0]), int(d["as_of"][1])))


@dataclass(slots=True)
class _Rolling:
    """Readings of one metric over the last `window_s` (all members together)."""

    ts: I64Array = field(default_factory=lambda: _EMPTY_I64)
    values: F64Array = field(default_factory=lambda: _EMPTY_F64)

    def add(self, ts: I64Array, values: F64Array, horizon_us: int) -> None:
        all_ts = np.concatenate([self.ts, ts])
        all_val = np.concatenate([self.values, values])
        keep = all_ts > horizon_us
        self.ts, self.values = all_ts[keep], all_val[keep]

    def stats(self, since_us: int) -> dict[str, Any]:
        sel = self.values[self.ts > since_us]
        if sel.size == 0:
            return {"count": 0, "mean": None, "min": None, "max": None, "sum": 0.0}
        return {"count": int(sel.size), "mean": _jf(float(sel.mean())),
                "min": _jf(float(sel.min())), "max": _jf(float(sel.max())),
                "sum": _jf(float(sel.sum()))}


@dataclass(frozen=True, slots=True)
class _Incoming:
    """A member delta in one shape, whichever way it came."""

    asset_id: str
    metric: str
    order: tuple[int, int]  # (stream time, version): newer deltas compare greater
    ts: I64Array
    values: F64Array
    score: float | None
    is_anomaly: bool
    flags: frozenset[str]
    raised: tuple[str, ...]
    cleared: tuple[str, ...]

    @classmethod
    def of(cls, d: StreamDelta | Mapping[str, Any]) -> _Incoming:
        if isinstance(d, StreamDelta):
            if d.consumption is not None or d.ts_us.size == 0:
                # a register (its analysed value is the rate) or no new reading
                ts = _EMPTY_I64 if d.latest is None or d.value is None else np.asarray(
                    [d.latest[0]], dtype=np.int64)
                vals = _EMPTY_F64 if ts.size == 0 else np.asarray([d.value], dtype=np.float64)
            else:
                ts, vals = d.ts_us, d.values
            return cls(d.asset_id, d.metric, (_NEVER if d.as_of_us is None else d.as_of_us,
                                              d.version), ts, vals, d.anomaly_score,
                       d.is_anomaly, d.flags, tuple(str(e.flag) for e in d.raised),
                       tuple(str(e.flag) for e in d.cleared))
        t = d.get("ts_us")
        value = d.get("rate", d.get("value"))
        if value is None:
            value = d.get("value")
        has = t is not None and value is not None
        return cls(
            str(d["asset_id"]), str(d["metric"]),
            (_NEVER if t is None else int(t), int(d.get("version", 0))),
            np.asarray([t] if has else [], dtype=np.int64),
            np.asarray([value] if has else [], dtype=np.float64),
            d.get("anomaly_score"), bool(d.get("is_anomaly", False)),
            frozenset(d.get("flags") or ()), tuple(d.get("flags_raised") or ()),
            tuple(d.get("flags_cleared") or ()))


@dataclass(frozen=True, slots=True)
class ZoneDelta:
    """What one `apply` changed: members updated, readings taken, flag and alarm moves."""

    tenant_id: str
    zone_id: str
    members_updated: int = 0
    readings: int = 0
    metrics: frozenset[str] = frozenset()
    flags_raised: tuple[tuple[str, str, str], ...] = ()  # (asset_id, metric, flag)
    flags_cleared: tuple[tuple[str, str, str], ...] = ()
    anomalies: tuple[tuple[str, str], ...] = ()  # members whose latest reading is anomalous

    @property
    def changed(self) -> bool:
        return bool(self.members_updated or self.readings)


@dataclass(slots=True)
class LearnedForecast:
    """A zone-level forecast of a trained model (the Forecaster), kept until the next one.

    Zone rules and snapshots use it instead of the online forecaster where it covers
    the asked horizon; it is not checkpointed (the host asks for a new one).
    """

    model: str
    version: int
    version_id: str
    made_at_us: int
    ts_us: I64Array
    mean: F64Array
    lower: F64Array
    upper: F64Array
    served_by: str = "in-process"

    def window(self, now_us: int, horizon_s: float, step_us: int
               ) -> tuple[I64Array, F64Array, F64Array, F64Array] | None:
        """Points from the current step to now + horizon, or None when it does not reach."""
        end = now_us + int(horizon_s * US_PER_S)
        if not self.ts_us.size or self.ts_us[-1] < min(end, now_us + step_us):
            return None
        sel = (self.ts_us > now_us - step_us) & (self.ts_us <= end)
        if not sel.any():
            return None
        return self.ts_us[sel], self.mean[sel], self.lower[sel], self.upper[sel]


class ZoneState:
    """Live state of one zone.

    Checkpointed (`checkpoint`/`restore`, JSON-ready): members' latest values and flags,
    the rolling windows, the zone forecasters and the bucket clock. Rebuilt without a
    checkpoint: members from each stream's latest row (feed StreamState.rebuild's
    deltas, or `apply` synthetic ones), the forecasters from aggregate history
    (`seed_forecast` with a time_bucket query), or they learn again from live data.
    """

    def __init__(self, tenant_id: str, zone_id: str, *, config: ZoneConfig | None = None
                 ) -> None:
        self.tenant_id = str(tenant_id)
        self.zone_id = str(zone_id)
        self.config = config or ZoneConfig()
        self.members: dict[tuple[str, str], _Member] = {}
        self._rolling: dict[str, _Rolling] = {}
        self._forecasters: dict[str, SeasonalForecaster] = {}
        self._bucket: dict[str, int] = {}  # last bucket index sampled per metric
        self.newest_us: int | None = None
        self.learned: dict[str, LearnedForecast] = {}

    # ---- applying deltas ---------------------------------------------------------------
    def apply(self, deltas: Iterable[StreamDelta | Mapping[str, Any]]) -> ZoneDelta:
        """Take the deltas of member streams; applying one twice changes nothing.

        A delta is a StreamDelta (preferred: it carries its readings and a version) or
        the plain mapping a stream host sends (`asset_id`, `metric`, `ts_us`, `value`,
        `rate`, `anomaly_score`, `is_anomaly`, `flags`, optional `version`). A delta
        older than the member's last one (by stream time, then version) is ignored, and
        readings at or before the member's latest are not counted again.
        """
        updated = 0
        readings = 0
        metrics: set[str] = set()
        raised: list[tuple[str, str, str]] = []
        cleared: list[tuple[str, str, str]] = []
        anomalies: list[tuple[str, str]] = []
        for raw in deltas:
            d = _Incoming.of(raw)
            key = (d.asset_id, d.metric)
            mem = self.members.get(key)
            if mem is None:
                mem = self.members[key] = _Member()
            if d.order < mem.as_of:
                continue
            before = mem.state()
            mem.as_of = d.order
            ts, vals = d.ts, d.values
            if mem.ts_us is not None and ts.size and ts[0] <= mem.ts_us:
                new = ts > mem.ts_us
                ts, vals = ts[new], vals[new]
            if ts.size:
                if ts.size >= 2:
                    mem.step_s = float(ts[-1] - ts[-2]) / US_PER_S
                elif mem.ts_us is not None:
                    mem.step_s = float(ts[-1] - mem.ts_us) / US_PER_S
                mem.ts_us, mem.value = int(ts[-1]), float(vals[-1])
                self._take(d.metric, ts, vals)
                readings += int(ts.size)
                metrics.add(d.metric)
            mem.score, mem.is_anomaly, mem.flags = d.score, d.is_anomaly, d.flags
            if mem.state() == before:
                continue
            updated += 1
            raised += [(d.asset_id, d.metric, f) for f in d.raised]
            cleared += [(d.asset_id, d.metric, f) for f in d.cleared]
            if d.is_anomaly:
                anomalies.append(key)
        for metric in metrics:
            self._sample(metric)
        return ZoneDelta(self.tenant_id, self.zone_id, updated, readings, frozenset(metrics),
                         tuple(raised), tuple(cleared), tuple(anomalies))

    def _take(self, metric: str, ts: I64Array, vals: F64Array) -> None:
        """Add member readings to the metric's rolling window."""
        newest = int(ts.max()) if self.newest_us is None else max(self.newest_us,
                                                                 int(ts.max()))
        self.newest_us = newest
        roll = self._rolling.setdefault(metric, _Rolling())
        roll.add(ts, vals, newest - int(self.config.window_s * US_PER_S))

    def remove_asset(self, asset_id: str) -> int:
        """Forget an asset that left the zone; returns how many of its streams went."""
        gone = [k for k in self.members if k[0] == str(asset_id)]
        for k in gone:
            del self.members[k]
        return len(gone)

    # ---- zone forecasts ----------------------------------------------------------------
    def _forecaster(self, metric: str) -> SeasonalForecaster:
        fc = self._forecasters.get(metric)
        if fc is None:
            fc = SeasonalForecaster(ForecastConfig(tz=self.config.tz,
                                                   default_interval_s=self.config.bucket_s))
            self._forecasters[metric] = fc
        return fc

    def _sample(self, metric: str) -> None:
        """Feed the zone forecaster once per bucket boundary the data time has crossed."""
        if self.newest_us is None:
            return
        bucket_us = int(self.config.bucket_s * US_PER_S)
        b = self.newest_us // bucket_us
        last = self._bucket.get(metric)
        if last is not None and b <= last:
            return
        if last is None:  # the first bucket is partial: start the clock, sample from next
            self._bucket[metric] = int(b)
            return
        self._bucket[metric] = int(b)
        at = int(b * bucket_us)
        agg = self._aggregates(metric, at)
        if agg["count"]:
            name = "avg" if self.config.aggregate_for(metric) == "mean" else "sum"
            self._forecaster(metric).update(np.asarray([at], dtype=np.int64),
                                            np.asarray([agg[name]], dtype=np.float64))

    def seed_forecast(self, metric: str, ts_us: I64Array, values: F64Array) -> None:
        """Warm a zone forecaster from aggregate history (e.g. a time_bucket query)."""
        self._forecaster(metric).update(np.asarray(ts_us, dtype=np.int64),
                                        np.asarray(values, dtype=np.float64))

    def set_learned(self, metric: str, forecast: LearnedForecast | None) -> None:
        if forecast is None:
            self.learned.pop(metric, None)
        else:
            self.learned[metric] = forecast

    def forecast_source(self, metric: str, now_us: int, horizon_s: float) -> str:
        lf = self._learned_window(metric, now_us, horizon_s)
        return f"model:{lf[0].model}:v{lf[0].version}" if lf else "online"

    def _learned_window(self, metric: str, now_us: int, horizon_s: float
                        ) -> tuple[LearnedForecast, tuple[I64Array, F64Array, F64Array,
                                                          F64Array]] | None:
        lf = self.learned.get(metric)
        if lf is None or horizon_s <= 0:
            return None
        if now_us - lf.made_at_us > int(self.config.learned_max_age_s * US_PER_S):
            return None
        step_us = int(np.median(np.diff(lf.ts_us))) if lf.ts_us.size > 1 else 3_600_000_000
        win = lf.window(now_us, horizon_s, step_us)
        return (lf, win) if win is not None else None

    def forecast(self, metric: str, now_us: int, horizon_s: float = 3_600.0
                 ) -> tuple[I64Array, F64Array, F64Array, F64Array]:
        """(ts, mean, lower, upper) of the zone aggregate of `metric` (sum or mean): the
        trained model's forecast where one is fresh and reaches the horizon, else the
        online forecaster's."""
        learned = self._learned_window(metric, now_us, horizon_s)
        if learned is not None:
            return learned[1]
        fc = self._forecasters.get(metric)
        if fc is None:
            return _EMPTY_I64, _EMPTY_F64, _EMPTY_F64, _EMPTY_F64
        return fc.horizon(now_us, horizon_s)

    # ---- reading the state -------------------------------------------------------------
    def _fresh(self, mem: _Member, now_us: int) -> bool:
        if mem.ts_us is None:
            return False
        limit = max(self.config.stale_after_s, 3.0 * (mem.step_s or 0.0))
        return (now_us - mem.ts_us) <= limit * US_PER_S

    def _aggregates(self, metric: str, now_us: int) -> dict[str, Any]:
        """avg/sum/min/max/count of the fresh latest values of `metric`."""
        vals = [m.value for (_, met), m in self.members.items()
                if met == metric and m.value is not None and self._fresh(m, now_us)]
        if not vals:
            return {"count": 0, "avg": None, "sum": 0.0, "min": None, "max": None}
        return {"count": len(vals), "avg": sum(vals) / len(vals), "sum": float(sum(vals)),
                "min": min(vals), "max": max(vals)}

    def kpis(self, now_us: int) -> dict[str, Any]:
        """Assets reporting and stale, anomalies and flags now."""
        fresh_assets: set[str] = set()
        assets: set[str] = set()
        anomalies = 0
        flags: dict[str, int] = {}
        for (asset, _), m in self.members.items():
            assets.add(asset)
            if self._fresh(m, now_us):
                fresh_assets.add(asset)
            anomalies += int(m.is_anomaly)
            for f in m.flags:
                flags[f] = flags.get(f, 0) + 1
        return {"assets": len(assets), "assets_reporting": len(fresh_assets),
                "assets_stale": len(assets - fresh_assets), "anomalies_now": anomalies,
                "flags_now": sum(flags.values()), "flags_by_type": dict(sorted(flags.items()))}

    def metrics(self) -> list[str]:
        return sorted({met for _, met in self.members})

    def rule_input(self, metric: str, now_us: int, *, forecast_s: float = 0.0) -> RuleInput:
        """What zone rules on `metric` evaluate: aggregates of the fresh latest values,
        the highest member anomaly score, every member flag, and the zone forecast."""
        agg = self._aggregates(metric, now_us)
        members = [m for (_, met), m in self.members.items() if met == metric]
        scores = [m.score for m in members if m.score is not None]
        flags = frozenset(f for m in members for f in m.flags)
        f_ts: I64Array | None = None
        f_mean: F64Array | None = None
        if forecast_s > 0:
            f_ts, f_mean, _, _ = self.forecast(metric, now_us, forecast_s)
        newest = max((m.ts_us for m in members if m.ts_us is not None), default=now_us)
        return RuleInput(
            ts_us=newest,
            aggregates={k: float(v) for k, v in agg.items() if v is not None},
            anomaly_score=max(scores) if scores else None, flags=flags,
            forecast_ts_us=f_ts, forecast_mean=f_mean)

    def snapshot(self, now_us: int, horizon_s: float = 3_600.0, *,
                 members: bool = True) -> dict[str, Any]:
        """JSON-ready live state of the zone (`members=False`: without the member list)."""
        since = now_us - int(self.config.window_s * US_PER_S)
        metrics: dict[str, Any] = {}
        for metric in self.metrics():
            agg = self._aggregates(metric, now_us)
            roll = self._rolling.get(metric, _Rolling())
            f_ts, mean, lower, upper = self.forecast(metric, now_us, horizon_s)
            metrics[metric] = {
                "latest": {k: _jf(v) if k != "count" else v for k, v in agg.items()},
                "latest_mean": _jf(agg["avg"]),
                "window": {"seconds": self.config.window_s, **roll.stats(since)},
                "forecast_aggregate": self.config.aggregate_for(metric),
                "forecast_source": self.forecast_source(metric, now_us, horizon_s),
                "forecast": [{"ts": t, "value": _jf(m), "lower": _jf(lo), "upper": _jf(hi)}
                             for t, m, lo, hi in zip(iso_utc(f_ts), mean.tolist(),
                                                     lower.tolist(), upper.tolist(),
                                                     strict=True)],
            }
        out: dict[str, Any] = {"tenant_id": self.tenant_id, "zone_id": self.zone_id,
               "as_of": iso_one(self.newest_us), "kpis": self.kpis(now_us),
               "metrics": metrics}
        if members:
            out["members"] = [{
                "asset_id": a, "metric": met, "ts": iso_one(m.ts_us), "value": _jf(m.value),
                "stale": not self._fresh(m, now_us), "score": _jf(m.score),
                "is_anomaly": m.is_anomaly, "flags": sorted(m.flags)}
                for (a, met), m in sorted(self.members.items())]
        return out

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "format": 1, "tenant_id": self.tenant_id, "zone_id": self.zone_id,
            "config": self.config.to_dict(), "newest_us": self.newest_us,
            "members": [[a, met, m.state()] for (a, met), m in self.members.items()],
            "rolling": {k: {"ts": r.ts.tolist(), "values": r.values.tolist()}
                        for k, r in self._rolling.items()},
            "forecasters": {k: f.state_dict() for k, f in self._forecasters.items()},
            "bucket": dict(self._bucket),
        }

    @classmethod
    def restore(cls, d: Mapping[str, Any]) -> ZoneState:
        z = cls(d["tenant_id"], d["zone_id"], config=ZoneConfig.from_dict(d["config"]))
        z.newest_us = d["newest_us"]
        z.members = {(a, met): _Member.from_state(m) for a, met, m in d["members"]}
        z._rolling = {k: _Rolling(np.asarray(r["ts"], dtype=np.int64),
                                  np.asarray(r["values"], dtype=np.float64))
                      for k, r in d["rolling"].items()}
        z._forecasters = {k: SeasonalForecaster.from_state_dict(f)
                          for k, f in d["forecasters"].items()}
        z._bucket = {k: int(v) for k, v in d["bucket"].items()}
        return z
