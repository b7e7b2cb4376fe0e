"""The Ray Serve application: the Ingress deployment around `create_app()` and its builder.

serve_config.yaml points its `import_path` at `build`. Nothing here decides anything
about requests: the FastAPI app does; this module only places it on Serve replicas.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

logger = logging.getLogger(__name__)


def _build_asgi_app() -> FastAPI:
    """Runs inside each replica, so the app, its engine and its Redis client are created
    in the replica's own process and event loop instead of being pickled from the driver."""
    from civitas_ray import logging as civitas_logging
    from civitas_ray.api.app import create_app
    from civitas_ray.config import get_settings

    settings = get_settings()
    civitas_logging.configure(settings.log_level, json_output=settings.log_json)
    app = create_app()
    logger.info("ingress replica built the API", extra={"environment": settings.environment,
                                                        "routes": len(app.routes)})
    return app


@serve.deployment(name="Ingress")
@serve.ingress(_build_asgi_app)
class Ingress:
    """REST (/api/v1) and WebSocket (/ws) entry point; scaled by Serve's autoscaler.

    Stateless: every request reads PostgreSQL/Redis or calls actors, so replicas can be
    added, drained and replaced at any time. Serve's default health check (the replica
    actor answers) is kept on purpose: a database outage shows up in /readyz, and
    restarting replicas would not cure it.
    """


class BuildArgs(BaseModel):
    """The `args:` of the civitas application in serve_config.yaml.

    None are accepted yet; forbidding extras makes a misspelt argument fail the deploy
    instead of being silently ignored.
    """

    model_config = ConfigDict(extra="forbid")


def build(args: BuildArgs) -> Application:
    """Application builder named by serve_config.yaml (`civitas_ray.serve.app:build`)."""
    return Ingress.bind()  # type: ignore[attr-defined]  # @serve.deployment made it a Deployment
