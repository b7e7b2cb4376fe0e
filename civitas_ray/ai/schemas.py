"""AI endpoints at the API edge: run requests and the recorded runs they return."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AgentName = Literal["data_quality", "summarizer", "notifier"]
RunStatus = Literal["running", "succeeded", "failed"]


class DataQualityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "asset_id": "6f1c2a4e-8b1d-4c59-9f0e-2d3b4a5c6d7e", "metric": "water_m3"}]})

    asset_id: uuid.UUID
    metric: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    as_of: datetime | None = Field(None, description="Judge the readings up to this instant "
                                                     "(default: now)")


class NotifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    incident_id: uuid.UUID


class AgentRunRead(BaseModel):
    """A recorded run: what was asked, what came back, what it cited and who answered."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    agent: str
    trigger: str
    status: str
    subject_type: str | None = None
    subject_id: str | None = None
    inputs: dict[str, Any]
    output: dict[str, Any] | None = None
    cited: list[dict[str, Any]]
    model: str | None = None
    backend: str | None = None
    mode: str | None = Field(None, description="generative or extractive")
    error: str | None = None
    latency_s: float | None = None
    created_at: datetime
    finished_at: datetime | None = None


class AgentRunResult(BaseModel):
    """The answer of an on-demand run; `duplicate` means an earlier run with the same key."""

    run_id: uuid.UUID
    agent: str
    status: Literal["succeeded", "failed", "duplicate"]
    mode: str | None
    model: str | None
    backend: str | None = None
    cited: list[dict[str, Any]]
    output: dict[str, Any] | None
    error: str | None = None
