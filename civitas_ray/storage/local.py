"""The local-directory backend: atomic writes, digests while streaming, HMAC-signed URLs.

Layout under the root: `objects/<key>` holds the bytes, `meta/<key>.json` the sidecar
(size, sha256, content type, metadata), `tmp/` the writes in progress. The sidecars live
in their own tree so that no key can collide with another key's sidecar.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

from civitas_ray.storage.base import (
    Body,
    Method,
    Storage,
    StoredObject,
    check_content_type,
    check_expiry,
    check_metadata,
    iter_body,
)
from civitas_ray.storage.errors import InvalidKey, KeyConflict, ObjectNotFound
from civitas_ray.storage.keys import validate_prefix
from civitas_ray.storage.signing import UrlSigner

log = logging.getLogger(__name__)
SIGNED_URL_PATH = "/api/v1/files"
_META_SUFFIX = ".json"


class LocalStorage(Storage):
    """Files under one directory. Every path is resolved and checked to stay inside it.

    A write goes to a temporary file in the same file system, is fsynced, then renamed
    over the target (`os.replace`), so readers see the old bytes or the new, never a
    mix. The sidecar is renamed into place right after the bytes: a reader racing a
    writer of the same key may see the previous sidecar for that instant.
    """

    def __init__(self, root: Path, *, signer: UrlSigner, public_base_url: str = "",
                 chunk_size: int = 1024**2, max_url_expires_s: int = 7 * 24 * 3600) -> None:
        self._root = Path(os.path.abspath(root))
        self._signer = signer
        self._base_url = public_base_url.rstrip("/")
        self._chunk = chunk_size
        self._max_expires = max_url_expires_s
        self._objects = self._root / "objects"
        self._meta = self._root / "meta"
        self._tmp = self._root / "tmp"
        self._real_objects: Path | None = None
        self._real_meta: Path | None = None

    @property
    def root(self) -> Path:
        return self._root

    @property
    def signer(self) -> UrlSigner:
        return self._signer

    # -- blocking helpers, always run in a worker thread -------------------------------

    def _setup(self) -> tuple[Path, Path]:
        if self._real_objects is None or self._real_meta is None:
            for d in (self._objects, self._meta, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
            self._real_objects, self._real_meta = self._objects.resolve(), self._meta.resolve()
        return self._real_objects, self._real_meta

    @staticmethod
    def _inside(base: Path, relative: str) -> Path:
        path = (base / relative).resolve()
        if path == base or not path.is_relative_to(base):
            raise InvalidKey(f"The key {relative!r} resolves outside the storage directory")
        return path

    def _paths(self, key: str) -> tuple[Path, Path]:
        objects, meta = self._setup()
        return self._inside(objects, key), self._inside(meta, key + _META_SUFFIX)

    def _open_temp(self) -> tuple[IO[bytes], str]:
        self._setup()
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        return os.fdopen(fd, "wb"), name

    @staticmethod
    def _write(fh: IO[bytes], digest: Any, chunk: bytes) -> None:
        digest.update(chunk)  # hashlib releases the GIL for large chunks
        fh.write(chunk)

    @staticmethod
    def _discard(fh: IO[bytes], name: str) -> None:
        fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)

    def _place(self, source: str, target: Path) -> None:
        """Rename `source` onto `target`, creating parents; retried if a delete prunes them."""
        for attempt in range(3):
            if target.is_dir():
                raise KeyConflict(f"A key below '{target.name}' exists; it cannot also be a file")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                return
            except (FileExistsError, NotADirectoryError):
                raise KeyConflict("A shorter key is a file where this key needs a "
                                  "directory (local storage cannot hold both)") from None
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def _commit(self, fh: IO[bytes], name: str, target: Path, meta_path: Path,
                record: dict[str, Any]) -> None:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        meta_fd, meta_name = tempfile.mkstemp(dir=self._tmp, prefix="meta-")
        try:
            with os.fdopen(meta_fd, "w", encoding="utf-8") as mf:
                json.dump(record, mf, separators=(",", ":"))
            self._place(name, target)
            self._place(meta_name, meta_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(meta_name)
            raise

    def _describe(self, key: str, path: Path, meta_path: Path) -> StoredObject | None:
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        record: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, ValueError):
            record = json.loads(meta_path.read_text(encoding="utf-8"))
        return StoredObject(
            key=key, size=st.st_size, uri=self.uri(key), sha256=record.get("sha256"),
            content_type=record.get("content_type") or check_content_type(key, None),
            metadata=dict(record.get("metadata") or {}),
            modified_at=datetime.fromtimestamp(st.st_mtime, UTC))

    def _head(self, key: str) -> StoredObject | None:
        path, meta_path = self._paths(key)
        return self._describe(key, path, meta_path)

    def _prune(self, start: Path, stop: Path) -> None:
        """Remove empty directories from `start` up to (not including) `stop`."""
        d = start
        while d != stop and d.is_relative_to(stop):
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    def _delete(self, key: str) -> bool:
        path, meta_path = self._paths(key)
        objects, meta = self._setup()
        if path.is_dir():
            return False
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            meta_path.unlink()
        self._prune(path.parent, objects)
        self._prune(meta_path.parent, meta)
        return True

    def _list(self, prefix: str) -> builtins.list[StoredObject]:
        objects, meta = self._setup()
        base = objects
        if "/" in prefix:
            base = self._inside(objects, prefix.rsplit("/", 1)[0])
        if not base.is_dir():
            return []
        found: builtins.list[StoredObject] = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                key = Path(dirpath, name).relative_to(objects).as_posix()
                if key.startswith(prefix):
                    obj = self._describe(key, Path(dirpath, name), meta / (key + _META_SUFFIX))
                    if obj is not None:
                        found.append(obj)
        found.sort(key=lambda o: o.key)
        return found

    def _read_all(self, key: str) -> bytes:
        path, _ = self._paths(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"No object '{key}'") from None

    def _open(self, key: str) -> IO[bytes]:
        path, _ = self._paths(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"No object '{key}'") from None

    # -- the async interface -----------------------------------------------------------

    async def put(self, key: str, data: Body, *, content_type: str | None = None,
                  metadata: dict[str, str] | None = None,
                  max_bytes: int | None = None) -> StoredObject:
        key = self._key(key)
        ctype = check_content_type(key, content_type)
        meta = check_metadata(metadata)
        target, meta_path = await asyncio.to_thread(self._paths, key)
        fh, name = await asyncio.to_thread(self._open_temp)
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in iter_body(data, max_bytes=max_bytes):
                await asyncio.to_thread(self._write, fh, digest, chunk)
                size += len(chunk)
            sha = digest.hexdigest()
            record = {"key": key, "size": size, "sha256": sha,
                      "content_type": ctype, "metadata": meta,
                      "stored_at": datetime.now(UTC).isoformat()}
            await asyncio.to_thread(self._commit, fh, name, target, meta_path, record)
        except BaseException:
            # Shielded: a cancelled put still removes its temporary file.
            await asyncio.shield(asyncio.to_thread(self._discard, fh, name))
            raise
        log.info("object stored", extra={"storage": "local", "key": key, "size": size})
        return StoredObject(key=key, size=size, uri=self.uri(key), sha256=sha,
                            content_type=ctype, metadata=meta, modified_at=datetime.now(UTC))

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._read_all, self._key(key))

    def open(self, key: str) -> AsyncIterator[bytes]:
        return self._stream(self._key(key))

    async def _stream(self, key: str) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(self._open, key)
        try:
            while chunk := await asyncio.to_thread(fh.read, self._chunk):
                yield chunk
        finally:
            fh.close()

    async def head(self, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._head, self._key(key))

    async def delete(self, key: str) -> bool:
        deleted = await asyncio.to_thread(self._delete, self._key(key))
        if deleted:
            log.info("object deleted", extra={"storage": "local", "key": key})
        return deleted

    async def delete_prefix(self, prefix: str) -> int:
        prefix = self._nonempty_prefix(prefix)

        def run() -> int:
            return sum(self._delete(obj.key) for obj in self._list(prefix))

        count = await asyncio.to_thread(run)
        log.info("objects deleted", extra={"storage": "local", "prefix": prefix,
                                           "count": count})
        return count

    async def list(self, prefix: str = "") -> builtins.list[StoredObject]:
        return await asyncio.to_thread(self._list, validate_prefix(prefix))

    async def signed_url(self, key: str, *, expires_s: int = 900,
                         method: Method = "GET") -> str:
        key = self._key(key)
        check_expiry(expires_s, maximum=self._max_expires, method=method)
        expires = int(time.time()) + expires_s
        query = urlencode({"expires": expires,
                           "signature": self._signer.sign(method, key, expires)})
        return f"{self._base_url}{SIGNED_URL_PATH}/{quote(key, safe='/')}?{query}"

    def uri(self, key: str) -> str:
        return (self._objects / self._key(key)).as_uri()
