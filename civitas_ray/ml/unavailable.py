"""Stand-in routes for /ml and /forecasts when the `ml` extra (lightgbm, pandas) is absent."""

from __future__ import annotations

from fastapi import APIRouter

from civitas_ray.errors import ServiceUnavailable


def unavailable_routers(reason: str) -> list[APIRouter]:
    router = APIRouter(tags=["ml"])

    @router.api_route("/ml/{path:path}", methods=["GET", "POST"], include_in_schema=False,
                      openapi_extra={"x-permission": "public"})
    @router.api_route("/forecasts", methods=["GET"], include_in_schema=False,
                      openapi_extra={"x-permission": "public"})
    @router.api_route("/forecasts/{path:path}", methods=["GET"], include_in_schema=False,
                      openapi_extra={"x-permission": "public"})
    async def unavailable(path: str = "") -> None:
        raise ServiceUnavailable("Machine learning is not installed on this server: install "
                                 f"civitas_ray[ml] ({reason})")

    return [router]
