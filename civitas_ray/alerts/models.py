"""Alert rules: threshold, rate of change, anomaly, forecast-crossing, data quality."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String, text
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
