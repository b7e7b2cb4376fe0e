"""Files for every domain (documents, model artifacts, exports) behind one interface.

`get_storage()` gives the configured backend: a local directory by default, S3 or MinIO
when `CIVITAS_STORAGE__BACKEND=s3`. Keys of tenant data come from `tenant_key`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from civitas_ray.config import Settings, StorageSettings, get_settings
from civitas_ray.storage.base import Storage, StoredObject
from civitas_ray.storage.errors import (
    BadSignature,
    InvalidKey,
    InvalidObject,
    KeyConflict,
    ObjectNotFound,
    ObjectTooLarge,
    StorageUnavailable,
)
from civitas_ray.storage.keys import tenant_key, tenant_prefix, validate_key
from civitas_ray.storage.local import LocalStorage
from civitas_ray.storage.s3 import S3Storage
from civitas_ray.storage.signing import UrlSigner

__all__ = [
    "BadSignature", "InvalidKey", "InvalidObject", "KeyConflict", "LocalStorage",
    "ObjectNotFound", "ObjectTooLarge", "S3Storage", "Storage", "StorageUnavailable",
    "StoredObject", "UrlSigner", "build_storage", "get_storage", "tenant_key", "tenant_prefix",
    "validate_key",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_cache: dict[int, tuple[Settings, Storage]] = {}
_cache_lock = threading.Lock()


def local_root(settings: StorageSettings) -> Path:
    """`local_dir` as an absolute path: relative ones are under the project root."""
    path = Path(settings.local_dir).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def s3_client_factory(settings: StorageSettings) -> Any:
    """A callable that builds the boto3 client (slow: it runs in a worker thread)."""
    s3 = settings.s3

    def make() -> Any:
        import boto3
        from botocore.config import Config

        secret = s3.secret_access_key.get_secret_value() if s3.secret_access_key else None
        config = Config(
            signature_version="s3v4", s3={"addressing_style": s3.addressing_style},
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=s3.max_pool_connections, connect_timeout=5, read_timeout=60,
            # Newer botocore adds CRC checksums by default, which many S3-compatible
            # servers reject; the SHA-256 we record covers integrity end to end.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client(
            "s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
            aws_access_key_id=s3.access_key_id, aws_secret_access_key=secret, config=config)

    return make


def build_storage(settings: StorageSettings, *, signing_secret: str) -> Storage:
    """A new backend from settings (no caching; `get_storage` caches)."""
    if settings.backend == "s3":
        return S3Storage(
            bucket=settings.s3.bucket, client_factory=s3_client_factory(settings),
            create_bucket=settings.s3.create_bucket, region=settings.s3.region,
            multipart_threshold=settings.multipart_threshold_bytes,
            part_size=settings.part_size_bytes, chunk_size=settings.chunk_size_bytes,
            max_url_expires_s=settings.max_url_expires_s)
    return LocalStorage(local_root(settings), signer=UrlSigner(signing_secret),
                        public_base_url=settings.public_base_url,
                        chunk_size=settings.chunk_size_bytes,
                        max_url_expires_s=settings.max_url_expires_s)


def get_storage(settings: Settings | None = None) -> Storage:
    """The backend for these settings (the process's by default), built once and kept."""
    settings = settings or get_settings()
    with _cache_lock:
        hit = _cache.get(id(settings))
        if hit is None:
            storage = build_storage(settings.storage,
                                    signing_secret=settings.auth.secret_key.get_secret_value())
            hit = _cache[id(settings)] = (settings, storage)  # holding settings keeps id unique
        return hit[1]
