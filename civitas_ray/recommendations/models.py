"""Ranked, explained recommendations that operators accept or reject."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Double, ForeignKey, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, TenantOwned, Timestamps, UUIDPk


class Recommendation(UUIDPk, TenantOwned, Timestamps, Base):
    __tablename__ = "recommendation"

    incident_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("incident.id", ondelete="CASCADE"), index=True)
    zone_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("zone.id", ondelete="SET NULL"))
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    rank: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    score: Mapped[float] = mapped_column(Double, nullable=False, default=0.0)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                      server_default="{}")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="proposed")
    model: Mapped[str | None] = mapped_column(String(200))
    decided_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
