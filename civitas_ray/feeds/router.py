"""/api/v1/feeds: controller messages in their own format, mapped onto the telemetry path."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status

from civitas_ray.auth.deps import PrincipalDep, needs_principal
from civitas_ray.auth.permissions import Perm
from civitas_ray.errors import ServiceUnavailable, ValidationFailed
from civitas_ray.feeds.signals import SignalMessage, parse_signal_message
from civitas_ray.telemetry.ingest import get_ingestor
from civitas_ray.telemetry.parse import PayloadError
from civitas_ray.telemetry.schemas import IngestResult
from civitas_ray.telemetry.writer import Backpressure

router = APIRouter(prefix="/feeds", tags=["feeds"])
MAX_SIGNAL_BYTES = 256 * 1024


@router.post("/signals", status_code=status.HTTP_202_ACCEPTED, response_model=IngestResult,
             summary="Ingest one traffic signal controller message",
             description="The controller's phase/state per signal group, stage, mode and "
                         "detector counts/occupancy/speed, mapped to readings of the "
                         "controller asset (docs/feeds.md). An invalid message is refused "
                         "whole (422); 202 comes after the readings are committed.",
             openapi_extra={"x-permission": str(Perm.TELEMETRY_INGEST), "requestBody": {
                 "required": True, "content": {"application/json": {
                     "schema": SignalMessage.model_json_schema()}}}},
             dependencies=needs_principal(Perm.TELEMETRY_INGEST)["dependencies"])
async def signals(principal: PrincipalDep, request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_SIGNAL_BYTES:
        raise ValidationFailed(f"the message exceeds {MAX_SIGNAL_BYTES} bytes")
    try:
        parsed = parse_signal_message(body)
    except PayloadError as exc:
        raise ValidationFailed(str(exc)) from exc
    try:
        outcome = await get_ingestor().ingest(tenant_id=principal.tenant_id, parsed=parsed,
                                              allowed_assets=principal.asset_ids)
    except Backpressure as exc:
        raise ServiceUnavailable(str(exc), headers={
            "Retry-After": str(int(exc.retry_after_s))}) from exc
    if outcome.rejected and not outcome.accepted:
        raise ValidationFailed(outcome.rejected[0][1])
    return {"accepted": outcome.accepted,
            "rejected": [{"index": i, "reason": r} for i, r in outcome.rejected]}
