"""Documents: upload, re-ingest, read and delete; the files live in storage.

Storage layout of one document (`tenant_key(tenant, "documents", <id>, ...)`):
`v<generation>/original` (the bytes as uploaded), `v<generation>/text.txt` (the
normalised text every citation indexes into) and `v<generation>/sections.json` (the
section spans). Each upload of new content (create, or re-ingest with PUT) is a new
generation; indexing switches the document to it in one transaction and only then are
the previous generation's files removed, so the chunks in the database and the text they
cite always belong together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit.service import Actor, record
from civitas_ray.documents import parsing
from civitas_ray.documents.models import Document
from civitas_ray.errors import Conflict, NotFound
from civitas_ray.storage import ObjectNotFound, get_storage, tenant_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upload:
    """One upload as received, before parsing."""

    data: bytes
    content_type: str | None
    filename: str | None = None
    title: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prepared:
    upload: Upload
    fmt: str
    parsed: parsing.ParsedDocument

    @property
    def content_type(self) -> str:
        return parsing.FORMAT_TYPES[self.fmt]


async def prepare(upload: Upload) -> Prepared:
    """Check and parse an upload (in a worker thread); refuses it before anything is kept."""
    fmt = parsing.resolve_format(upload.content_type, upload.filename)
    _, params = parsing.split_content_type(upload.content_type)
    parsed = await asyncio.to_thread(parsing.parse, upload.data, fmt=fmt,
                                     charset=params.get("charset"))
    return Prepared(upload=upload, fmt=fmt, parsed=parsed)


def document_prefix(tenant_id: uuid.UUID, document_id: uuid.UUID) -> str:
    return tenant_key(tenant_id, "documents", str(document_id)) + "/"


def generation_key(tenant_id: uuid.UUID, document_id: uuid.UUID, generation: int,
                   name: str) -> str:
    return tenant_key(tenant_id, "documents", str(document_id), f"v{generation}", name)


async def _store(tenant_id: uuid.UUID, document_id: uuid.UUID, generation: int,
                 prepared: Prepared) -> dict[str, Any]:
    """Write the generation's three files; returns the document fields they determine."""
    storage = get_storage()
    original = generation_key(tenant_id, document_id, generation, "original")
    text_key = generation_key(tenant_id, document_id, generation, "text.txt")
    sections_key = generation_key(tenant_id, document_id, generation, "sections.json")
    parsed = prepared.parsed
    stored = await storage.put(original, prepared.upload.data,
                               content_type=prepared.content_type)
    await storage.put(text_key, parsed.text.encode("utf-8"),
                      content_type="text/plain; charset=utf-8")
    await storage.put(sections_key, json.dumps(
        [s.as_dict() for s in parsed.sections], ensure_ascii=False).encode("utf-8"),
        content_type="application/json")
    return {"sha256": stored.sha256, "size_bytes": stored.size, "source_uri": stored.uri,
            "pending": {"generation": generation, "source_key": original,
                        "text_key": text_key, "sections_key": sections_key}}


def _title(prepared: Prepared) -> str:
    up = prepared.upload
    return (up.title or prepared.parsed.title or up.filename or "Untitled document")[:500]


async def create(*, session: AsyncSession, tenant_id: uuid.UUID, prepared: Prepared,
                 actor: Actor, created_by: uuid.UUID | None) -> Document:
    """A new document in `ingesting` state with its files stored; indexing comes next."""
    doc_id = uuid.uuid4()
    files = await _store(tenant_id, doc_id, 1, prepared)
    try:
        doc = Document(
            id=doc_id, tenant_id=tenant_id, title=_title(prepared),
            content_type=prepared.content_type, source_uri=files["source_uri"],
            sha256=files["sha256"], size_bytes=files["size_bytes"],
            tags=list(prepared.upload.tags), status="ingesting", progress=0.0,
            properties={"generation": 1, "filename": prepared.upload.filename,
                        "pending": files["pending"]},
            created_by=created_by)
        session.add(doc)
        await session.flush()
        await record(session=session, actor=actor, action="document.upload",
                     tenant_id=tenant_id, target_type="document", target_id=doc_id,
                     after=_audit_view(doc))
        await session.refresh(doc)
    except BaseException:
        await get_storage().delete_prefix(document_prefix(tenant_id, doc_id))
        raise
    return doc


