"""The FastAPI application factory: the same app runs under Ray Serve or plain uvicorn."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from civitas_ray import __version__
from civitas_ray.api import health, problems
from civitas_ray.cache import close_redis
from civitas_ray.config import get_settings
from civitas_ray.db.session import dispose_engine
from civitas_ray.logging import request_id_var
from civitas_ray.schemas import PROBLEM_RESPONSES

API_PREFIX = "/api/v1"

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "geolocation=(), camera=(), microphone=()",
}


def _routers() -> list:  # type: ignore[type-arg]
    from civitas_ray.assets.router import router as assets
    from civitas_ray.audit.router import router as audit
    from civitas_ray.auth.router import router as auth
    from civitas_ray.incidents.router import router as incidents
    from civitas_ray.telemetry.router import router as telemetry
    from civitas_ray.tenants.router import router as tenants
    from civitas_ray.users.router import api_keys_router, users_router
    from civitas_ray.zones.router import router as zones

    return [auth, tenants, users_router, api_keys_router, zones, assets, incidents, telemetry,
            audit]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    from civitas_ray.telemetry.ingest import close_ingestor

    await close_ingestor()
    await dispose_engine()
    await close_redis()


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="civitas_ray",
        version=__version__,
        summary="Real-time control server for smart cities",
        description=(
            "REST + WebSocket API of civitas_ray. Authenticate with `POST /api/v1/auth/token` "
            "(OAuth2 password form) and send `Authorization: Bearer <token>`; devices send "
            "`X-API-Key`. Every route names the permission it needs in `x-permission`. "
            "Errors are RFC 7807 `application/problem+json`."
        ),
        lifespan=_lifespan,
        responses=PROBLEM_RESPONSES,  # type: ignore[arg-type]
    )
    problems.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_credentials=True, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-ID", "Retry-After"])

    @app.middleware("http")
    async def _request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        token = request_id_var.set(rid[:64])
        start = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers["X-Request-ID"] = rid[:64]
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.1f}"
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    app.include_router(health.router)
    for router in _routers():
        app.include_router(router, prefix=API_PREFIX)
    return app
