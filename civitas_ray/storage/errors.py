"""Storage errors: domain exceptions the API maps to problem+json like any other."""

from __future__ import annotations

from civitas_ray.errors import CivitasError, Conflict, Forbidden, NotFound, ValidationFailed


class InvalidKey(ValidationFailed):
    """A key or prefix that is not a clean relative path (traversal attempts included)."""

    title, type_slug = "Invalid storage key", "invalid-storage-key"


class InvalidObject(ValidationFailed):
    """Bad content type, metadata or URL parameters; refused before anything is written."""

    title, type_slug = "Invalid storage request", "invalid-storage-request"


class ObjectNotFound(NotFound):
    title, type_slug = "Object not found", "object-not-found"


class KeyConflict(Conflict):
    """The local backend cannot hold both `a` and `a/b` (a file is not a directory)."""

    title, type_slug = "Storage key conflict", "storage-key-conflict"


class ObjectTooLarge(CivitasError):
    status, title, type_slug = 413, "Object too large", "object-too-large"


class BadSignature(Forbidden):
    """A signed URL whose signature is missing, wrong or expired."""

    title, type_slug = "Invalid or expired signature", "bad-signature"


class StorageUnavailable(CivitasError):
    """The object store failed or refused us; the caller may retry."""

    status, title, type_slug = 503, "Storage unavailable", "storage-unavailable"
