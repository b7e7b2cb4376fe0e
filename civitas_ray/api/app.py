"""The FastAPI application factory: the same app runs under Ray Serve or plain uvicorn."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class RequestContextMiddleware:
    """Request id (from X-Request-ID or new), timing and security headers, in pure ASGI.

    A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which adds a task
    and a stream per request on the ingest hot path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:64]
                break
        rid = rid or uuid.uuid4().hex
        token = request_id_var.set(rid)
        start = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                headers["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.1f}"
                for k, v in SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            request_id_var.reset(token)


logger = logging.getLogger(__name__)


def _routers() -> list[APIRouter]:
    from civitas_ray.ai.router import router as ai
    from civitas_ray.ai.router_policy import router as ai_policy
    from civitas_ray.alerts.router import alerts_router, rules_router
    from civitas_ray.assets.router import router as assets
    from civitas_ray.audit.router import router as audit
    from civitas_ray.auth.router import router as auth
    from civitas_ray.documents.router import router as documents
    from civitas_ray.documents.router import search_router
    from civitas_ray.domains.router import routers as domain_routers
    from civitas_ray.incidents.router import router as incidents
    from civitas_ray.realtime.router import router as presence
    from civitas_ray.recommendations.router import router as recommendations
    from civitas_ray.storage.router import router as files
    from civitas_ray.streams.router import router as streams
    from civitas_ray.telemetry.router import router as telemetry
    from civitas_ray.tenants.router import router as tenants
    from civitas_ray.transit.router_rt import router as transit_rt
    from civitas_ray.transit.router_static import router as transit_static
    from civitas_ray.users.router import api_keys_router, users_router
    from civitas_ray.zones.router import router as zones

    # Telemetry first: routes are matched in order and ingest is the hot path.
    return [telemetry, auth, tenants, users_router, api_keys_router, zones, assets, streams,
            incidents, rules_router, alerts_router, audit, presence, files, documents,
            search_router, ai, ai_policy, recommendations, transit_rt,
            transit_static, *domain_routers(), *_ml_routers()]


def _ml_routers() -> list[APIRouter]:
    """The ML API, or, without the `ml` extra, routes that say so (503) instead of 404."""
    try:
        from civitas_ray.ml.router import forecasts_router, router
    except ImportError as exc:
        from civitas_ray.ml.unavailable import unavailable_routers

        logger.warning("ML API disabled: the `ml` extra is not installed",
                       extra={"error": str(exc)})
        return unavailable_routers(str(exc))
    return [router, forecasts_router]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    from civitas_ray.realtime.hub import close_hub
    from civitas_ray.telemetry.ingest import close_ingestor

    # Sockets first: they are told to go elsewhere before Redis and the database close.
    await close_hub()
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
        responses=PROBLEM_RESPONSES,
    )
    problems.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_credentials=True, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-ID", "Retry-After"])

    app.add_middleware(RequestContextMiddleware)
    app.include_router(health.router)
    for router in _routers():
        app.include_router(router, prefix=API_PREFIX)
    from civitas_ray.realtime.router import ws_router

    app.include_router(ws_router)  # /ws: outside /api/v1, as the architecture places it
    return app
