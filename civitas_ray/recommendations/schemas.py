"""Recommendation shapes at the API edge: reads, operator decisions, outcomes, filters."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RecommendationStatus(StrEnum):
    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class OutcomeResult(StrEnum):
    EFFECTIVE = "effective"
    INEFFECTIVE = "ineffective"


class RecommendationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    incident_id: uuid.UUID | None = None
    zone_id: uuid.UUID | None = None
    title: str
    body: str
    rank: int = Field(description="1 is the most pressing of the run that proposed it")
    score: float = Field(description="0..1 from severity, forecast risk and policy verdict")
    evidence: dict[str, Any] = Field(description=(
        "What it rests on: `kind`, `key` (dedup), `incident_ids`, `forecast` points and "
        "crossing, `alerts`, `policy` {verdict, citations}, `score_parts`"))
    status: RecommendationStatus
    model: str | None = Field(None, description="Who wrote the explanation: model or rules")
    decided_by: uuid.UUID | None = None
    decided_at: datetime | None = None
    outcome: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class AcceptRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"note": "Crew 4 assigned"}]})

    note: str | None = Field(None, max_length=2000)


class RejectRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"reason": "Crew already on site from an earlier call"}]})

    reason: str = Field(min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _not_blank(self) -> RejectRequest:
        if not self.reason.strip():
            raise ValueError("reason must not be blank")
        return self


class OutcomeRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"result": "effective", "notes": "Queue cleared within 40 minutes"}]})

    result: OutcomeResult
    notes: str = Field("", max_length=5000)


class RecommendationFilter(BaseModel):
    status: list[RecommendationStatus] | None = None
    zone_id: uuid.UUID | None = None
    incident_id: uuid.UUID | None = None


class RecommendRequest(BaseModel):
    """Scope of a recommender run: one incident, one zone, or (neither) the whole tenant."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"zone_id": "6f1c2a4e-8b1d-4c59-9f0e-2d3b4a5c6d7e"}, {}]})

    zone_id: uuid.UUID | None = None
    incident_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _one_scope(self) -> RecommendRequest:
        if self.zone_id is not None and self.incident_id is not None:
            raise ValueError("give zone_id or incident_id, not both")
        return self


class RecommendRunRead(BaseModel):
    run_id: uuid.UUID
    status: str = Field(description="succeeded | failed | duplicate")
    mode: str | None = Field(None, description="generative or extractive")
    model: str | None = None
    backend: str | None = None
    created: list[RecommendationRead]
    duplicates: list[uuid.UUID] = Field(
        default_factory=list, description="Open recommendations that already cover a candidate")
    cited: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None


class PolicyCheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "action": "Dig a trench in the public highway to reach the broken water main",
        "incident_id": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"}]})

    action: str = Field(min_length=1, max_length=2000)
    incident_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _not_blank(self) -> PolicyCheckRequest:
        if not self.action.strip():
            raise ValueError("action must not be blank")
        return self


class PolicyCitation(BaseModel):
    model_config = ConfigDict(extra="allow")

    passage_id: str
    document_id: str | uuid.UUID | None = None
    title: str | None = None
    section_id: str | None = None
    section_title: str | None = None
    char_start: int | None = None
    char_end: int | None = None
    url: str | None = None
    quote: str | None = None


class PolicyCheckRead(BaseModel):
    run_id: uuid.UUID
    status: str
    verdict: str = Field(description="compliant | non_compliant | unclear")
    rationale: str
    citations: list[PolicyCitation]
    mode: str | None = None
    model: str | None = None
    backend: str | None = None
    judged_by: str | None = Field(None, description="rules, llm-json or llm-fallback")
    error: str | None = None
