"""/api/v1/documents and /api/v1/search: the RAG document library and hybrid search."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.datastructures import UploadFile
from starlette.types import Message

from civitas_ray.ai import embedder
from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.config import get_settings
from civitas_ray.documents import indexing, search, service
from civitas_ray.documents.parsing import DocumentTooLarge
from civitas_ray.documents.schemas import (
    DocumentPage,
    DocumentRead,
    SearchHitOut,
    SearchOut,
    SearchQuery,
    clean_tags,
    clean_title,
)
from civitas_ray.errors import ServiceUnavailable, ValidationFailed
from civitas_ray.schemas import page_of

router = APIRouter(prefix="/documents", tags=["documents"])
search_router = APIRouter(prefix="/search", tags=["documents"])

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and form fields around the file
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "title": {"type": "string"},
        "tags": {"type": "string", "description": "comma-separated"}}}},
    "text/plain": _BINARY, "text/markdown": _BINARY, "text/html": _BINARY,
    "application/pdf": _BINARY, "application/jsonl": _BINARY}}}
_UPLOAD_HELP = (
    "Send a multipart form (`file`, optional `title` and `tags`) or the raw document as the "
    "body with its Content-Type (`?title=&tags=&filename=`). Formats: text/plain, "
    "text/markdown, text/html, application/pdf, and application/jsonl where each line is a "
    "section `{\"id\", \"title\", \"text\"}`; a generic type is resolved by the file name. "
    "The document is checked and parsed before the answer (415 for other formats, 413 "
    "over the size limit, 422 for a body that does not parse, nothing kept), then indexed "
    "in the background: follow `GET /documents/{id}` (`status` ingesting -> ready or "
    "failed, `progress`).")


def _require_embedder() -> None:
    if not embedder.available():
        raise ServiceUnavailable("Document indexing and semantic search need the `ai` extra: "
                                 "install civitas_ray[ai] (sentence-transformers)")


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise DocumentTooLarge(f"The upload is larger than {limit} bytes")
    parts, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise DocumentTooLarge(f"The upload is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _upload(request: Request, *, title: str | None, tags: list[str],
                  filename: str | None) -> service.Upload:
    """The upload from a multipart form or a raw body, size-checked as it streams in."""
    max_bytes = get_settings().documents.max_upload_bytes
    content_type = request.headers.get("content-type")
    if not (content_type or "").lower().startswith("multipart/form-data"):
        data = await _read_capped(request, max_bytes)
        return service.Upload(data=data, content_type=content_type, filename=filename,
                              title=clean_title(title), tags=tuple(clean_tags(tags)))
    body = await _read_capped(request, max_bytes + MULTIPART_OVERHEAD)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise ValidationFailed("The form needs a `file` part", errors=[
                {"loc": ["body", "file"], "msg": "Field required", "type": "missing"}])
        data = await file.read()
        if len(data) > max_bytes:
            raise DocumentTooLarge(f"The document is larger than {max_bytes} bytes")
        form_title, form_tags = form.get("title"), form.get("tags")
        return service.Upload(
            data=data, content_type=file.content_type, filename=file.filename or filename,
            title=clean_title(form_title if isinstance(form_title, str) else title),
            tags=tuple(clean_tags([form_tags] if isinstance(form_tags, str) else tags)))
    finally:
        await form.close()


def _index_after_commit(ctx: AuthContext, doc: DocumentRead) -> None:
    tenant_id, doc_id, generation = ctx.principal.tenant_id, doc.id, doc.generation

    async def go() -> None:
        indexing.launch(doc_id, tenant_id, generation)

    ctx.after_commit(go)


def _upload_route() -> dict[str, Any]:
    """Route keywords of the upload routes: the permission first, then the embedder."""
    kw = needs(Perm.DOCUMENTS_WRITE)
    kw["dependencies"] = [*kw["dependencies"], Depends(_require_embedder)]
    kw["openapi_extra"] = {**kw["openapi_extra"], **_UPLOAD_BODY}
    return kw


TitleQ = Annotated[str | None, Query(max_length=500, description="Defaults to the document's "
                                     "own title (first heading, <title>, PDF metadata)")]
TagsQ = Annotated[list[str], Query(description="Comma-separated or repeated")]
FilenameQ = Annotated[str | None, Query(max_length=255, description="Original file name "
                                        "(resolves a generic Content-Type by its suffix)")]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentRead,
             summary="Upload a document (indexed in the background)",
             description=_UPLOAD_HELP, **_upload_route())
async def upload_document(ctx: AuthDep, request: Request, response: Response,
                          title: TitleQ = None, tags: TagsQ = [],  # noqa: B006
                          filename: FilenameQ = None) -> DocumentRead:
    upload = await _upload(request, title=title, tags=tags, filename=filename)
    prepared = await service.prepare(upload)
    doc = await service.create(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                               prepared=prepared, actor=ctx.actor,
                               created_by=ctx.principal.id if ctx.principal.kind == "user"
                               else None)
    out = DocumentRead.of(doc)
    _index_after_commit(ctx, out)
    response.headers["Location"] = f"/api/v1/documents/{doc.id}"
    return out


@router.get("", response_model=DocumentPage, summary="List documents",
            **needs(Perm.DOCUMENTS_READ))
async def list_documents(ctx: AuthDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                         offset: Annotated[int, Query(ge=0)] = 0,
                         tags: TagsQ = [],  # noqa: B006
                         status_: Annotated[str | None, Query(
                             alias="status", pattern="^(ingesting|ready|failed)$")] = None,
                         ) -> dict[str, Any]:
    rows, total = await service.list_(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                      limit=limit, offset=offset, tags=clean_tags(tags),
                                      status=status_)
    return page_of([DocumentRead.of(d) for d in rows], total=total, limit=limit, offset=offset)


@router.get("/{document_id}", response_model=DocumentRead,
            summary="A document and its indexing status", **needs(Perm.DOCUMENTS_READ))
async def get_document(ctx: AuthDep, document_id: uuid.UUID) -> DocumentRead:
    return DocumentRead.of(await service.require(
        session=ctx.session, tenant_id=ctx.principal.tenant_id, document_id=document_id))


@router.put("/{document_id}", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentRead,
            summary="Re-ingest a document with new content",
            description="The same body as `POST /documents`. The document keeps its id; its "
                        "chunks are replaced in one transaction once the new content is "
                        "indexed (until then searches answer from the previous content). "
                        "Title and tags change only when given.",
            **_upload_route())
async def reingest_document(ctx: AuthDep, document_id: uuid.UUID, request: Request,
                            title: TitleQ = None, tags: TagsQ = [],  # noqa: B006
                            filename: FilenameQ = None) -> DocumentRead:
    upload = await _upload(request, title=title, tags=tags, filename=filename)
    prepared = await service.prepare(upload)  # before the row lock: parsing may take a while
    doc = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                document_id=document_id, for_update=True)
    doc = await service.reingest(session=ctx.session, document=doc, prepared=prepared,
                                 actor=ctx.actor)
    out = DocumentRead.of(doc)
    _index_after_commit(ctx, out)
    return out


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a document, its chunks and its files",
               **needs(Perm.DOCUMENTS_WRITE))
async def delete_document(ctx: AuthDep, document_id: uuid.UUID) -> Response:
    doc = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                document_id=document_id, for_update=True)
    prefix = await service.delete(session=ctx.session, document=doc, actor=ctx.actor)

    async def clear() -> None:
        await service.remove_files(prefix)

    ctx.after_commit(clear)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{document_id}/source", summary="The document's text, as citations index it",
            description="The normalised text of the indexed content (UTF-8): a citation's "
                        "`char_start`/`char_end` are offsets in it (`#chars=start-end` in "
                        "its URL). `?original=true` redirects (307) to a signed URL of the "
                        "file as uploaded, valid for 15 minutes.",
            response_class=PlainTextResponse, **needs(Perm.DOCUMENTS_READ))
async def document_source(ctx: AuthDep, document_id: uuid.UUID,
                          original: bool = False) -> Response:
    doc = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                document_id=document_id)
    if original:
        return RedirectResponse(await service.original_url(doc),
                                status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    return PlainTextResponse(await service.source_text(doc),
                             headers={"Content-Security-Policy": "sandbox"})


@search_router.get("", response_model=SearchOut, summary="Search the tenant's documents",
                   description="Hybrid search: pgvector cosine similarity and PostgreSQL "
                               "full text (`websearch_to_tsquery`: quotes, `or`, `-word`), "
                               "fused with reciprocal rank fusion; `mode=vector|text` uses "
                               "one. Filters: tags (any or all), document ids, created/"
                               "updated ranges. Every hit cites its document, section and "
                               "character span.",
                   **needs(Perm.DOCUMENTS_READ))
async def search_documents(ctx: AuthDep, f: Annotated[SearchQuery, Query()]) -> SearchOut:
    if f.mode != "text":
        _require_embedder()
    hits = await search.search(
        ctx.session, ctx.principal.tenant_id, f.q, limit=f.limit, mode=f.mode,
        tags=clean_tags(f.tags), tags_match=f.tags_match, document_ids=f.document_id,
        created_after=f.created_after, created_before=f.created_before,
        updated_after=f.updated_after, updated_before=f.updated_before)
    return SearchOut(query=f.q, mode=f.mode,
                     items=[SearchHitOut.model_validate(h.as_dict()) for h in hits])
