"""Domain exceptions raised by services, mapped to RFC 7807 problem+json in one place."""

from __future__ import annotations

from typing import Any


class CivitasError(Exception):
    """Base of every error a service raises on purpose."""

    status: int = 400
    title: str = "Bad request"
    type_slug: str = "bad-request"

    def __init__(self, detail: str = "", *, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra


class ValidationFailed(CivitasError):
    status, title, type_slug = 422, "Validation failed", "validation-failed"


class NotFound(CivitasError):
    status, title, type_slug = 404, "Not found", "not-found"


class Conflict(CivitasError):
    status, title, type_slug = 409, "Conflict", "conflict"


class Unauthorized(CivitasError):
    status, title, type_slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str = "", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kw)


class Forbidden(CivitasError):
    status, title, type_slug = 403, "Forbidden", "forbidden"


class TooManyRequests(CivitasError):
    status, title, type_slug = 429, "Too many requests", "rate-limited"


class ServiceUnavailable(CivitasError):
    status, title, type_slug = 503, "Service unavailable", "unavailable"