async def reingest(*, session: AsyncSession, document: Document, prepared: Prepared,
                   actor: Actor) -> Document:
    """New content for a document: a new generation, indexed in the background.

    Its current chunks keep answering searches until the new ones replace them in one
    transaction; the title and tags change only when the upload gives new ones.
    """
    before = _audit_view(document)
    props = dict(document.properties or {})
    generation = int(props.get("generation", 1)) + 1
    files = await _store(document.tenant_id, document.id, generation, prepared)
    props.update(generation=generation, pending=files["pending"],
                 filename=prepared.upload.filename or props.get("filename"))
    if prepared.upload.title or prepared.parsed.title:
        document.title = _title(prepared)
    if prepared.upload.tags:
        document.tags = list(prepared.upload.tags)
    document.content_type = prepared.content_type
    document.source_uri = files["source_uri"]
    document.sha256 = files["sha256"]
    document.size_bytes = files["size_bytes"]
    document.status, document.progress, document.error = "ingesting", 0.0, None
    document.properties = props
    await session.flush()
    await record(session=session, actor=actor, action="document.reingest",
                 tenant_id=document.tenant_id, target_type="document", target_id=document.id,
                 before=before, after=_audit_view(document))
    await session.refresh(document)
    return document


def _audit_view(doc: Document) -> dict[str, Any]:
    return {"title": doc.title, "content_type": doc.content_type, "sha256": doc.sha256,
            "size_bytes": doc.size_bytes, "tags": list(doc.tags or []),
            "generation": (doc.properties or {}).get("generation")}


async def get(*, session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID,
              for_update: bool = False) -> Document | None:
    stmt = select(Document).where(Document.id == document_id, Document.tenant_id == tenant_id,
                                  Document.deleted_at.is_(None))
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def require(*, session: AsyncSession, tenant_id: uuid.UUID, document_id: uuid.UUID,
                  for_update: bool = False) -> Document:
    doc = await get(session=session, tenant_id=tenant_id, document_id=document_id,
                    for_update=for_update)
    if doc is None:
        raise NotFound(f"Document {document_id} not found")
    return doc


async def list_(*, session: AsyncSession, tenant_id: uuid.UUID, limit: int, offset: int,
                tags: list[str] | None = None, status: str | None = None
                ) -> tuple[list[Document], int]:
    stmt = select(Document).where(Document.tenant_id == tenant_id,
                                  Document.deleted_at.is_(None))
    if tags:
        stmt = stmt.where(Document.tags.overlap(tags))
    if status:
        stmt = stmt.where(Document.status == status)
    total = int((await session.execute(
        select(func.count()).select_from(stmt.subquery()))).scalar_one())
    rows = (await session.execute(stmt.order_by(Document.created_at.desc(), Document.id)
                                  .limit(limit).offset(offset))).scalars().all()
    return list(rows), total


async def delete(*, session: AsyncSession, document: Document, actor: Actor) -> str:
    """Remove the document and (by cascade) its chunks; returns the storage prefix for
    the caller to clear once the transaction has committed."""
    await record(session=session, actor=actor, action="document.delete",
                 tenant_id=document.tenant_id, target_type="document", target_id=document.id,
                 before=_audit_view(document))
    prefix = document_prefix(document.tenant_id, document.id)
    await session.delete(document)
    await session.flush()
    return prefix


async def remove_files(prefix: str) -> None:
    """Clear a deleted document's files (after its transaction committed)."""
    try:
        removed = await get_storage().delete_prefix(prefix)
        log.info("document files removed", extra={"prefix": prefix, "objects": removed})
    except Exception:
        log.exception("document files not removed", extra={"prefix": prefix})


async def source_text(document: Document) -> str:
    """The normalised text of the indexed generation: what citations' spans index."""
    key = (document.properties or {}).get("text_key")
    if not key:
        raise Conflict("The document has not been indexed yet; its text is not available")
    try:
        return (await get_storage().get(key)).decode("utf-8")
    except ObjectNotFound:
        raise NotFound("The document's text is missing from storage") from None


async def original_url(document: Document, *, expires_s: int = 900) -> str:
    """A signed URL of the latest uploaded original."""
    props = document.properties or {}
    key = (props.get("pending") or {}).get("source_key") or props.get("source_key")
    if not key:
        raise NotFound("The document has no stored original")
    return await get_storage().signed_url(key, expires_s=expires_s)
