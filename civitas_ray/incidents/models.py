"""Incidents and their append-only timeline."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, SoftDelete, TenantOwned, Timestamps, UUIDPk


class Incident(UUIDPk, TenantOwned, Timestamps, SoftDelete, Base):
    __tablename__ = "incident"
    __table_args__ = (
        Index("ix_incident_tenant_id_status_opened_at", "tenant_id", "status", "opened_at"),
        # One open incident per ongoing condition (rules set a dedup key).
        Index("uq_incident_tenant_id_dedup_key_open", "tenant_id", "dedup_key", unique=True,
              postgresql_where=text("dedup_key is not null and status in ('open','acknowledged')")),
    )

    number: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False, unique=True)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    domain: Mapped[str] = mapped_column(String(32), nullable=False, default="general")
    severity: Mapped[str] = mapped_column(String(16), nullable=False, default="minor")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="open")
    source: Mapped[str] = mapped_column(String(16), nullable=False, default="manual")
    dedup_key: Mapped[str | None] = mapped_column(String(200))
    zone_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("zone.id", ondelete="SET NULL"))
    asset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("asset.id", ondelete="SET NULL"))
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))
    summary: Mapped[str | None] = mapped_column(Text)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                        server_default="{}")
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                server_default=text("now()"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IncidentEvent(UUIDPk, TenantOwned, Base):
    __tablename__ = "incident_event"
    __table_args__ = (Index("ix_incident_event_incident_id_created_at", "incident_id",
                            "created_at"),)

    incident_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("incident.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                  server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                 server_default=text("clock_timestamp()"))
