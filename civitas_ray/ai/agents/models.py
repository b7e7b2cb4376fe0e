"""Agent runs: what an agent was asked, what it answered, what it cited, which model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, TenantOwned, Timestamps, UUIDPk


class AgentRun(UUIDPk, TenantOwned, Timestamps, Base):
    """One run of one agent, on demand (API) or on an event (runner).

    `idempotency_key` makes event-driven runs at-least-once safe: the runner claims
    `<agent>:<event id>` before running, and a redelivered event finds the claim.
    """

    __tablename__ = "agent_run"
    __table_args__ = (
        Index("ix_agent_run_tenant_id_agent_created_at", "tenant_id", "agent", "created_at"),
        Index("uq_agent_run_tenant_id_idempotency_key", "tenant_id", "idempotency_key",
              unique=True, postgresql_where=text("idempotency_key is not null")),
        CheckConstraint("status in ('running', 'succeeded', 'failed')", name="status"),
    )

    agent: Mapped[str] = mapped_column(String(64), nullable=False)
    trigger: Mapped[str] = mapped_column(String(32), nullable=False)  # api | event | schedule
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running",
                                        server_default="running")
    subject_type: Mapped[str | None] = mapped_column(String(32))  # incident, asset, zone...
    subject_id: Mapped[str | None] = mapped_column(String(200))
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                   server_default="{}")
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    cited: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, default=list,
                                                        server_default="[]")
    model: Mapped[str | None] = mapped_column(String(200))
    backend: Mapped[str | None] = mapped_column(String(64))
    mode: Mapped[str | None] = mapped_column(String(16))  # generative | extractive
    error: Mapped[str | None] = mapped_column(Text)
    latency_s: Mapped[float | None] = mapped_column(Double)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
