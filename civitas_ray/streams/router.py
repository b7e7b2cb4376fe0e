"""/api/v1/streams/{asset_id}/{metric}/state: a stream's live state, from actor memory."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from civitas_ray.assets import service as assets
from civitas_ray.auth.deps import AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.errors import NotFound
from civitas_ray.runtime import live

router = APIRouter(prefix="/streams", tags=["streams"])


@router.get(
    "/{asset_id}/{metric}/state", summary="Live state of one stream (actor memory)",
    description=(
        "`{\"latest\": {\"ts\", \"value\"}, \"window\": [...], \"forecast\": [{\"ts\", \"value\", "
        "\"lower\", \"upper\"}], \"flags\": [...], \"anomaly\": {...}, \"stats\": {...}}` with "
        "the forecast covering the next hour (`horizon_s`). Answered by the StreamShard "
        "that hosts the stream; 503 when the actors are not running."),
    **needs(Perm.TELEMETRY_READ))
async def stream_state(
    ctx: AuthDep, asset_id: uuid.UUID,
    metric: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")],
    window: Annotated[int, Query(ge=0, le=1024)] = 100,
    horizon_s: Annotated[int, Query(ge=0, le=86_400)] = 3600,
) -> dict[str, Any]:
    await assets.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                         asset_id=asset_id)
    state = await live.stream_state(tenant_id=ctx.principal.tenant_id, asset_id=asset_id,
                                    metric=metric, window=window, horizon_s=horizon_s)
    if state is None:
        raise NotFound(f"No readings for stream {asset_id}/{metric}")
    return {"asset_id": str(asset_id), "metric": metric, **state}
