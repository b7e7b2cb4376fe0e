"""Alert rule conditions at the API edge: the JSON contract of `alert_rule.condition`.

    {"op": ">", "threshold": 5000}                               threshold (the default)
    {"type": "rate", "op": ">", "threshold": 100, "per_seconds": 60}
    {"type": "anomaly", "min_score": 4.0}
    {"type": "forecast", "op": ">", "threshold": 5000, "within_seconds": 1800}
    {"type": "data_quality", "flags": ["stuck", "gap"]}

Value conditions take an optional `hysteresis` (a firing alert clears only once the
value is back past threshold -/+ hysteresis) and, on zone rules, an `aggregate` over
the zone's latest values. `AlertCondition` validates any of them with clear errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from civitas_ray.streams.quality import FlagId

Op = Literal[">", ">=", "<", "<=", "==", "!="]
Aggregate = Literal["avg", "sum", "max", "min", "count"]
Severity = Literal["info", "minor", "major", "critical"]  # same words as incidents
CONDITION_TYPES = ("threshold", "rate", "anomaly", "forecast", "data_quality")


class _Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Compared(_Condition):
    """A value compared with a threshold, optionally with hysteresis."""

    op: Op
    threshold: float = Field(allow_inf_nan=False)
    hysteresis: float = Field(0.0, ge=0, allow_inf_nan=False)
    aggregate: Aggregate | None = None

    @model_validator(mode="after")
    def _hysteresis_needs_order(self) -> _Compared:
        if self.hysteresis and self.op in ("==", "!="):
            raise ValueError("hysteresis applies to the ordering operators >, >=, <, <= only")
        return self


class ThresholdCondition(_Compared):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"type": "threshold", "op": ">", "threshold": 5000, "hysteresis": 200}]})

    type: Literal["threshold"] = "threshold"


class RateCondition(_Compared):
    """Change of the value per `per_seconds` (from the last two observations)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"type": "rate", "op": ">", "threshold": 100, "per_seconds": 60}]})

    type: Literal["rate"]
    per_seconds: float = Field(60.0, gt=0, le=7 * 86_400, allow_inf_nan=False)


class AnomalyCondition(_Condition):
    """Anomaly score (robust |z| of the forecast residual) at or above `min_score`."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"type": "anomaly", "min_score": 4.0}]})

    type: Literal["anomaly"]
    min_score: float = Field(gt=0, allow_inf_nan=False)
    hysteresis: float = Field(0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _hysteresis_below_score(self) -> AnomalyCondition:
        if self.hysteresis >= self.min_score:
            raise ValueError("hysteresis must be smaller than min_score")
        return self


class ForecastCondition(_Compared):
    """The forecast crosses the threshold within the next `within_seconds`."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"type": "forecast", "op": ">", "threshold": 5000, "within_seconds": 1800}]})

    type: Literal["forecast"]
    within_seconds: float = Field(gt=0, le=7 * 86_400, allow_inf_nan=False)


class DataQualityCondition(_Condition):
    """Any of the listed data-quality flags is raised."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"type": "data_quality", "flags": ["stuck", "gap"]}]})

    type: Literal["data_quality"]
    flags: list[FlagId] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> DataQualityCondition:
        if len(set(self.flags)) != len(self.flags):
            raise ValueError("flags are listed more than once")
        return self


Condition = Annotated[
    ThresholdCondition | RateCondition | AnomalyCondition | ForecastCondition
    | DataQualityCondition,
    Field(discriminator="type"),
]


class AlertCondition(RootModel[Condition]):
    """One rule condition; `type` defaults to "threshold" when `op` is given."""

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data:
            if "op" not in data:
                raise ValueError(
                    "condition needs a 'type' (one of " + ", ".join(CONDITION_TYPES)
                    + ") or an 'op' for a threshold")
            return {**data, "type": "threshold"}
        return data


def parse_condition(raw: AlertCondition | Condition | dict[str, Any]) -> Condition:
    """The typed condition from a stored JSON document (or one already parsed)."""
    if isinstance(raw, AlertCondition):
        return raw.root
    if isinstance(raw, dict):
        return AlertCondition.model_validate(raw).root
    return raw
