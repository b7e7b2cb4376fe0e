"""Every error leaves the API as RFC 7807 problem+json, mapped here and nowhere else."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from civitas_ray.errors import CivitasError
from civitas_ray.logging import request_id_var

log = logging.getLogger(__name__)
PROBLEM_BASE = "https://civitas-ray.dev/problems/"
MEDIA_TYPE = "application/problem+json"


def problem(request: Request, *, status: int, title: str, slug: str, detail: str | None,
            errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail,
        "instance": request.url.path, "request_id": request_id_var.get(),
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _clean_validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item = {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        out.append(item)
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(CivitasError)
    async def _domain(request: Request, exc: CivitasError) -> JSONResponse:
        return problem(request, status=exc.status, title=exc.title, slug=exc.type_slug,
                       detail=exc.detail, errors=exc.errors, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(request, status=422, title="Validation failed", slug="validation-failed",
                       detail="The request does not match the schema",
                       errors=_clean_validation_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized",
                403: "forbidden"}.get(exc.status_code, "http-error")
        return problem(request, status=exc.status_code, title=str(exc.detail), slug=slug,
                       detail=str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> JSONResponse:
        log.info("integrity error", extra={"error": str(exc.orig)})
        return problem(request, status=409, title="Conflict", slug="conflict",
                       detail="The change conflicts with existing data (a duplicate or a "
                              "reference to something missing)")

    @app.exception_handler(DBAPIError)
    async def _dbapi(request: Request, exc: DBAPIError) -> JSONResponse:
        log.exception("database error")
        return problem(request, status=503, title="Database error", slug="database-error",
                       detail="The database could not complete the request; retry later",
                       headers={"Retry-After": "1"})
