"""/api/v1/files: signed URLs of the local backend, downloaded and uploaded over HTTP.

The routes read no token and no API key: the HMAC signature in the query is the whole
authorisation, for one method, one key and until one time (see `signing.py`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import StreamingResponse

from civitas_ray.config import get_settings
from civitas_ray.storage import get_storage
from civitas_ray.storage.base import Storage
from civitas_ray.storage.errors import ObjectNotFound, ObjectTooLarge
from civitas_ray.storage.local import LocalStorage
from civitas_ray.storage.schemas import StoredObjectRead

router = APIRouter(prefix="/files", tags=["files"])

SIGNED_ONLY = (
    "**Authenticated by its signature alone**: no bearer token or API key is read. The URL "
    "comes from `Storage.signed_url(key, method=..., expires_s=...)` on the server and "
    "carries `expires` (unix seconds) and `signature` (HMAC-SHA256 over method, key and "
    "expiry, keyed from the server's auth secret). A missing, tampered or expired "
    "signature gets 403 problem+json. Served only with the local storage backend; with "
    "S3 the signed URLs point at the object store itself."
)
# Signed URLs are anonymous by design, so `x-permission` says "public".
PUBLIC = {"x-permission": "public"}
# Anything a user uploaded is served inert: no scripts, no plugins, no framing.
FILE_HEADERS = {"Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "private, no-cache"}


def storage_dep() -> Storage:
    """The process's storage backend (tests override this with their own)."""
    return get_storage()


StorageDep = Annotated[Storage, Depends(storage_dep)]
Expires = Annotated[int | None, Query(ge=0, description="Expiry, unix seconds")]
Signature = Annotated[str | None, Query(max_length=128, description="URL signature")]


def _local(storage: Storage) -> LocalStorage:
    if not isinstance(storage, LocalStorage):
        raise ObjectNotFound("Signed file URLs are served here only by the local backend")
    return storage


@router.get("/{key:path}", summary="Download a file through a signed URL",
            description=SIGNED_ONLY, response_class=StreamingResponse, openapi_extra=PUBLIC,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "The file, streamed with its content type"}})
async def download(key: str, storage: StorageDep, expires: Expires = None,
                   signature: Signature = None) -> StreamingResponse:
    local = _local(storage)
    local.signer.verify("GET", key, expires, signature)
    obj = await local.head(key)
    if obj is None:
        raise ObjectNotFound(f"No object '{key}'")
    headers: dict[str, Any] = {**FILE_HEADERS, "Content-Length": str(obj.size)}
    if obj.sha256:
        headers["ETag"] = f'"{obj.sha256}"'
    return StreamingResponse(local.open(key), media_type=obj.content_type, headers=headers)


@router.put("/{key:path}", status_code=status.HTTP_201_CREATED, response_model=StoredObjectRead,
            summary="Upload a file through a signed URL", description=SIGNED_ONLY + (
                " The request body is the file, streamed to disk; `Content-Type` is kept."),
            openapi_extra=PUBLIC)
async def upload(key: str, request: Request, storage: StorageDep, expires: Expires = None,
                 signature: Signature = None) -> StoredObjectRead:
    local = _local(storage)
    local.signer.verify("PUT", key, expires, signature)
    limit = get_settings().storage.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ObjectTooLarge(f"The body is larger than {limit} bytes")
    obj = await local.put(key, request.stream(), content_type=request.headers.get("content-type"),
                          max_bytes=limit)
    return StoredObjectRead.of(obj)
