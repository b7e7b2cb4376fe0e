"""Asset: a sensor, meter, signal controller, station or vehicle at a point."""

from __future__ import annotations

import uuid
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, SoftDelete, TenantOwned, Timestamps, UUIDPk


class Asset(UUIDPk, TenantOwned, Timestamps, SoftDelete, Base):
    __tablename__ = "asset"
    __table_args__ = (
        Index("ix_asset_geom", "geom", postgresql_using="gist"),
        Index("uq_asset_tenant_id_external_id_live", "tenant_id", "external_id", unique=True,
              postgresql_where=text("deleted_at is null and external_id is not null")),
    )

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    external_id: Mapped[str | None] = mapped_column(String(128))
    zone_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("zone.id", ondelete="SET NULL"), index=True)
    # Metric name -> {"unit", "min", "max"}: physical ranges feed data-quality flags.
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                     server_default="{}")
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                        server_default="{}")
    geom: Mapped[Any] = mapped_column(
        Geometry("POINT", srid=4326, spatial_index=False), nullable=False)
