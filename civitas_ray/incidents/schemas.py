"""Incident shapes at the API edge: the vocabularies, requests, reads and list filters."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class IncidentDomain(StrEnum):
    MOBILITY = "mobility"
    UTILITIES = "utilities"
    SAFETY = "safety"
    ENVIRONMENT = "environment"
    DATA_QUALITY = "data_quality"
    INFRASTRUCTURE = "infrastructure"
    GENERAL = "general"


class IncidentSeverity(StrEnum):
    INFO = "info"
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


# Ordering for "raise severity if higher" and for sorting; strings do not sort this way.
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(IncidentSeverity)}


class IncidentStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CLOSED = "closed"


class IncidentEventKind(StrEnum):
    CREATED = "created"
    STATUS_CHANGE = "status_change"
    ASSIGNMENT = "assignment"
    COMMENT = "comment"
    UPDATE = "update"
    ALERT = "alert"


class IncidentCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "title": "Water main break on 5th Avenue",
        "description": "Flooding reported at the corner of 5th Ave and W 42nd St.",
        "domain": "utilities", "severity": "major",
        "zone_id": "6f1c2a4e-8b1d-4c59-9f0e-2d3b4a5c6d7e",
        "properties": {"reported_by": "311", "lanes_closed": 2},
    }]})

    title: str = Field(min_length=1, max_length=300)
    description: str = Field("", max_length=20_000)
    domain: IncidentDomain = IncidentDomain.GENERAL
    severity: IncidentSeverity = IncidentSeverity.MINOR
    zone_id: uuid.UUID | None = None
    asset_id: uuid.UUID | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


# Columns that may not be null: an explicit null in a PATCH is a client error, not "clear".
_NOT_NULLABLE = ("title", "description", "domain", "severity", "properties")


class IncidentUpdate(BaseModel):
    """Partial change; absent fields stay, `null` clears zone, asset or summary."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "severity": "critical", "summary": "Main valve closed; repair crew on site.",
    }]})

    title: str | None = Field(None, min_length=1, max_length=300)
    description: str | None = Field(None, max_length=20_000)
    domain: IncidentDomain | None = None
    severity: IncidentSeverity | None = None
    zone_id: uuid.UUID | None = None
    asset_id: uuid.UUID | None = None
    summary: str | None = Field(None, max_length=20_000)
    properties: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _no_null_for_required(self) -> IncidentUpdate:
        nulled = [f for f in _NOT_NULLABLE
                  if f in self.model_fields_set and getattr(self, f) is None]
        if nulled:
            raise ValueError(f"These fields cannot be null: {', '.join(nulled)}")
        return self


class IncidentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    number: int = Field(description="Human-facing incident number, e.g. #1042")
    title: str
    description: str
    domain: IncidentDomain
    severity: IncidentSeverity
    status: IncidentStatus
    source: str = Field(description="Where it came from: `manual`, or the engine that opened it")
    dedup_key: str | None = None
    zone_id: uuid.UUID | None = None
    asset_id: uuid.UUID | None = None
    assignee_id: uuid.UUID | None = None
    created_by: uuid.UUID | None = None
    summary: str | None = None
    properties: dict[str, Any]
    opened_at: datetime
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class AssignRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "assignee_id": "0b7e9a52-3c1f-4d8e-a6b2-9f4c1d2e3a4b", "note": "Night shift lead",
    }]})

    assignee_id: uuid.UUID | None = Field(description="A user of the tenant; null unassigns")
    note: str | None = Field(None, max_length=2000)


class CommentCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "body": "Crew dispatched, ETA 15 minutes.",
    }]})

    body: str = Field(min_length=1, max_length=20_000)


class TransitionRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "acknowledged"},
        {"status": "resolved", "note": "Valve replaced, pressure normal."},
    ]})

    status: IncidentStatus = Field(description="The next status; see the allowed transitions")
    note: str | None = Field(None, max_length=2000)


class IncidentEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "5d0c1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f",
        "incident_id": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
        "kind": "status_change", "actor_id": "0b7e9a52-3c1f-4d8e-a6b2-9f4c1d2e3a4b",
        "body": "Valve replaced, pressure normal.",
        "data": {"from": "acknowledged", "to": "resolved"},
        "created_at": "2026-11-27T08:15:00Z",
    }]})

    id: uuid.UUID
    incident_id: uuid.UUID
    kind: IncidentEventKind
    actor_id: uuid.UUID | None = None
    body: str
    data: dict[str, Any]
    created_at: datetime


class IncidentFilter(BaseModel):
    """List filters, gathered so the service takes one argument instead of ten."""

    status: list[IncidentStatus] | None = None
    severity: IncidentSeverity | None = None
    domain: IncidentDomain | None = None
    zone_id: uuid.UUID | None = None
    asset_id: uuid.UUID | None = None
    assignee_id: uuid.UUID | None = None
    q: str | None = None
    opened_since: datetime | None = None
    opened_until: datetime | None = None
    include_deleted: bool = False
