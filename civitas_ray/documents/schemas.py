"""Pydantic shapes of the documents API: documents, search queries and cited hits."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from civitas_ray.documents.models import Document
from civitas_ray.errors import ValidationFailed

MAX_TAGS = 32
MAX_TITLE = 500
_TAG = re.compile(r"^[\w][\w .:/+-]{0,63}$")


def clean_tags(values: list[str] | None) -> list[str]:
    """Tags as stored: lower-case, unique, in the order given; commas split a value."""
    out: list[str] = []
    for value in values or []:
        for raw in value.split(","):
            tag = raw.strip().lower()
            if not tag:
                continue
            if not _TAG.match(tag):
                raise ValidationFailed(f"Tag {raw!r} must be 1-64 letters, digits, spaces or "
                                       "'_ . : / + -', starting with a letter or digit")
            if tag not in out:
                out.append(tag)
    if len(out) > MAX_TAGS:
        raise ValidationFailed(f"At most {MAX_TAGS} tags")
    return out


def clean_title(value: str | None) -> str | None:
    if value is None:
        return None
    title = " ".join(value.split())
    if len(title) > MAX_TITLE:
        raise ValidationFailed(f"The title is longer than {MAX_TITLE} characters")
    return title or None


class DocumentRead(BaseModel):
    """A document and where its indexing stands (`status`: ingesting, ready or failed)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    content_type: str
    filename: str | None = None
    size_bytes: int
    sha256: str | None
    tags: list[str]
    status: Literal["ingesting", "ready", "failed"]
    progress: float = Field(ge=0.0, le=1.0)
    error: str | None = None
    generation: int = Field(description="Bumped by every upload of new content (PUT)")
    chunks: int | None = Field(None, description="Chunks indexed (of the indexed generation)")
    sections: int | None = None
    chars: int | None = Field(None, description="Length of the normalised text")
    source_url: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, doc: Document) -> DocumentRead:
        p: dict[str, Any] = doc.properties or {}
        return cls(id=doc.id, title=doc.title, content_type=doc.content_type,
                   filename=p.get("filename"), size_bytes=doc.size_bytes, sha256=doc.sha256,
                   tags=list(doc.tags or []), status=doc.status,
                   progress=doc.progress, error=doc.error,
                   generation=int(p.get("generation", 1)), chunks=p.get("chunks"),
                   sections=p.get("sections"), chars=p.get("chars"),
                   source_url=f"/api/v1/documents/{doc.id}/source",
                   created_at=doc.created_at, updated_at=doc.updated_at)


class DocumentPage(BaseModel):
    items: list[DocumentRead]
    total: int
    limit: int
    offset: int
    next_offset: int | None = None


class SearchQuery(BaseModel):
    """`GET /search` parameters."""

    model_config = ConfigDict(extra="forbid")

    q: str = Field(min_length=1, max_length=1000, description="Words or a question")
    limit: int = Field(10, ge=1, le=100)
    mode: Literal["hybrid", "vector", "text"] = "hybrid"
    tags: list[str] = Field(default_factory=list,
                            description="Only documents with these tags (comma-separated "
                                        "or repeated)")
    tags_match: Literal["any", "all"] = "any"
    document_id: list[uuid.UUID] = Field(default_factory=list,
                                         description="Only these documents")
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None

    @field_validator("q")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("q must contain words")
        return v.strip()


class CitationOut(BaseModel):
    document_id: uuid.UUID
    title: str
    section_id: str | None
    section_title: str | None
    char_start: int
    char_end: int
    url: str = Field(description="The cited span in the document's normalised text")


class SearchHitOut(BaseModel):
    score: float = Field(description="hybrid: reciprocal-rank-fusion score; vector: cosine "
                                     "similarity; text: ts_rank_cd")
    text: str
    document_id: uuid.UUID
    chunk_id: uuid.UUID
    vector_rank: int | None = None
    text_rank: int | None = None
    citation: CitationOut


class SearchOut(BaseModel):
    query: str
    mode: str
    items: list[SearchHitOut]
