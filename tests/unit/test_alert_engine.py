"""Alert rules: the condition contract (AlertCondition) and the evaluator's state machine."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from civitas_ray.alerts.engine import AlertTransition, RuleEvaluator, RuleInput
from civitas_ray.alerts.schemas import (
    AlertCondition,
    AnomalyCondition,
    DataQualityCondition,
    ForecastCondition,
    RateCondition,
    Severity,
    ThresholdCondition,
)
from civitas_ray.streams.timebase import US_PER_S

pytestmark = pytest.mark.unit

T0 = 1_704_067_200 * US_PER_S
S = US_PER_S


def at(seconds: float, **kw: Any) -> RuleInput:
    return RuleInput(ts_us=T0 + int(seconds * S), **kw)


def run(ev: RuleEvaluator, points: list[tuple[float, float]]) -> list[AlertTransition]:
    out = []
    for t, v in points:
        tr = ev.observe(at(t, value=v))
        if tr is not None:
            out.append(tr)
    return out


# ---- the condition contract -------------------------------------------------------------
@pytest.mark.parametrize(("raw", "kind"), [
    ({"op": ">", "threshold": 5000}, ThresholdCondition),
    ({"type": "threshold", "op": "<=", "threshold": 1, "hysteresis": 0.5,
      "aggregate": "avg"}, ThresholdCondition),
    ({"type": "rate", "op": ">", "threshold": 100, "per_seconds": 60}, RateCondition),
    ({"type": "anomaly", "min_score": 4.0}, AnomalyCondition),
    ({"type": "forecast", "op": ">", "threshold": 5000, "within_seconds": 1800},
     ForecastCondition),
    ({"type": "data_quality", "flags": ["stuck", "gap"]}, DataQualityCondition),
])
def test_valid_conditions_parse(raw: dict[str, Any], kind: type) -> None:
    cond = AlertCondition.model_validate(raw).root
    assert isinstance(cond, kind)
    again = AlertCondition.model_validate(cond.model_dump(mode="json")).root
    assert again == cond


@pytest.mark.parametrize(("raw", "message"), [
    ({"threshold": 5}, "needs a 'type'"),
    ({"type": "magic", "op": ">", "threshold": 1}, "does not match any of the expected tags"),
    ({"op": "=>", "threshold": 1}, "Input should be '>', '>=', '<', '<=', '==' or '!='"),
    ({"op": ">"}, "Field required"),
    ({"op": ">", "threshold": "lots"}, "valid number"),
    ({"op": "==", "threshold": 1, "hysteresis": 1}, "hysteresis applies to the ordering"),
    ({"op": ">", "threshold": 1, "hysteresis": -1}, "greater than or equal to 0"),
    ({"op": ">", "threshold": 1, "aggregate": "median"}, "'avg', 'sum', 'max', 'min'"),
    ({"op": ">", "threshold": 1, "colour": "red"}, "Extra inputs are not permitted"),
    ({"type": "rate", "op": ">", "threshold": 1, "per_seconds": 0}, "greater than 0"),
    ({"type": "anomaly", "min_score": 0}, "greater than 0"),
    ({"type": "anomaly", "min_score": 3, "hysteresis": 3}, "smaller than min_score"),
    ({"type": "forecast", "op": ">", "threshold": 1}, "within_seconds"),
    ({"type": "forecast", "op": ">", "threshold": 1, "within_seconds": -5}, "greater than 0"),
    ({"type": "data_quality", "flags": []}, "at least 1 item"),
    ({"type": "data_quality", "flags": ["wobbly"]}, "'stuck', 'gap', 'out_of_range'"),
    ({"type": "data_quality", "flags": ["gap", "gap"]}, "more than once"),
])
def test_invalid_conditions_say_why(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        AlertCondition.model_validate(raw)
    assert message in str(info.value)


def test_severity_words_match_incidents() -> None:
    from typing import get_args

    from civitas_ray.incidents.schemas import IncidentSeverity
    assert set(get_args(Severity)) == {s.value for s in IncidentSeverity}


# ---- threshold, de-duplication, resolve ---------------------------------------------------
def test_threshold_fires_once_and_resolves() -> None:
    ev = RuleEvaluator(rule_id="r1", subject="pump-7/pressure",
                       condition={"op": ">", "threshold": 5000}, severity="major")
    out = run(ev, [(0, 4000), (60, 5100), (120, 5300), (180, 6000), (240, 4900)])
    assert [t.kind for t in out] == ["fired", "resolved"]
    fired, resolved = out
    assert fired.value == 5100 and fired.threshold == 5000 and fired.severity == "major"
    assert fired.started_at_us == T0 + 60 * S == resolved.started_at_us
    assert resolved.at_us == T0 + 240 * S and resolved.value == 4900
    assert fired.dedup_key == resolved.dedup_key == "alert:r1:pump-7/pressure"
    assert fired.to_dict()["started_at"] == "2024-01-01T00:01:00Z"
    # a new episode later: same key, a new start
    again = run(ev, [(300, 7000)])
    assert again[0].kind == "fired" and again[0].dedup_key == fired.dedup_key
    assert again[0].started_at_us == T0 + 300 * S


def test_observations_are_idempotent_in_time() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s", condition={"op": ">", "threshold": 1})
    assert ev.observe(at(10, value=5)) is not None
    assert ev.observe(at(10, value=0)) is None  # the same instant again
    assert ev.observe(at(5, value=0)) is None  # older
    assert ev.state == "firing"


def test_hold_time_needs_the_condition_to_last() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s", condition={"op": ">=", "threshold": 10},
                       for_seconds=300)
    assert run(ev, [(0, 11), (120, 12), (240, 9)]) == []  # broke off before 300 s
    assert ev.state == "ok"
    out = run(ev, [(300, 10), (400, 15), (599, 15), (600, 15), (700, 16)])
    assert [t.kind for t in out] == ["fired"]
    assert out[0].at_us == T0 + 600 * S and out[0].started_at_us == T0 + 300 * S


def test_tick_fires_a_pending_rule_without_new_readings() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s", condition={"op": ">", "threshold": 1},
                       for_seconds=600)
    assert ev.observe(at(0, value=2)) is None and ev.state == "pending"
    assert ev.tick(T0 + 300 * S) is None
    tr = ev.tick(T0 + 600 * S)
    assert tr is not None and tr.kind == "fired"


def test_hysteresis_holds_the_alert_until_back_past_the_band() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s",
                       condition={"op": ">", "threshold": 100, "hysteresis": 10})
    out = run(ev, [(0, 101), (1, 99), (2, 95), (3, 91), (4, 90.5), (5, 89.9)])
    assert [(t.kind, t.value) for t in out] == [("fired", 101), ("resolved", 89.9)]
    low = RuleEvaluator(rule_id="r", subject="s",
                        condition={"op": "<", "threshold": 10, "hysteresis": 2})
    out = run(low, [(0, 9), (1, 11), (2, 12.5)])
    assert [(t.kind, t.value) for t in out] == [("fired", 9), ("resolved", 12.5)]


# ---- the other condition types -------------------------------------------------------------
def test_rate_per_seconds_from_the_previous_reading() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s",
                       condition={"type": "rate", "op": ">", "threshold": 100,
                                  "per_seconds": 60})
    slow = at(600, value=1_500, prev_ts_us=T0, prev_value=1_000)  # 50 per minute
    assert ev.observe(slow) is None
    fast = at(900, value=2_100, prev_ts_us=T0 + 600 * S, prev_value=1_500)  # 120 per min
    tr = ev.observe(fast)
    assert tr is not None and tr.value == pytest.approx(120.0)
    assert tr.detail["per_seconds"] == 60


def test_anomaly_score() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s",
                       condition={"type": "anomaly", "min_score": 4.0, "hysteresis": 1.0})
    seen = [ev.observe(at(t, anomaly_score=s)) for t, s in
            enumerate([1.0, 4.5, 3.5, 2.9, 6.0])]
    assert [None if x is None else x.kind for x in seen] == [
        None, "fired", None, "resolved", "fired"]


def test_forecast_crossing_within_the_window() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s",
                       condition={"type": "forecast", "op": ">", "threshold": 5000,
                                  "within_seconds": 1800})
    f_ts = T0 + np.arange(1, 7) * 600 * S  # 10, 20 ... 60 minutes ahead
    late = np.asarray([4000, 4200, 4400, 4800, 5200, 5600], dtype=float)
    assert ev.observe(RuleInput(ts_us=T0, value=3900, forecast_ts_us=f_ts,
                                forecast_mean=late)) is None  # crosses after 40 min
    soon = np.asarray([4500, 4900, 5100, 5300, 5400, 5600], dtype=float)
    tr = ev.observe(RuleInput(ts_us=T0 + 1, value=4100, forecast_ts_us=f_ts + 1,
                              forecast_mean=soon))
    assert tr is not None and tr.kind == "fired" and tr.value == 5100
    assert tr.detail["eta"] == "2024-01-01T00:30:00.000001Z"
    calm = np.full(6, 3000.0)
    tr = ev.observe(RuleInput(ts_us=T0 + 2, value=3000, forecast_ts_us=f_ts + 2,
                              forecast_mean=calm))
    assert tr is not None and tr.kind == "resolved"
    assert ev.observe(RuleInput(ts_us=T0 + 3, value=3000)) is None  # no forecast: no change


def test_data_quality_flags() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s",
                       condition={"type": "data_quality", "flags": ["stuck", "gap"]})
    seen = [ev.observe(at(t, flags=frozenset(f))) for t, f in enumerate(
        [set(), {"spike"}, {"gap"}, {"gap", "stuck"}, {"out_of_range"}])]
    kinds = [None if x is None else x.kind for x in seen]
    assert kinds == [None, None, "fired", None, "resolved"]
    fired = seen[2]
    assert fired is not None and fired.detail == {"flags": ["gap"]}


def test_zone_rules_read_their_aggregate() -> None:
    ev = RuleEvaluator(rule_id="z", subject="zone-1/pm25",
                       condition={"op": ">", "threshold": 50, "aggregate": "avg"})
    assert ev.observe(at(0, aggregates={"avg": 40, "max": 90, "count": 3})) is None
    tr = ev.observe(at(60, aggregates={"avg": 55, "max": 90, "count": 3}))
    assert tr is not None and tr.value == 55
    assert ev.observe(at(120, value=10)) is None  # no aggregates: no change
    rate = RuleEvaluator(rule_id="z2", subject="zone-1/flow",
                         condition={"type": "rate", "op": ">", "threshold": 10,
                                    "per_seconds": 60, "aggregate": "sum"})
    assert rate.observe(at(0, aggregates={"sum": 100})) is None  # no history yet
    tr = rate.observe(at(60, aggregates={"sum": 120}))
    assert tr is not None and tr.value == pytest.approx(20.0)


def test_evaluator_state_round_trip() -> None:
    ev = RuleEvaluator(rule_id="r", subject="s",
                       condition={"op": ">", "threshold": 1, "hysteresis": 0.5},
                       severity="critical", for_seconds=60)
    ev.observe(at(0, value=2))
    ev.observe(at(60, value=2))
    copy = RuleEvaluator.from_state_dict(json.loads(json.dumps(ev.state_dict())))
    assert copy.state == "firing" and copy.started_at_us == T0
    assert copy.observe(at(90, value=0.8)) is None  # inside the hysteresis band
    tr = copy.observe(at(120, value=0.4))
    assert tr is not None and tr.kind == "resolved" and tr.severity == "critical"
