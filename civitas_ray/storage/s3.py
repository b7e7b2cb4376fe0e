"""The S3 backend (AWS S3, MinIO, any S3-compatible store) through boto3, in worker threads.

Bodies under the multipart threshold go up in one PUT with their SHA-256 in the object's
metadata. Larger or streamed bodies that grow past it go up in parts; a failure or a
cancellation aborts the upload, so no half-written object or orphaned parts remain.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from civitas_ray.storage.base import (
    SHA256_METADATA,
    Body,
    Method,
    Storage,
    StoredObject,
    check_content_type,
    check_expiry,
    check_metadata,
    iter_body,
)
from civitas_ray.storage.errors import ObjectNotFound, ObjectTooLarge, StorageUnavailable
from civitas_ray.storage.keys import validate_prefix

log = logging.getLogger(__name__)
MAX_PARTS = 10_000  # S3's limit per multipart upload
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}


class S3Storage(Storage):
    """One bucket. The boto3 client is built (and the bucket checked) on first use."""

    def __init__(self, *, bucket: str, client_factory: Callable[[], Any],
                 create_bucket: bool = False, region: str = "us-east-1",
                 multipart_threshold: int = 16 * 1024**2, part_size: int = 8 * 1024**2,
                 chunk_size: int = 1024**2, max_url_expires_s: int = MAX_PRESIGN_S) -> None:
        self.bucket = bucket
        self._factory = client_factory
        self._create_bucket = create_bucket
        self._region = region
        self._threshold = multipart_threshold
        self._part_size = part_size
        self._chunk = chunk_size
        self._max_expires = min(max_url_expires_s, MAX_PRESIGN_S)
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        """The boto3 client (thread-safe; shared by every call of this backend)."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    client = await asyncio.to_thread(self._factory)
                    await asyncio.to_thread(self._ensure_bucket, client)
                    self._client = client
        return self._client

    def _ensure_bucket(self, client: Any) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code not in _MISSING | _NO_BUCKET:
                raise StorageUnavailable(f"Bucket '{self.bucket}' is not usable: {code}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"The object store is unreachable: {exc}") from exc
        if not self._create_bucket:
            raise StorageUnavailable(f"Bucket '{self.bucket}' does not exist and "
                                     "storage.s3.create_bucket is off")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self._region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise StorageUnavailable(f"Could not create bucket '{self.bucket}'") from exc
        log.info("bucket created", extra={"storage": "s3", "bucket": self.bucket})

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        """One boto3 operation in a worker thread, its errors mapped to ours."""
        client = await self.client()
        try:
            return await asyncio.to_thread(getattr(client, operation), **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in _MISSING:
                raise ObjectNotFound(f"No object '{kwargs.get('Key')}'") from None
            log.warning("s3 operation failed", extra={"operation": operation, "code": code})
            raise StorageUnavailable(f"The object store refused {operation}: {code}") from exc
        except BotoCoreError as exc:
            log.warning("s3 unreachable", extra={"operation": operation, "error": str(exc)})
            raise StorageUnavailable(f"The object store is unreachable: {exc}") from exc

    # -- writes ------------------------------------------------------------------------

    async def put(self, key: str, data: Body, *, content_type: str | None = None,
                  metadata: dict[str, str] | None = None,
                  max_bytes: int | None = None) -> StoredObject:
        key = self._key(key)
        ctype = check_content_type(key, content_type)
        meta = check_metadata(metadata)
        known_sha: str | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            data = bytes(data)
            if max_bytes is not None and len(data) > max_bytes:
                raise ObjectTooLarge(f"The body is larger than {max_bytes} bytes")
            known_sha = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
            if len(data) < self._threshold:
                await self._call("put_object", Bucket=self.bucket, Key=key, Body=data,
                                 ContentType=ctype, Metadata={**meta, SHA256_METADATA: known_sha})
                return self._stored(key, len(data), known_sha, ctype, meta)
        return await self._put_stream(key, iter_body(data, max_bytes=max_bytes), ctype, meta,
                                       known_sha)

    async def _put_stream(self, key: str, chunks: AsyncIterator[bytes], ctype: str,
                          meta: dict[str, str], known_sha: str | None) -> StoredObject:
        digest = hashlib.sha256()
        pending = bytearray()
        size = 0
        upload_id: str | None = None
        parts: builtins.list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if known_sha is None:
                    await asyncio.to_thread(digest.update, chunk)
                pending += chunk
                if upload_id is None and len(pending) >= self._threshold:
                    created = await self._call(
                        "create_multipart_upload", Bucket=self.bucket, Key=key,
                        ContentType=ctype,
                        Metadata={**meta, SHA256_METADATA: known_sha} if known_sha else meta)
                    upload_id = created["UploadId"]
                if upload_id is not None and len(pending) >= self._part_size:
                    pending = await self._upload_full_parts(key, upload_id, pending, parts)
            sha = known_sha or digest.hexdigest()
            if upload_id is None:
                await self._call("put_object", Bucket=self.bucket, Key=key, Body=bytes(pending),
                                 ContentType=ctype, Metadata={**meta, SHA256_METADATA: sha})
                return self._stored(key, size, sha, ctype, meta)
            if pending or not parts:
                await self._upload_part(key, upload_id, bytes(pending), parts)
            await self._call("complete_multipart_upload", Bucket=self.bucket, Key=key,
                             UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            if upload_id is not None:
                await asyncio.shield(self._abort(key, upload_id))
            raise
        if known_sha is None:
            await self._tag_digest(key, sha)
        log.info("object stored", extra={"storage": "s3", "key": key, "size": size,
                                          "parts": len(parts)})
        return self._stored(key, size, sha, ctype, meta)

    async def _upload_full_parts(self, key: str, upload_id: str, pending: bytearray,
                                 parts: builtins.list[dict[str, Any]]) -> bytearray:
        """Send every whole part in `pending`; return what is left (less than a part)."""
        view = memoryview(pending)
        offset = 0
        try:
            while len(pending) - offset >= self._part_size:
                await self._upload_part(key, upload_id,
                                        bytes(view[offset:offset + self._part_size]), parts)
                offset += self._part_size
            return bytearray(view[offset:])
        finally:
            view.release()

    async def _upload_part(self, key: str, upload_id: str, body: bytes,
                           parts: builtins.list[dict[str, Any]]) -> None:
        number = len(parts) + 1
        if number > MAX_PARTS:
            raise ObjectTooLarge(f"The body needs more than {MAX_PARTS} parts of "
                                 f"{self._part_size} bytes; raise storage.part_size_bytes")
        sent = await self._call("upload_part", Bucket=self.bucket, Key=key, UploadId=upload_id,
                                PartNumber=number, Body=body)
        parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._call("abort_multipart_upload", Bucket=self.bucket, Key=key,
                             UploadId=upload_id)
            log.info("multipart upload aborted", extra={"storage": "s3", "key": key})
        except Exception:
            # The bucket's lifecycle rule for incomplete uploads is the backstop here.
            log.exception("could not abort a multipart upload",
                          extra={"storage": "s3", "key": key, "upload_id": upload_id})

    async def _tag_digest(self, key: str, sha: str) -> None:
        """Streamed multipart bodies learn their digest at the end: it goes in a tag."""
        try:
            await self._call("put_object_tagging", Bucket=self.bucket, Key=key,
                             Tagging={"TagSet": [{"Key": SHA256_METADATA, "Value": sha}]})
        except StorageUnavailable:
            log.warning("could not tag an object with its digest",
                        extra={"storage": "s3", "key": key})

    def _stored(self, key: str, size: int, sha: str, ctype: str,
                meta: dict[str, str]) -> StoredObject:
        return StoredObject(key=key, size=size, uri=self.uri(key), sha256=sha,
                            content_type=ctype, metadata=meta)

    # -- reads -------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        response = await self._call("get_object", Bucket=self.bucket, Key=self._key(key))
        body = response["Body"]
        try:
            return bytes(await asyncio.to_thread(body.read))
        finally:
            body.close()

    def open(self, key: str) -> AsyncIterator[bytes]:
        return self._stream(self._key(key))

    async def _stream(self, key: str) -> AsyncIterator[bytes]:
        response = await self._call("get_object", Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, self._chunk):
                yield chunk
        finally:
            body.close()

    async def head(self, key: str) -> StoredObject | None:
        key = self._key(key)
        try:
            response = await self._call("head_object", Bucket=self.bucket, Key=key)
        except ObjectNotFound:
            return None
        meta = dict(response.get("Metadata") or {})
        sha = meta.pop(SHA256_METADATA, None)
        if sha is None and "-" in str(response.get("ETag", "")):
            tags = await self._call("get_object_tagging", Bucket=self.bucket, Key=key)
            sha = next((t["Value"] for t in tags.get("TagSet", [])
                        if t["Key"] == SHA256_METADATA), None)
        return StoredObject(key=key, size=int(response["ContentLength"]), uri=self.uri(key),
                            sha256=sha, content_type=response.get("ContentType"),
                            metadata=meta, modified_at=response.get("LastModified"))

    async def list(self, prefix: str = "") -> builtins.list[StoredObject]:
        prefix = validate_prefix(prefix)
        return [StoredObject(key=item["Key"], size=int(item["Size"]), uri=self.uri(item["Key"]),
                             modified_at=item.get("LastModified"))
                for item in await self._list_raw(prefix)]

    async def _list_raw(self, prefix: str) -> builtins.list[dict[str, Any]]:
        client = await self.client()

        def run() -> builtins.list[dict[str, Any]]:
            items: builtins.list[dict[str, Any]] = []
            for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                items.extend(page.get("Contents", []))
            return items

        try:
            items = await asyncio.to_thread(run)
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"Could not list '{prefix}': {exc}") from exc
        items.sort(key=lambda item: item["Key"])
        return items

    # -- deletes -----------------------------------------------------------------------

    async def delete(self, key: str) -> bool:
        key = self._key(key)
        # S3 deletes are idempotent and silent: only a HEAD tells whether there was one.
        if await self.head(key) is None:
            return False
        await self._call("delete_object", Bucket=self.bucket, Key=key)
        log.info("object deleted", extra={"storage": "s3", "key": key})
        return True

    async def delete_prefix(self, prefix: str) -> int:
        prefix = self._nonempty_prefix(prefix)
        keys = [item["Key"] for item in await self._list_raw(prefix)]
        deleted = 0
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys at most
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            response = await self._call("delete_objects", Bucket=self.bucket,
                                        Delete={"Objects": batch, "Quiet": False})
            deleted += len(response.get("Deleted", []))
            if response.get("Errors"):
                raise StorageUnavailable(f"{len(response['Errors'])} objects under '{prefix}' "
                                         f"could not be deleted ({deleted} were)")
        log.info("objects deleted", extra={"storage": "s3", "prefix": prefix, "count": deleted})
        return deleted

    # -- addresses ---------------------------------------------------------------------

    async def signed_url(self, key: str, *, expires_s: int = 900,
                         method: Method = "GET") -> str:
        key = self._key(key)
        check_expiry(expires_s, maximum=self._max_expires, method=method)
        client = await self.client()
        operation = "get_object" if method == "GET" else "put_object"
        url: str = await asyncio.to_thread(
            client.generate_presigned_url, ClientMethod=operation,
            Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s, HttpMethod=method)
        return url

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
