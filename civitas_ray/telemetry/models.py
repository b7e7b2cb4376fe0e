"""Telemetry hypertable (and hourly rollups): one row per (asset, metric, ts).

No surrogate key: the natural key (asset_id, metric, ts) de-duplicates readings and
serves "latest per stream" and range scans from one index.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Double, Index, SmallInteger, String
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, TenantOwned


class Telemetry(TenantOwned, Base):
    __tablename__ = "telemetry"
    __table_args__ = (
        Index("ix_telemetry_tenant_id_ts", "tenant_id", "ts"),
    )

    asset_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    value: Mapped[float] = mapped_column(Double, nullable=False)
    quality: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=0,
                                         server_default="0")


class TelemetryRollup(TenantOwned, Base):
    """Hourly aggregates kept longer than raw readings (our own job: no caggs in Apache TSDB)."""

    __tablename__ = "telemetry_rollup"

    asset_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    avg: Mapped[float] = mapped_column(Double, nullable=False)
    min: Mapped[float] = mapped_column(Double, nullable=False)
    max: Mapped[float] = mapped_column(Double, nullable=False)
    last: Mapped[float] = mapped_column(Double, nullable=False)
