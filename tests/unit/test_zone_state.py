"""ZoneState: latest values, rolling aggregates, KPIs, zone forecast, idempotent apply,
checkpoints. Deltas come from real StreamStates, as they would from a stream host."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from civitas_ray.alerts.engine import RuleEvaluator
from civitas_ray.streams.quality import MetricSpec, QualityConfig
from civitas_ray.streams.state import StreamConfig, StreamDelta, StreamState
from civitas_ray.streams.timebase import US_PER_S
from civitas_ray.zones.state import ZoneConfig, ZoneState
from tests.unit import city_series

pytestmark = pytest.mark.unit

T0 = 1_704_067_200 * US_PER_S
MIN = 60 * US_PER_S


def feed(streams: dict[str, StreamState], minute: int, values: dict[str, float]
         ) -> list[StreamDelta]:
    ts = np.asarray([T0 + minute * MIN])
    return [streams[a].apply(ts, np.asarray([v])) for a, v in values.items()]


@pytest.fixture
def three() -> dict[str, StreamState]:
    cfg = StreamConfig(quality=QualityConfig(stuck_count=5, stuck_seconds=None))
    return {a: StreamState(a, "pm25", spec=MetricSpec(min=0, max=1_000), config=cfg)
            for a in ("s1", "s2", "s3")}


def test_latest_values_aggregates_and_kpis(three: dict[str, StreamState]) -> None:
    zone = ZoneState("t1", "z1", config=ZoneConfig(window_s=600, stale_after_s=300))
    rng = np.random.default_rng(0)
    for minute in range(30):
        values = {"s1": 10 + rng.normal(), "s2": 20 + rng.normal(), "s3": 30.0}  # s3 stuck
        zone.apply(feed(three, minute, values))
    now = T0 + 29 * MIN
    inp = zone.rule_input("pm25", now)
    assert inp.aggregates is not None and inp.aggregates["count"] == 3
    latest = [three[a].latest[1] for a in ("s1", "s2", "s3")]  # type: ignore[index]
    assert inp.aggregates["avg"] == pytest.approx(np.mean(latest))
    assert inp.aggregates["sum"] == pytest.approx(np.sum(latest))
    assert inp.aggregates["max"] == 30.0 and inp.aggregates["min"] == min(latest)
    assert "stuck" in inp.flags
    kpis = zone.kpis(now)
    assert kpis == {"assets": 3, "assets_reporting": 3, "assets_stale": 0,
                    "anomalies_now": 0, "flags_now": 1, "flags_by_type": {"stuck": 1}}
    # s2 falls silent: stale after 5 minutes, and out of the latest-value aggregates
    for minute in range(30, 40):
        zone.apply(feed(three, minute, {"s1": 10.0 + minute % 2, "s3": 31.0 + minute % 2}))
    later = T0 + 39 * MIN
    assert zone.kpis(later)["assets_stale"] == 1
    assert zone.rule_input("pm25", later).aggregates["count"] == 2  # type: ignore[index]
    snap = zone.snapshot(later)
    json.dumps(snap, allow_nan=False)
    window = snap["metrics"]["pm25"]["window"]
    assert window["seconds"] == 600 and window["count"] == 20  # s1 and s3, last 10 minutes
    assert snap["metrics"]["pm25"]["latest"]["count"] == 2
    assert [m["stale"] for m in snap["members"]] == [False, True, False]


def test_apply_is_idempotent_and_ignores_older_deltas(three: dict[str, StreamState]) -> None:
    zone = ZoneState("t1", "z1")
    old = feed(three, 0, {"s1": 1.0, "s2": 2.0})
    zone.apply(old)
    new = feed(three, 1, {"s1": 3.0, "s2": 4.0})
    first = zone.apply(new)
    snap = zone.snapshot(T0 + MIN)
    again = zone.apply(new)
    stale = zone.apply(old)
    assert first.members_updated == 2 and first.readings == 2
    assert (again.members_updated, again.readings) == (0, 0) and not again.changed
    assert (stale.members_updated, stale.readings) == (0, 0)
    assert zone.snapshot(T0 + MIN) == snap
    assert zone.rule_input("pm25", T0 + MIN).aggregates["sum"] == 7.0  # type: ignore[index]


def test_flag_changes_without_readings_reach_the_zone(three: dict[str, StreamState]) -> None:
    zone = ZoneState("t1", "z1")
    for minute in range(20):
        zone.apply(feed(three, minute, {"s1": float(minute), "s2": 5.0 + minute % 3}))
    silent = three["s1"].check_gap(T0 + 40 * MIN)
    d = zone.apply([silent])
    assert d.flags_raised == (("s1", "pm25", "gap"),)
    assert zone.kpis(T0 + 40 * MIN)["flags_by_type"]["gap"] == 1
    back = feed(three, 41, {"s1": 20.0})
    d = zone.apply(back)
    assert d.flags_cleared == (("s1", "pm25", "gap"),) and d.readings == 1


def test_plain_mapping_deltas_from_a_stream_host() -> None:
    zone = ZoneState("t1", "z1")
    d = {"tenant_id": "t1", "zone_id": "z1", "asset_id": "m1", "metric": "water",
         "ts_us": T0, "value": 123_456.0, "rate": 12.5, "anomaly_score": 1.2,
         "is_anomaly": False, "flags": ["counter_reset"]}
    assert zone.apply([d]).members_updated == 1
    assert zone.apply([d]).members_updated == 0
    inp = zone.rule_input("water", T0)
    assert inp.aggregates == {"count": 1.0, "avg": 12.5, "sum": 12.5, "min": 12.5,
                              "max": 12.5}
    assert inp.flags == frozenset({"counter_reset"}) and inp.anomaly_score == 1.2


def test_zone_forecast_of_the_summed_power_of_three_city_zones(data_dir: Path) -> None:
    zones = [city_series.tetouan_power(data_dir, z) for z in (1, 2, 3)]
    ts = zones[0].ts_us
    total = sum(z.values for z in zones)
    zone = ZoneState("t1", "tetouan", config=ZoneConfig(bucket_s=600, stale_after_s=1_800))
    start = 6 * 7 * 144  # six weeks of history, from a time_bucket query after a restart
    zone.seed_forecast("power", ts[:start], total[:start])
    streams = [StreamState(f"zone{i + 1}", "power") for i in range(3)]
    for s, z in zip(streams, zones, strict=True):
        s.apply(z.ts_us[start - 200:start], z.values[start - 200:start])
    errors, naive = [], []
    for i in range(start, start + 2 * 144):  # two days live, one 10-minute step at a time
        zone.apply([s.apply(ts[i:i + 1], z.values[i:i + 1])
                    for s, z in zip(streams, zones, strict=True)])
        f_ts, mean, lower, upper = zone.forecast("power", int(ts[i]), 3_600)
        assert f_ts.size == 6 and np.all(lower <= upper)
        errors.append(abs(mean[-1] - total[i + 6]))
        naive.append(abs(total[i] - total[i + 6]))
    print(f"\nzone sum of three Tetouan zones, 1 h ahead over two days: MAE "
          f"{np.mean(errors):.0f} vs last value {np.mean(naive):.0f} "
          f"(level {total[start:start + 288].mean():.0f})")
    assert np.mean(errors) < np.mean(naive)
    snap = zone.snapshot(int(ts[start + 287]))
    assert len(snap["metrics"]["power"]["forecast"]) == 6
    assert snap["metrics"]["power"]["forecast_aggregate"] == "sum"


def test_zone_forecast_rule(three: dict[str, StreamState]) -> None:
    zone = ZoneState("t1", "z1", config=ZoneConfig(bucket_s=60, forecast_aggregate="mean"))
    for minute in range(200):
        zone.apply(feed(three, minute, {a: 10.0 + minute * 0.2 + i for i, a in
                                        enumerate(("s1", "s2", "s3"))}))
    now = T0 + 199 * MIN
    rule = RuleEvaluator(rule_id="r", subject="z1/pm25",
                         condition={"type": "forecast", "op": ">", "threshold": 40,
                                    "within_seconds": 1_800, "aggregate": "avg"})
    inp = zone.rule_input("pm25", now, forecast_s=1_800)
    assert inp.forecast_mean is not None and inp.forecast_mean.size > 0
    tr = rule.observe(inp)
    assert tr is not None and tr.kind == "fired" and tr.value > 40  # a rising zone mean


def test_checkpoint_round_trip_and_remove_asset(three: dict[str, StreamState]) -> None:
    zone = ZoneState("t1", "z1", config=ZoneConfig(bucket_s=120))
    for minute in range(60):
        zone.apply(feed(three, minute, {"s1": 1.0 * minute, "s2": 2.0, "s3": 3.0 + minute % 2}))
    copy = ZoneState.restore(json.loads(json.dumps(zone.checkpoint())))
    now = T0 + 59 * MIN
    assert copy.snapshot(now) == zone.snapshot(now)
    more = feed(three, 60, {"s1": 60.0, "s2": 2.5})
    assert copy.apply(more) == zone.apply(more)
    assert copy.checkpoint() == zone.checkpoint()
    assert zone.remove_asset("s2") == 1
    assert zone.kpis(T0 + 60 * MIN)["assets"] == 2
