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

import uuid
from datetime import datetime
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


# ---- rules and alerts ----------------------------------------------------------------
_RULE_EXAMPLE: dict[str, Any] = {
    "name": "Congestion on 5th Ave", "asset_id": "6f1c0c3e-5b7e-4a9e-9a55-0f1e2d3c4b5a",
    "metric": "traffic_volume", "condition": {"op": ">", "threshold": 5000},
    "severity": "critical", "for_seconds": 0}


class AlertRuleCreate(BaseModel):
    """A rule on one asset's metric (`asset_id` + `metric`) or on a zone (`zone_id`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_RULE_EXAMPLE]})

    name: str | None = Field(None, min_length=1, max_length=200,
                             description="Defaults to a description of the condition")
    asset_id: uuid.UUID | None = None
    zone_id: uuid.UUID | None = None
    metric: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]{1,64}$",
                               description="Absent: every metric of the asset or zone")
    condition: AlertCondition
    severity: Severity = "minor"
    for_seconds: int = Field(0, ge=0, le=7 * 86400,
                             description="How long the condition must hold before firing")
    enabled: bool = True

    @model_validator(mode="after")
    def _subject(self) -> AlertRuleCreate:
        if (self.asset_id is None) == (self.zone_id is None):
            raise ValueError("give exactly one of asset_id (a stream rule) or zone_id "
                             "(a zone rule)")
        agg = getattr(self.condition.root, "aggregate", None)
        if agg is not None and self.zone_id is None:
            raise ValueError("'aggregate' applies to zone rules only")
        return self


class AlertRuleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    metric: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    condition: AlertCondition | None = None
    severity: Severity | None = None
    for_seconds: int | None = Field(None, ge=0, le=7 * 86400)
    enabled: bool | None = None


class AlertRuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    asset_id: uuid.UUID | None
    zone_id: uuid.UUID | None
    metric: str | None
    condition: dict[str, Any]
    severity: str
    for_seconds: int
    enabled: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class AlertRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    rule_id: uuid.UUID | None
    incident_id: uuid.UUID | None
    dedup_key: str
    asset_id: uuid.UUID | None
    zone_id: uuid.UUID | None
    metric: str | None
    severity: str
    status: Literal["firing", "resolved"]
    message: str
    value: float | None
    threshold: float | None
    data: dict[str, Any]
    fired_at: datetime
    resolved_at: datetime | None
