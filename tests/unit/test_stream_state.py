"""StreamState: idempotence, order, window, checkpoints, snapshot shape, quality flags,
counter resets, anomalies on a real series. Pure: no Ray, no database."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from civitas_ray.streams import quality as quality_mod
from civitas_ray.streams.forecast import ForecastConfig
from civitas_ray.streams.quality import FlagId, MetricSpec, QualityConfig, QualityMonitor
from civitas_ray.streams.state import StreamConfig, StreamState
from civitas_ray.streams.timebase import US_PER_S
from tests.unit import city_series

pytestmark = pytest.mark.unit

T0 = 1_704_067_200 * US_PER_S  # Monday 2024-01-01 00:00 UTC
MIN = 60 * US_PER_S


def minutes(n: int, start: int = 0, step: int = 1) -> np.ndarray:
    return T0 + (start + np.arange(n) * step) * MIN


def noisy(n: int, seed: int = 0, level: float = 100.0, sd: float = 1.0) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0, sd, n)


def flags_of(events: Any) -> list[str]:
    return [str(ev.flag) for ev in events]


# ---- idempotence and order ---------------------------------------------------------------
def _state(st: StreamState) -> str:
    """The checkpoint less the counters (which do count the duplicates seen)."""
    ckpt = st.checkpoint()
    ckpt.pop("counts")
    return json.dumps(ckpt, sort_keys=True)


def test_applying_a_batch_twice_changes_nothing() -> None:
    st = StreamState("a", "m")
    ts, v = minutes(300), noisy(300)
    first = st.apply(ts, v)
    before = _state(st)
    again = st.apply(ts, v)
    assert first.applied == 300 and first.changed
    assert again.applied == 0 and again.duplicates == 300 and not again.changed
    assert _state(st) == before and st.counts["duplicates"] == 300
    # a replayed reading with another value is still the same reading: ignored
    st.apply(ts[-1:], np.asarray([999.0]))
    assert st.latest == (int(ts[-1]), float(v[-1]))


def test_batch_sequence_numbers_skip_replayed_batches() -> None:
    st = StreamState("a", "m")
    st.apply(minutes(10), noisy(10), seq=1)
    replay = st.apply(minutes(10, start=10), noisy(10, 1), seq=1)
    assert replay.applied == 0 and st.latest is not None
    assert st.latest[0] == int(minutes(10)[-1])
    assert st.apply(minutes(10, start=10), noisy(10, 1), seq=2).applied == 10


def test_duplicates_inside_a_batch_keep_the_first() -> None:
    st = StreamState("a", "m")
    ts = np.asarray([T0, T0 + MIN, T0 + MIN, T0 + 2 * MIN])
    d = st.apply(ts, np.asarray([1.0, 2.0, 3.0, 4.0]))
    assert d.applied == 3 and d.duplicates == 1
    np.testing.assert_array_equal(st.window()[1], [1.0, 2.0, 4.0])


def test_out_of_order_readings_fill_the_window_but_not_latest() -> None:
    st = StreamState("a", "m")
    ts, v = minutes(100, step=2), noisy(100)
    st.apply(ts, v)
    n_learned = st.forecaster.n
    late_ts = ts[50:60] + MIN  # the odd minutes in the middle, shuffled
    late = st.apply(late_ts[::-1].copy(), np.full(10, 7.0))
    assert late.late == 10 and late.latest is None
    assert st.latest == (int(ts[-1]), float(v[-1]))
    assert st.forecaster.n == n_learned
    w_ts, w_val = st.window()
    assert np.all(np.diff(w_ts) > 0) and w_ts.size == 110
    assert (w_val == 7.0).sum() == 10
    assert st.apply(late_ts, np.full(10, 8.0)).duplicates == 10  # now known


def test_mixed_batch_splits_into_late_and_new() -> None:
    st = StreamState("a", "m")
    st.apply(minutes(10, step=2), noisy(10))
    d = st.apply(np.asarray([T0 + 25 * MIN, T0 + 3 * MIN, T0 + 21 * MIN]),
                 np.asarray([1.0, 2.0, 3.0]))
    assert (d.applied, d.late) == (3, 1)
    assert st.latest == (T0 + 25 * MIN, 1.0)
    np.testing.assert_array_equal(d.ts_us, [T0 + 21 * MIN, T0 + 25 * MIN])


def test_non_finite_values_are_dropped_and_counted() -> None:
    st = StreamState("a", "m")
    d = st.apply(minutes(4), np.asarray([1.0, np.nan, np.inf, 2.0]))
    assert d.applied == 2 and st.counts["invalid"] == 2


# ---- window ------------------------------------------------------------------------------
def test_window_keeps_the_newest_capacity_readings_across_wraps() -> None:
    st = StreamState("a", "m", config=StreamConfig(capacity=16))
    ts, v = minutes(200), np.arange(200, dtype=float)
    i = 0
    for size in [1, 5, 3, 16, 2, 17, 40, 1, 7, 30, 50, 28]:
        st.apply(ts[i:i + size], v[i:i + size])
        i += size
        w_ts, w_val = st.window()
        assert w_ts.size == min(i, 16)
        np.testing.assert_array_equal(w_val, v[max(0, i - 16):i])
    assert i == 200
    # a late reading older than the window is unknown history: ignored, counted
    too_old = st.apply(ts[10:11] + 30 * US_PER_S, np.asarray([1.0]))
    assert too_old.applied == 0 and st.counts["too_old"] == 1
    # a late reading inside the window goes in order and pushes out the oldest
    st.apply(ts[190:191] + 30 * US_PER_S, np.asarray([-1.0]))
    w_ts, w_val = st.window()
    assert w_ts.size == 16 and np.all(np.diff(w_ts) > 0)
    assert -1.0 in w_val and w_val[0] == 185.0


# ---- checkpoints -------------------------------------------------------------------------
def test_checkpoint_round_trip_continues_identically() -> None:
    spec = MetricSpec(unit="veh/h", min=0, max=10_000)
    st = StreamState("a", "traffic", spec=spec)
    ts, v = minutes(3_000, step=10), 500 + 200 * np.sin(np.arange(3_000) / 20) + noisy(3_000)
    st.apply(ts[:2_000], v[:2_000])
    copy = StreamState.restore(json.loads(json.dumps(st.checkpoint())))
    now = int(ts[1_999])
    assert copy.snapshot(now) == st.snapshot(now)
    for lo in range(2_000, 3_000, 250):
        a = st.apply(ts[lo:lo + 250], v[lo:lo + 250])
        b = copy.apply(ts[lo:lo + 250], v[lo:lo + 250])
        assert a.to_dict() == b.to_dict()
    assert copy.checkpoint() == st.checkpoint()


def test_rebuild_from_checkpoint_and_rows_does_not_double_count() -> None:
    ts, v = minutes(1_000), noisy(1_000)
    live = StreamState("a", "m")
    live.apply(ts[:600], v[:600])
    ckpt = json.loads(json.dumps(live.checkpoint()))
    live.apply(ts[600:], v[600:])
    # after a restart: rows since a little before the checkpoint, read back from the DB
    rebuilt = StreamState.rebuild(ts[550:], v[550:], asset_id="a", metric="m",
                                  checkpoint=ckpt)
    assert rebuilt.counts["applied"] == live.counts["applied"] == 1_000
    assert rebuilt.latest == live.latest
    cold = StreamState.rebuild(ts, v, asset_id="a", metric="m")
    assert cold.latest == live.latest and cold.forecaster.n == 1_000


# ---- snapshot ----------------------------------------------------------------------------
def test_snapshot_has_exactly_the_public_shape() -> None:
    st = StreamState("a", "m", spec=MetricSpec(unit="kW", min=0, max=1e6))
    ts, v = minutes(2_000, step=10), noisy(2_000, level=500, sd=20)
    st.apply(ts, v)
    now = int(ts[-1]) + 3 * MIN
    snap = st.snapshot(now, window=100, horizon_s=3_600)
    json.dumps(snap, allow_nan=False)
    assert set(snap) == {"latest", "window", "forecast", "flags", "anomaly", "stats"}
    assert snap["latest"] == {"ts": "2024-01-14T21:10:00Z", "value": float(v[-1])}
    assert len(snap["window"]) == 100
    assert all(set(r) == {"ts", "value"} for r in snap["window"])
    assert snap["window"][-1] == snap["latest"]
    fc = snap["forecast"]
    assert fc and all(set(r) == {"ts", "value", "lower", "upper"} for r in fc)
    f_ts = np.asarray([np.datetime64(r["ts"].rstrip("Z"), "us").astype(np.int64) for r in fc])
    assert f_ts[0] > now and f_ts[-1] <= now + 3_600 * US_PER_S
    assert f_ts[-1] > now + 3_000 * US_PER_S  # covers the next hour
    assert all(r["lower"] <= r["value"] <= r["upper"] for r in fc)
    assert set(snap["anomaly"]) == {"score", "is_anomaly"}
    assert snap["flags"] == []
    assert snap["stats"]["count"] == 1_024 and snap["stats"]["interval_s"] == 600.0
    empty = StreamState("b", "m").snapshot(now)
    assert empty["latest"] is None and empty["window"] == [] and empty["forecast"] == []


# ---- quality flags -----------------------------------------------------------------------
def test_stuck_is_raised_with_its_start_and_cleared_when_the_value_moves() -> None:
    st = StreamState("a", "m", config=StreamConfig(quality=QualityConfig(
        stuck_count=12, stuck_seconds=None)))
    st.apply(minutes(30), noisy(30))
    d = st.apply(minutes(15, start=30), np.full(15, 42.0))
    [ev] = [e for e in d.raised if e.flag == FlagId.STUCK]
    assert ev.since_us == T0 + 30 * MIN and ev.detail["readings"] == 12
    assert "stuck" in st.flags
    d = st.apply(minutes(1, start=45), np.asarray([43.0]))
    assert flags_of(d.cleared) == ["stuck"] and "stuck" not in st.flags


def test_stuck_by_duration() -> None:
    st = StreamState("a", "m", config=StreamConfig(quality=QualityConfig(
        stuck_count=None, stuck_seconds=3_600)))
    st.apply(minutes(5, step=20), np.asarray([1.0, 2.0, 5.0, 5.0, 5.0]))
    assert "stuck" not in st.flags  # 40 minutes
    d = st.apply(minutes(2, start=100, step=20), np.asarray([5.0, 5.0]))
    assert flags_of(d.raised) == ["stuck"] and d.raised[0].detail["seconds"] == 3_600.0


def test_gap_on_arrival_is_raised_and_cleared_at_once() -> None:
    st = StreamState("a", "m")
    st.apply(minutes(60), noisy(60))
    d = st.apply(minutes(5, start=90), noisy(5, 1))
    assert flags_of(d.raised) == ["gap"] and flags_of(d.cleared) == ["gap"]
    assert d.raised[0].since_us == T0 + 59 * MIN
    assert d.raised[0].detail["silent_s"] == 31 * 60.0
    assert "gap" not in st.flags


def test_gap_for_a_silent_stream_via_check_gap() -> None:
    st = StreamState("a", "m")
    st.apply(minutes(60), noisy(60))
    assert not st.check_gap(T0 + 61 * MIN).raised  # within 3 intervals
    d = st.check_gap(T0 + 70 * MIN)
    assert flags_of(d.raised) == ["gap"] and "gap" in st.flags
    assert not st.check_gap(T0 + 80 * MIN).raised  # raised once
    assert st.snapshot(T0 + 80 * MIN)["flags"][0]["flag"] == "gap"
    d = st.apply(minutes(1, start=81), np.asarray([100.0]))
    assert flags_of(d.cleared) == ["gap"] and not d.raised
    assert d.cleared[0].detail["silent_s"] == 22 * 60.0


def test_out_of_range_from_the_metric_spec() -> None:
    st = StreamState("a", "pm25", spec=MetricSpec.from_dict(
        {"unit": "ug/m3", "min": 0, "max": 500}))
    d = st.apply(minutes(3), np.asarray([10.0, -3.0, -2.0]))
    [ev] = d.raised
    assert ev.flag == FlagId.OUT_OF_RANGE and ev.since_us == T0 + MIN
    assert ev.detail == {"value": -3.0, "min": 0.0, "max": 500.0}
    d = st.apply(minutes(2, start=3), np.asarray([12.0, 900.0]))
    assert flags_of(d.cleared) == ["out_of_range"] and flags_of(d.raised) == ["out_of_range"]
    assert st.snapshot(T0 + 5 * MIN)["flags"][0]["detail"]["value"] == 900.0


def test_spike_that_reverts_is_flagged_a_level_shift_is_not() -> None:
    st = StreamState("a", "m")
    st.apply(minutes(100), noisy(100))
    d = st.apply(minutes(1, start=100), np.asarray([180.0]))
    assert not d.raised  # not yet known to revert
    d = st.apply(minutes(1, start=101), np.asarray([100.5]))
    [ev] = d.raised
    assert ev.flag == FlagId.SPIKE and ev.since_us == T0 + 100 * MIN
    assert ev.detail["value"] == 180.0
    d = st.apply(minutes(1, start=102), np.asarray([99.5]))
    assert flags_of(d.cleared) == ["spike"]
    shift = st.apply(minutes(20, start=103), np.r_[np.full(1, 180.0), noisy(19, 2, 180.0)])
    assert "spike" not in flags_of(shift.raised)


def test_quality_small_and_vectorised_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    n = 3_000
    ts = T0 + np.cumsum(rng.choice([60, 60, 60, 61, 59, 600], n)) * US_PER_S
    v = np.round(100 + np.cumsum(rng.normal(0, 1, n)), 0)
    v[rng.integers(50, n, 20)] += 300  # spikes
    v[1000:1030] = v[999]  # stuck
    v[2000:2005] = -50  # out of range
    spec = MetricSpec(min=-10, max=1_000)
    sizes = rng.integers(1, 40, 400)

    def run() -> list[Any]:
        q = QualityMonitor(spec, QualityConfig(stuck_count=20))
        events, i = [], 0
        for size in sizes:
            if i >= n:
                break
            u = q.update(ts[i:i + size], v[i:i + size], interval_s=60.0)
            events += sorted((e.flag, e.since_us, e.cleared_us or 0) for e in
                             [*u.raised, *u.cleared])
            i += int(size)
        return [events, q.state_dict()]

    monkeypatch.setattr(quality_mod, "SMALL_BATCH", 0)
    vectorised = run()
    monkeypatch.setattr(quality_mod, "SMALL_BATCH", 10_000)
    small = run()
    assert small == vectorised
    assert {e[0] for e in small[0]} == {"spike", "stuck", "out_of_range", "gap"}


# ---- cumulative registers ----------------------------------------------------------------
def test_counter_reset_is_flagged_and_consumption_never_negative() -> None:
    st = StreamState("meter", "water", spec=MetricSpec(unit="l", cumulative=True))
    reg = np.asarray([1000, 1010, 1025, 1025, 1040, 5, 12, 20, 30], dtype=float)
    d = st.apply(minutes(9, step=60), reg)
    assert flags_of(d.raised) == ["counter_reset"] and flags_of(d.cleared) == ["counter_reset"]
    assert d.raised[0].detail == {"before": 1040.0, "after": 5.0}
    assert d.cleared[0].detail["outcome"] == "reset"
    assert d.consumption == pytest.approx(40 + 7 + 8 + 10)  # unknown across the reset
    assert st.consumption_total == d.consumption


def test_a_single_bad_register_reading_is_a_glitch_not_a_reset() -> None:
    q = QualityMonitor(MetricSpec(cumulative=True))
    ts = minutes(6, step=60)
    out = q.update(ts, np.asarray([500, 510, 0, 530, 540, 545], dtype=float),
                   interval_s=3_600.0)
    assert out.consumption is not None
    np.testing.assert_array_equal(out.consumption, [0, 10, 0, 20, 10, 5])
    assert out.cleared[0].detail["outcome"] == "reverted"


def test_rollover_is_a_wrap_not_a_reset() -> None:
    q = QualityMonitor(MetricSpec(cumulative=True, rollover=10_000))
    out = q.update(minutes(4, step=60), np.asarray([9_990, 9_998, 3, 9], dtype=float),
                   interval_s=3_600.0)
    assert out.consumption is not None
    np.testing.assert_array_equal(out.consumption, [0, 8, 5, 6])
    assert not out.raised and q.rollovers == 1


@pytest.mark.parametrize(("meter", "expected"), [
    ("9348c9bb", "spike"),  # two registers interleaved for a day (207,774 and 456,017)
    ("1de2cf65", "counter_reset"),  # drops of 12,288 and 3,076 litres
])
def test_real_meters_never_yield_negative_or_absurd_consumption(
        data_dir: Path, meter: str, expected: str) -> None:
    keys, ts, reg = city_series.daiad_meters(data_dir)
    sel = np.flatnonzero(np.char.startswith(keys, meter.encode()))
    order = np.argsort(ts[sel], kind="stable")
    t, v = ts[sel][order], reg[sel][order]
    st = StreamState(meter, "water", spec=MetricSpec(unit="l", cumulative=True))
    for lo in range(0, t.size, 97):  # batches as they would arrive
        d = st.apply(t[lo:lo + 97], v[lo:lo + 97])
        assert d.consumption is not None and d.consumption >= 0
    assert st.quality.raised_total.get(expected, 0) > 0
    span_h = (t[-1] - t[0]) / (3_600 * US_PER_S)
    assert 1.0 < st.consumption_total / span_h < 30.0  # litres per hour: a household's
    snap = st.snapshot(int(t[-1]))
    assert snap["stats"]["rate_per_hour"] is not None
    values = [r["value"] for r in snap["forecast"]]
    assert values == sorted(values) and values[0] >= snap["latest"]["value"]


# ---- anomalies ---------------------------------------------------------------------------
def test_injected_spike_in_real_traffic_is_an_anomaly(data_dir: Path) -> None:
    s = city_series.i94_traffic(data_dir)
    ts, v = s.ts_us[:6_000].copy(), s.values[:6_000].copy()
    st = StreamState("i94", "traffic_volume", spec=MetricSpec(min=0, max=10_000),
                     config=StreamConfig(forecast=ForecastConfig(tz=s.tz)))
    st.apply(ts[:5_000], v[:5_000])
    before = st.counts["anomalies"]
    at = 5_500
    v[at] += 3_000.0  # an impossible surge for one hour
    alarms = []
    for i in range(5_000, 6_000):
        d = st.apply(ts[i:i + 1], v[i:i + 1])
        if d.is_anomaly:
            alarms.append(i)
    assert at in alarms
    rate = (st.counts["anomalies"] - before) / 1_000
    assert rate < 0.03
    # warm-up: a fresh stream raises no alarm on its first readings, spike or not
    fresh = StreamState("x", "traffic_volume")
    d = fresh.apply(ts[:40], np.r_[v[:39], v[39] + 9_000])
    assert d.anomalies == 0


def test_apply_speed_is_printed(data_dir: Path) -> None:
    s = city_series.tetouan_power(data_dir)
    st = StreamState("t", "power", spec=MetricSpec(unit="kW", min=0, max=1e6))
    st.apply(s.ts_us[:10_000], s.values[:10_000])
    t = time.perf_counter()
    for k in range(10):
        lo = 10_000 + k * 1_000
        st.apply(s.ts_us[lo:lo + 1_000], s.values[lo:lo + 1_000])
    big = (time.perf_counter() - t) / 10
    t = time.perf_counter()
    for i in range(20_000, 21_000):
        st.apply(s.ts_us[i:i + 1], s.values[i:i + 1])
    single = (time.perf_counter() - t) / 1_000
    print(f"\nStreamState.apply: {big * 1e3:.2f} ms per 1000-reading batch, "
          f"{single * 1e6:.0f} us per 1-reading batch")


def test_anomaly_scores_do_not_depend_on_batching() -> None:
    from civitas_ray.streams.anomaly import AnomalyDetector

    res = np.random.default_rng(5).standard_t(3, 500)
    whole = AnomalyDetector().update(res)
    one = AnomalyDetector()
    singles = np.concatenate([one.update(res[i:i + 1]).z for i in range(res.size)])
    np.testing.assert_allclose(whole.z, singles, equal_nan=True)
    assert not whole.is_anomaly[:48].any()  # the warm-up raises no alarm


def test_checkpoint_survives_a_json_round_trip_with_flags_raised() -> None:
    """Checkpoints travel as JSON (Redis): enum keys or numpy scalars must not break that."""
    import orjson

    st = StreamState("a", "level")
    ts = np.arange(40, dtype=np.int64) * 60_000_000 + 1_790_000_000_000_000
    st.apply(ts, np.full(40, 7.0))  # a stuck sensor raises `stuck`
    assert "stuck" in st.flags
    raw = orjson.dumps(st.checkpoint(), option=orjson.OPT_SERIALIZE_NUMPY)
    back = StreamState.restore(orjson.loads(raw))
    assert back.flags == st.flags and back.latest == st.latest
