"""Zone: a tenant's district polygon (MultiPolygon, SRID 4326)."""

from __future__ import annotations

from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, SoftDelete, TenantOwned, Timestamps, UUIDPk


class Zone(UUIDPk, TenantOwned, Timestamps, SoftDelete, Base):
    __tablename__ = "zone"
    __table_args__ = (
        Index("ix_zone_geom", "geom", postgresql_using="gist"),
        Index("uq_zone_tenant_id_code_live", "tenant_id", "code", unique=True,
              postgresql_where=text("deleted_at is null")),
    )

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    code: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False, default="district")
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                        server_default="{}")
    geom: Mapped[Any] = mapped_column(
        Geometry("MULTIPOLYGON", srid=4326, spatial_index=False), nullable=False)
