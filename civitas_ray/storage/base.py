"""The one storage interface for files: documents, model artifacts, exports and backups.

Backends: `LocalStorage` (a directory, the default) and `S3Storage` (S3, MinIO). The API
is async; a backend that blocks (files, boto3) does so in worker threads.
"""

from __future__ import annotations

import builtins
import mimetypes
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from civitas_ray.storage.errors import InvalidObject, ObjectTooLarge
from civitas_ray.storage.keys import validate_key, validate_prefix

Body = bytes | AsyncIterable[bytes]
Method = Literal["GET", "PUT"]
DEFAULT_CONTENT_TYPE = "application/octet-stream"
SHA256_METADATA = "sha256"  # reserved: every backend records the body's digest under it
# S3 sends user metadata as HTTP headers: ASCII names and values, about 2 KiB in all.
MAX_METADATA_BYTES = 2048
_METADATA_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_METADATA_VALUE = re.compile(r"^[\x20-\x7e]*$")
mimetypes.init()  # reads the system's type tables now, not inside a request later
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+(\s*;\s*[\w.+-]+=(\"[^\"\r\n]*\"|[\w.+-]+))*$")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What a backend knows about one object.

    `sha256` and `content_type` are None in S3 listings (one more request per object
    would be needed) and for objects written to S3 by others (presigned PUTs).
    """

    key: str
    size: int
    uri: str
    sha256: str | None = None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    modified_at: datetime | None = None


def check_content_type(key: str, content_type: str | None) -> str:
    """The given content type if well formed, else a guess from the key's suffix."""
    if content_type is None:
        guessed, _ = mimetypes.guess_type(key, strict=False)
        return guessed or DEFAULT_CONTENT_TYPE
    if len(content_type) > 255 or not _CONTENT_TYPE.match(content_type):
        raise InvalidObject(f"{content_type!r} is not a valid content type")
    return content_type


def check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """Metadata both backends can store the same way, or a clear error."""
    if not metadata:
        return {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME.match(name):
            raise InvalidObject(f"Metadata name {name!r} must be 1-64 characters of a-z, "
                                "0-9, '-' and '_', starting with a letter or digit")
        if name == SHA256_METADATA:
            raise InvalidObject(f"Metadata name {name!r} is reserved for the body's digest")
        if not isinstance(value, str) or not _METADATA_VALUE.match(value):
            raise InvalidObject(f"Metadata {name!r} must be printable ASCII text")
        total += len(name) + len(value)
    if total > MAX_METADATA_BYTES - 128:  # room left for the digest
        raise InvalidObject(f"Metadata is larger than {MAX_METADATA_BYTES - 128} bytes")
    return dict(metadata)


def check_expiry(expires_s: int, *, maximum: int, method: str) -> int:
    """Signed URLs: a known method and a lifetime within the configured maximum."""
    if method not in ("GET", "PUT"):
        raise InvalidObject(f"Signed URLs are for GET or PUT, not {method!r}")
    if isinstance(expires_s, bool) or not isinstance(expires_s, int) \
            or not 1 <= expires_s <= maximum:
        raise InvalidObject(f"expires_s must be between 1 and {maximum} seconds")
    return expires_s


async def iter_body(body: Body, *, max_bytes: int | None) -> AsyncIterator[bytes]:
    """Chunks of `body`, raising `ObjectTooLarge` as soon as it passes `max_bytes`."""
    if isinstance(body, bytes | bytearray | memoryview):
        if max_bytes is not None and len(body) > max_bytes:
            raise ObjectTooLarge(f"The body is larger than {max_bytes} bytes")
        if body:
            yield bytes(body)
        return
    seen = 0
    async for chunk in body:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidObject("A streamed body must yield bytes")
        seen += len(chunk)
        if max_bytes is not None and seen > max_bytes:
            raise ObjectTooLarge(f"The body is larger than {max_bytes} bytes")
        if chunk:
            yield bytes(chunk)


class Storage(ABC):
    """Keys are '/'-separated relative paths (see `keys.validate_key`); values are bytes.

    Writes are all-or-nothing: a failed or cancelled `put` leaves the previous object (or
    none) in place. Bad keys, content types and metadata are refused before any I/O.
    """

    @abstractmethod
    async def put(self, key: str, data: Body, *, content_type: str | None = None,
                  metadata: dict[str, str] | None = None,
                  max_bytes: int | None = None) -> StoredObject:
        """Store `data` (bytes, or an async iterable of chunks) under `key`, replacing it."""

    async def get(self, key: str) -> bytes:
        """The whole object in memory; `open` streams large ones. Raises ObjectNotFound."""
        return b"".join([chunk async for chunk in self.open(key)])

    @abstractmethod
    def open(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; ObjectNotFound is raised on the first iteration."""

    @abstractmethod
    async def head(self, key: str) -> StoredObject | None:
        """The object's description, or None when there is none."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the object; True if there was one."""

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix` (never empty); how many."""

    @abstractmethod
    async def list(self, prefix: str = "") -> builtins.list[StoredObject]:
        """Objects whose key starts with `prefix` (a string prefix, as in S3), by key."""

    @abstractmethod
    async def signed_url(self, key: str, *, expires_s: int = 900,
                         method: Method = "GET") -> str:
        """A URL that lets anyone holding it GET (or PUT) this one key until it expires."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where the object lives: `file:///...` or `s3://bucket/key`."""

    async def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing
        """Release clients and pools."""

    @staticmethod
    def _key(key: str) -> str:
        return validate_key(key)

    @staticmethod
    def _nonempty_prefix(prefix: str) -> str:
        if not prefix:
            raise InvalidObject("delete_prefix needs a non-empty prefix (it never wipes all)")
        return validate_prefix(prefix)
