"""Hybrid search over document chunks: pgvector cosine + PostgreSQL full text, fused.

`search()` is the entry point for the API and for agents (no FastAPI needed). Each
retriever takes its own top `candidates` under the same filters; `hybrid` fuses the two
rankings with reciprocal rank fusion (score = sum of 1 / (k + rank)), so a chunk found by
both rises above one found by either alone and neither score scale dominates. Every hit
carries a citation whose span indexes the document's stored normalised text.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import Select, Text, func, select, text
from sqlalchemy.dialects.postgresql import TSQUERY
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.config import get_settings
from civitas_ray.documents.models import Document, DocumentChunk
from civitas_ray.errors import ValidationFailed

logger = logging.getLogger(__name__)
Mode = Literal["hybrid", "vector", "text"]
TS_CONFIG = "english"  # the configuration of document_chunk.tsv


@dataclass(frozen=True, slots=True)
class Citation:
    document_id: uuid.UUID
    title: str
    section_id: str | None
    section_title: str | None
    char_start: int
    char_end: int

    @property
    def url(self) -> str:
        return f"/api/v1/documents/{self.document_id}/source#chars={self.char_start}-" \
               f"{self.char_end}"

    def as_dict(self) -> dict[str, Any]:
        return {"document_id": self.document_id, "title": self.title,
                "section_id": self.section_id, "section_title": self.section_title,
                "char_start": self.char_start, "char_end": self.char_end, "url": self.url}


@dataclass(frozen=True, slots=True)
class SearchHit:
    score: float
    text: str
    document_id: uuid.UUID
    chunk_id: uuid.UUID
    citation: Citation
    vector_rank: int | None = None  # 1-based rank in each retriever, None if not found
    text_rank: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "text": self.text, "document_id": self.document_id,
                "chunk_id": self.chunk_id, "vector_rank": self.vector_rank,
                "text_rank": self.text_rank, "citation": self.citation.as_dict()}


@dataclass(frozen=True, slots=True)
class Filters:
    """What every retriever applies; the tenant is never optional."""

    tenant_id: uuid.UUID
    tags: Sequence[str] = ()
    tags_match: Literal["any", "all"] = "any"
    document_ids: Sequence[uuid.UUID] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        stmt = stmt.join(Document, Document.id == DocumentChunk.document_id).where(
            DocumentChunk.tenant_id == self.tenant_id, Document.tenant_id == self.tenant_id,
            Document.deleted_at.is_(None))
        if self.tags:
            tags = list(self.tags)
            stmt = stmt.where(Document.tags.contains(tags) if self.tags_match == "all"
                              else Document.tags.overlap(tags))
        if self.document_ids:
            stmt = stmt.where(DocumentChunk.document_id.in_(list(self.document_ids)))
        for column, bound, op in ((Document.created_at, self.created_after, "ge"),
                                  (Document.created_at, self.created_before, "lt"),
                                  (Document.updated_at, self.updated_after, "ge"),
                                  (Document.updated_at, self.updated_before, "lt")):
            if bound is not None:
                stmt = stmt.where(column >= bound if op == "ge" else column < bound)
        return stmt


@dataclass(slots=True)
class _Fused:
    score: float = 0.0
    ranks: dict[str, int] = field(default_factory=dict)


async def _vector_ranking(session: AsyncSession, filters: Filters, vector: np.ndarray,
                          k: int, ef_search: int, *, iterative: bool = True
                          ) -> list[tuple[uuid.UUID, float]]:
    # Transaction-local: HNSW explores this many candidates, and keeps going (iterative
    # scan, pgvector >= 0.8) when filters discard most of them. Without it a tenant with
    # a small share of the table gets far fewer than k rows (bench/hnsw_recall.py).
    await session.execute(text("select set_config('hnsw.ef_search', :v, true), "
                               "set_config('hnsw.iterative_scan', :i, true)"),
                          {"v": str(ef_search), "i": "relaxed_order" if iterative else "off"})
    distance = DocumentChunk.embedding.cosine_distance(vector.tolist())
    stmt = filters.apply(select(DocumentChunk.id, distance.label("distance"))
                         .where(DocumentChunk.embedding.is_not(None))).order_by(distance).limit(k)
    rows = (await session.execute(stmt)).all()
    # relaxed_order may return rows slightly out of order: sort them by the distance here.
    ranked = sorted(((r.id, 1.0 - float(r.distance)) for r in rows), key=lambda x: -x[1])
    return ranked


_WEBSEARCH_SYNTAX = re.compile(r'"|(^|\s)-\w|\sor\s', re.IGNORECASE)


def uses_websearch_syntax(q: str) -> bool:
    """Quotes, `-word` or ` or `: the user wrote a search expression, not a question."""
    return bool(_WEBSEARCH_SYNTAX.search(q))


def _tsquery(q: str) -> Any:
    """A search expression keeps websearch semantics (every word required); plain words,
    typically a question, match any of their lexemes (stop words dropped), ranked so that
    chunks with more of them, closer together, come first. Requiring every word of a
    question found almost nothing (recall@5 0.03 in bench/rag_quality.py)."""
    if uses_websearch_syntax(q):
        return func.websearch_to_tsquery(TS_CONFIG, q)
    return func.cast(func.replace(func.cast(func.plainto_tsquery(TS_CONFIG, q), Text),
                                  " & ", " | "), TSQUERY)


async def _text_ranking(session: AsyncSession, filters: Filters, q: str,
                        k: int) -> list[tuple[uuid.UUID, float]]:
    query = _tsquery(q)
    rank = func.ts_rank(DocumentChunk.tsv, query, 1)
    stmt = filters.apply(select(DocumentChunk.id, rank.label("rank"))
                         .where(DocumentChunk.tsv.op("@@")(query))) \
        .order_by(rank.desc(), DocumentChunk.id).limit(k)
    rows = (await session.execute(stmt)).all()
    return [(r.id, float(r.rank)) for r in rows]


def fuse(rankings: dict[str, list[tuple[uuid.UUID, float]]], *, k: int
         ) -> list[tuple[uuid.UUID, float, dict[str, int]]]:
    """Reciprocal rank fusion: (id, score, {retriever: 1-based rank}) best first."""
    fused: dict[uuid.UUID, _Fused] = {}
    for name, ranking in rankings.items():
        for rank, (chunk_id, _score) in enumerate(ranking, 1):
            f = fused.setdefault(chunk_id, _Fused())
            f.score += 1.0 / (k + rank)
            f.ranks[name] = rank
    ordered = sorted(fused.items(), key=lambda kv: (-kv[1].score, min(kv[1].ranks.values())))
    return [(cid, f.score, f.ranks) for cid, f in ordered]


async def search(session: AsyncSession, tenant_id: uuid.UUID, q: str, *, limit: int = 10,
                 mode: Mode = "hybrid", tags: Sequence[str] = (),
                 tags_match: Literal["any", "all"] = "any",
                 document_ids: Sequence[uuid.UUID] = (),
                 created_after: datetime | None = None, created_before: datetime | None = None,
                 updated_after: datetime | None = None, updated_before: datetime | None = None,
                 candidates: int | None = None, query_vector: np.ndarray | None = None,
                 ) -> list[SearchHit]:
    """The best `limit` chunks of one tenant's documents for `q`, each with its citation.

    `session` is any session of that tenant (row-level security applies as well as the
    explicit tenant filter). The query is embedded through the Embedder deployment when
    Serve runs, else in this process, unless `query_vector` is given (unit length).
    """
    q = (q or "").strip()
    if not q:
        raise ValidationFailed("The search query is empty")
    if mode not in ("hybrid", "vector", "text"):
        raise ValidationFailed(f"Unknown search mode {mode!r}: hybrid, vector or text")
    if not 1 <= limit <= 1000:
        raise ValidationFailed("limit must be between 1 and 1000")
    settings = get_settings().documents
    k = max(candidates or settings.search_candidates, limit)
    filters = Filters(tenant_id=tenant_id, tags=tuple(tags), tags_match=tags_match,
                      document_ids=tuple(document_ids), created_after=created_after,
                      created_before=created_before, updated_after=updated_after,
                      updated_before=updated_before)
    rankings: dict[str, list[tuple[uuid.UUID, float]]] = {}
    if mode in ("hybrid", "vector"):
        if query_vector is None:
            from civitas_ray.ai.embedder import embed_texts

            query_vector = (await embed_texts([q]))[0]
        rankings["vector"] = await _vector_ranking(
            session, filters, np.asarray(query_vector, dtype=np.float32), k,
            max(settings.hnsw_ef_search, k))
    if mode in ("hybrid", "text"):
        rankings["text"] = await _text_ranking(session, filters, q, k)

    if mode == "hybrid":
        ordered = fuse(rankings, k=settings.rrf_k)[:limit]
    else:
        only = rankings[mode]
        ordered = [(cid, score, {mode: rank}) for rank, (cid, score) in enumerate(only, 1)]
        ordered = ordered[:limit]
    if not ordered:
        return []
    rows = {r.DocumentChunk.id: r for r in (await session.execute(
        select(DocumentChunk, Document.title)
        .join(Document, Document.id == DocumentChunk.document_id)
        .where(DocumentChunk.tenant_id == tenant_id,
               DocumentChunk.id.in_([cid for cid, _, _ in ordered])))).all()}
    hits = []
    for cid, score, ranks in ordered:
        row = rows.get(cid)
        if row is None:  # replaced by a re-ingest between the two reads
            continue
        c: DocumentChunk = row.DocumentChunk
        hits.append(SearchHit(
            score=score, text=c.text, document_id=c.document_id, chunk_id=c.id,
            vector_rank=ranks.get("vector"), text_rank=ranks.get("text"),
            citation=Citation(document_id=c.document_id, title=row.title,
                              section_id=c.section_id, section_title=c.section_title,
                              char_start=c.char_start, char_end=c.char_end)))
    logger.debug("document search", extra={"tenant_id": str(tenant_id), "mode": mode,
                                           "hits": len(hits)})
    return hits
