"""Background indexing: a stored generation -> chunks -> embeddings -> `document_chunk`.

`launch` runs `index_document` as a Ray task when this process is connected to Ray (a
Serve replica is), or as a task of this process's event loop otherwise (plain uvicorn,
tests). Chunking and embedding run off the event loop. Progress is written to the
document as batches are embedded; the chunks of the generation replace the previous ones
in one transaction that first locks the document and checks that it still exists and
still wants this generation, so a delete or a newer upload during indexing wins and
nothing half-indexed is ever visible.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, update

from civitas_ray.config import get_settings
from civitas_ray.db.session import tenant_session
from civitas_ray.documents import service
from civitas_ray.documents.chunking import Chunk, ChunkSizes, chunk_document
from civitas_ray.documents.models import Document, DocumentChunk
from civitas_ray.documents.parsing import ParsedDocument, Section
from civitas_ray.errors import CivitasError
from civitas_ray.storage import get_storage

log = logging.getLogger(__name__)
EMBED_BATCH = 64
_tasks: set[asyncio.Task[Any]] = set()  # keep local runs referenced until they finish


def embedding_input(chunk: Chunk) -> str:
    """What the model reads: the section title first when the chunk does not start with
    it, so a chunk deep in a long section still says what it is about."""
    title = chunk.section_title
    if title and not chunk.text.startswith(title):
        return f"{title}\n{chunk.text}"
    return chunk.text


class _Superseded(Exception):
    """The document was deleted or given newer content while this run was indexing."""


async def _set_progress(tenant_id: uuid.UUID, document_id: uuid.UUID, generation: int,
                        progress: float) -> None:
    """Record progress; raises `_Superseded` when the document no longer wants this run."""
    async with tenant_session(tenant_id) as s:
        result = await s.execute(update(Document).where(
            Document.id == document_id, Document.deleted_at.is_(None),
            Document.properties["generation"].as_integer() == generation,
        ).values(progress=round(progress, 3)))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise _Superseded


async def _fail(tenant_id: uuid.UUID, document_id: uuid.UUID, generation: int,
                error: str) -> None:
    async with tenant_session(tenant_id) as s:
        await s.execute(update(Document).where(
            Document.id == document_id,
            Document.properties["generation"].as_integer() == generation,
        ).values(status="failed", error=error[:2000]))


async def _load(pending: dict[str, Any]) -> ParsedDocument:
    storage = get_storage()
    text = (await storage.get(pending["text_key"])).decode("utf-8")
    sections = [Section.of(d) for d in json.loads(await storage.get(pending["sections_key"]))]
    return ParsedDocument(text=text, sections=sections)


async def _embed(tenant_id: uuid.UUID, document_id: uuid.UUID, generation: int,
                 chunks: list[Chunk]) -> np.ndarray:
    from civitas_ray.ai.embedder import embed_texts

    inputs = [embedding_input(c) for c in chunks]
    parts = []
    for i in range(0, len(inputs), EMBED_BATCH):
        parts.append(await embed_texts(inputs[i:i + EMBED_BATCH]))
        done = min(i + EMBED_BATCH, len(inputs))
        await _set_progress(tenant_id, document_id, generation, 0.1 + 0.85 * done / len(inputs))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


async def _commit(tenant_id: uuid.UUID, document_id: uuid.UUID, generation: int,
                  pending: dict[str, Any], parsed: ParsedDocument, chunks: list[Chunk],
                  vectors: np.ndarray) -> bool:
    """Swap the document's chunks for these in one transaction; False if superseded."""
    async with tenant_session(tenant_id) as s:
        doc = await service.get(session=s, tenant_id=tenant_id, document_id=document_id,
                                for_update=True)
        if doc is None or int((doc.properties or {}).get("generation", 0)) != generation:
            return False
        await s.execute(delete(DocumentChunk).where(DocumentChunk.document_id == document_id))
        if chunks:
            await s.execute(insert(DocumentChunk), [
                {"id": uuid.uuid4(), "tenant_id": tenant_id, "document_id": document_id,
                 "ordinal": c.ordinal, "section_id": c.section_id,
                 "section_title": c.section_title, "text": c.text,
                 "char_start": c.char_start, "char_end": c.char_end,
                 "embedding": vectors[i].tolist()}
                for i, c in enumerate(chunks)])
        props = {k: v for k, v in (doc.properties or {}).items() if k != "pending"}
        props.update(indexed_generation=generation, source_key=pending["source_key"],
                     text_key=pending["text_key"], sections_key=pending["sections_key"],
                     chunks=len(chunks), sections=len(parsed.sections), chars=len(parsed.text))
        doc.properties = props
        doc.status, doc.progress, doc.error = "ready", 1.0, None
    return True


