"""RAG storage: documents and their embedded, citable chunks."""

from __future__ import annotations

import uuid
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, Computed, Double, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from civitas_ray.db.base import Base, SoftDelete, TenantOwned, Timestamps, UUIDPk

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


class Document(UUIDPk, TenantOwned, Timestamps, SoftDelete, Base):
    __tablename__ = "document"

    title: Mapped[str] = mapped_column(String(500), nullable=False)
    content_type: Mapped[str] = mapped_column(String(128), nullable=False)
    source_uri: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list,
                                            server_default="{}")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="ingesting")
    progress: Mapped[float] = mapped_column(Double, nullable=False, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict,
                                                        server_default="{}")
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("app_user.id", ondelete="SET NULL"))


class DocumentChunk(UUIDPk, TenantOwned, Base):
    __tablename__ = "document_chunk"
    __table_args__ = (
        Index("ix_document_chunk_embedding_hnsw", "embedding", postgresql_using="hnsw",
              postgresql_with={"m": 16, "ef_construction": 64},
              postgresql_ops={"embedding": "vector_cosine_ops"}),
        Index("ix_document_chunk_tsv", "tsv", postgresql_using="gin"),
        Index("ix_document_chunk_document_id_ordinal", "document_id", "ordinal", unique=True),
    )

    document_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("document.id", ondelete="CASCADE"), nullable=False)
    ordinal: Mapped[int] = mapped_column(Integer, nullable=False)
    section_id: Mapped[str | None] = mapped_column(String(200))
    section_title: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    char_start: Mapped[int] = mapped_column(Integer, nullable=False)
    char_end: Mapped[int] = mapped_column(Integer, nullable=False)
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIM), nullable=True)
    tsv: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english', coalesce(section_title, '') || ' ' || text)",
                           persisted=True))
