"""Audit shapes at the API edge."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


class AuditRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    chain: str
    seq: int
    tenant_id: uuid.UUID | None
    actor_type: str
    actor_id: str | None
    actor_label: str | None
    action: str
    target_type: str | None
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    address: str | None
    detail: str | None
    created_at: datetime
    hash: str

    @field_validator("address", mode="before")
    @classmethod
    def _addr(cls, v: object) -> str | None:
        return str(v) if v is not None else None


class ChainReportRead(BaseModel):
    chain: str
    rows: int
    ok: bool
    first_bad_seq: int | None = None
    reason: str | None = None