async def _clear_older_generations(tenant_id: uuid.UUID, document_id: uuid.UUID,
                                   generation: int) -> None:
    """Remove the files of generations before this one (never a newer upload's)."""
    storage = get_storage()
    prefix = service.document_prefix(tenant_id, document_id)
    for obj in await storage.list(prefix):
        head = obj.key[len(prefix):].split("/", 1)[0]
        if head.startswith("v") and head[1:].isdigit() and int(head[1:]) < generation:
            await storage.delete(obj.key)


async def index_document(document_id: uuid.UUID, tenant_id: uuid.UUID,
                         generation: int) -> str:
    """Index one generation of a document to the end; returns what became of it
    (`ready`, `superseded`, `failed`). Failures are recorded on the document."""
    started = time.perf_counter()
    async with tenant_session(tenant_id) as s:
        doc = await service.get(session=s, tenant_id=tenant_id, document_id=document_id)
        pending = dict((doc.properties or {}).get("pending") or {}) if doc else {}
    if doc is None or pending.get("generation") != generation:
        return "superseded"
    try:
        parsed = await _load(pending)
        settings = get_settings().documents
        sizes = ChunkSizes(target_chars=settings.chunk_target_chars,
                           max_chars=settings.chunk_max_chars, overlap=settings.chunk_overlap)
        chunks = await asyncio.to_thread(chunk_document, parsed, sizes)
        await _set_progress(tenant_id, document_id, generation, 0.1)
        vectors = await _embed(tenant_id, document_id, generation, chunks)
        if not await _commit(tenant_id, document_id, generation, pending, parsed, chunks,
                             vectors):
            raise _Superseded
    except _Superseded:
        log.info("document indexing superseded", extra={
            "document_id": str(document_id), "generation": generation})
        return "superseded"
    except Exception as exc:
        if isinstance(exc, CivitasError):
            log.warning("document indexing failed", extra={
                "document_id": str(document_id), "error": str(exc)})
            message = str(exc)
        else:
            log.exception("document indexing failed", extra={"document_id": str(document_id)})
            message = f"{type(exc).__name__}: {exc}"
        await _fail(tenant_id, document_id, generation, message)
        return "failed"
    await _clear_older_generations(tenant_id, document_id, generation)
    log.info("document indexed", extra={
        "document_id": str(document_id), "generation": generation, "chunks": len(chunks),
        "chars": len(parsed.text), "seconds": round(time.perf_counter() - started, 2)})
    return "ready"


def _ray_index(document_id: str, tenant_id: str, generation: int) -> str:
    return asyncio.run(_index_and_dispose(uuid.UUID(document_id), uuid.UUID(tenant_id),
                                          generation))


async def _index_and_dispose(document_id: uuid.UUID, tenant_id: uuid.UUID,
                             generation: int) -> str:
    from civitas_ray.db.session import dispose_engine

    try:
        return await index_document(document_id, tenant_id, generation)
    finally:
        await dispose_engine()


def launch(document_id: uuid.UUID, tenant_id: uuid.UUID, generation: int) -> str:
    """Start indexing a generation; returns where it runs (`ray` or `local`)."""
    import ray

    if ray.is_initialized():
        ray.remote(num_cpus=1, max_retries=0)(_ray_index).remote(
            str(document_id), str(tenant_id), generation)
        return "ray"
    task = asyncio.get_running_loop().create_task(
        index_document(document_id, tenant_id, generation))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return "local"
