"""Data-quality flags of one stream: stuck, gap, out_of_range, spike, counter_reset.

Each flag has an id (`FlagId`), a `since` instant and a JSON detail. Flags are raised
and cleared as readings arrive, so a dashboard shows what is wrong now and an alert
rule (`{"type": "data_quality", "flags": [...]}`) can fire and resolve on them:

* stuck: the same value (within a tolerance) for at least N readings or T seconds;
  cleared when the value moves. Not evaluated on cumulative registers, where an
  unchanged value just means nothing was consumed.
* gap: no reading for more than k x the usual interval. Seen on arrival (raised and
  cleared at once, the gap being over) and by `check_gap(now)` for a silent stream
  (raised, then cleared by the next reading).
* out_of_range: outside the physical [min, max] of the metric spec; cleared by an
  in-range reading.
* spike: a single jump that reverts (up then back down, or the reverse) well beyond
  the stream's usual step; seen when the reading after it arrives, cleared by the
  next reading.
* counter_reset: a cumulative register that drops. The consumption of that step is
  unknown and counted as 0; if the next reading returns to the old level the drop was
  a glitch and the consumption is measured from the old level, so it is never
  negative and never double counted. A drop from near `rollover` is a wrap, not a
  reset: the register counts from 0 to `rollover` (the modulus) and starts again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from civitas_ray.streams.timebase import US_PER_S, F64Array, I64Array, iso_one

BoolArray = npt.NDArray[np.bool_]
_INC_RATE = 0.01  # EW rate of the usual register increment
_STEP_RATE = 0.01  # EW rate of the usual step size (spike yardstick)
SMALL_BATCH = 16  # up to this many readings, a plain loop beats numpy's call overhead


def _learn_increment(mean: float, seen: int, inc: float, warmup: int) -> tuple[float, int]:
    """Usual positive register increment (mean over the warm-up, then EW)."""
    if inc <= 0.0:
        return mean, seen
    if seen < warmup:
        return mean + (inc - mean) / (seen + 1), seen + 1
    return mean + _INC_RATE * (inc - mean), seen + 1


class FlagId(StrEnum):
    STUCK = "stuck"
    GAP = "gap"
    OUT_OF_RANGE = "out_of_range"
    SPIKE = "spike"
    COUNTER_RESET = "counter_reset"


@dataclass(frozen=True, slots=True)
class FlagEvent:
    """A flag raised (`cleared_us` None) or cleared (`cleared_us` set)."""

    flag: FlagId
    since_us: int
    detail: dict[str, Any] = field(default_factory=dict)
    cleared_us: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The public shape: {"flag", "since", "detail"} (+ "cleared" once cleared)."""
        out: dict[str, Any] = {"flag": str(self.flag), "since": iso_one(self.since_us),
                               "detail": self.detail}
        if self.cleared_us is not None:
            out["cleared"] = iso_one(self.cleared_us)
        return out

    def state(self) -> dict[str, Any]:
        return {"flag": str(self.flag), "since_us": self.since_us, "detail": self.detail,
                "cleared_us": self.cleared_us}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> FlagEvent:
        return cls(FlagId(d["flag"]), int(d["since_us"]), dict(d.get("detail") or {}),
                   None if d.get("cleared_us") is None else int(d["cleared_us"]))


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """An asset's metric spec: `{"unit", "min", "max", "cumulative", "rollover"}`."""

    unit: str | None = None
    min: float | None = None
    max: float | None = None
    cumulative: bool = False
    rollover: float | None = None  # modulus of a wrapping register

    def __post_init__(self) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"metric spec min {self.min} is above max {self.max}")
        if self.rollover is not None and self.rollover <= 0:
            raise ValueError("metric spec rollover must be positive")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MetricSpec:
        """Read the JSON spec stored on the asset; unknown keys are ignored."""
        if not d:
            return cls()

        def num(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        unit = d.get("unit")
        return cls(unit=None if unit is None else str(unit), min=num("min"), max=num("max"),
                   cumulative=bool(d.get("cumulative", False)), rollover=num("rollover"))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """Thresholds of the flags; None disables the stuck criterion it names."""

    stuck_count: int | None = 12
    stuck_seconds: float | None = 6 * 3_600.0
    stuck_tolerance: float = 0.0
    gap_factor: float = 3.0
    spike_k: float = 8.0          # both jumps beyond k x the usual step size
    spike_revert: float = 0.3     # and the value returns within this share of the jump
    spike_warmup: int = 24        # steps seen before spikes are judged
    reset_tolerance: float = 1e-3  # a register drop below this share is meter jitter
    jump_factor: float = 50.0     # a register step beyond this x the usual one waits for
                                  # the next reading to confirm it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QualityConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(slots=True)
class QualityUpdate:
    """What one batch changed, and the consumption per reading of a cumulative register."""

    raised: list[FlagEvent] = field(default_factory=list)
    cleared: list[FlagEvent] = field(default_factory=list)
    consumption: F64Array | None = None


class QualityMonitor:
    """Quality flags of one stream, fed its in-order readings in batches.

    Checkpointed (`state_dict`): active flags, the last two readings, the stuck run,
    the step scale and the register reference. Rebuilt by replaying readings otherwise.
    """

    def __init__(self, spec: MetricSpec | None = None,
                 config: QualityConfig | None = None) -> None:
        self.spec = spec or MetricSpec()
        self.config = config or QualityConfig()
        self.active: dict[FlagId, FlagEvent] = {}
        self.raised_total: dict[str, int] = {}
        self._prev: list[tuple[int, float]] = []  # the last two readings, oldest first
        self._run_start_us: int | None = None  # the current run of equal values
        self._run_count = 0
        self._step_scale = 0.0  # EW mean absolute step, winsorised at the spike threshold
        self._steps_seen = 0
        self._ref: float | None = None  # register value consumption is measured from
        # a suspected reset ("drop") or glitch ("jump"): (kind, reference before, value)
        self._hold: tuple[str, float, float] | None = None
        self._inc_mean = 0.0
        self._incs_seen = 0
        self.rollovers = 0

    # ---- batch update -------------------------------------------------------------------
    def update(self, ts_us: I64Array, values: F64Array, *,
               interval_s: float | None) -> QualityUpdate:
        """Judge readings newer than any seen before, sorted by time."""
        out = QualityUpdate()
        m = ts_us.size
        if m == 0:
            return out
        if m <= SMALL_BATCH:
            self._update_small(ts_us, values, interval_s, out)
            return out
        self._gap(ts_us, interval_s, out)
        self._range(ts_us, values, out)
        if self.spec.cumulative:
            out.consumption = self._consumption(ts_us, values, interval_s, out)
        else:
            self._stuck(ts_us, values, out)
        self._spike(ts_us, values, interval_s, out)
        tail = list(zip(ts_us[-2:].tolist(), values[-2:].tolist(), strict=True))
        self._prev = (self._prev + tail)[-2:]
        return out

    def _update_small(self, ts_us: I64Array, values: F64Array, interval_s: float | None,
                      out: QualityUpdate) -> None:
        """`update` for a few readings: the same flags, one reading at a time.

        Equivalent to the vectorised path (a test holds them together); the usual case
        on the hot path is a handful of readings per stream per batch.
        """
        cfg, spec, active = self.config, self.spec, self.active
        ts_list, v_list = ts_us.tolist(), values.tolist()
        if spec.cumulative:
            out.consumption = self._consumption(ts_us, values, interval_s, out)
        gap_us = cfg.gap_factor * interval_s * US_PER_S if interval_s else None
        lo, hi = spec.min, spec.max
        check_range = lo is not None or hi is not None
        check_stuck = not spec.cumulative and (cfg.stuck_count is not None
                                               or cfg.stuck_seconds is not None)
        stuck_s = cfg.stuck_seconds * US_PER_S if cfg.stuck_seconds is not None else None
        judge_spikes = self._steps_seen >= cfg.spike_warmup and self._step_scale > 0.0
        thr = self._spike_threshold(max(abs(v) for v in v_list))
        spike_span = 2 * gap_us if gap_us is not None else None
        prev = list(self._prev)
        run_count, run_start = self._run_count, self._run_start_us
        steps_total, steps_n = 0.0, 0
        for i, (t, v) in enumerate(zip(ts_list, v_list, strict=True)):
            last = prev[-1] if prev else None
            if last is not None:  # gap
                if i == 0 and FlagId.GAP in active:
                    silent = (t - active[FlagId.GAP].since_us) / US_PER_S
                    self._clear(FlagId.GAP, t, out, {"silent_s": round(silent, 3)})
                elif gap_us is not None and t - last[0] > gap_us:
                    self._raise(FlagEvent(FlagId.GAP, last[0], {
                        "silent_s": round((t - last[0]) / US_PER_S, 3),
                        "expected_s": round(float(interval_s or 0.0), 3)}), out)
                    self._clear(FlagId.GAP, t, out)
            if check_range:
                bad = (lo is not None and v < lo) or (hi is not None and v > hi)
                if bad and FlagId.OUT_OF_RANGE not in active:
                    self._raise(FlagEvent(FlagId.OUT_OF_RANGE, t,
                                          {"value": v, "min": lo, "max": hi}), out)
                elif not bad and FlagId.OUT_OF_RANGE in active:
                    self._clear(FlagId.OUT_OF_RANGE, t, out)
            if check_stuck:
                if last is not None and abs(v - last[1]) <= cfg.stuck_tolerance:
                    run_count += 1
                else:
                    run_count, run_start = 1, t
                start = run_start if run_start is not None else t
                stuck = (cfg.stuck_count is not None and run_count >= cfg.stuck_count) or (
                    stuck_s is not None and run_count >= 2 and t - start >= stuck_s)
                if stuck and FlagId.STUCK not in active:
                    self._raise(FlagEvent(FlagId.STUCK, start, {
                        "value": v, "readings": run_count,
                        "seconds": round((t - start) / US_PER_S, 3)}), out)
                elif not stuck and FlagId.STUCK in active:
                    self._clear(FlagId.STUCK, t, out)
            spike = False
            if last is not None:
                step = v - last[1]
                steps_total += min(abs(step), thr) if self._step_scale > 0.0 else abs(step)
                steps_n += 1
                if judge_spikes and len(prev) == 2:
                    (t0, v0), (_, v1) = prev
                    d1 = v1 - v0
                    spike = (abs(d1) > thr and abs(step) > thr and d1 * step < 0
                             and abs(v - v0) <= cfg.spike_revert * min(abs(d1), abs(step))
                             and (spike_span is None or t - t0 <= spike_span))
            if spike and FlagId.SPIKE not in active:
                self._raise(FlagEvent(FlagId.SPIKE, last[0] if last else t, {
                    "value": last[1] if last else v, "before": prev[0][1], "after": v}),
                    out)
            elif not spike and FlagId.SPIKE in active:
                self._clear(FlagId.SPIKE, t, out)
            prev = [*prev[-1:], (t, v)]
        if check_stuck:
            self._run_count, self._run_start_us = run_count, run_start
        if steps_n:
            self._learn_steps(steps_total, steps_n)
        self._prev = prev

    def check_gap(self, now_us: int, *, interval_s: float | None) -> QualityUpdate:
        """Raise `gap` for a stream silent longer than k x its interval (idempotent)."""
        out = QualityUpdate()
        if not self._prev or not interval_s or FlagId.GAP in self.active:
            return out
        last_us = self._prev[-1][0]
        silent_s = (now_us - last_us) / US_PER_S
        if silent_s > self.config.gap_factor * interval_s:
            ev = FlagEvent(FlagId.GAP, last_us, {"silent_s": round(silent_s, 3),
                                                 "expected_s": round(interval_s, 3)})
            self._raise(ev, out)
        return out

    # ---- flags --------------------------------------------------------------------------
    def _raise(self, ev: FlagEvent, out: QualityUpdate) -> None:
        self.active[ev.flag] = ev
        out.raised.append(ev)
        self.raised_total[str(ev.flag)] = self.raised_total.get(str(ev.flag), 0) + 1

    def _clear(self, flag: FlagId, at_us: int, out: QualityUpdate,
               extra: dict[str, Any] | None = None) -> None:
        ev = self.active.pop(flag, None)
        if ev is not None:
            detail = {**ev.detail, **extra} if extra else ev.detail
            out.cleared.append(FlagEvent(flag, ev.since_us, detail, at_us))

    def _episodes(self, flag: FlagId, mask: BoolArray, ts_us: I64Array, out: QualityUpdate,
                  since_of: Callable[[int], int],
                  detail_of: Callable[[int], dict[str, Any]]) -> None:
        """Raise and clear `flag` for each run of True in `mask` (one per batch reading).

        A run that started before the batch continues the active flag; a run still open
        at the end of the batch leaves the flag raised.
        """
        was = flag in self.active
        if not was and not mask.any():
            return
        edges = np.diff(np.concatenate(([was], mask, [False])).astype(np.int8))
        starts = np.flatnonzero(edges == 1).tolist()
        ends = np.flatnonzero(edges == -1).tolist()
        if was:
            starts.insert(0, -1)
        m = mask.size
        for s, e in zip(starts, ends, strict=True):
            if s >= 0:
                self._raise(FlagEvent(flag, since_of(s), detail_of(s)), out)
            if e < m:
                self._clear(flag, int(ts_us[e]), out)

    def _gap(self, ts_us: I64Array, interval_s: float | None, out: QualityUpdate) -> None:
        first = self._prev[-1][0] if self._prev else ts_us[0]  # a first reading: no gap
        prev = np.concatenate(([first], ts_us[:-1]))
        gaps: list[int] = []
        if interval_s:
            limit = self.config.gap_factor * interval_s * US_PER_S
            gaps = np.flatnonzero((ts_us - prev) > limit).tolist()
        if FlagId.GAP in self.active:
            at = int(ts_us[0])
            silent = (at - self.active[FlagId.GAP].since_us) / US_PER_S
            self._clear(FlagId.GAP, at, out, {"silent_s": round(silent, 3)})
            gaps = [g for g in gaps if g != 0]
        for g in gaps:
            start, end = int(prev[g]), int(ts_us[g])
            self._raise(FlagEvent(FlagId.GAP, start, {
                "silent_s": round((end - start) / US_PER_S, 3),
                "expected_s": round(float(interval_s or 0.0), 3)}), out)
            self._clear(FlagId.GAP, end, out)

    def _range(self, ts_us: I64Array, values: F64Array, out: QualityUpdate) -> None:
        lo, hi = self.spec.min, self.spec.max
        if lo is None and hi is None:
            return
        mask = np.zeros(values.shape, dtype=bool)
        if lo is not None:
            mask |= values < lo
        if hi is not None:
            mask |= values > hi
        self._episodes(FlagId.OUT_OF_RANGE, mask, ts_us, out,
                       lambda s: int(ts_us[s]),
                       lambda s: {"value": float(values[s]), "min": lo, "max": hi})

    def _stuck(self, ts_us: I64Array, values: F64Array, out: QualityUpdate) -> None:
        cfg = self.config
        if cfg.stuck_count is None and cfg.stuck_seconds is None:
            return
        m = values.size
        same = np.zeros(m, dtype=bool)
        if self._prev:
            before = np.concatenate(([self._prev[-1][1]], values[:-1]))
            same = np.abs(values - before) <= cfg.stuck_tolerance
        else:
            same[1:] = np.abs(np.diff(values)) <= cfg.stuck_tolerance
        idx = np.arange(m)
        start = np.maximum.accumulate(np.where(same, -1, idx))  # -1: the run from before
        carried = start < 0
        count = np.where(carried, self._run_count + idx + 1, idx - start + 1)
        start_us = np.where(carried, self._run_start_us if self._run_start_us is not None
                            else ts_us[0], ts_us[np.maximum(start, 0)])
        mask = np.zeros(m, dtype=bool)
        if cfg.stuck_count is not None:
            mask |= count >= cfg.stuck_count
        if cfg.stuck_seconds is not None:
            mask |= (count >= 2) & ((ts_us - start_us) >= cfg.stuck_seconds * US_PER_S)
        self._episodes(FlagId.STUCK, mask, ts_us, out,
                       lambda s: int(start_us[s]),
                       lambda s: {"value": float(values[s]), "readings": int(count[s]),
                                  "seconds": round(float(ts_us[s] - start_us[s])
                                                   / US_PER_S, 3)})
        self._run_count = int(count[-1])
        self._run_start_us = int(start_us[-1])

    def _spike(self, ts_us: I64Array, values: F64Array, interval_s: float | None,
               out: QualityUpdate) -> None:
        cfg = self.config
        k = len(self._prev)
        seq_t = np.concatenate(([p[0] for p in self._prev], ts_us)).astype(np.int64)
        seq_v = np.concatenate(([p[1] for p in self._prev], values)).astype(np.float64)
        steps = np.diff(seq_v)
        scale = self._step_scale
        thr = self._spike_threshold(float(np.abs(values).max()))
        m = values.size
        mask = np.zeros(m, dtype=bool)
        if steps.size >= 2 and self._steps_seen >= cfg.spike_warmup and scale > 0.0:
            d1, d2 = steps[:-1], steps[1:]
            hit = ((np.abs(d1) > thr) & (np.abs(d2) > thr) & (d1 * d2 < 0)
                   & (np.abs(seq_v[2:] - seq_v[:-2])
                      <= cfg.spike_revert * np.minimum(np.abs(d1), np.abs(d2))))
            if interval_s:
                span = (seq_t[2:] - seq_t[:-2]) / US_PER_S
                hit &= span <= 2 * cfg.gap_factor * interval_s
            # hit[j] is confirmed by sequence reading j + 2, i.e. batch reading j + 2 - k
            confirm = np.flatnonzero(hit) + 2 - k
            mask[confirm[confirm >= 0]] = True
        off = k - 1  # batch reading j confirms the spike at sequence position j + off

        def detail(s: int) -> dict[str, Any]:
            p = s + off
            return {"value": float(seq_v[p]), "before": float(seq_v[p - 1]),
                    "after": float(seq_v[p + 1])}

        self._episodes(FlagId.SPIKE, mask, ts_us, out,
                       lambda s: int(seq_t[s + off]), detail)
        new = np.abs(steps[-m:]) if steps.size else steps
        if new.size:
            self._learn_steps(float(np.minimum(new, thr if scale > 0.0 else np.inf).sum()),
                              int(new.size))

    def _spike_threshold(self, peak: float) -> float:
        """Jump size beyond which a reverting step is a spike (`peak`: largest |value|)."""
        return self.config.spike_k * max(self._step_scale, 1e-9 * max(1.0, peak))

    def _learn_steps(self, total: float, n: int) -> None:
        """The usual step size (mean over the warm-up, then EW by batch); the caller
        winsorises the steps at the spike threshold so spikes do not inflate it."""
        n0, scale = self._steps_seen, self._step_scale
        if n0 < self.config.spike_warmup:
            self._step_scale = (scale * n0 + total) / (n0 + n)
        else:
            self._step_scale = scale - math.expm1(n * math.log1p(-_STEP_RATE)) * (
                total / n - scale)
        self._steps_seen = n0 + n

    def _consumption(self, ts_us: I64Array, values: F64Array, interval_s: float | None,
                     out: QualityUpdate) -> F64Array:
        """Non-negative consumption per reading of a cumulative register.

        A drop is held as a suspected reset and a jump far above the usual increment as
        a suspected glitch, each until the next reading says which it was; a held jump
        that stays is counted then, one reading late, so nothing is lost.
        """
        cfg = self.config
        ref, hold = self._ref, self._hold
        warmup, factor = cfg.spike_warmup, cfg.jump_factor
        mean, seen_n = self._inc_mean, self._incs_seen
        iv_us = (interval_s or 0.0) * US_PER_S
        last_us = self._prev[-1][0] if self._prev else None
        if (values.size > SMALL_BATCH and hold is None and ref is not None
                and values[0] >= ref and seen_n >= warmup):
            incs = np.diff(values, prepend=ref)
            gaps = np.diff(ts_us, prepend=last_us if last_us is not None else ts_us[0])
            # the yardstick grows with the time since the last reading (gaps)
            limit = factor * mean * np.maximum(1.0, gaps / iv_us) if iv_us else np.inf
            if bool(np.all(incs >= 0)) and bool(np.all(incs <= limit)):
                self._ref = float(values[-1])  # the common case: the register only grew
                pos = incs[incs > 0]
                if pos.size:
                    w = -math.expm1(pos.size * math.log1p(-_INC_RATE))
                    self._inc_mean = mean + w * (float(pos.mean()) - mean)
                    self._incs_seen = seen_n + int(pos.size)
                return incs
        tol = cfg.reset_tolerance
        rollover = self.spec.rollover
        cons = [0.0] * values.size
        for i, (t, v) in enumerate(zip(ts_us.tolist(), values.tolist(), strict=True)):
            span = 1.0 if not iv_us or last_us is None else max(1.0, (t - last_us) / iv_us)
            last_us = t
            if ref is None:
                ref = v
                continue
            if hold is not None:
                kind, before, seen = hold
                hold = None
                if kind == "jump":
                    if v >= before - tol * abs(before):
                        # stayed up (real consumption, counted now) or came back down
                        # (one bad reading): either way measured from before the jump
                        inc = max(v - before, 0.0)
                        cons[i], ref = inc, max(v, before)
                        if v >= seen - tol * abs(seen):
                            mean, seen_n = _learn_increment(mean, seen_n, inc, warmup)
                        continue
                    ref = before  # fell below where it was: judge as a drop below
                else:
                    back = v >= before - tol * abs(before)
                    self._clear(FlagId.COUNTER_RESET, t, out,
                                {"outcome": "reverted" if back else "reset"})
                    if back:  # the drop was one bad reading: measure from before it
                        cons[i], ref = max(v - before, 0.0), max(v, before)
                        continue
                    ref = seen  # a real reset: count from the new register value
            if v >= ref:
                inc = v - ref
                if seen_n >= warmup and inc > factor * mean * span:
                    hold = ("jump", ref, v)
                    continue
                cons[i], ref = inc, v
            elif ref - v <= tol * abs(ref):
                continue  # jitter of the meter: hold the reference
            elif rollover is not None and ref - v > rollover / 2:
                inc = v + rollover - ref
                cons[i], ref = inc, v
                self.rollovers += 1
            else:
                self._raise(FlagEvent(FlagId.COUNTER_RESET, t,
                                      {"before": ref, "after": v}), out)
                hold = ("drop", ref, v)
                continue
            mean, seen_n = _learn_increment(mean, seen_n, inc, warmup)
        self._ref, self._hold = ref, hold
        self._inc_mean, self._incs_seen = mean, seen_n
        return np.asarray(cons, dtype=np.float64)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(), "config": self.config.to_dict(),
            "active": [ev.state() for ev in self.active.values()],
            "raised_total": {str(k): v for k, v in self.raised_total.items()},
            "prev": [[t, v] for t, v in self._prev],
            "run_start_us": self._run_start_us, "run_count": self._run_count,
            "step_scale": self._step_scale, "steps_seen": self._steps_seen,
            "ref": self._ref, "hold": None if self._hold is None else list(self._hold),
            "inc_mean": self._inc_mean, "incs_seen": self._incs_seen,
            "rollovers": self.rollovers,
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> QualityMonitor:
        q = cls(MetricSpec.from_dict(d["spec"]), QualityConfig.from_dict(d["config"]))
        for raw in d["active"]:
            ev = FlagEvent.from_state(raw)
            q.active[ev.flag] = ev
        q.raised_total = {str(k): int(v) for k, v in d["raised_total"].items()}
        q._prev = [(int(t), float(v)) for t, v in d["prev"]]
        q._run_start_us = None if d["run_start_us"] is None else int(d["run_start_us"])
        q._run_count = int(d["run_count"])
        q._step_scale, q._steps_seen = float(d["step_scale"]), int(d["steps_seen"])
        q._ref = None if d["ref"] is None else float(d["ref"])
        hold = d["hold"]
        q._hold = None if hold is None else (str(hold[0]), float(hold[1]), float(hold[2]))
        q._inc_mean, q._incs_seen = float(d["inc_mean"]), int(d["incs_seen"])
        q.rollovers = int(d["rollovers"])
        return q
