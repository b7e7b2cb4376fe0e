"""Alert rules: threshold, rate of change, anomaly, forecast-crossing, data quality."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, SoftDelete, TenantOwned, Timestamps, UUIDPk


class AlertRule(UUIDPk, TenantOwned, Timestamps, SoftDelete, Base):
    __tablename__ = "alert_rule"

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    asset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("asset.id", ondelete="CASCADE"), index=True)
    zone_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("zone.id", ondelete="CASCADE"), index=True)
    metric: Mapped[str | None] = mapped_column(String(64))
    condition: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    severity: Mapped[str] = mapped_column(String(16), nullable=False, default="minor")
    for_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=0,
                                             server_default="0")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True,
                                          server_default=text("true"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))


class Alert(UUIDPk, TenantOwned, Base):
    """One firing of a rule for one subject (a stream or a zone), until it recovers."""

    __tablename__ = "alert"
    __table_args__ = (
        Index("ix_alert_tenant_id_status_fired_at", "tenant_id", "status", "fired_at"),
        # At most one firing alert per ongoing condition, whatever restarts in between.
        Index("uq_alert_tenant_id_dedup_key_firing", "tenant_id", "dedup_key", unique=True,
              postgresql_where=text("status = 'firing'")),
    )

    rule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("alert_rule.id", ondelete="SET NULL"), index=True)
    incident_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("incident.id", ondelete="SET NULL"))
    dedup_key: Mapped[str] = mapped_column(String(200), nullable=False)
    asset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("asset.id", ondelete="SET NULL"))
    zone_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("zone.id", ondelete="SET NULL"))
    metric: Mapped[str | None] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="firing")
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    value: Mapped[float | None] = mapped_column(Double)
    threshold: Mapped[float | None] = mapped_column(Double)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                  server_default="{}")
    fired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
