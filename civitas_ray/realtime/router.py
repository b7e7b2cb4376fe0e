"""/ws (live events over a WebSocket) and /api/v1/presence (who watches a zone).

WebSocket routes do not appear in OpenAPI; the protocol is documented in
docs/websocket.md and summarised in the presence route's description.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket

from civitas_ray.auth.deps import AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.realtime import presence
from civitas_ray.realtime.connection import Connection
from civitas_ray.realtime.hub import get_hub
from civitas_ray.realtime.schemas import ZonePresence

WS_PROTOCOL = (
    "Live updates come over the WebSocket `GET /ws` (not listed in OpenAPI). Authenticate "
    "with `?token=<access token>` or a first message `{\"type\":\"auth\",\"token\":...}` "
    "within 5 s; then send `{\"type\":\"subscribe\",\"channels\":[\"alerts\",\"zone:<id>\"],"
    "\"last_event_id\":\"<id>\"}`. Channels: `alerts`, `incidents` (incidents:read), "
    "`zone:<uuid>` and `transit:vehicles` (zones:read), `stream:<asset uuid>/<metric>` "
    "(telemetry:read). Close codes: 4400 bad message, 4401 unauthenticated or expired, "
    "4403 forbidden, 4408 auth timeout, 4008 too slow. See docs/websocket.md."
)

router = APIRouter(prefix="/presence", tags=["realtime"])
ws_router = APIRouter(tags=["realtime"])


@ws_router.websocket("/ws", name="live_events")
async def live_events(websocket: WebSocket) -> None:
    await Connection(websocket, get_hub()).run()


@router.get("", response_model=ZonePresence, summary="Who is watching a zone",
            description=("The users whose dashboards are subscribed to `zone:<zone_id>` over "
                         "the WebSocket right now, one entry per user with the number of "
                         "connections and when the earliest started watching. Joins and "
                         "leaves are also pushed as `presence.joined` / `presence.left` "
                         "events on the zone's channel. " + WS_PROTOCOL),
            **needs(Perm.ZONES_READ))
async def zone_presence(ctx: AuthDep, zone_id: Annotated[uuid.UUID, Query()]) -> ZonePresence:
    watchers = await presence.watchers(tenant_id=ctx.principal.tenant_id, zone_id=zone_id)
    return ZonePresence.of(zone_id, watchers)
