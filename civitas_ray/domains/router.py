"""The domain and feed routers, in the order the app registers them."""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    from civitas_ray.domains.safety import router as safety
    from civitas_ray.domains.traffic import router as traffic
    from civitas_ray.domains.utilities import router as utilities
    from civitas_ray.feeds.router import router as feeds

    return [feeds, traffic, utilities, safety]
