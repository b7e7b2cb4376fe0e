"""Model registry rows: one per trained version, with its stage and metrics."""

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
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, TenantOwned, Timestamps, UUIDPk


class ModelVersion(UUIDPk, TenantOwned, Timestamps, Base):
    """A trained model of one kind for one subject (a stream, or a zone and metric).

    Versions count per (tenant, name, subject); at most one of them is in production
    (a partial unique index), at most one in shadow.
    """

    __tablename__ = "model_version"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "subject_key", "version"),
        Index("uq_model_version_production", "tenant_id", "name", "subject_key", unique=True,
              postgresql_where=text("stage = 'production'")),
        Index("uq_model_version_shadow", "tenant_id", "name", "subject_key", unique=True,
              postgresql_where=text("stage = 'shadow'")),
        CheckConstraint("stage in ('candidate', 'shadow', 'production', 'archived')",
                        name="stage"),
    )

    name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False, server_default="traffic")
    # "asset:<uuid>:<metric>" or "zone:<uuid>:<metric>" (or "zone:<uuid>:incidents").
    subject_key: Mapped[str] = mapped_column(String(160), nullable=False, server_default="")
    subject: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                    server_default="{}")
    freq: Mapped[str] = mapped_column(String(16), nullable=False, server_default="1h")
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    stage: Mapped[str] = mapped_column(String(16), nullable=False, default="candidate")
    features: Mapped[list[str]] = mapped_column(JSONB, nullable=False, default=list,
                                                server_default="[]")
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                    server_default="{}")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                     server_default="{}")
    training_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    training_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MlJob(UUIDPk, TenantOwned, Timestamps, Base):
    """A training or backtest run: queued, running with progress, then done or failed."""

    __tablename__ = "ml_job"
    __table_args__ = (
        Index("ix_ml_job_tenant_id_created_at", "tenant_id", "created_at"),
        CheckConstraint("kind in ('train', 'backtest')", name="kind"),
        CheckConstraint("status in ('queued', 'running', 'succeeded', 'failed')", name="status"),
    )

    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # train | backtest
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued",
                                        server_default="queued")
    progress: Mapped[float] = mapped_column(Double, nullable=False, default=0.0,
                                            server_default="0")
    message: Mapped[str | None] = mapped_column(Text)
    request: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                    server_default="{}")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="SET NULL"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
