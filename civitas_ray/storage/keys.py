"""Object keys: the one validation every backend applies, and the per-tenant key layout."""

from __future__ import annotations

import re
import uuid

from civitas_ray.storage.errors import InvalidKey

MAX_KEY_BYTES = 1024  # S3's limit, applied to every backend so keys move between them
TENANTS_ROOT = "tenants"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_segments(text: str, segments: list[str], *, what: str) -> None:
    for segment in segments:
        if segment == "":
            raise InvalidKey(f"The {what} {text!r} has an empty path segment")
        if segment in (".", ".."):
            raise InvalidKey(f"The {what} {text!r} has a '{segment}' segment")


def _check_text(text: str, *, what: str) -> None:
    if len(text.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(f"The {what} is longer than {MAX_KEY_BYTES} bytes")
    if text.startswith("/"):
        raise InvalidKey(f"The {what} {text!r} is absolute; keys are relative paths")
    if "\\" in text:
        raise InvalidKey(f"The {what} {text!r} contains a backslash")
    if _CONTROL.search(text):
        raise InvalidKey(f"The {what} contains a NUL or another control character")


def validate_key(key: str) -> str:
    """Refuse anything that could name a file outside the store or differ between backends.

    A key is a relative path of non-empty segments separated by '/': no leading '/',
    no '.' or '..' segments, no backslashes, no control characters (NUL included).
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("The key is empty")
    _check_text(key, what="key")
    _check_segments(key, key.split("/"), what="key")
    return key


def validate_prefix(prefix: str) -> str:
    """Like `validate_key`, but empty means everything and a trailing '/' is allowed."""
    if not isinstance(prefix, str):
        raise InvalidKey("The prefix must be a string")
    if not prefix:
        return prefix
    _check_text(prefix, what="prefix")
    segments = prefix.split("/")
    if segments[-1] == "":
        segments = segments[:-1]
    _check_segments(prefix, segments, what="prefix")
    return prefix


def tenant_key(tenant_id: uuid.UUID | str, *parts: str) -> str:
    """`tenants/<uuid>/<part>/...`: the one place where keys get their tenant prefix.

    Each part may itself hold '/'-separated segments; the whole key is validated.
    """
    try:
        tid = tenant_id if isinstance(tenant_id, uuid.UUID) else uuid.UUID(str(tenant_id))
    except ValueError:
        raise InvalidKey(f"{tenant_id!r} is not a tenant id (a UUID)") from None
    if not parts:
        raise InvalidKey("A tenant key needs at least one part after the tenant id")
    return validate_key("/".join([TENANTS_ROOT, str(tid), *parts]))


def tenant_prefix(tenant_id: uuid.UUID | str) -> str:
    """Every key of one tenant starts with this (for `list` and `delete_prefix`)."""
    return tenant_key(tenant_id, "x")[:-1]
