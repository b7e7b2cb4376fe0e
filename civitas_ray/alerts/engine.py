"""Pure alert-rule evaluation: one `RuleEvaluator` per (rule, stream or zone).

An evaluator watches observations of its subject (`RuleInput`, built by StreamState
or ZoneState) and moves ok -> pending -> firing -> ok:

* pending: the condition holds, but not yet for the rule's `for_seconds`;
* fired: once per ongoing condition, when it has held long enough (no repeats while
  firing: de-duplication);
* resolved: when the condition no longer holds, hysteresis included.

Time is the data's time (reading timestamps), so a replay gives the same alerts, and
an observation older than the last one seen is ignored (idempotent). `dedup_key` is
stable per (rule, subject): the incident service keeps one incident per ongoing
condition under it, and `started_at` tells the episodes apart.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from civitas_ray.alerts.schemas import (
    AlertCondition,
    AnomalyCondition,
    Condition,
    DataQualityCondition,
    ForecastCondition,
    RateCondition,
    Severity,
    ThresholdCondition,
    parse_condition,
)
from civitas_ray.streams.timebase import US_PER_S, F64Array, I64Array, iso_one

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
RuleState = Literal["ok", "pending", "firing"]


@dataclass(frozen=True, slots=True)
class RuleInput:
    """One observation of a rule's subject at `ts_us`.

    `value` is the stream's value (or None); `aggregates` the zone's aggregates of the
    latest values ({"avg", "sum", "max", "min", "count"}) for zone rules; the forecast
    is there only when a forecast rule asked for it (see StreamState.rule_input).
    """

    ts_us: int
    value: float | None = None
    prev_ts_us: int | None = None
    prev_value: float | None = None
    anomaly_score: float | None = None
    flags: frozenset[str] = frozenset()
    aggregates: Mapping[str, float] | None = None
    forecast_ts_us: I64Array | None = None
    forecast_mean: F64Array | None = None


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """A rule fired or resolved for a subject; the incident service consumes these."""

    kind: Literal["fired", "resolved"]
    rule_id: str
    subject: str
    dedup_key: str
    severity: str
    condition_type: str
    value: float | None
    threshold: float | None
    started_at_us: int
    at_us: int
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "rule_id": self.rule_id, "subject": self.subject,
            "dedup_key": self.dedup_key, "severity": self.severity,
            "condition_type": self.condition_type, "value": self.value,
            "threshold": self.threshold, "started_at": iso_one(self.started_at_us),
            "at": iso_one(self.at_us), "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class _Verdict:
    holds: bool  # the condition as stated
    holds_firing: bool  # the condition a firing alert needs to stay firing (hysteresis)
    value: float | None
    threshold: float | None
    detail: dict[str, Any]


def _shifted(op: str, threshold: float, hysteresis: float) -> float:
    """The threshold a firing alert must cross back over to clear."""
    if op in (">", ">="):
        return threshold - hysteresis
    if op in ("<", "<="):
        return threshold + hysteresis
    return threshold


def dedup_key(rule_id: str, subject: str) -> str:
    """The incident de-duplication key of a rule on a subject."""
    return f"alert:{rule_id}:{subject}"


class RuleEvaluator:
    """State of one alert rule on one subject (a stream key or a zone + metric).

    Checkpointed (`state_dict`): state, pending/started instants, last observation time,
    last verdict (for `tick`) and the previous aggregate (for zone rate rules). Rebuilt
    without a checkpoint as "ok": a condition still true fires again after its hold
    time, under the same dedup_key, so the incident service folds it into the open
    incident.
    """

    def __init__(self, *, rule_id: str, subject: str,
                 condition: AlertCondition | Condition | dict[str, Any],
                 severity: Severity = "minor", for_seconds: float = 0.0) -> None:
        if for_seconds < 0:
            raise ValueError("for_seconds must not be negative")
        self.rule_id = str(rule_id)
        self.subject = subject
        self.condition = parse_condition(condition)
        self.severity = severity
        self.for_us = int(for_seconds * US_PER_S)
        self.state: RuleState = "ok"
        self.pending_since_us: int | None = None
        self.started_at_us: int | None = None
        self.last_transition_us: int | None = None
        self.last_ts_us: int | None = None
        self._last_verdict: _Verdict | None = None
        self._prev_agg: tuple[int, float] | None = None

    @property
    def dedup_key(self) -> str:
        return dedup_key(self.rule_id, self.subject)

    # ---- evaluation ---------------------------------------------------------------------
    def observe(self, inp: RuleInput, *, now_us: int | None = None) -> AlertTransition | None:
        """Evaluate one observation; returns a transition when the rule fires or resolves.

        `now_us` defaults to the observation's time. Observations at or before the last
        one seen change nothing.
        """
        now = inp.ts_us if now_us is None else now_us
        if self.last_ts_us is not None and now <= self.last_ts_us:
            return None
        self.last_ts_us = now
        verdict = self._evaluate(inp, now)
        if verdict is None:  # no data for this condition: nothing changes
            return None
        self._last_verdict = verdict
        return self._step(verdict, now)

    def tick(self, now_us: int) -> AlertTransition | None:
        """Let a pending rule fire when its hold time passes without new observations."""
        if self.state != "pending" or self._last_verdict is None:
            return None
        if self.last_ts_us is not None and now_us <= self.last_ts_us:
            return None
        self.last_ts_us = now_us
        return self._step(self._last_verdict, now_us)

    def _step(self, v: _Verdict, now: int) -> AlertTransition | None:
        if self.state == "firing":
            if v.holds_firing:
                return None
            self.state = "ok"
            started = self.started_at_us if self.started_at_us is not None else now
            self.pending_since_us = self.started_at_us = None
            self.last_transition_us = now
            return self._transition("resolved", v, started, now)
        if not v.holds:
            self.state = "ok"
            self.pending_since_us = None
            return None
        if self.state == "ok":
            self.state = "pending"
            self.pending_since_us = now
        assert self.pending_since_us is not None
        if now - self.pending_since_us < self.for_us:
            return None
        self.state = "firing"
        self.started_at_us = self.pending_since_us
        self.last_transition_us = now
        return self._transition("fired", v, self.pending_since_us, now)

    def _transition(self, kind: Literal["fired", "resolved"], v: _Verdict, started: int,
                    now: int) -> AlertTransition:
        return AlertTransition(
            kind=kind, rule_id=self.rule_id, subject=self.subject, dedup_key=self.dedup_key,
            severity=self.severity, condition_type=self.condition.type, value=v.value,
            threshold=v.threshold, started_at_us=started, at_us=now, detail=v.detail)

    def _value(self, cond: ThresholdCondition | RateCondition | ForecastCondition,
               inp: RuleInput) -> float | None:
        if cond.aggregate is None:
            return inp.value
        if inp.aggregates is None:
            return None
        return inp.aggregates.get(cond.aggregate)

    def _evaluate(self, inp: RuleInput, now: int) -> _Verdict | None:
        cond = self.condition
        firing = self.state == "firing"
        if isinstance(cond, ThresholdCondition):
            value = self._value(cond, inp)
            if value is None:
                return None
            return self._compare(cond, value, {})
        if isinstance(cond, RateCondition):
            return self._rate(cond, inp)
        if isinstance(cond, AnomalyCondition):
            score = inp.anomaly_score
            if score is None:
                return None
            floor = cond.min_score - cond.hysteresis if firing else cond.min_score
            return _Verdict(score >= cond.min_score, score >= floor, score, cond.min_score, {})
        if isinstance(cond, ForecastCondition):
            return self._forecast(cond, inp, now)
        assert isinstance(cond, DataQualityCondition)
        wanted = {str(f) for f in cond.flags}
        hit = sorted(wanted & set(inp.flags))
        return _Verdict(bool(hit), bool(hit), float(len(hit)), None, {"flags": hit})

    def _compare(self, cond: ThresholdCondition | RateCondition | ForecastCondition,
                 value: float, detail: dict[str, Any]) -> _Verdict:
        op = _OPS[cond.op]
        back = _shifted(cond.op, cond.threshold, cond.hysteresis)
        return _Verdict(bool(op(value, cond.threshold)), bool(op(value, back)), value,
                        cond.threshold, detail)

    def _rate(self, cond: RateCondition, inp: RuleInput) -> _Verdict | None:
        value = self._value(cond, inp)
        if value is None:
            return None
        if cond.aggregate is None:
            prev = (None if inp.prev_ts_us is None or inp.prev_value is None
                    else (inp.prev_ts_us, inp.prev_value))
        else:  # a zone aggregate has no history of its own: remember the last one
            prev = self._prev_agg
            self._prev_agg = (inp.ts_us, value)
        if prev is None or inp.ts_us <= prev[0]:
            return None
        rate = (value - prev[1]) / ((inp.ts_us - prev[0]) / US_PER_S) * cond.per_seconds
        return self._compare(cond, rate, {"per_seconds": cond.per_seconds,
                                          "from": prev[1], "to": value})

    def _forecast(self, cond: ForecastCondition, inp: RuleInput, now: int) -> _Verdict | None:
        ts, mean = inp.forecast_ts_us, inp.forecast_mean
        if ts is None or mean is None:
            return None
        end = now + int(cond.within_seconds * US_PER_S)
        sel = (ts > now) & (ts <= end) & np.isfinite(mean)
        if not sel.any():
            return None
        f_ts, f_mean = ts[sel], mean[sel]
        op = _OPS[cond.op]
        hits = np.asarray(op(f_mean, cond.threshold))
        back = np.asarray(op(f_mean, _shifted(cond.op, cond.threshold, cond.hysteresis)))
        # report the extreme in the direction of the comparison, and when it is crossed
        value = float(f_mean.min() if cond.op in ("<", "<=") else f_mean.max())
        detail: dict[str, Any] = {"within_seconds": cond.within_seconds}
        if hits.any():
            detail["eta"] = iso_one(int(f_ts[int(np.argmax(hits))]))
        return _Verdict(bool(hits.any()), bool(back.any()), value, cond.threshold, detail)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id, "subject": self.subject,
            "condition": self.condition.model_dump(mode="json"),
            "severity": self.severity, "for_us": self.for_us, "state": self.state,
            "pending_since_us": self.pending_since_us, "started_at_us": self.started_at_us,
            "last_transition_us": self.last_transition_us, "last_ts_us": self.last_ts_us,
            "prev_agg": None if self._prev_agg is None else list(self._prev_agg),
            "last_verdict": None if self._last_verdict is None else {
                "holds": self._last_verdict.holds,
                "holds_firing": self._last_verdict.holds_firing,
                "value": self._last_verdict.value, "threshold": self._last_verdict.threshold,
                "detail": self._last_verdict.detail},
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> RuleEvaluator:
        ev = cls(rule_id=d["rule_id"], subject=d["subject"], condition=dict(d["condition"]),
                 severity=d["severity"], for_seconds=int(d["for_us"]) / US_PER_S)
        ev.for_us = int(d["for_us"])
        ev.state = d["state"]
        ev.pending_since_us = d["pending_since_us"]
        ev.started_at_us = d["started_at_us"]
        ev.last_transition_us = d["last_transition_us"]
        ev.last_ts_us = d["last_ts_us"]
        prev = d["prev_agg"]
        ev._prev_agg = None if prev is None else (int(prev[0]), float(prev[1]))
        lv = d.get("last_verdict")
        if lv is not None:
            ev._last_verdict = _Verdict(bool(lv["holds"]), bool(lv["holds_firing"]),
                                        lv["value"], lv["threshold"], dict(lv["detail"]))
        return ev
